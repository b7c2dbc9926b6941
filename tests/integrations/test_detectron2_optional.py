"""detectron2 stays optional: the core never imports it, and a missing install gives a clear error.

Runs with and without detectron2 installed (each check in a fresh interpreter).
"""

import subprocess
import sys
import textwrap

CORE_IMPORTS = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    visited = []

    def visit(name):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # An optional third-party package of some module (papermill, ...) is not ours to test.
            if (exc.name or "").startswith("msadkit"):
                raise
            return
        visited.append(name)
        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            child = f"{name}.{info.name}"
            if child != "msadkit.integrations.detectron2":
                visit(child)

    visit("msadkit")
    leaked = sorted(m for m in sys.modules if m.startswith("msadkit.integrations.") or m.split(".")[0] == "detectron2")
    print("VISITED", len(visited), "msadkit.modeling.detectors.msad_teacher" in visited, "msadkit.engine.train.trainer" in visited)
    print("LEAKED", leaked)
    """
)

HIDDEN_DETECTRON2 = textwrap.dedent(
    """
    import sys
    sys.modules["detectron2"] = None  # as if it were not installed
    import msadkit.integrations  # the parent package needs nothing
    from msadkit.errors import MsadkitError
    try:
        import msadkit.integrations.detectron2
    except MsadkitError as exc:
        print("ERROR", exc)
    """
)


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_core_modules_never_import_the_integration():
    out = run(CORE_IMPORTS)
    visited = out.split("VISITED ")[1].split()
    assert int(visited[0]) > 40 and visited[1:3] == ["True", "True"], out
    assert "LEAKED []" in out, out


def test_missing_detectron2_is_a_clear_msadkit_error():
    out = run(HIDDEN_DETECTRON2)
    assert (
        "ERROR detectron2 is not installed; install it from https://github.com/facebookresearch/detectron2 "
        "per its instructions" in out
    ), out
