"""Notebooks for users who install the wheel: the build copies them in, `notebook copy|list` find them.

``notebooks/`` stays the one source; setup.py copies it into ``msadkit/notebook/templates`` of a
build. Everything runs offline: the wheel is built without build isolation and installed with
``--no-index``.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from msadkit.cli import main
from msadkit.notebook.runner import NOTEBOOK_NAMES
from tests.conftest import tiny_training_overrides

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")


def _source_copy(tmp_path: Path) -> Path:
    """The files a build reads, copied so that the build leaves nothing in the repository."""
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "templates")
    shutil.copytree(ROOT / "msadkit", source / "msadkit", ignore=ignore)
    shutil.copytree(ROOT / "notebooks", source / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name in SOURCE_FILES:
        shutil.copy2(ROOT / name, source / name)
    return source


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MSADKIT_NOTEBOOKS", "PIP_INDEX_URL")}
    env["PIP_NO_INDEX"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _assert_same_notebooks(folder: Path) -> None:
    originals = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert [p.name for p in sorted(folder.glob("*.ipynb"))] == [p.name for p in originals]
    for original in originals:
        assert (folder / original.name).read_bytes() == original.read_bytes(), original.name


def test_the_build_copies_the_notebooks_into_the_package(tmp_path):
    source = _source_copy(tmp_path)
    build_lib = tmp_path / "build_lib"
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build_lib)],
        cwd=source, capture_output=True, text=True, env=_clean_env(), timeout=300,
    )
    assert done.returncode == 0, done.stderr
    _assert_same_notebooks(build_lib / "msadkit" / "notebook" / "templates")
    # The configs still come along as package data next to them.
    assert (build_lib / "msadkit" / "config" / "configs" / "fcos_demo.yaml").is_file()


def test_notebook_copy_writes_every_notebook_and_refuses_to_overwrite(tmp_path, capsys):
    target = tmp_path / "my_notebooks"
    assert main(["notebook", "copy", str(target)]) == 0
    _assert_same_notebooks(target)
    assert capsys.readouterr().out.split() == [str(target / f"{name}.ipynb") for name in NOTEBOOK_NAMES]
    (target / "01_teacher_training.ipynb").write_text("{}")  # the user's edit
    assert main(["notebook", "copy", str(target)]) == 2
    assert "01_teacher_training.ipynb" in capsys.readouterr().err
    assert (target / "01_teacher_training.ipynb").read_text() == "{}"
    assert main(["notebook", "copy", str(target), "--force"]) == 0
    _assert_same_notebooks(target)
    assert main(["notebook", "copy", str(target / "01_teacher_training.ipynb")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_refused_rerun_names_the_force_flag(tmp_path, monkeypatch):
    from msadkit.errors import ConfigError
    from msadkit.notebook import runner

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = {"notebook": "04_ap_table", "status": "finished", "parameters": {"output_dir": "elsewhere"}}
    monkeypatch.setattr(runner, "read_run_record", lambda folder: record)
    monkeypatch.setattr(runner, "is_finished", lambda folder: True)
    monkeypatch.setattr(runner, "check_parameter_names", lambda source, params: None)
    with pytest.raises(ConfigError, match="pass --force"):
        runner.run_notebook("04_ap_table", run_dir, {"title": "other"})


@pytest.mark.slow
def test_notebooks_list_copy_and_run_from_an_installed_wheel(tmp_path):
    source = _source_copy(tmp_path)
    env = _clean_env()
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(dist), str(source)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("msadkit-*.whl")

    # A fresh environment holding only the wheel; its dependencies come from the test's own
    # environment through a .pth line (which adds the folder but runs none of its .pth hooks, so the
    # editable install there stays out of sight).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    python = venv / "bin" / "python"
    site_packages = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    outer = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site_packages / "zz_outer_environment.pth").write_text("\n".join(outer) + "\n")
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert installed.returncode == 0, installed.stderr

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import msadkit.notebook.runner as r; print(r.__file__); print(r.notebooks_dir())"],
        cwd=work, capture_output=True, text=True, env=env, check=True,
    ).stdout.splitlines()
    packaged = site_packages / "msadkit" / "notebook" / "templates"
    assert where[0].startswith(str(site_packages)) and where[1] == str(packaged)

    msadkit = str(venv / "bin" / "msadkit")
    listed = subprocess.run(
        [msadkit, "notebook", "list"], cwd=work, capture_output=True, text=True, env=env, timeout=300
    )
    assert listed.returncode == 0, listed.stderr
    names = [line for line in listed.stdout.splitlines() if line and not line.startswith(" ")]
    assert names == list(NOTEBOOK_NAMES)
    assert "    iterations = " in listed.stdout  # the parameters cell was read from the packaged copy

    copied = subprocess.run([msadkit, "notebook", "copy", "nb"], cwd=work, capture_output=True, text=True, env=env)
    assert copied.returncode == 0, copied.stderr
    _assert_same_notebooks(work / "nb")
    version = subprocess.run([msadkit, "--version"], cwd=work, capture_output=True, text=True, env=env)
    assert version.stdout.strip().startswith("msadkit ") and "not installed" not in version.stdout

    # A packaged notebook runs there (kernel on the environment's interpreter, 2 iterations at 64 px).
    overrides = [o for o in tiny_training_overrides("unused") if not o.startswith(("output_dir=", "model.arch="))]
    env.update(MSADKIT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    ran = subprocess.run(
        [msadkit, "notebook", "run", "01", "--out", "teacher", "-p", "config", "fcos_demo",
         "-p", "iterations", "2", "-p", "overrides", json.dumps(overrides)],
        cwd=work, capture_output=True, text=True, env=env, timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    record = json.loads((work / "teacher" / "notebook_run.json").read_text())
    assert record["status"] == "finished"
    assert record["source"] == str(packaged / "01_teacher_training.ipynb")
    assert (work / "teacher" / "model_final.pth").is_file()
