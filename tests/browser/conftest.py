"""A JupyterLab server and a headless Chromium driven by Playwright, for the browser tests.

Screenshots of every test are kept in :func:`screenshots_root` (the test's temporary folder is
removed when it passes). The server runs this interpreter's ``jupyter lab --no-browser`` on a free localhost port with a
token, in a temporary root folder with its own Jupyter config, data and settings folders (no
announcements, no update check: nothing is downloaded). The browser is the system Chromium; the
tests skip, saying why, where there is none or Playwright is missing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVER_START_TIMEOUT_S = 90


def chromium_path() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LabServer:
    """A running ``jupyter lab`` whose root folder is ``root``."""

    def __init__(self, root: Path, home: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        config_dir = home / "config"
        (config_dir / "labconfig").mkdir(parents=True)
        # The news pop-up would fetch a feed and cover the notebook.
        (config_dir / "labconfig" / "page_config.json").write_text(
            json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
        )
        # Open a notebook straight into its kernel, without the kernel-choice dialog.
        tracker = home / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
        tracker.parent.mkdir(parents=True)
        tracker.write_text(json.dumps({"autoStartDefaultKernel": True}))
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(config_dir),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
            "IPYTHONDIR": str(home / "ipython"),
            "OMP_NUM_THREADS": "1",
        }
        env.pop("MSADKIT_NOTEBOOK_BATCH", None)
        command = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser",
            "--ip=127.0.0.1", f"--port={self.port}", "--port-retries=0",
            f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={self.token}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")
        self.log_path = home / "jupyter-lab.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url('api/status')}", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"jupyter lab did not answer within {SERVER_START_TIMEOUT_S} s:\n{self.log_path.read_text()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def shut_down_kernels(self) -> None:
        """Shut down every kernel (a test's kernel would keep its memory until the server stops)."""
        headers = {"Authorization": f"token {self.token}"}
        with urllib.request.urlopen(urllib.request.Request(self.url("api/kernels"), headers=headers), timeout=10) as answer:
            kernels = json.loads(answer.read())
        for kernel in kernels:
            request = urllib.request.Request(self.url(f"api/kernels/{kernel['id']}"), headers=headers, method="DELETE")
            urllib.request.urlopen(request, timeout=30).close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def browser():
    """The system Chromium, headless, through Playwright (skips without either)."""
    executable = chromium_path()
    if executable is None:
        pytest.skip(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
                    "install it with `apt-get install -y --no-install-recommends chromium`")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install msadkit[test])")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, browser):
    """A JupyterLab server rooted in a fresh folder (its notebooks' relative paths resolve there)."""
    root = tmp_path_factory.mktemp("lab")
    server = LabServer(root, tmp_path_factory.mktemp("jupyter-home"))
    yield server
    server.stop()


# Where every screenshot is kept after the run (a passing test's temporary folder is removed):
# $MSADKIT_BROWSER_SCREENSHOTS, else runs/browser-tests/ in the repository (git ignores runs/).
SCREENSHOTS_ENV_VAR = "MSADKIT_BROWSER_SCREENSHOTS"


def screenshots_root() -> Path:
    configured = os.environ.get(SCREENSHOTS_ENV_VAR)
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "runs" / "browser-tests"


class Screenshots:
    """Numbered screenshots of one test, in its temporary folder and copied to ``keep``."""

    def __init__(self, page, folder: Path, keep: Path | None = None) -> None:
        self.page, self.folder, self.keep, self.paths = page, folder, keep, []

    def take(self, step: str) -> Path:
        path = self.folder / f"{len(self.paths) + 1:02d}_{step}.png"
        self.page.screenshot(path=str(path), full_page=False)
        self.paths.append(path)
        if self.keep is not None:
            self.keep.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.keep / path.name)
        return path


@pytest.fixture
def page(browser, lab, tmp_path, request):
    """A browser page; its screenshots go to the test's temporary folder and are listed on failure."""
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    tab = context.new_page()
    shots = Screenshots(tab, tmp_path, keep=screenshots_root() / request.node.name)
    tab.screenshots = shots
    yield tab
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        try:
            shots.take("failure")
        except Exception:  # the page may be gone; the earlier shots still tell the story
            pass
        print(f"\nscreenshots of {request.node.name}:\n" + "\n".join(f"  {p}" for p in shots.paths))
        print(f"server log: {lab.log_path}")
    context.close()
    lab.shut_down_kernels()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report
