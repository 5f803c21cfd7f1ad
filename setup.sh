#!/usr/bin/env bash
# One-command, idempotent set-up of Finnish TTS Studio.
#
#   bash setup.sh                 venv + packages + (where the Hub is reachable) model and dataset
#   bash setup.sh --offline       never touch the Hugging Face Hub; the studio uses the bundled sample
#   bash setup.sh --no-model      skip the base-model download (dataset download still tried)
#   bash setup.sh --tests         also the test tools: pytest, playwright, Debian's chromium
#   bash setup.sh --no-warmup     on a GPU, skip compiling the training steps ahead (a run's first step then compiles)
#
# Needs Python >= 3.10. Downloading the gated base model needs HF_TOKEN (see README).
set -euo pipefail
cd "$(dirname "$0")"

OFFLINE=0; NO_MODEL=0; TESTS=0; WARMUP=1
for arg in "$@"; do
  case "$arg" in
    --offline) OFFLINE=1 ;;
    --no-model) NO_MODEL=1 ;;
    --tests) TESTS=1 ;;
    --no-warmup) WARMUP=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
PY=${PYTHON:-python3}
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PIP=("$VENV/bin/python" -m pip install -q)

# torch and torchaudio first, pinned to a pair that exists on PyPI for CPU and GPU (docs/FISH_SPEECH_NOTES.md, "Installing").
# A machine that already has a working torch>=2.9 with torchaudio (e.g. a GPU image) keeps it.
if ! "$VENV/bin/python" - <<'EOF' 2>/dev/null; then
import torch, torchaudio
major, minor = map(int, torch.__version__.split(".")[:2])
raise SystemExit(0 if (major, minor) >= (2, 9) else 1)
EOF
  # the CUDA build with its libraries takes ~8 GB in the venv, plus pip's temporary copy
  free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
  if [ "${free_gb:-0}" -lt 10 ]; then
    say "warning: only ${free_gb} GB free on this disk; torch needs about 10 GB. If pip stops with" \
        "'No space left on device', free space (old venvs, /tmp) and run setup.sh again."
  fi
  say "installing torch 2.9.1 + torchaudio 2.9.1 (large download, once)"
  "${PIP[@]}" "torch==2.9.1" "torchaudio==2.9.1"
fi

# fish-speech's declared pins (numpy<=1.26.4, pydantic==2.9.2, datasets==2.18.0, pyaudio, ...)
# fight gradio 6 and are unused by the modules we import: install it without them; the real
# needs of those modules are listed in pyproject.toml.
if ! "$VENV/bin/python" -m pip show -q fish-speech >/dev/null 2>&1; then
  say "installing fish-speech==0.1.0 (without its conflicting pins)"
  "${PIP[@]}" --no-deps "fish-speech==0.1.0"
fi

# resemblyzer declares the `typing` backport (breaks Python 3) and `webrtcvad` (a C build);
# install it alone: its real needs (webrtcvad-wheels, librosa, scipy, torch) are in pyproject.toml.
if ! "$VENV/bin/python" -m pip show -q resemblyzer >/dev/null 2>&1; then
  say "installing resemblyzer==0.1.4 (speaker similarity; without its outdated pins)"
  "${PIP[@]}" --no-deps "resemblyzer==0.1.4"
fi

say "installing the studio and its dependencies"
if [ "$TESTS" = 1 ]; then
  "${PIP[@]}" -e ".[test]"
else
  "${PIP[@]}" -e .
fi

APT_UPDATED=0
can_apt() { command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; }
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then apt-get update -q >/dev/null && APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

# The Playground's live player: Gradio encodes streamed audio with ffmpeg (and reads files with ffprobe).
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  if can_apt; then
    say "installing Debian's ffmpeg (the Playground plays speech while it is generated)"
    apt_install ffmpeg || say "WARNING: ffmpeg could not be installed: speech plays once it is complete"
  else
    say "WARNING: ffmpeg not found and apt-get unavailable: speech plays once it is complete, not live"
  fi
fi

if [ "$TESTS" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if can_apt; then
    say "installing Debian's chromium for the browser tests"
    apt_install chromium
  else
    say "WARNING: chromium not found and apt-get unavailable: browser tests will be skipped"
  fi
fi

if [ "$OFFLINE" = 1 ]; then
  say "offline: skipping Hugging Face downloads; the studio runs on the bundled sample"
else
  flags=()
  [ "$NO_MODEL" = 1 ] && flags+=(--no-model)
  # Never fails set-up: it says what it could not fetch and why.
  "$VENV/bin/python" -m pipeline download "${flags[@]}" || say "some downloads failed (see above); the bundled sample still works"
fi

# On a GPU, compile the training steps now (a minute or two per mode, random codes) so that a run's
# first step loads them instead of compiling: pipeline.train.warmup. Never fails set-up.
if [ "$WARMUP" = 1 ] && "$VENV/bin/python" -c "from pipeline.config import load_config; from pipeline.train.warmup import compiles_here; raise SystemExit(0 if compiles_here(load_config()) else 1)" 2>/dev/null; then
  say "compiling the training steps ahead (python -m pipeline warmup; skip with --no-warmup)"
  "$VENV/bin/python" -m pipeline warmup || say "warm-up failed (see above): a run's first step compiles instead"
fi

# Prove the machine and the model match the code's assumptions (a minute); never fails set-up.
MODEL_DIR=$("$VENV/bin/python" -c "from pipeline.config import load_config; print(load_config().base_model_dir)" 2>/dev/null || true)
if [ -n "$MODEL_DIR" ] && [ -d "$MODEL_DIR" ]; then
  say "checking this machine and the model in $MODEL_DIR (python -m pipeline doctor --quick)"
  doctor_env=()
  [ "$OFFLINE" = 1 ] && doctor_env=(HF_HUB_OFFLINE=1)
  if env ${doctor_env[@]+"${doctor_env[@]}"} "$VENV/bin/python" -m pipeline doctor --quick; then
    say "doctor: no ✗ rows"
  else
    say "doctor found problems: see the ✗ rows above and their advice (the set-up itself is done)"
  fi
fi

say "done. Start the studio with: $VENV/bin/python -m studio"
