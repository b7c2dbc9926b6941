"""Build hook: a wheel carries the notebooks as package data.

``notebooks/`` at the top of the repository is the one source of the notebooks. Building a wheel
(or a non-editable install) copies its ``*.ipynb`` into ``msadkit/notebook/templates`` inside the
build, so ``msadkit notebook list|run|copy`` work from an installed wheel; an editable install
reads ``notebooks/`` directly and gets no copy. Everything else is configured in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
PACKAGED_NOTEBOOKS = ("msadkit", "notebook", "templates")


class BuildPyWithNotebooks(build_py):
    """``build_py`` that also copies ``notebooks/*.ipynb`` into the built package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
        if not notebooks:
            raise FileNotFoundError(f"no notebooks in {NOTEBOOKS}: build from a checkout or an sdist of msadkit")
        target = Path(self.build_lib, *PACKAGED_NOTEBOOKS)
        target.mkdir(parents=True, exist_ok=True)
        for notebook in notebooks:
            shutil.copyfile(notebook, target / notebook.name)


setup(cmdclass={"build_py": BuildPyWithNotebooks})
