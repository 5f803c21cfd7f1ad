"""The Playground tab in headless Chromium against a real `python -m studio`.

The server runs with a config whose base model is the tiny random checkpoint, over a workspace
holding one finished run (adapter checkpoint, merged model, adapter zip, evaluation audio) made
by really merging, and a small dataset with a picked speaker. Speech from a stacked adapter with
a dataset clip as voice prompt and from the merged model, a blind A/B vote, and the artifacts'
downloads. "Generate" streams into the live player while it samples (when ffmpeg is on the PATH,
which gradio's streamed audio needs; else that player is hidden). Screenshots go to the test's tmp folder; with
UPDATE_SCREENSHOTS=1 the Listen view is also copied to docs/screenshots/playground.png.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from audio_fixtures import write_clip
from pipeline.config import Config
from pipeline.data.dataset import load_dataset
from pipeline.data.selection import save_selection
from pipeline.data.source_spec import SourceSpec
from pipeline.quality.overview import baseline_dir
from studio.logic.playground_live import can_stream_audio
from studio_server import CHROMIUM, PROJECT_ROOT, start_studio
from test_playground import RUN, make_runs
from test_scorecards import write_scorecard

SCREENSHOT = PROJECT_ROOT / "docs" / "screenshots" / "playground.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-pg")
    workspace = root / "workspace"
    make_runs(workspace, tiny_checkpoint)
    for speaker, count in {"anna": 2, "bert": 2}.items():  # a dataset whose picked speaker gives voice prompts
        for i in range(count):
            write_clip(root / "voices", speaker, f"{speaker}{i}", f"{speaker.title()} sanoo {i + 1}. lauseen.",
                       seed=i + (10 if speaker == "bert" else 0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STUDIO_WORKSPACE", str(workspace))
        config = Config()
        dataset = load_dataset(SourceSpec("folder", path=str(root / "voices")), config)
        save_selection(config, dataset_id=dataset.id, speaker="bert")
        # scorecards as `evaluate` leaves them: the base model's baseline and the run's merged model
        write_scorecard(baseline_dir(config), tiny_checkpoint, [0.9, 1.0, 0.95], [0.1, 0.2, 0.15], [1.3, 1.4, 1.2],
                        random_weights=True)
        write_scorecard(workspace / "runs" / RUN / "eval" / "merged", workspace / "runs" / RUN / "artifacts" / "merged",
                        [0.5, 0.6, 0.4], [0.4, 0.5, 0.45], [2.0, 2.2, 2.1], random_weights=True)
    config_path = root / "launchable.yaml"
    config_path.write_text(yaml.safe_dump({"base_model": {"local_dir": str(tiny_checkpoint)},
                                           "studio": {"workspace": str(workspace)}}))
    studio = start_studio(workspace, config_path=config_path)
    yield studio
    studio.stop()



def open_playground(page, server) -> None:
    page.goto(server.url)
    page.get_by_role("tab", name="Playground").click()
    page.locator("#pg-model").wait_for()
    max_len = page.locator("#pg-max-tokens input[type='number']")
    max_len.fill("16")
    max_len.press("Enter")


def choose(page, elem_id: str, text: str) -> None:
    """Pick the option containing `text` in a gradio dropdown."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option").filter(has_text=text).first.click()


AUDIO_LINK = "a[data-testid='download-link']"  # gradio 6's player: wavesurfer, plus this link to the file


def audio_src(page, elem_id: str) -> str | None:
    return page.locator(f"#{elem_id} {AUDIO_LINK}").first.get_attribute("href")


def wait_for_new_audio(page, elem_id: str, previous: str | None) -> str:
    """The player's file URL once it differs from `previous` (a new generation arrived)."""
    page.wait_for_function(
        """([id, link, previous]) => { const a = document.querySelector(`#${id} ${link}`);
            return a && a.getAttribute('href') && a.getAttribute('href') !== previous; }""",
        arg=[elem_id, AUDIO_LINK, previous or ""], timeout=120_000)
    page.locator(f"#{elem_id} [data-testid='waveform-controls']").wait_for()  # the player is ready
    return audio_src(page, elem_id)


def wav_ok(page, src: str) -> bool:
    response = page.request.get(src)
    return response.ok and response.body()[:4] == b"RIFF"


def test_playground_speaks_with_adapter_and_merged_model(server, page, tmp_path):
    open_playground(page, server)
    assert "random weights: produces noise" in page.locator("#pg-model input").input_value()
    assert "noise" in page.locator("#pg-info").inner_text()
    assert page.locator("#pg-normalized").inner_text().startswith("Spoken as:")

    # a clip of the picked speaker as voice prompt: its transcript comes from the manifest
    page.locator("#pg-reference").click()
    assert page.locator("#pg-ref-speaker input").input_value() == "bert"
    choose(page, "pg-ref-clip", "bert/")
    page.wait_for_function("() => document.querySelector('#pg-ref-text textarea').value.startsWith('Bert sanoo')")

    # base + stacked adapter
    choose(page, "pg-adapter-0", "· final")
    page.locator("#pg-generate").click()
    first = wait_for_new_audio(page, "pg-audio", None)
    assert wav_ok(page, first)
    if can_stream_audio():  # the same speech was played while it was sampled
        page.locator("#pg-live audio").first.wait_for(state="attached")
    else:
        assert not page.locator("#pg-live").is_visible()
    assert "base__20250101-120000-quick-lora-lora-step-4" in first  # the file names the stacked adapter
    page.locator("#pg-message .note.ok").get_by_text("reference clip as voice prompt").wait_for()
    listen_shot = tmp_path / "playground-listen.png"
    page.screenshot(path=str(listen_shot), full_page=True)

    # the merged model, no adapter
    choose(page, "pg-model", f"Run {RUN} · merged")
    choose(page, "pg-adapter-0", "none")
    page.locator("#pg-generate").click()
    second = wait_for_new_audio(page, "pg-audio", first)
    assert wav_ok(page, second)
    assert page.locator("#pg-download").is_visible()

    # bad input: a readable message, never a traceback
    page.locator("#pg-text textarea").fill("   ")
    page.locator("#pg-generate").click()
    page.locator("#pg-message .note.error").get_by_text("no text to speak").wait_for()
    assert "Traceback" not in page.content()
    # the earlier speech and its download go with the error: they are not this request's result
    assert page.locator(f"#pg-audio {AUDIO_LINK}").count() == 0
    assert not page.locator("#pg-download").is_visible()

    page.locator("#pg-text textarea").fill("😀🎉")
    page.locator("#pg-normalized").get_by_text("Nothing to say").wait_for()
    page.locator("#pg-generate").click()
    page.locator("#pg-message .note.error").get_by_text("Nothing to say").wait_for()

    # long text: the spoken form is collapsed, the limit is named before and on generating
    page.locator("#pg-text textarea").fill("Tämä on pitkä lause. " * 60)
    page.locator("#pg-normalized details").wait_for()
    assert "at most 1,000" in page.locator("#pg-normalized").inner_text()
    assert not page.locator("#pg-normalized details > div").is_visible()
    page.locator("#pg-generate").click()
    page.locator("#pg-message .note.error").get_by_text("at most 1,000").wait_for()
    assert not page.errors, page.errors

    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(listen_shot, SCREENSHOT)


def test_blind_ab_shows_two_players_and_records_the_vote(server, page, tmp_path):
    open_playground(page, server)
    page.get_by_role("tab", name="A/B compare").click()
    choose(page, "pg-b-model", f"Run {RUN} · merged")
    assert page.locator("#pg-blind input").is_checked()
    # every model's scorecard beside the comparison (tiny models: random weights), no vote counted yet
    page.wait_for_function("(text) => document.querySelector('#pg-scorecard-table').innerText.includes(text)",
                           arg=f"quick_lora ({RUN})")
    scores = page.locator("#pg-scorecard-table").inner_text()
    assert "base" in scores and "random weights: produces noise" in scores
    assert "no votes with scorecards yet" in page.locator("#pg-agreement").inner_text()
    page.locator("#pg-compare").click()
    srcs = [wait_for_new_audio(page, f"pg-ab-audio-{i}", None) for i in (1, 2)]
    assert all(wav_ok(page, src) for src in srcs)
    assert not any(RUN in src or "base" in src for src in srcs)  # file names do not give the models away
    assert page.locator("#pg-ab-caption-1").inner_text().startswith("Hidden")

    page.locator("#pg-vote-1").click()
    page.locator("#pg-ab-message .note.ok").get_by_text("Recorded: sample 1").wait_for()
    captions = [page.locator(f"#pg-ab-caption-{i}").inner_text() for i in (1, 2)]
    assert {c.split(" — ")[0].strip() for c in captions} == {"A", "B"}
    assert page.locator("#pg-vote-2").is_disabled()
    assert "1" in page.locator("#pg-tally").inner_text()
    # the vote just recorded beside the measured scores: ears agree with the metrics or not
    page.locator("#pg-agreement").get_by_text("1 vote, agreement").wait_for()
    page.screenshot(path=str(tmp_path / "playground-ab.png"), full_page=True)

    lines = (server.workspace / "runs" / RUN / "preferences.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    assert record["blind"] and record["model_b"] == f"runs/{RUN}/artifacts/merged"
    assert record["choice"] == record["order"][0]  # sample 1 was the model played first
    assert not page.errors, page.errors


def test_artifacts_list_downloads_and_disk_usage(server, page, tmp_path):
    open_playground(page, server)
    page.get_by_role("tab", name="Artifacts").click()
    page.locator("#pg-runs").get_by_text(RUN).first.wait_for()
    assert "Disk used by runs".upper() in page.locator("#pg-usage").inner_text().upper()
    page.locator("#pg-run input").wait_for()
    assert page.locator("#pg-run input").input_value() == RUN  # the newest run that has files
    merged_link = page.locator("#pg-merged-files a[href*='merged/model.pth']")
    merged_link.wait_for()
    assert page.request.get(merged_link.get_attribute("href")).ok
    page.locator("#pg-audio-files a[href*='example_1.wav']").wait_for()
    with page.expect_download() as download:
        page.locator("#pg-adapter-zip").click()
    assert Path(download.value.path()).read_bytes()[:2] == b"PK" and download.value.suggested_filename == "adapter.zip"
    with zipfile.ZipFile(download.value.path()) as zf:  # a real model card, not peft's template
        assert "CC-BY-NC-SA-4.0" in zf.read("README.md").decode()

    # the merged model as one zip, made on request
    page.locator("#pg-zip-merged").click()
    page.locator("#pg-merged-zip").wait_for()
    with page.expect_download() as download:
        page.locator("#pg-merged-zip").click()
    assert download.value.suggested_filename == f"{RUN}-merged.zip"
    with zipfile.ZipFile(download.value.path()) as zf:
        assert {f"{RUN}-merged/model.pth", f"{RUN}-merged/README.md"} <= set(zf.namelist())
        assert "CC-BY-NC-SA-4.0" in zf.read(f"{RUN}-merged/README.md").decode()
    page.screenshot(path=str(tmp_path / "playground-artifacts.png"), full_page=True)
    assert not page.errors, page.errors
