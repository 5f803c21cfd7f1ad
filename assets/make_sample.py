"""Regenerate the bundled multi-speaker Finnish sample dataset in assets/sample/.

    python assets/make_sample.py            # rewrite assets/sample/<speaker>/ (README.md is kept)
    python assets/make_sample.py --out DIR  # write somewhere else

Each speaker is an offline Finnish synthesizer voice (Debian espeak-ng variants with their own
pitch and speed, Festival's two suopuhe diphone voices). Every clip speaks the normalized
sentence (`pipeline.data.text.normalize`) while its .lab keeps the raw sentence, as a user's dataset
would. Layout is Fish Speech's folder layout: <speaker>/<clip>.ogg + <clip>.lab (UTF-8).
Which sentences a speaker gets is fixed by a seed, so reruns pick the same sentences (the Ogg
container's random stream serial number still makes the bytes differ between runs).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

ASSETS = Path(__file__).resolve().parent
sys.path.insert(0, str(ASSETS.parent))  # run as a script from anywhere
from pipeline.data.text import normalize  # noqa: E402

SEED = 20250601
SENTENCES = ASSETS / "sentences_fi.txt"
DEFAULT_OUT = ASSETS / "sample"
SIZE_LIMIT_BYTES = 15 * 1024 * 1024
PEAK = 0.8          # -1.9 dBFS: loud enough, and Vorbis overshoot never reaches full scale
PAD_S = 0.15        # silence kept at each end after trimming
TRIM_TOP_DB = 40    # quieter than peak-40 dB at the ends counts as silence


class SampleError(RuntimeError):
    """A synthesizer failed or the result broke a limit; the message says which clip or limit."""


@dataclass(frozen=True)
class Speaker:
    name: str      # folder name
    engine: str    # "espeak" or "festival"
    voice: str     # espeak "fi+m3" or festival voice name
    clips: int
    pitch: int = 50   # espeak -p (0-99)
    speed: int = 160  # espeak -s (words per minute)


# Clearly different clip counts so that per-speaker statistics mean something.
SPEAKERS = [
    Speaker("festival_mv", "festival", "hy_fi_mv_diphone", 60),
    Speaker("espeak_m3", "espeak", "fi+m3", 45, pitch=45, speed=150),
    Speaker("festival_lj", "festival", "suo_fi_lj_diphone", 30),
    Speaker("espeak_f2", "espeak", "fi+f2", 20, pitch=70, speed=165),
    Speaker("espeak_f4", "espeak", "fi+f4", 12, pitch=55, speed=180),
    Speaker("espeak_m1", "espeak", "fi+m1", 8, pitch=15, speed=135),
]


def read_sentences(path: Path = SENTENCES) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    sentences = [line for line in lines if line and not line.startswith("#")]
    if len(set(sentences)) != len(sentences):
        raise SampleError(f"{path} repeats a sentence; each line must be unique")
    return sentences


def pick_sentences(speaker: Speaker, sentences: list[str]) -> list[str]:
    """A fixed, speaker-specific draw without repeats (speakers may share sentences)."""
    if speaker.clips > len(sentences):
        raise SampleError(f"{speaker.name} wants {speaker.clips} clips but there are {len(sentences)} sentences")
    return random.Random(f"{SEED}:{speaker.name}").sample(sentences, speaker.clips)


def synthesize(speaker: Speaker, text: str, wav: Path) -> None:
    if speaker.engine == "espeak":
        cmd = ["espeak-ng", "-v", speaker.voice, "-p", str(speaker.pitch), "-s", str(speaker.speed),
               "-w", str(wav), "--stdin"]
        result = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=60)
    else:  # Festival reads ISO-8859-1; Finnish letters fit, anything else becomes a space
        txt = wav.with_suffix(".txt")
        txt.write_bytes("".join(c if ord(c) < 256 else " " for c in text).encode("latin-1"))
        cmd = ["text2wave", "-eval", f"({'voice_' + speaker.voice})", str(txt), "-o", str(wav)]
        result = subprocess.run(cmd, capture_output=True, timeout=120)
    if result.returncode != 0 or not wav.exists():
        raise SampleError(f"{speaker.name}: {' '.join(cmd[:3])} failed on {text!r}: "
                          f"{result.stderr.decode(errors='replace')[-400:]}")


def tidy(audio: np.ndarray, sr: int) -> np.ndarray:
    """Mono float, long silences at the ends trimmed (a short pad kept), peak-normalized."""
    audio = audio.mean(axis=1) if audio.ndim == 2 else audio
    trimmed, _ = librosa.effects.trim(audio, top_db=TRIM_TOP_DB)
    pad = np.zeros(int(PAD_S * sr), dtype=np.float32)
    audio = np.concatenate([pad, trimmed.astype(np.float32), pad])
    peak = float(np.max(np.abs(audio))) or 1.0
    return audio * (PEAK / peak)


def make_speaker(speaker: Speaker, sentences: list[str], out: Path, work: Path) -> list[dict]:
    folder = out / speaker.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rows = []
    for index, sentence in enumerate(pick_sentences(speaker, sentences), start=1):
        clip = f"{speaker.name}_{index:03d}"
        wav = work / f"{clip}.wav"
        synthesize(speaker, normalize(sentence), wav)
        audio, sr = sf.read(wav, dtype="float32")
        audio = tidy(audio, sr)
        sf.write(folder / f"{clip}.ogg", audio, sr, format="OGG", subtype="VORBIS")
        (folder / f"{clip}.lab").write_text(sentence + "\n", encoding="utf-8")
        rows.append({"clip": clip, "sr": sr, "seconds": len(audio) / sr, "audio": audio})
    return rows


def mean_f0(rows: list[dict], clips: int = 4) -> float:
    """Median voiced F0 (Hz) over a few clips: a number to tell the voices apart by."""
    f0s = []
    for row in rows[:clips]:
        f0, voiced, _ = librosa.pyin(row["audio"], fmin=50, fmax=500, sr=row["sr"], frame_length=1024)
        f0s.append(f0[voiced & ~np.isnan(f0)])
    voiced = np.concatenate(f0s)
    return float(np.median(voiced)) if voiced.size else float("nan")


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default assets/sample)")
    args = parser.parse_args(argv)
    for tool in ("espeak-ng", "text2wave"):
        if shutil.which(tool) is None:
            raise SampleError(f"{tool} not found: apt-get install espeak-ng festival "
                              "festvox-suopuhe-lj festvox-suopuhe-mv")
    sentences = read_sentences()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{len(sentences)} sentences -> {args.out}")
    print(f"{'speaker':<13} {'engine':<9} {'clips':>5} {'minutes':>8} {'mean s':>7} {'min s':>6} "
          f"{'max s':>6} {'F0 Hz':>6} {'sr':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for speaker in SPEAKERS:
            rows = make_speaker(speaker, sentences, args.out, Path(tmp))
            secs = [r["seconds"] for r in rows]
            print(f"{speaker.name:<13} {speaker.engine:<9} {len(rows):>5} {sum(secs) / 60:>8.2f} "
                  f"{np.mean(secs):>7.2f} {min(secs):>6.2f} {max(secs):>6.2f} {mean_f0(rows):>6.0f} "
                  f"{rows[0]['sr']:>6}")
    size = folder_bytes(args.out)
    print(f"total {sum(s.clips for s in SPEAKERS)} clips, {size / 1e6:.2f} MB")
    if size > SIZE_LIMIT_BYTES:
        raise SampleError(f"{args.out} is {size / 1e6:.1f} MB, over the 15 MiB limit; lower the clip counts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
