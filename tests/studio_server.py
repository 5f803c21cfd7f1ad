"""Start a real `python -m studio` in a subprocess on a free port, for the server and browser tests.

The server writes into the given workspace (STUDIO_WORKSPACE) and its output goes to a log
file, read back for failure messages; a generated password is read from its private file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# Debian's chromium as root, headless, with none of its background connections (no network here).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class StudioServer:
    process: subprocess.Popen
    port: int
    log_path: Path
    workspace: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def generated_password(self) -> str | None:
        """The generated password, from the private file the studio writes (never its log)."""
        path = self.workspace / "studio-password.txt"
        return path.read_text().strip() if path.exists() else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # e.g. 401 behind the login: the server is up
    except (urllib.error.URLError, OSError):
        return False


def start_studio(workspace: Path, host: str = "127.0.0.1", extra_env: dict | None = None,
                 timeout: float = 120.0, config_path: Path | None = None) -> StudioServer:
    """Launch the studio and wait until it answers HTTP; raises with its output if it does not."""
    port = free_port()
    log_path = Path(workspace) / f"studio-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "STUDIO_WORKSPACE": str(workspace), "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("STUDIO_PASSWORD", None)
    env.update(extra_env or {})
    command = [sys.executable, "-m", "studio", "--host", host, "--port", str(port)]
    if config_path:
        command += ["--config", str(config_path)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = StudioServer(process, port, log_path, Path(workspace))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"studio exited with {process.returncode}:\n{server.output()}")
        if _responds(f"http://127.0.0.1:{port}/config"):
            return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"studio did not answer on port {port} within {timeout:.0f} s:\n{server.output()}")


@contextmanager
def browser_page(timeout_ms: int = 30_000):
    """A headless Chromium page (Playwright) that collects JavaScript errors in `page.errors`."""
    import pytest

    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(timeout_ms)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.errors = errors
        try:
            yield page
        finally:
            browser.close()
