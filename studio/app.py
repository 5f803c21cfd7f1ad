"""The studio's frame: header, shared context, and one tab per module.

Adding a tab is one entry in `TABS`: a title and a `build(ctx)` function that creates the tab's
components inside the current `gr.Tab` and wires their events. Tabs share `StudioContext`:
the config, the Blocks (for `demo.load` hooks) and `selection`, a state holding the picked
dataset and speaker that tabs can listen to (`ctx.selection.change(...)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gradio as gr

from pipeline.config import PROJECT_ROOT, Config

from studio.tabs import dataset as dataset_tab
from studio.tabs import modes as modes_tab
from studio.tabs import training as training_tab
from studio.tabs import machine as machine_tab
from studio.tabs import playground as playground_tab
from studio.login_gate import gate_middleware
from studio.theme import CSS, make_theme

TITLE = "Finnish TTS Studio"
TAGLINE = ("Teach Fish Speech (openaudio-s1-mini) Finnish and a new voice: load clips, check them, "
           "pick a speaker, train on one GPU and listen to the result.")
LICENCE_NOTE = ("The openaudio-s1-mini weights are licensed CC-BY-NC-SA-4.0: models trained here are "
                "for non-commercial use only.")


@dataclass
class StudioContext:
    config: Config
    demo: gr.Blocks
    selection: gr.State  # {"dataset_id": str | None, "speaker": str | None}


TabBuilder = Callable[[StudioContext], None]

# (title, build function, elem_id). Only real tabs go here: no placeholders.
TABS: list[tuple[str, TabBuilder, str]] = [
    ("Dataset", dataset_tab.build, "tab-dataset"),
    ("Modes & cost", modes_tab.build, "tab-modes"), ("Training", training_tab.build, "tab-training"),
    ("Playground", playground_tab.build, "tab-playground"),
    ("Machine", machine_tab.build, "tab-machine"),
]

# Gradio copies every file it serves (each synthesized wav, each upload) into its temp cache:
# every hour, delete the copies older than a day, so the cache does not grow without bound.
DELETE_CACHE = (3600, 86400)


def _header() -> None:
    gr.HTML(
        f"<div id='studio-header'><h1>{TITLE}</h1><p>{TAGLINE}</p>"
        f"<p class='licence'>⚠️ {LICENCE_NOTE}</p></div>",
        elem_id="studio-header-box",
        padding=False,
    )


def build_app(config: Config, tabs: list[tuple[str, TabBuilder, str]] | None = None) -> gr.Blocks:
    """The whole studio as a `gr.Blocks` (not launched; see `launch_options` for theme and paths)."""
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        _header()
        ctx = StudioContext(config=config, demo=demo, selection=gr.State({}))
        with gr.Tabs(elem_id="studio-tabs"):
            for title, build, elem_id in tabs if tabs is not None else TABS:
                with gr.Tab(title, elem_id=elem_id):
                    build(ctx)
    return demo


def allowed_paths(config: Config) -> list[str]:
    """Folders whose files the browser may fetch (clip audio, charts' sources, run outputs)."""
    return [str(config.workspace), str(PROJECT_ROOT / "assets")]


def launch_options(config: Config) -> dict:
    """Keyword arguments for `demo.launch` that every way of starting the studio shares."""
    # The login gate relies on this server rendering the page itself (no Node server-side rendering).
    return dict(theme=make_theme(), css=CSS, allowed_paths=allowed_paths(config),
                show_error=False, footer_links=["api", "settings"], ssr_mode=False,
                app_kwargs={"middleware": gate_middleware()})
