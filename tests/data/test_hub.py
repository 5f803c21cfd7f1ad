"""The Hub reachability probe: an offline machine is told in seconds, before any download."""

import socket
import time

import pytest

import pipeline.data.hub as hub
from pipeline.model.checkpoints import CheckpointError, download_base_model


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(hub, "_answers", {})


def _endpoint(monkeypatch, url):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_offline_mode_answers_at_once(monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.unreachable_reason() == "HF_HUB_OFFLINE is set"


def test_a_refused_connection_is_unreachable_within_seconds(monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _endpoint(monkeypatch, f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(hub.HubUnreachable, match="127.0.0.1"):
        hub.require_hub()
    assert time.monotonic() - started < hub.PROBE_TIMEOUT_S + 1


def test_a_listening_endpoint_is_reachable(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        _endpoint(monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.unreachable_reason() is None


def test_the_model_download_fails_fast_without_trying_files(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(hub, "unreachable_reason", lambda: "no answer from huggingface.co within 3 s")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(CheckpointError, match="unreachable.*within 3 s.*offline"):
        download_base_model("fishaudio/openaudio-s1-mini", tmp_path / "m")
