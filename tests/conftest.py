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


@pytest.fixture(autouse=True)
def _compile_cache_settings():
    """pipeline.train.warmup.use_compile_cache sets environment variables and torch settings for
    its whole process; a test that runs a workflow in this process must not hand them to the next."""
    import os

    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    from pipeline.train import warmup

    names = (warmup.CACHE_ENV, warmup.TRITON_ENV)
    env, set_here = {name: os.environ.get(name) for name in names}, dict(warmup._SET_HERE)
    custom = functorch_config.autograd_cache_allow_custom_autograd_functions
    marked = dict(inductor_config.unsafe_marked_cacheable_functions)
    yield
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    warmup._SET_HERE.clear()
    warmup._SET_HERE.update(set_here)
    functorch_config.autograd_cache_allow_custom_autograd_functions = custom
    inductor_config.unsafe_marked_cacheable_functions = marked
