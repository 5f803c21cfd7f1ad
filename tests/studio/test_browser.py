"""The Dataset tab in headless Chromium against a real `python -m studio`.

Loads the bundled sample, waits for the charts and the gallery's players, picks a speaker,
checks the confirmation and that a reload keeps the state. Screenshots go to the test's tmp
folder; with UPDATE_SCREENSHOTS=1 the overview is also copied to docs/screenshots/dataset.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from studio_server import CHROMIUM, PROJECT_ROOT, start_studio

SCREENSHOT = PROJECT_ROOT / "docs" / "screenshots" / "dataset.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    studio = start_studio(tmp_path_factory.mktemp("browser-ws"))
    yield studio
    studio.stop()



def _player_labels(page) -> list[str]:
    return [page.locator(f"#gallery-audio-{i} label[data-testid='block-label']").inner_text().strip()
            for i in range(3)]


def _wait_for_gallery(page, speaker: str) -> None:
    """Three players whose labels name clips of `speaker` (labels: '<clip id> · <seconds> s')."""
    for i in range(3):
        page.locator(f"#gallery-audio-{i} [data-testid='waveform-controls']").wait_for()
    page.wait_for_function(
        """(speaker) => [0, 1, 2].every(i => {
            const label = document.querySelector(`#gallery-audio-${i} label[data-testid='block-label']`);
            return label && label.textContent.includes(speaker) && label.textContent.includes(' s');
        })""", arg=speaker)


def _choose_other_speaker(page, recommended: str) -> str:
    """Open the speaker dropdown, choose one that is not `recommended`; returns its name."""
    page.locator("#speaker-choice input").click()
    options = page.get_by_role("option")
    labels = [text.replace("✓", "").strip() for text in options.all_inner_texts()]  # ✓ marks the current
    assert len(labels) >= 2 and any(label.startswith(recommended) for label in labels), labels
    other = next(label for label in labels if not label.startswith(recommended))
    other_name = other.split(" · ")[0].strip()
    options.filter(has_text=other).first.click()
    _wait_for_gallery(page, other_name)
    return other_name


def _load_and_wait(page, dataset_id: str) -> None:
    page.locator("#load-dataset").click()
    page.locator("#dataset-message").get_by_text(re.compile(f"into dataset .{re.escape(dataset_id)}.")).wait_for(
        timeout=120_000)


def _settle(page, server) -> None:
    if (server.workspace / "selection.json").exists():
        # The page first re-opens the saved dataset (resetting the form); let that finish.
        page.locator("#dataset-message").get_by_text("Re-opened").wait_for()


def _save(page, tmp_path: Path, name: str) -> Path:
    page.mouse.move(0, 0)  # no hover toolbars or tooltips in the picture
    page.wait_for_timeout(300)
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_dataset_tab_loads_the_sample_and_picks_a_voice(server, page, tmp_path):
    page.goto(server.url)
    page.locator("#source-kind input[value='sample']").check()
    page.locator("#load-dataset").click()

    # Charts (plotly draws SVG) and the summary cards.
    for chart in ("chart-speakers", "chart-durations", "chart-snr", "chart-reasons"):
        page.locator(f"#{chart} svg.main-svg").first.wait_for(timeout=120_000)
    summary = page.locator("#dataset-summary").inner_text()
    assert re.search(r"\d+\s*CLIPS", summary, re.I) and "USABLE MINUTES" in summary.upper()
    assert "sample" in page.locator("#dataset-message").inner_text()

    # The recommendation prefills the speaker control, and its clips are playable.
    recommendation = page.locator("#recommendation").inner_text()
    recommended = re.search(r"Recommended speaker: (.+?)\.", recommendation).group(1)
    assert page.locator("#speaker-choice input").input_value().startswith(recommended)
    _wait_for_gallery(page, recommended)
    href = page.locator("#gallery-audio-0 a[data-testid='download-link']").get_attribute("href")
    audio = page.request.get(href)
    assert audio.ok and audio.body()[:4] in (b"RIFF", b"fLaC", b"OggS")
    overview = _save(page, tmp_path, "dataset-loaded")

    # Pick another speaker by ear: open the dropdown and choose a different option.
    other_name = _choose_other_speaker(page, recommended)
    page.locator("#reshuffle").click()
    page.wait_for_timeout(1500)
    assert all(other_name in label for label in _player_labels(page))

    page.locator("#use-speaker").click()
    confirmation = page.locator("#speaker-confirmation")
    confirmation.get_by_text(f"Saved: {other_name}").wait_for()
    _save(page, tmp_path, "speaker-picked")

    # A reload re-opens the dataset and keeps the pick.
    page.reload()
    page.locator("#chart-speakers svg.main-svg").first.wait_for(timeout=60_000)
    page.locator("#speaker-confirmation").get_by_text(f"Current pick: {other_name}").wait_for()
    assert page.locator("#speaker-choice input").input_value().startswith(other_name)
    _wait_for_gallery(page, other_name)

    # The clip table filters by status.
    # The clip table filters: accepted clips whose text, id or reason holds a word of the first clip.
    first_text = page.locator("#clip-table [data-testid='cell-0-2']").first.inner_text()
    word = max(re.findall(r"\w+", first_text), key=len).lower()
    page.locator("#filter-status input[value='ok']").check()
    page.locator("#filter-text textarea, #filter-text input").first.fill(word)
    page.locator("#filter-text textarea, #filter-text input").first.press("Enter")
    page.wait_for_function("""(word) => {
        const rows = [...document.querySelectorAll("#clip-table [data-testid^='cell-'][data-testid$='-7']")]
            .map(cell => cell.closest("[role='row'], tr"));
        return rows.length > 0 && rows.every(row => row.textContent.toLowerCase().includes(word)
            && row.textContent.includes("ok"));
    }""", arg=word)
    assert not page.errors, page.errors

    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(overview, SCREENSHOT)


def test_dataset_tab_keeps_each_datasets_pick_and_opens_prepared_datasets(server, page, tmp_path):
    from audio_fixtures import write_clip

    second = tmp_path / "second"
    for s, speaker in enumerate(("toinen", "kolmas")):
        for i in range(2):
            write_clip(second, speaker, f"{speaker}{i}", f"Tämä on lause {i}.", seed=10 * s + i)
    page.goto(server.url)
    _settle(page, server)
    page.locator("#source-kind input[value='sample']").check()
    _load_and_wait(page, "sample")
    assert "rank by clips" in page.locator("#speaker-ranking").inner_text()
    recommended = re.search(r"Recommended speaker: (.+?)\.", page.locator("#recommendation").inner_text()).group(1)
    picked = _choose_other_speaker(page, recommended)
    page.locator("#use-speaker").click()
    # as long as the other server waits here: on a loaded machine the load's follow-up events
    # (estimate, training plan, Playground) can still be queued ahead of the save, and the choice's
    # own event can run after it, saying "Current pick" for the same, saved voice
    page.locator("#speaker-confirmation").get_by_text(
        re.compile(rf"(Saved|Current pick): {re.escape(picked)}\b")).wait_for(timeout=120_000)
    assert json.loads((server.workspace / "selection.json").read_text())["speakers"]["sample"] == picked

    # Another dataset has no pick of its own...
    page.locator("#source-kind input[value='folder']").check()
    assert "parquet" in page.locator("#source-folder").inner_text()
    page.locator("#source-folder textarea, #source-folder input").first.fill(str(second))
    page.locator("#load-dataset").click()
    page.locator("#dataset-message").get_by_text("into dataset “folder-second").wait_for(timeout=120_000)
    page.locator("#speaker-confirmation").get_by_text("No speaker picked yet").wait_for()

    # ...and the sample, opened again from the picker of prepared datasets, still has its pick.
    page.locator("#source-kind input[value='prepared']").check()
    page.locator("#prepared-dataset input").wait_for()
    page.wait_for_timeout(1000)  # the list is refreshed when the source changes; let that land
    page.locator("#prepared-dataset input").click()
    options = page.get_by_role("option")
    options.first.wait_for()
    texts = [text.replace("✓", "").strip() for text in options.all_inner_texts()]
    assert any(text.startswith("sample · ") for text in texts), texts
    options.filter(has_text="sample · ").first.click()
    _load_and_wait(page, "sample")
    page.locator("#speaker-confirmation").get_by_text(f"Current pick: {picked}").wait_for()
    assert page.locator("#speaker-choice input").input_value().startswith(picked)
    assert page.locator("#source-kind input[value='prepared']").is_checked()
    assert not page.errors, page.errors


def test_dataset_tab_shows_a_bad_folder_as_a_message(server, page):
    page.goto(server.url)
    _settle(page, server)
    page.locator("#source-kind input[value='folder']").check()
    page.locator("#source-folder textarea, #source-folder input").first.fill("/no/such/folder")
    page.locator("#load-dataset").click()
    message = page.locator("#dataset-message .note.error")
    message.wait_for()
    assert "/no/such/folder" in message.inner_text()
    assert "Traceback" not in page.content()
