"""The README's two commands for a fresh machine, and the set-up script behind them."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_exactly_two_commands_and_ci_runs_the_test_one():
    studio, tests = readme_commands()
    assert studio == "bash setup.sh && .venv/bin/python -m studio"
    assert tests.startswith("bash setup.sh") and "--tests" in tests and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, ".ci/run must run the README's test command verbatim"


def test_setup_script_flags():
    assert subprocess.run(["bash", "setup.sh", "--help"], cwd=ROOT, capture_output=True).returncode == 0
    bad = subprocess.run(["bash", "setup.sh", "--turbo"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--turbo" in bad.stderr


@pytest.mark.slow
def test_setup_is_idempotent_offline():
    """A second run on a set-up machine succeeds without the Hub and changes nothing it needs."""
    out = subprocess.run(["bash", "setup.sh", "--offline"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "offline: skipping Hugging Face downloads" in out.stdout
    assert subprocess.run([str(ROOT / ".venv/bin/python"), "-c", "import fish_speech, gradio, peft, pipeline, studio"],
                          cwd=ROOT).returncode == 0
