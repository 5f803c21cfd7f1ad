"""`python -m pipeline doctor`: proves that this machine and a checkpoint match what the code assumes.

Every check is one row (`Row`: name, ✓ / ⚠ / ✗, detail, one line of advice) in four groups:
the machine (`machine.py`), the Hugging Face Hub (`hub.py`), the checkpoint's files, shape,
weights, tokenizer and codec config (`checkpoint.py`), and the loaded model (`model_checks.py`:
training forward == generation, fast decoder == fish-speech, codec round trip, one spoken
sentence, a 20-step LoRA smoke run). `checks.run_checks` runs them in order; `report.py` writes the
JSON report (cached per model fingerprint) and the table; `command.py` is the CLI sub-command.
"""

from pipeline.doctor.row import FAIL, PASS, WARN, Row

__all__ = ["FAIL", "PASS", "Row", "WARN"]
