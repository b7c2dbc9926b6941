"""The install story: README quick start, Makefile, CI script, pins and the conda environment agree."""

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_quick_start_is_two_make_targets_that_exist():
    commands = quick_start_commands()
    assert commands == ["make demo", "make test"]
    for command in commands:
        dry = subprocess.run(["make", "-n", command.split()[1]], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr


def _makefile_rules() -> dict[str, tuple[list[str], list[str]]]:
    """``target -> (prerequisites, recipe lines)`` read from the Makefile itself, with its variables
    expanded, so the check does not depend on whether the virtual environment already exists."""
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^([A-Z_]+) \??:?= ?(.*)$", text, flags=re.M))

    def expand(value: str) -> str:
        for _ in range(5):
            value = re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m.group(1), m.group(0)), value)
        return value

    rules: dict[str, tuple[list[str], list[str]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("\t") and current is not None:
            rules[current][1].append(expand(line.strip()))
        elif re.match(r"^[^\s#=]+:(?!=)", line) and not line.startswith("."):
            target, prerequisites = line.split(":", 1)
            current = expand(target.strip())
            rules[current] = (expand(prerequisites).split(), [])
        elif not line.strip():
            current = None
    return rules


def test_both_quick_start_targets_install_with_the_pinned_constraints():
    rules = _makefile_rules()
    install_stamp = next(target for target in rules["install"][0])
    pip_lines = [line for line in rules[install_stamp][1] if " pip install" in line]
    assert pip_lines, f"the install rule {install_stamp!r} runs no pip install"
    for line in pip_lines:
        assert re.search(r"(?:^|\s)-c constraints\.txt(?:\s|$)", line), f"pip install without the pins: {line}"
        assert '-e ".[test]"' in line or "-e .[test]" in line
    # The stamp is rebuilt when the pins change, and both quick-start targets depend on the install.
    assert "constraints.txt" in rules[install_stamp][0] and "pyproject.toml" in rules[install_stamp][0]
    for target in ("demo", "test"):
        assert "install" in rules[target][0], f"make {target} does not install first"


def test_ci_runs_the_readme_test_command():
    lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    # Before it, one step: the system Chromium of the browser tests (tests/browser/), as the README shows.
    chromium = "apt-get install -y --no-install-recommends chromium"
    assert lines[-1] == "make test" and all(chromium in line for line in lines[:-1]) and len(lines) <= 2
    assert chromium in (ROOT / "README.md").read_text()
    assert "make test" in quick_start_commands()


def test_every_dependency_is_pinned():
    pins = _pins()
    project = _project()
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    assert [r for r in requirements if _name(r) not in pins] == []
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_conda_environment_lists_the_same_packages_as_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r): r.split("==")[1] for r in pip_section if not r.startswith("-e")}
    project = _project()
    expected = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    assert set(listed) == expected
    pins = _pins()
    assert {name: pins[name] for name in listed} == listed
    assert "python=3.11" in env["dependencies"]
