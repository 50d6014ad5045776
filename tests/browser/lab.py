"""Drive a real JupyterLab from tests: start it headless on localhost, open a notebook in Debian's Chromium
(through Playwright, with `executable_path`: nothing downloads a browser), run its cells, find widgets.

Used by tests/test_browser.py and by tests/browser/screenshots.py (which writes docs/widgets/*.png).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = os.environ.get("QUANTKIT_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# JupyterLab settings for a quiet, reproducible session: no news or update checks (no network), no restored layout.
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    # start the notebook's own kernel without asking (JupyterLab 4 otherwise shows a "Select Kernel" dialog)
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True},
}


def missing() -> str | None:
    """Why the browser test cannot run here (None when it can)."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/ci_browser_setup.sh)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install 'playwright==1.65.2' (scripts/ci_browser_setup.sh)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyterlab(root: Path, env: dict[str, str] | None = None, timeout: float = 60.0):
    """A JupyterLab server on 127.0.0.1 serving `root`; yields (base url, token). Stopped (by its pid) on exit."""
    port, token = _free_port(), secrets.token_hex(16)
    home = Path(tempfile.mkdtemp(prefix="quantkit-lab-"))
    settings = home / "settings"
    for name, value in SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    environment = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        **(env or {}),
    }
    log = open(home / "server.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.port_retries=0",
            "--allow-root",
        ],  # CI runs as root
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n{(home / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"JupyterLab did not answer in {timeout} s:\n{(home / 'server.log').read_text()}")
            time.sleep(0.3)
        yield url, token
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def browser(width: int = 1280, height: int = 900):
    """A Playwright page in headless Chromium from CHROMIUM (no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            page = b.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            b.close()


def write_notebook(path: Path, cells: list[str]) -> Path:
    """A minimal nbformat-4 notebook of code cells, no outputs."""
    nb = {
        "cells": [
            {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": src}
            for i, src in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))
    return path


def open_and_run(page, url: str, token: str, notebook: str, timeout_ms: int = 60_000) -> None:
    """Open `notebook` (relative to the server root) in JupyterLab, wait for its kernel, run every cell."""
    page.goto(f"{url}/lab/tree/{notebook}?token={token}&reset", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout_ms)
    # the kernel is ready when the status bar names it and says Idle
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.jp-StatusBar-TextItem'))"
        ".some(e => /ipykernel\\)? \\| Idle/.test(e.textContent))",
        timeout=timeout_ms,
    )
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()


def wait_until_idle(page, timeout_ms: int = 90_000) -> None:
    """Wait until no cell is queued or running ("[*]" prompts gone)."""
    page.wait_for_function(
        "() => !Array.from(document.querySelectorAll('.jp-InputArea-prompt')).some(e => e.textContent.includes('*'))",
        timeout=timeout_ms,
    )


__all__ = ["CHROMIUM", "browser", "jupyterlab", "missing", "open_and_run", "wait_until_idle", "write_notebook"]
