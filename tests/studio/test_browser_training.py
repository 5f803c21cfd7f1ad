"""The Modes & cost and Training tabs in headless Chromium against a real `python -m studio`.

The workspace holds the bundled sample (40 clips, already encoded with the tiny checkpoint) and a
selection that points the base model at the tiny checkpoint. The test reads the estimate, changes
settings in the UI, starts a short run, watches the curves grow between timer ticks, reloads the
page mid-run (the tab re-attaches), and waits for the result's audio. Screenshots go to the test's
tmp folder; with UPDATE_SCREENSHOTS=1 also to docs/screenshots/modes.png and training.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.estimate.cost import load_price_table
from run_fixtures import fresh_workspace
from studio.logic.modes_estimate import machine_has_gpu
from studio_server import CHROMIUM, PROJECT_ROOT, start_studio

SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
POINTS_JS = """() => {
    const plot = document.querySelector('#training-curves .js-plotly-plot');
    return plot && plot.data && plot.data.length ? plot.data[0].x.length : 0;
}"""

QUALITY_TITLE_JS = """() => {
    const plot = document.querySelector('#quality-curves .js-plotly-plot');
    return plot && plot.layout && plot.layout.title ? plot.layout.title.text : '';
}"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    workspace = fresh_workspace(tmp_path_factory, tiny_checkpoint, tmp_path_factory.mktemp("browser") / "ws")
    # what the Dataset tab leaves behind, plus the tiny model instead of the real base model
    (workspace / "selection.json").write_text(json.dumps(
        {"dataset_id": "sample", "base_model.local_dir": str(tiny_checkpoint)}))
    studio = start_studio(workspace)
    yield studio
    studio.stop()



def _save(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / f"{name}.png")
    return path


def _set_number(page, elem_id: str, value: str) -> None:
    field = page.locator(f"#{elem_id} input")
    field.fill(value)
    field.blur()


def test_estimate_settings_and_a_short_run(server, page, tmp_path):
    page.goto(server.url)
    page.get_by_role("tab", name="Modes & cost").click()
    page.locator("#chart-cost svg.main-svg").first.wait_for()
    # every GPU × mode, and a row per mode for this machine's CPU when it has no GPU
    expected_rows = 2 * len(load_price_table()["gpus"]) + (0 if machine_has_gpu() else 2)
    page.wait_for_function(f"() => document.querySelectorAll('#estimate-table .virtual-row').length "
                           f"== {expected_rows}")
    rows = page.locator("#estimate-table .virtual-row").all_inner_texts()
    assert any("★ A100-80GB" in row for row in rows)
    assert machine_has_gpu() or any("CPU: no charge" in row for row in rows)
    headline = page.locator("#estimate-headline").inner_text()
    assert "A100-80GB" in headline and "$1.32/h" in headline and "Quick LoRA: ≈" in headline
    assert "scaled from" in headline and "reference project's quote" in headline   # no A100 bench: scaled
    assert "sample" in page.locator("#estimate-message").inner_text()
    page.locator("#chart-cost").scroll_into_view_if_needed()
    _save(page, tmp_path, "modes")

    # Settings typed in the tab are saved for the Training tab and the estimate follows them.
    _set_number(page, "quick-steps", "40")
    page.locator("#settings-message").get_by_text("Saved").wait_for()
    _set_number(page, "batch-size", "2")
    # the estimate follows: its workload counts the tokens of a step of 2 sequences
    training = load_config().training
    step_tokens = f"{2 * training.grad_accumulation * training.max_length:,}"
    page.wait_for_function(f"() => document.querySelector('#estimate-workload').innerText.includes('{step_tokens}')")
    assert "Quick LoRA: ≈" in page.locator("#estimate-headline").inner_text()
    selection = json.loads((server.workspace / "selection.json").read_text())
    assert selection["training.quick_lora.steps"] == 40 and selection["training.batch_size"] == 2
    # test-only: shorter sequences and frequent evaluation, which the tab does not expose
    selection.update({"training.max_length": 512, "training.val_every": 5, "training.save_every": 1000,
                      "training.warmup_steps": 1,
                      # a short scorecard, without the ASR download a test must not make
                      "evaluation.asr_model": None, "evaluation.sentences": 2, "evaluation.max_new_tokens": 16,
                      "evaluation.references": 2})
    (server.workspace / "selection.json").write_text(json.dumps(selection))

    page.get_by_role("tab", name="Training").click()
    page.locator("#refresh-runs").click()
    page.locator("#training-plan").get_by_text("40 steps").wait_for()
    assert "random weights" in page.locator("#training-plan").inner_text()
    # the GPUs this machine has (the count choice appears only with two or more)
    gpu_line = page.locator("#gpus-found").inner_text()
    assert gpu_line.startswith("GPUs found: ") if machine_has_gpu() else gpu_line.startswith("no GPU: training runs on the CPU")
    # no finished full fine-tune yet: the speaker-run picker says where a language-adapted model comes from
    assert "None yet" in page.locator("#language-model").inner_text()
    assert page.locator("#start-training").inner_text().strip() == "Start training"
    page.locator("#start-training").click()
    page.locator("#training-message .note.ok").wait_for()
    run_id = re.search(r"Started run (\S+) ", page.locator("#training-message").inner_text()).group(1)
    # the Run panel follows the new run at once, with Cancel usable
    page.wait_for_function(f"() => document.querySelector('#run-choice input').value.includes('{run_id}')",
                           timeout=10_000)
    page.wait_for_function("() => !document.querySelector('#cancel-training').disabled", timeout=10_000)

    # A second start while it runs is refused with a message, not a traceback.
    page.locator("#start-training").click()
    refusal = page.locator("#training-message .note.error")
    refusal.wait_for()
    assert "already running" in refusal.inner_text() and run_id in refusal.inner_text()

    # The curves grow between timer ticks.
    page.wait_for_function(f"() => ({POINTS_JS})() >= 2", timeout=180_000)
    first = page.evaluate(POINTS_JS)
    page.wait_for_function(f"() => ({POINTS_JS})() > {first}", timeout=60_000)
    assert re.search(r"\d+ / 40", page.locator("#run-progress").inner_text())
    assert "Unexpected error" not in page.locator("#run-progress").inner_text()
    # the log: progress as lines, each warning once
    log_lines = page.locator("#run-log textarea").input_value().splitlines()
    warnings = [line for line in log_lines if "Warning:" in line]
    assert len(warnings) == len(set(warnings)) and not any("%|" in line for line in log_lines)

    # A reload re-attaches to the running job.
    page.reload()
    page.get_by_role("tab", name="Training").click()
    page.wait_for_function(f"() => ({POINTS_JS})() > 0", timeout=60_000)
    assert run_id in page.locator("#run-choice input").input_value()
    assert run_id in page.locator("#run-progress").inner_text()
    assert page.locator("#cancel-training").is_enabled() and page.locator("#resume-training").is_disabled()

    # The run finishes: estimate vs actual, outputs and the evaluation audio appear.
    page.locator("#run-progress .badge.finished").wait_for(timeout=300_000)
    page.locator("#eval-audio-0 [data-testid='waveform-controls']").wait_for()
    assert page.evaluate(POINTS_JS) == 40
    comparison = page.locator("#run-comparison").inner_text()
    assert "Estimate (A100-80GB)" in comparison and "This run" in comparison
    assert "adapter.zip" in re.sub(r"\s", "", page.locator("#adapter-zip").inner_text())
    assert "40 / 40" in page.locator("#run-progress").inner_text()
    page.wait_for_function("() => document.querySelector('#cancel-training').disabled")
    assert page.evaluate(QUALITY_TITLE_JS).startswith("Voice quality during training")
    page.locator("#run-progress").scroll_into_view_if_needed()
    _save(page, tmp_path, "training")

    # The scorecard: the run's merged model beside the base model's baseline (tiny: random weights).
    page.locator("#score-run").click()
    page.locator("#scorecard-message .note.ok").get_by_text("Scored:").wait_for(timeout=300_000)
    table = page.locator("#scorecard-table").inner_text()
    assert "base" in table and "quick_lora merged" in table and "random weights: produces noise" in table
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", table)  # means with their intervals
    assert page.locator("#scorecard-model input").input_value() == "quick_lora merged"  # the run's own model
    page.locator("#scorecard-audio-0 [data-testid='waveform-controls']").wait_for()
    assert "DNSMOS OVRL" in page.locator("#scorecard-sentences").inner_text()
    assert "Traceback" not in page.content()
    assert not page.errors, page.errors
    page.locator("#run-scorecard").scroll_into_view_if_needed()
    _save(page, tmp_path, "training-scorecard")
