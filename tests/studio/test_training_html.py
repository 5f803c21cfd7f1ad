"""The Training tab's run card: what it tells a person to do after a failed run."""

from pipeline.train.cpu_memory import cpu_oom_message
from studio.logic.runs_view import run_progress
from studio.logic.training_html import progress_html


def _card(tmp_path, error: str) -> str:
    run = {"id": "r1", "status": "failed", "mode": "quick_lora", "error": error}
    return progress_html(run_progress(tmp_path / "r1", run))


def test_an_out_of_memory_run_is_sent_to_a_new_run_not_to_resume(tmp_path):
    """A resume keeps the run's settings, which ran out of memory: the card must not offer it."""
    out_of_memory = _card(tmp_path, cpu_oom_message(batch_size=8, max_length=4096, step=3))
    assert "start a new run" in out_of_memory and "Resume to continue" not in out_of_memory
    assert "Resume to continue" in _card(tmp_path, "OSError: No space left on device")
