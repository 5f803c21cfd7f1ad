"""Who may log in, and how: password rules, the generated password's file, the login backoff, and
the gate in front of Gradio (in process; the real server is driven in test_studio.py)."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import time

import pytest

from studio.auth import (PASSWORD_FILE, Credentials, PasswordError, forget_password, resolve_credentials,
                         save_password)
from studio.login_gate import LoginThrottle, route_path
from studio_server import PROJECT_ROOT


# -- password rules --------------------------------------------------------------------------------
@pytest.mark.parametrize("host,share", [("0.0.0.0", False), ("192.168.1.5", False), ("127.0.0.1", True)])
def test_a_short_password_is_refused_for_a_public_bind(host, share):
    with pytest.raises(PasswordError, match=r"STUDIO_PASSWORD is too short \(11 characters\).*at least 12"):
        resolve_credentials(host, share=share, env={"STUDIO_PASSWORD": "x" * 11})
    assert resolve_credentials(host, share=share, env={"STUDIO_PASSWORD": "x" * 12}).password == "x" * 12


def test_a_short_password_is_accepted_on_localhost():
    # Only this machine can reach it: the operator's choice, whatever its length.
    assert resolve_credentials("127.0.0.1", env={"STUDIO_PASSWORD": "pw"}).password == "pw"


def test_spaces_do_not_count_towards_the_length():
    with pytest.raises(PasswordError):
        resolve_credentials("0.0.0.0", env={"STUDIO_PASSWORD": "   abcdef" + " " * 10})


def test_main_refuses_a_short_password_in_one_line(tmp_path, monkeypatch, capsys):
    from studio.__main__ import main

    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("STUDIO_PASSWORD", "hunter2")
    assert main(["--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: STUDIO_PASSWORD is too short") and "0.0.0.0" in err
    assert "hunter2" not in err


def test_python_m_studio_exits_2_without_traceback_on_a_short_password(tmp_path):
    env = {**os.environ, "STUDIO_WORKSPACE": str(tmp_path), "STUDIO_PASSWORD": "hunter2"}
    out = subprocess.run([sys.executable, "-m", "studio", "--host", "0.0.0.0"], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr, out.stderr
    assert "at least 12" in out.stderr


# -- the generated password ------------------------------------------------------------------------
def test_generated_password_is_saved_readable_by_its_owner_only(tmp_path):
    workspace = tmp_path / "ws"
    path = save_password("first-password", workspace)
    assert path == workspace / PASSWORD_FILE
    assert path.read_text().strip() == "first-password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # a file left world-readable by something else is replaced, not reused
    save_password("second-password", workspace)
    assert path.read_text().strip() == "second-password" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in workspace.iterdir()] == [PASSWORD_FILE]  # no partial file left behind
    forget_password(workspace)
    forget_password(workspace)  # nothing to remove: fine
    assert not path.exists()


def test_start_up_shows_a_generated_password_only_on_a_terminal(tmp_path):
    from studio.__main__ import login_lines

    creds = Credentials("studio", "s3cret-generated", generated=True)
    saved = tmp_path / PASSWORD_FILE
    logged = "\n".join(login_lines(creds, saved, tty=False))
    assert str(saved) in logged and "s3cret-generated" not in logged
    on_terminal = "\n".join(login_lines(creds, saved, tty=True))
    assert str(saved) in on_terminal and on_terminal.count("s3cret-generated") == 1
    chosen = "\n".join(login_lines(Credentials("studio", "from-env-pass", generated=False), None, tty=True))
    assert "STUDIO_PASSWORD" in chosen and "from-env-pass" not in chosen
    assert "only this machine" in login_lines(None, None, tty=True)[0]


# -- login backoff -----------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_lets_a_few_failures_through_then_doubles_the_wait():
    clock = Clock()
    throttle = LoginThrottle(free=3, base_s=1.0, max_s=8.0, forget_s=600.0, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("1.2.3.4") == 0
        throttle.failed("1.2.3.4")
    waits = []
    for _ in range(6):
        waits.append(throttle.retry_after("1.2.3.4"))
        clock.now += waits[-1]
        assert throttle.retry_after("1.2.3.4") == 0
        throttle.failed("1.2.3.4")
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # doubling, capped
    assert throttle.retry_after("5.6.7.8") == 0  # per client


def test_throttle_forgets_on_success_after_a_quiet_period_and_forgives_non_guesses():
    clock = Clock()
    throttle = LoginThrottle(free=2, base_s=1.0, forget_s=60.0, clock=clock)
    for _ in range(3):
        throttle.failed("a")
    assert throttle.retry_after("a") > 0
    throttle.succeeded("a")
    assert throttle.failures("a") == 0 and throttle.retry_after("a") == 0
    for _ in range(3):
        throttle.failed("b")
    clock.now += 61
    assert throttle.failures("b") == 0 and throttle.retry_after("b") == 0
    throttle.failed("c")
    throttle.failed("c")
    throttle.forgive("c")
    assert throttle.failures("c") == 1


def test_throttle_memory_is_bounded():
    clock = Clock()
    throttle = LoginThrottle(max_clients=100, clock=clock)
    for i in range(1000):
        clock.now += 1
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._failures) <= 100
    assert throttle.failures("10.0.3.231") == 1  # the most recent are kept


def test_route_path_strips_a_proxy_root_path():
    assert route_path({"path": "/config", "root_path": ""}) == "/config"
    assert route_path({"path": "/studio/config", "root_path": "/studio"}) == "/config"
    assert route_path({"path": "/studio", "root_path": "/studio"}) == "/"
    assert route_path({"path": "/assets/x.js", "root_path": "/a"}) == "/assets/x.js"


# -- the gate, in process ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A small Blocks launched with the studio's launch options and a password, on a free port."""
    import gradio as gr
    import httpx

    from audio_fixtures import test_config
    from studio.app import launch_options
    from studio_server import free_port

    config = test_config(tmp_path_factory.mktemp("gate"))
    with gr.Blocks() as demo:
        box = gr.Textbox(value=str(config.workspace), label="secret default")
        gr.Button("go").click(lambda text: text, box, box, api_name="echo_canary")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, auth=[("studio", "correct horse battery")],
                prevent_thread_lock=True, quiet=True, **launch_options(config))
    try:
        yield httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30), config
    finally:
        demo.close()


def test_gate_serves_only_the_login_form_before_login(gated):
    client, config = gated
    client.cookies.clear()
    page = client.get("/")
    assert page.status_code == 200 and '"auth_required":true' in page.text
    for response in (page, client.get("/config"), client.get("/gradio_api/info"), client.get("/openapi.json"),
                     client.get("/gradio_api/runs"), client.get("/gradio_api/app_id")):
        assert "echo_canary" not in response.text and str(config.workspace) not in response.text
    assert client.get("/config").status_code == 401 and client.get("/gradio_api/info").status_code == 401
    assert client.get("/theme.css").status_code == 200  # the form's own look


def test_gate_passes_a_logged_in_visitor_through(gated, caplog):
    client, config = gated
    client.cookies.clear()
    with caplog.at_level(logging.WARNING, logger="studio.login"):
        assert client.post("/login", data={"username": "studio", "password": "not it"}).status_code == 400
        deadline = time.monotonic() + 5  # the server thread logs just after it has answered
        while "failed login" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "failed login from 127.0.0.1 (1 in a row)" in caplog.text and "not it" not in caplog.text
    assert client.post("/login", data={"username": "studio", "password": "correct horse battery"}).status_code == 200
    assert "echo_canary" in client.get("/gradio_api/info").text
    assert "echo_canary" in client.get("/").text and str(config.workspace) in client.get("/config").text
