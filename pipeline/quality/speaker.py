"""Speaker similarity: cosine similarity of speaker embeddings (resemblyzer's GE2E encoder).

resemblyzer's weights ship inside its wheel, so this works offline, on CPU or GPU. Embeddings
are L2-normed; a synthesized clip is compared with the centroid of the reference speaker's clips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.audio import resample

SPEAKER_MODEL = "resemblyzer"
ENCODER_RATE = 16000  # resemblyzer's sampling_rate


class SpeakerEncoder:
    """resemblyzer's VoiceEncoder, loaded once."""

    identity = "resemblyzer-0.1.4-ge2e"

    def __init__(self, device: str | None = None):
        from resemblyzer import VoiceEncoder

        self.encoder = VoiceEncoder(device=device, verbose=False)

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray | None:
        """The clip's embedding, or None when voice activity detection finds no speech in it."""
        from resemblyzer import preprocess_wav

        audio = np.asarray(audio, dtype=np.float32)
        if audio.size == 0 or not np.isfinite(audio).all() or np.abs(audio).max() < 1e-4:
            return None
        # resampled here: resemblyzer's own librosa resample compiles numba code on its first call
        wav = preprocess_wav(resample(audio, sample_rate, ENCODER_RATE), source_sr=None)
        if wav.size < 1600:  # under 0.1 s of speech left after trimming silences
            return None
        return self.encoder.embed_utterance(wav)

    def embed_file(self, path: str | Path) -> np.ndarray | None:
        import soundfile as sf

        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return self.embed(audio.mean(axis=1), rate)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def centroid(embeddings: list[np.ndarray]) -> np.ndarray | None:
    """The normalized mean of the embeddings that exist (None when there is none)."""
    kept = [e for e in embeddings if e is not None]
    if not kept:
        return None
    mean = np.mean(kept, axis=0)
    return mean / (np.linalg.norm(mean) + 1e-12)


def similarity(embedding: np.ndarray | None, reference: np.ndarray | None) -> float:
    """Cosine similarity to the reference speaker, NaN when either side has no speech."""
    if embedding is None or reference is None:
        return float("nan")
    return cosine(embedding, reference)
