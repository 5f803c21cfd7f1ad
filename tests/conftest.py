"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random-weight checkpoint in the s1-mini file layout, written once per session.

    Treat it as read-only (it is shared by all tests); copy it with shutil.copytree to modify.
    """
    from pipeline.model.tiny_checkpoint import write_tiny_checkpoint

    torch.set_num_threads(1)
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-s1", seed=0)


@pytest.fixture()
def page(server):
    """A headless Chromium page for the browser tests; each browser test module defines `server`."""
    from studio_server import browser_page

    with browser_page(60_000) as page:
        yield page


@pytest.fixture()
def hub_reachable(monkeypatch):
    """Tests that stand in for the Hub (its own error classes, fake downloads) need the
    reachability probe to say yes: no machine running the tests reaches the real Hub."""
    import pipeline.data.hub

    monkeypatch.setattr(pipeline.data.hub, "unreachable_reason", lambda: None)
