"""Command line polish: --version, help on every argument, --device auto, `config show|diff`."""

import argparse
from importlib.metadata import version

import pytest
import torch
import yaml

from msadkit.cli import build_parser, main
from msadkit.commands.config import config_differences
from msadkit.config import default_config, load_config
from msadkit.errors import ConfigError
from msadkit.utils.device import resolve_device


def _arguments_without_help(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """Every argument (and sub-command) below ``parser`` whose help is empty. An argument hidden on
    purpose (``help=argparse.SUPPRESS``) is a decision, not an omission, and passes."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                if not helps.get(name):
                    missing.append(f"{path} {name} (the sub-command)")
                missing += _arguments_without_help(child, f"{path} {name}")
        elif not (action.help or "").strip():
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_argument_of_every_command_has_help():
    assert _arguments_without_help(build_parser(), "msadkit") == []


def test_the_help_walker_finds_an_argument_without_help():
    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("run", help="runs")
    child.add_argument("--device", default="cpu")
    sub.add_parser("quiet")
    assert _arguments_without_help(parser, "x") == ["x run --device", "x quiet (the sub-command)"]


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"msadkit {version('msadkit')}"


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "runs/x"],
        ["pseudo-label", "--teacher", "runs/x", "--out", "labels.json"],
        ["predict", "runs/x", "image.png", "--out", "detections"],
    ],
)
def test_device_defaults_to_auto(argv):
    assert build_parser().parse_args(argv).device == "auto"


def test_resolve_device_auto_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="has 2 GPU"):
        resolve_device("cuda:2")


def test_cuda_without_a_gpu_is_one_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device cuda: no CUDA GPU is available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("tpu")
    # Through the command line: one line, status 2, before any run folder is read.
    assert main(["evaluate", "does/not/exist", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0]


def test_config_show_prints_the_resolved_config_with_overrides(capsys):
    assert main(["config", "show", "fcos_demo", "model.backbone.width=0.5", "solver.base_lr=0.02"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    expected = load_config("fcos_demo", ["model.backbone.width=0.5", "solver.base_lr=0.02"])
    assert shown == expected
    assert shown["model"]["backbone"]["width"] == 0.5 and shown["model"]["backbone"]["name"] == "slimmable_resnet50"


def test_config_show_of_a_run_folder_and_its_errors(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    saved = load_config("retinanet_demo")
    del saved["trainer"]["log_period"]  # a run written before a key existed still shows
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(["config", "show", str(run)]) == 0
    expected = load_config("retinanet_demo")
    expected["trainer"]["log_period"] = default_config()["trainer"]["log_period"]  # the missing key: today's default
    assert yaml.safe_load(capsys.readouterr().out) == expected
    assert main(["config", "show", str(run), "solver.base_lr=0.1"]) == 2
    assert "run folder: its config is fixed" in capsys.readouterr().err
    assert main(["config", "show", "no_such_config"]) == 2
    assert "no_such_config" in capsys.readouterr().err
    assert main(["config", "show", "fcos_demo", "model.no_such_key=1"]) == 2
    assert "model.no_such_key" in capsys.readouterr().err


def test_config_diff_lists_exactly_the_differing_dotted_keys(capsys):
    assert main(["config", "diff", "msad/msad_teacher_w025", "msad/msad_student_w025"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["key", "msad/msad_teacher_w025", "->", "msad/msad_student_w025"]
    rows = {line.split()[0]: line for line in lines[1:]}
    teacher, student = load_config("msad/msad_teacher_w025"), load_config("msad/msad_student_w025")
    # An independent count: flatten both configs and compare leaf by leaf.
    def flat(tree, prefix=""):
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a, b = flat(teacher), flat(student)
    assert set(rows) == {key for key in a if a[key] != b[key]}
    assert rows["model.resolution"].split()[1:] == ["high", "->", "low"]
    assert rows["solver.batch_size"].split()[1:] == ["16", "->", "32"]


def test_config_diff_of_identical_configs_and_of_missing_keys(capsys):
    assert main(["config", "diff", "fcos_demo", "fcos_demo"]) == 0
    assert "same config" in capsys.readouterr().out
    found = list(config_differences({"a": {"b": 1, "c": [1]}}, {"a": {"b": 1, "c": [2]}, "d": ""}))
    assert [(key, first, second) for key, first, second in found][0] == ("a.c", [1], [2])
    assert found[1][0] == "d" and repr(found[1][1]) == "(absent)"
