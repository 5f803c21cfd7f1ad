"""The Playground tab: speak Finnish with any model, compare two models blind, download artifacts.

UI wiring only: models, warm synthesizers and votes come from `studio.logic.playground`; the
Artifacts tab is `studio.tabs.playground_artifacts`. API names of the events (for gradio_client):
refresh_models, normalize_text, reference_clips, reference_clip, speak, compare, vote_1, vote_2,
vote_tie, tiny_model.

Speech handlers are generators that yield between sentence chunks: when the browser goes away,
Gradio closes the generator and the work stops before the next chunk. "Generate" also yields the
audio while it is sampled, into a streaming player (autoplay; needs ffmpeg, else hidden), then
the whole file into the "Speech" player and the download button.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import gradio as gr

from pipeline.generate.fastgen import DecodeOptions
from studio.logic import playground as pg
from studio.logic import playground_live
from pipeline.data.selection import ReferenceClips, reference_clips
from pipeline.data.text import example_sentences, normalize_report
from studio.logic.warmup import WarmUp, warm_up_wanted

from studio.tabs import playground_artifacts, scorecard_view
from studio.tabs.dataset_view import esc, note

log = logging.getLogger(__name__)
MAX_ADAPTERS = 3
NONE = "none"  # the adapter dropdowns' "no adapter" value
SPOKEN_PREVIEW = 80  # characters of the normalized text shown before it is expanded
VOTES = (("◀ Sample 1 is better", 1), ("No preference", None), ("Sample 2 is better ▶", 2))


def _failure(exc: Exception) -> str:
    """A one-line message for the UI; the traceback goes to the console only."""
    if isinstance(exc, ValueError):  # SynthError, CheckpointError, AdapterError, PlaygroundError
        return str(exc)
    log.exception("Playground: unexpected error")
    return f"Unexpected error ({type(exc).__name__}): {exc}. The server console has the details."


@dataclass
class Picker:
    """A model dropdown, its description, and adapter slots (dropdown + strength slider each)."""
    model: gr.Dropdown
    info: gr.HTML
    adapters: list[gr.Dropdown]
    weights: list[gr.Slider]

    @property
    def inputs(self) -> list:
        return [self.model, *self.adapters, *self.weights]

    @staticmethod
    def parse(values) -> tuple[str | None, list[tuple[str, float]]]:
        model, rest = values[0], values[1:]
        paths, weights = rest[:MAX_ADAPTERS], rest[MAX_ADAPTERS:]
        return model, [(p, float(w)) for p, w in zip(paths, weights) if p and p != NONE]


def _model_info(config, path: str | None) -> str:
    models = {m.path: m for m in pg.list_models(config)}
    if not models:
        return note(pg.no_model_help(config), "error")
    model = models.get(path)
    if model is None:
        return note("Choose a model.", "info")
    if model.random_weights:
        return note(f"⚠ {model.title}: tiny test model with random weights: produces noise, not speech.", "info")
    return note(model.label, "ok")


def _picker(config, prefix: str, label: str, default: str | None, open_adapters: bool = True) -> Picker:
    models, adapters = pg.list_models(config), pg.list_adapters(config)
    model = gr.Dropdown([(m.label, m.path) for m in models], value=default, label=label,
                        interactive=True, elem_id=f"{prefix}-model")
    info = gr.HTML(_model_info(config, default), elem_id=f"{prefix}-info")
    slots, weights = [], []
    with gr.Accordion("Stack LoRA adapters (applied live, not merged)", open=open_adapters and bool(adapters),
                      elem_id=f"{prefix}-adapters"):
        for i in range(MAX_ADAPTERS):
            with gr.Row(equal_height=True):
                slots.append(gr.Dropdown([("— none —", NONE)] + [(a.label, a.path) for a in adapters],
                                         value=NONE, label=f"Adapter {i + 1}", scale=5, min_width=200, interactive=True,
                                         elem_id=f"{prefix}-adapter-{i}"))
                weights.append(gr.Slider(0.0, 1.5, value=1.0, step=0.05, label="Strength", scale=2, min_width=150,
                                         elem_id=f"{prefix}-weight-{i}"))
    return Picker(model, info, slots, weights)


def _defaults(config) -> tuple[str | None, str | None]:
    """Model A (the base when present) and model B (the newest other model) for the pickers."""
    paths = [m.path for m in pg.list_models(config)]
    return (paths[0] if paths else None), (paths[1] if len(paths) > 1 else (paths[0] if paths else None))


def build(ctx) -> None:
    config = ctx.config
    gr.set_static_paths([config.runs_dir])  # serve run artifacts (GBs) in place, never copied to gradio's cache
    cache = pg.SynthCache(size=2, decode_options=DecodeOptions.from_speed(config.speed))  # launchable.yaml's speed:
    first, second = _defaults(config)
    warm = WarmUp(cache)
    if first and warm_up_wanted():  # compile the decoder now, not at the first request
        warm.start(first)
    refs = reference_clips(config)

    # -- text, voice reference, sampling (shared by Listen and A/B) --------------------------------
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=360):
            gr.Markdown("### Text", elem_classes="section-title")
            first_text = (example_sentences() or [""])[0]
            text = gr.Textbox(value=first_text, lines=3, max_lines=8, show_label=False,
                              placeholder=f"Kirjoita suomenkielinen lause… (at most {pg.MAX_TEXT_CHARS:,} "
                                          "characters)",
                              elem_id="pg-text")
            normalized = gr.HTML(_spoken(first_text), elem_classes="section-hint", elem_id="pg-normalized")
            gr.Examples([[s] for s in example_sentences()], inputs=[text], label="Example sentences",
                        examples_per_page=5)
            with gr.Accordion("Reference clip: an optional voice prompt", open=False, elem_id="pg-reference"):
                with gr.Row():
                    ref_speaker = gr.Dropdown(refs.speakers, value=refs.speaker, label="Dataset speaker",
                                              interactive=True, scale=1, elem_id="pg-ref-speaker")
                    ref_clip = gr.Dropdown(_clip_choices(refs), value=None, label="Accepted clip",
                                           interactive=True, scale=2, elem_id="pg-ref-clip")
                with gr.Row(equal_height=False):
                    ref_audio = gr.Audio(type="filepath", sources=["upload"], label="Reference audio",
                                         elem_id="pg-ref-audio")
                    ref_text = gr.Textbox(label="Its transcript", lines=3, elem_id="pg-ref-text")
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("### Sampling", elem_classes="section-title")
            gr.Markdown("Same text, settings and seed give the same audio. Max frames counts per sentence "
                        "(21.5 frames ≈ 1 s of speech).",
                        elem_classes="section-hint")
            with gr.Row():
                temperature = gr.Slider(0.1, 1.5, value=0.7, step=0.05, label="Temperature", elem_id="pg-temperature")
                top_p = gr.Slider(0.1, 1.0, value=0.8, step=0.05, label="Top-p", elem_id="pg-top-p")
            with gr.Row():
                penalty = gr.Slider(1.0, 1.5, value=1.1, step=0.01, label="Repetition penalty",
                                    elem_id="pg-penalty")
                max_tokens = gr.Slider(16, 2048, value=1024, step=16, label="Max frames",
                                       elem_id="pg-max-tokens")
            with gr.Row(equal_height=True):
                seed = gr.Number(value=1234, precision=0, label="Seed", minimum=0, scale=3, elem_id="pg-seed")
                dice = gr.Button("New seed", scale=1, elem_id="pg-new-seed")
    shared = [text, ref_audio, ref_text, temperature, top_p, penalty, max_tokens, seed]

    with gr.Tabs(elem_id="pg-tabs"):
        # -- one model ---------------------------------------------------------------------------
        with gr.Tab("Listen", elem_id="pg-tab-listen"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=340):
                    listen = _picker(config, "pg", "Model", first)
                    refresh = gr.Button("↻ Refresh models", size="sm", elem_id="pg-refresh")
                    tiny = gr.Button("Create the tiny offline model (random weights: noise, not speech)", size="sm",
                                     visible=not pg.list_models(config), elem_id="pg-tiny-model")
                    warm_note = gr.Markdown(elem_classes="section-hint", elem_id="pg-warm-up")
                with gr.Column(scale=1, min_width=340):
                    generate = gr.Button("Generate speech", variant="primary", elem_id="pg-generate")
                    live = gr.Audio(streaming=True, autoplay=True, interactive=False, visible=playground_live.can_stream_audio(),
                                    label="Live: plays while it is generated", elem_id="pg-live")
                    audio = gr.Audio(type="filepath", interactive=False, label="Speech", buttons=["download"],
                                     elem_id="pg-audio")
                    download = gr.DownloadButton("Download WAV", visible=False, elem_id="pg-download")
                    message = gr.HTML(elem_id="pg-message")
        # -- two models, same sentence and seed ----------------------------------------------------
        with gr.Tab("A/B compare", elem_id="pg-tab-ab") as ab_tab:
            with gr.Row(equal_height=False):
                with gr.Column(min_width=340):
                    pick_a = _picker(config, "pg-a", "Model A", first, open_adapters=False)
                with gr.Column(min_width=340):
                    pick_b = _picker(config, "pg-b", "Model B", second, open_adapters=False)
            with gr.Row(equal_height=True):
                blind = gr.Checkbox(value=True, label="Blind test: hide which sample is which until I vote",
                                    scale=3, elem_id="pg-blind")
                compare = gr.Button("Generate A and B", variant="primary", scale=1, elem_id="pg-compare")
            with gr.Row(equal_height=False):
                players, captions = [], []
                for i in (1, 2):
                    with gr.Column():
                        players.append(gr.Audio(type="filepath", interactive=False, label=f"Sample {i}",
                                                buttons=["download"], elem_id=f"pg-ab-audio-{i}"))
                        captions.append(gr.Markdown(elem_classes="clip-caption", elem_id=f"pg-ab-caption-{i}"))
            with gr.Row():
                votes = [gr.Button(title, interactive=False, elem_id=f"pg-vote-{value or 'tie'}")
                         for title, value in VOTES]
            ab_message = gr.HTML(elem_id="pg-ab-message")
            tally = gr.HTML(elem_id="pg-tally")
            trial = gr.State(None)
            scores = scorecard_view.build_model_scorecards()
        # -- downloads ------------------------------------------------------------------------------
        with gr.Tab("Artifacts", elem_id="pg-tab-artifacts") as artifacts_tab:
            playground_artifacts.build(config, artifacts_tab, _failure)

    pickers = [listen, pick_a, pick_b]

    # -- handlers ----------------------------------------------------------------------------------
    def on_refresh(*current):
        models, adapters = pg.list_models(config), pg.list_adapters(config)
        model_paths, adapter_paths = [m.path for m in models], [a.path for a in adapters]
        model_a, model_b = _defaults(config)
        defaults = [model_a, model_a, model_b]
        updates, i = [], 0
        for picker, fallback in zip(pickers, defaults):
            value = current[i] if current[i] in model_paths else (fallback if fallback in model_paths else None)
            updates += [gr.update(choices=[(m.label, m.path) for m in models], value=value), _model_info(config, value)]
            for slot in current[i + 1:i + 1 + MAX_ADAPTERS]:
                updates.append(gr.update(choices=[("— none —", NONE)] + [(a.label, a.path) for a in adapters],
                                         value=slot if slot in adapter_paths else NONE))
            i += 1 + MAX_ADAPTERS
        return updates

    def on_references(speaker, clip):
        found = reference_clips(config, speaker)
        keep = clip if any(c["path"] == clip for c in found.clips) else None  # a reload keeps the pick
        return gr.update(choices=found.speakers, value=found.speaker), gr.update(choices=_clip_choices(found), value=keep)

    def on_selection(selection, clip):
        return on_references((selection or {}).get("speaker"), clip)

    def on_reference_clip(speaker, path):
        clip = next((c for c in reference_clips(config, speaker).clips if c["path"] == path), None)
        return (clip["path"], clip["text"]) if clip else (gr.skip(), gr.skip())

    def speak_steps(values, shared_values, file_name=None, speak=pg.speak_stream):
        """`speak`'s steps (pg.speak_stream or playground_live.live_speech) for one picker's model and the shared
        text and settings."""
        text_value, ref, ref_words, temp, p, rep, frames, seed_value = shared_values
        if seed_value is None:
            raise ValueError("Enter a seed (a whole number) or press “New seed”.")
        model, adapters = Picker.parse(values)
        return speak(
            config, cache, model, adapters, text_value, reference_audio=ref or None, reference_text=ref_words,
            temperature=float(temp), top_p=float(p), repetition_penalty=float(rep),
            max_new_tokens=int(frames), seed=int(seed_value), file_name=file_name)

    def on_generate(*values, progress=gr.Progress()):
        shared_values, picked = values[:len(shared)], values[len(shared):]
        started = time.perf_counter()
        streaming = playground_live.can_stream_audio()
        try:
            for update in speak_steps(picked, shared_values, speak=playground_live.live_speech):
                if update.path is None:
                    progress(update.fraction, desc=update.message)
                    shown = {message: note(f"Generating {update.message}", "info")}
                    if streaming and update.chunk is not None:
                        shown[live] = update.chunk  # appended to the live player's stream
                    yield shown  # Gradio stops here if the page closed
                else:
                    result, path = update.result, update.path
        except Exception as exc:  # noqa: BLE001 - shown to the user, never as a traceback
            gr.Warning(_failure(exc))
            # the previous audio would read as this request's result: take it away with the error
            yield {audio: None, download: gr.update(value=None, visible=False), message: note(_failure(exc), "error")}
            return
        voice = " with the reference clip as voice prompt" if values[1] else ""
        done = (f"{result.seconds:.1f} s of speech · {result.frames} frames · generated in "
                f"{time.perf_counter() - started:.1f} s{voice}")
        for warning in result.notes:
            gr.Warning(warning)
        yield {audio: str(path), download: gr.update(value=str(path), visible=True),
               message: note(done, "ok") + "".join(note(f"⚠ {w}", "info") for w in result.notes)}

    def tally_html(current: dict) -> str:
        counts = pg.preference_tally(config, current)
        cards = [(f"A · {current['models']['A']['name']}", counts[current["models"]["A"]["id"]]),
                 (f"B · {current['models']['B']['name']}", counts[current["models"]["B"]["id"]]),
                 ("No preference", counts["tie"])]
        body = "".join(f"<div class='stat-card'><div class='value'>{n}</div><div class='label'>{esc(label)}</div></div>"
                       for label, n in cards)
        return f"<div class='section-hint'>Votes for this pair so far ({counts['total']}):</div><div class='stat-cards'>{body}</div>"

    def captions_for(current: dict, reveal: bool) -> list[str]:
        if not reveal:
            return ["*Hidden until you vote.*"] * 2
        return [f"**{side}** — {esc(current['models'][side]['label'])}" for side in current["order"]]

    def on_compare(*values, progress=gr.Progress()):
        n, k = len(shared), len(listen.inputs)
        shared_values, blind_value = values[:n], values[n]
        a_values, b_values = values[n + 1:n + 1 + k], values[n + 1 + k:]
        try:
            pg.check_text(shared_values[0])
            if shared_values[-1] is None:
                raise ValueError("Enter a seed (a whole number) or press “New seed”.")
            sides = {}
            for side, picked in (("A", a_values), ("B", b_values)):
                model, adapters = Picker.parse(picked)
                sides[side] = pg.model_identity(config, pg.resolve_model(config, model),
                                                pg.resolve_adapters(config, adapters))
            current = pg.new_trial(shared_values[0], int(shared_values[-1]), sides["A"], sides["B"], bool(blind_value))
            paths, notes = {}, []
            for done, side in enumerate(("A", "B")):
                # neutral file names: a blind test must not show the model in a download's name
                for step, path in speak_steps(a_values if side == "A" else b_values, shared_values, "sample"):
                    if path is None:
                        progress((done + step.index / step.total) / 2, desc=f"model {side}: {step.message}")
                        yield {ab_message: note(f"Generating model {side}: {step.message}", "info")}
                    else:
                        paths[side], notes = path, step.result.notes
        except Exception as exc:  # noqa: BLE001
            gr.Warning(_failure(exc))
            # an earlier pair beside this error would read as its result: clear the players and the vote
            yield {ab_message: note(_failure(exc), "error"), players[0]: None, players[1]: None,
                   captions[0]: "", captions[1]: "", trial: None,
                   **{button: gr.update(interactive=False) for button in votes}}
            return
        first_caption, second_caption = captions_for(current, not current["blind"])
        hint = ("Listen to both, then vote: the models are revealed after your vote." if current["blind"]
                else "Vote for the better sample; votes are recorded with the models' runs.")
        yield {players[0]: str(paths[current["order"][0]]), players[1]: str(paths[current["order"][1]]),
               captions[0]: first_caption, captions[1]: second_caption, trial: current,
               ab_message: note(hint, "info") + "".join(note(f"⚠ {w}", "info") for w in notes),
               tally: tally_html(current), **{button: gr.update(interactive=True) for button in votes}}

    def on_vote(current, sample):
        if not current:
            return {ab_message: note("Generate a pair first.", "error")}
        try:
            record = pg.record_preference(config, current, sample)
        except Exception as exc:  # noqa: BLE001
            return {ab_message: note(_failure(exc), "error")}
        picked = ("no preference" if record["choice"] == "tie"
                  else f"sample {sample} = model {record['choice']} ({current['models'][record['choice']]['name']})")
        first_caption, second_caption = captions_for(current, True)
        return {ab_message: note(f"Recorded: {picked}.", "ok"), tally: tally_html(current), trial: current,
                captions[0]: first_caption, captions[1]: second_caption,
                **{button: gr.update(interactive=False) for button in votes}}

    def on_tiny_model(*current):
        try:
            pg.create_tiny_model()
        except Exception as exc:  # noqa: BLE001
            gr.Warning(_failure(exc))
        return [*on_refresh(*current), gr.update(visible=not pg.list_models(config))]

    # -- wiring --------------------------------------------------------------------------------------
    picker_inputs = [c for p in pickers for c in [p.model, *p.adapters]]
    picker_outputs = [c for p in pickers for c in [p.model, p.info, *p.adapters]]
    refresh.click(on_refresh, inputs=picker_inputs, outputs=picker_outputs, api_name="refresh_models")
    tiny.click(on_tiny_model, inputs=picker_inputs, outputs=[*picker_outputs, tiny], api_name="tiny_model",
               show_progress_on=[tiny])
    ctx.demo.load(on_refresh, inputs=picker_inputs, outputs=picker_outputs, api_visibility="private")
    ctx.demo.load(warm.describe, outputs=[warm_note], api_visibility="private")
    for picker in pickers:
        picker.model.input(lambda path: _model_info(config, path), inputs=picker.model, outputs=picker.info,
                           api_visibility="private", queue=False)
    text.change(_spoken, inputs=text, outputs=normalized, api_name="normalize_text", trigger_mode="always_last",
                queue=False, show_progress="hidden")
    dice.click(lambda: random.randrange(1 << 31), outputs=seed, api_visibility="private", queue=False)
    ref_speaker.input(on_references, inputs=[ref_speaker, ref_clip], outputs=[ref_speaker, ref_clip],
                      api_name="reference_clips")
    gr.on([ctx.demo.load, ctx.selection.change], on_selection, inputs=[ctx.selection, ref_clip],
          outputs=[ref_speaker, ref_clip],
          api_visibility="private")
    ref_audio.upload(lambda: (None, ""), outputs=[ref_clip, ref_text], api_visibility="private", queue=False)
    ref_clip.input(on_reference_clip, inputs=[ref_speaker, ref_clip], outputs=[ref_audio, ref_text],
                   api_name="reference_clip")
    generate.click(on_generate, inputs=[*shared, *listen.inputs], outputs=[audio, download, message, live],
                   api_name="speak", show_progress_on=[audio])
    compare.click(on_compare, inputs=[*shared, blind, *pick_a.inputs, *pick_b.inputs],
                  outputs=[*players, *captions, trial, ab_message, tally, *votes], api_name="compare",
                  show_progress_on=players)
    voted = [button.click(lambda current, value=value: on_vote(current, value), inputs=trial,
                          outputs=[ab_message, tally, trial, *captions, *votes], api_name=f"vote_{value or 'tie'}")
             for button, (_, value) in zip(votes, VOTES)]
    scorecard_view.wire_model_scorecards(scores, config, [ctx.demo.load, ab_tab.select], after=voted)


def _spoken(text: str | None) -> str:
    """The normalized text as the model will read it, collapsed to a preview; the length limit and
    what normalization removed or cannot read, as warnings."""
    if not (text or "").strip():
        return ""
    report = normalize_report(text)
    warnings = list(report.notes())
    if len(text) > pg.MAX_TEXT_CHARS:
        warnings.insert(0, f"{len(text):,} characters: at most {pg.MAX_TEXT_CHARS:,} are spoken at a time.")
    elif report.removed and not report.speakable:
        warnings.insert(0, "Nothing to say: write a sentence in Finnish.")
    spoken = report.text
    preview = spoken if len(spoken) <= SPOKEN_PREVIEW else spoken[:SPOKEN_PREVIEW].rsplit(" ", 1)[0] + " …"
    body = (f"<details><summary><b>Spoken as:</b> {esc(preview)} <i>({len(spoken):,} characters)</i></summary>"
            f"<div>{esc(spoken)}</div></details>" if spoken != preview else f"<b>Spoken as:</b> {esc(spoken)}")
    return body + "".join(f"<div class='pg-text-warning' style='color:#92400e'>⚠ {esc(w)}</div>" for w in warnings)


def _clip_choices(refs: ReferenceClips) -> list[tuple[str, str]]:
    return [(f"{c['id']} · {c['duration_s']:.1f} s · {c['text'][:50]}", c["path"]) for c in refs.clips]
