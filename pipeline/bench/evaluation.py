"""`python -m pipeline bench --only evaluation`: how long the scorecard of 20 sentences takes.

The model is the bench's (the real s1-mini shape with random weights on a GPU; the tests' tiny
checkpoint with `--tiny`),
written as a checkpoint folder so that `pipeline.quality.scorecard.evaluate` runs exactly as for a
user's model: load, speak, ASR, speaker similarity, DNSMOS. Random weights never end a sentence, so
every sentence is spoken to the expected length of the longest one. The ASR is
`evaluation.asr_model` when it is a local folder or in the Hugging Face cache, else a Whisper of the
same shape (large-v3-turbo) with random weights, built offline, that decodes a fixed number of
tokens; the result says which. The references are clips of the bundled sample. `seconds` is the
whole evaluation; `seconds_warm` leaves out what a warm studio or a second evaluation in the same
process does not pay again (loading the model, compiling its decoder, the scorers' first call).
"""

from __future__ import annotations

import functools
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pipeline.bench.common import SENTENCES, sync
from pipeline.model.synthetic import shaped_tokenizer
from pipeline.data.source_spec import SAMPLE_DIR
from pipeline.data.text import example_sentences
from pipeline.model.checkpoints import CODEC_CONFIG_NAME, RANDOM_WEIGHTS_MARKER, build_codec
from pipeline.model.tiny_checkpoint import write_tiny_checkpoint
from pipeline.quality.asr import Transcriber
from pipeline.quality.live import asr_source
from pipeline.quality.scorecard import ModelSpec, Scorers, SpeakOptions, evaluate, model_hash
from pipeline.quality.signal_checks import expected_seconds
from pipeline.quality.tiny_asr import random_transcriber

EVALUATION_SENTENCES = 20
TINY_SENTENCES = 6  # --tiny runs the same code on fewer sentences: its timings mean nothing anyway
FRAMES_PER_SECOND = 44100 / 2048  # the codec's frame rate
RANDOM_ASR_TOKENS = 48  # a Finnish sentence's transcript is ~25-45 Whisper tokens
TARGET_S = 60.0  # 20 sentences within about a minute on an H100, the model loaded
REFERENCE_SPEAKER, REFERENCE_CLIPS = "festival_mv", 3


def _checkpoint(folder: Path, args, tokenizer, codec_config: Path, device) -> Path:
    """A checkpoint folder in the Hub layout with random weights (bf16 LM, codec from its config)."""
    from fish_speech.models.text2semantic.llama import DualARTransformer

    folder.mkdir(parents=True)
    shaped_tokenizer(folder, len(tokenizer.semantic_id_to_token_id))
    torch.manual_seed(0)
    with torch.device(device):  # the real shape initialises in seconds on the GPU, not minutes
        model = DualARTransformer(args, tokenizer=tokenizer)
    args.save(folder / "config.json")
    torch.save({k: v.to("cpu", torch.bfloat16) for k, v in model.state_dict().items()}, folder / "model.pth")
    del model
    shutil.copyfile(codec_config, folder / CODEC_CONFIG_NAME)
    torch.save(build_codec(codec_config).state_dict(), folder / "codec.pth")
    (folder / RANDOM_WEIGHTS_MARKER).write_text("random weights for the bench: produces noise\n")
    return folder


def _asr(config, device, tiny: bool, folder: Path) -> tuple[Transcriber | str, dict]:
    """The ASR to time and what it is."""
    if tiny:
        return random_transcriber(folder, "tiny", device=str(device)), {"model": "tiny random Whisper",
                                                                          "source": "built from config"}
    usable, how = asr_source(config.evaluation.asr_model)
    if usable and how != "Hugging Face Hub":  # the bench downloads nothing
        loaded = Transcriber.from_pretrained(config.evaluation.asr_model, config.evaluation.language, str(device),
                                             local_files_only=True)
        return loaded, {"model": config.evaluation.asr_model, "source": how}
    built = random_transcriber(folder, "large-v3-turbo", max_new_tokens=RANDOM_ASR_TOKENS, device=str(device))
    why = how if not usable else "not downloaded"
    return built, {"model": built.name, "source": f"built from config, random weights, {RANDOM_ASR_TOKENS} tokens "
                                                   f"per clip ({config.evaluation.asr_model or 'no ASR'}: {why[:120]})"}


def _warm_scorers(scorers: Scorers, clip: Path, sentence: str) -> None:
    """Score one real clip once: the models load, the references are embedded, and the one-time costs
    of a fresh process (CUDA start, numba compiling librosa when resemblyzer first imports it) are
    paid outside the timed stages."""
    import soundfile as sf

    audio, rate = sf.read(str(clip), dtype="float32")
    scorers.score([(audio, rate, sentence)])
    scorers.timings.clear()


def bench_evaluation(config, shapes, device, tiny) -> dict:
    """Seconds of a 20-sentence evaluation (speak + score; 6 with `tiny`), in total and per stage; sentences/s."""
    from pipeline.generate.synth import Synthesizer

    args, tokenizer, codec_config = shapes[:3]
    device = torch.device(device)
    count = TINY_SENTENCES if tiny else EVALUATION_SENTENCES
    sentences = ((example_sentences() or SENTENCES) * count)[:count]
    frames = 8 if tiny else math.ceil(max(map(expected_seconds, sentences)) * FRAMES_PER_SECOND)
    references = sorted((SAMPLE_DIR / REFERENCE_SPEAKER).glob("*.ogg"))[:REFERENCE_CLIPS]
    stages: dict[str, float] = {}
    decoder: list[str] = []

    def warm_synthesizer(*a, **k):
        """The Synthesizer, timed, and one short sentence spoken (compiling the fast decoder) apart."""
        synth = Synthesizer(*a, **k)
        started = time.perf_counter()
        synth.speak(sentences[0], seed=0, max_new_tokens=4)
        sync(device)
        stages["warmup"] = time.perf_counter() - started
        decoder.append("fast (CUDA graphs)" if synth.fast else "eager (fish-speech generate)")
        return synth

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        if tiny:  # the tiny checkpoint of the tests: its vocabulary suits fish-speech's own generate on a CPU
            model_dir = write_tiny_checkpoint(tmp / "model")
        else:
            model_dir = _checkpoint(tmp / "model", args, tokenizer, Path(codec_config), device)
        spec = ModelSpec(str(model_dir), (), "bench")
        model_hash(spec)  # hashing the weights is remembered: not part of the evaluation's time
        prepare_s = time.perf_counter() - started
        asr, asr_info = _asr(config, device, tiny, tmp / "asr")
        scorers = Scorers(asr, config.evaluation.language, references=references, device=str(device),
                          asr_loader=functools.partial(Transcriber.from_pretrained, local_files_only=True))
        started = time.perf_counter()
        _warm_scorers(scorers, references[0], sentences[0])
        sync(device)
        stages["scorer_warmup"] = time.perf_counter() - started
        card = evaluate(spec, tmp / "out", tmp / "cache", sentences, seed=config.evaluation.seed,
                        options=SpeakOptions(max_new_tokens=frames), scorers=scorers,
                        synth_factory=warm_synthesizer, device=str(device))
        sync(device)
        seconds = time.perf_counter() - started
    timings = {**card.timings, **stages}
    timings["load"] = timings.get("load", 0.0) - stages.get("warmup", 0.0)  # the factory's time held the warm-up
    scoring = {k: round(timings.get(k, 0.0), 3) for k in ("speak", "asr", "similarity", "dnsmos")}
    warm = seconds - timings["load"] - stages.get("warmup", 0.0) - stages["scorer_warmup"]
    return {
        "sentences": len(sentences), "frames_per_sentence": frames,
        "model": "tiny, random weights" if tiny else "s1-mini shape, random weights",
        "decoder": decoder[0] if decoder else "", "asr": asr_info,
        "references": f"bundled sample {REFERENCE_SPEAKER} ({len(references)} clips)",
        "audio_s": round(float(card.rows["duration_s"].sum()), 2) if "duration_s" in card.rows else None,
        "seconds": round(seconds, 3), "seconds_warm": round(warm, 3),
        "stages": {"load": round(timings["load"], 3), "warmup": round(stages.get("warmup", 0.0), 3),
                   "scorer_warmup": round(stages["scorer_warmup"], 3), **scoring},
        "sentences_per_s": round(len(sentences) / warm, 3) if warm > 0 else None,
        "target_s": TARGET_S, "within_target": warm <= TARGET_S, "prepare_s": round(prepare_s, 2),
        "notes": card.notes,
    }
