"""Rows that run the model: training forward == generation, fast decoder == fish-speech, the codec's
round trip, one Finnish sentence spoken and timed, and a short LoRA smoke run.

The comparisons are the ones the tests and the bench make (pipeline.bench.reference.reference_logits
is fish-speech's step-by-step generation with KV caches), here on the checkpoint's own weights.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.doctor.row import FAIL, PASS, WARN, Row

CHECK_FRAMES = 4
FORWARD_TOLERANCE = 1e-3  # relative (norm) difference, fp32: summation order only
FAST_TOLERANCE = 0.05  # bf16 decoder vs bf16 reference; the bench measures ~0.015 on an H100/H200
ROUND_TRIP_SECONDS = 4.0
MEL_SNR_OK_DB = 6.0  # a trained codec reconstructs the spectrum well above this; noise gives ~0 dB
SMOKE_STEPS, SMOKE_CLIPS = 20, 8
SMOKE_LR = 1e-3  # high enough that 20 steps on 8 clips visibly lower the loss
# merged weights are rounded to the checkpoint's dtype (bf16 for s1-mini): a few 1e-3 of the logits
MERGE_ROUNDING = 5e-3
MERGE_SHARE = 0.2  # beyond rounding, the merge may miss at most this share of the adapter's effect
RANDOM_NOTE = " (random weights)"


def device_for_checks() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    from pipeline.bench.common import rel_diff

    return rel_diff(a.float().cpu(), b.float().cpu())


def check_inputs(tokenizer, num_codebooks: int, codebook_size: int, seed: int = 0):
    """A generation prompt (Finnish text) and CHECK_FRAMES teacher-forced frames of random codes."""
    from pipeline.model.tokens import RESIDUAL_VOCAB, Utterance, build_sequence

    g = torch.Generator().manual_seed(seed)
    n_semantic = len(tokenizer.semantic_id_to_token_id)
    prompt = build_sequence(tokenizer, num_codebooks, [Utterance("Hyvää päivää, mitä kuuluu?", None)],
                            for_generation=True).tokens
    codes = torch.randint(0, min(RESIDUAL_VOCAB, codebook_size), (num_codebooks, CHECK_FRAMES), generator=g)
    codes[0] = torch.randint(0, n_semantic, (CHECK_FRAMES,), generator=g)
    return prompt, torch.cat([codes[:1] + tokenizer.semantic_begin_id, codes])


@torch.no_grad()
def training_logits(model, prompt: torch.Tensor, frames: torch.Tensor):
    """The training forward's logits for each given frame: token (F, vocab) and residual (F, N-1, V)."""
    from pipeline.train.forward import fast_logits, slow_forward, token_logits

    device = next(model.parameters()).device
    seq = torch.cat([prompt, frames], dim=1).to(device)
    hidden = slow_forward(model, seq[None])[0]
    before = hidden[prompt.shape[1] - 1 : seq.shape[1] - 1]  # the position before each frame
    return token_logits(model, before), fast_logits(model, before, frames[1:].T.to(device))[:, 1:]


def forward_row(model, tokenizer, random: bool) -> Row:
    from pipeline.bench.reference import reference_logits

    cfg = model.config
    prompt, frames = check_inputs(tokenizer, cfg.num_codebooks, cfg.codebook_size)
    head, fast = training_logits(model, prompt, frames)
    ref_head, ref_fast = reference_logits(model, prompt, frames)
    diffs = _rel(head, ref_head), _rel(fast, ref_fast)
    detail = (f"training forward vs KV-cached generation on {CHECK_FRAMES} frames: relative difference "
              f"{diffs[0]:.1e} (token logits), {diffs[1]:.1e} (codebook logits)" + (RANDOM_NOTE if random else ""))
    if max(diffs) > FORWARD_TOLERANCE:
        return Row("model", "forward = generation", FAIL, detail,
                   "Training would optimise other logits than generation uses: report this with the JSON report "
                   "(pipeline.train.forward must follow fish-speech's forward_generate for this checkpoint).")
    return Row("model", "forward = generation", PASS, detail)


def fast_decoder_row(model, tokenizer, random: bool) -> Row:
    """pipeline.generate.fastgen (bf16, compiled or fused, CUDA) against fish-speech's forward_generate."""
    if next(model.parameters()).device.type != "cuda":
        return Row("model", "fast decoder", WARN, "not checked without a GPU (the fast decoder runs on CUDA)")
    from pipeline.bench.reference import reference_logits
    from pipeline.generate.fastgen import FastGenerator

    cfg = model.config
    prompt, frames = check_inputs(tokenizer, cfg.num_codebooks, cfg.codebook_size, seed=1)
    model = model.to(torch.bfloat16)
    try:
        gen = FastGenerator(model, 1, max_len=prompt.shape[1] + CHECK_FRAMES + 64)
        head0, fast = gen.teacher_forced_logits(prompt, frames)
        ref_head, ref_fast = reference_logits(model, prompt, frames)
    finally:
        model.float()
    rows = [gen.im_end] + list(range(gen.sem_begin, gen.sem_end + 1))
    diffs = _rel(head0, ref_head[:, rows]), _rel(fast, ref_fast[..., : gen.residual_vocab])
    kind = "fused Triton decoder" if gen.fused else "compiled layers"
    detail = (f"{kind} vs fish-speech forward_generate (bf16, {CHECK_FRAMES} frames): relative difference "
              f"{diffs[0]:.3f} (codebook 0), {diffs[1]:.3f} (residual)" + (RANDOM_NOTE if random else ""))
    if max(diffs) > FAST_TOLERANCE:
        return Row("model", "fast decoder", FAIL, detail,
                   "Speech would differ from fish-speech's: set speed.fused_decoder: false (or FASTGEN_FUSED=0) "
                   "and run the doctor again; report the JSON report if it still fails.")
    return Row("model", "fast decoder", PASS, detail)


def bundled_clip() -> Path:
    from pipeline.data.source_spec import SAMPLE_DIR

    clips = sorted(SAMPLE_DIR.rglob("*.ogg")) + sorted(SAMPLE_DIR.rglob("*.wav"))
    if not clips:
        raise FileNotFoundError(f"No bundled clip under {SAMPLE_DIR}; restore assets/sample from the repository.")
    return clips[0]


def _snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    noise = float(np.sum((reference - estimate) ** 2))
    return 10 * math.log10(float(np.sum(reference**2)) / max(noise, 1e-20))


def mel_snr_db(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
    """SNR of the magnitude mel spectrogram: a codec need not keep the phase, only what is heard."""
    import librosa

    mels = [librosa.feature.melspectrogram(y=x, sr=sample_rate, n_fft=2048, hop_length=512, n_mels=80, power=1.0)
            for x in (reference, estimate)]
    return _snr_db(mels[0], mels[1])


@torch.inference_mode()
def round_trip_row(model_dir: Path, device: torch.device, random: bool) -> Row:
    from pipeline.model.checkpoints import load_codec
    from pipeline.model.codes import encode_audio, frames_for, load_for_codec

    clip = bundled_clip()
    codec = load_codec(model_dir, device=device)
    rate = int(codec.sample_rate)
    audio = load_for_codec(clip, rate)[: int(ROUND_TRIP_SECONDS * rate)]
    codes = encode_audio(codec, audio)
    decoded, _ = codec.decode(codes[None].to(device), torch.tensor([codes.shape[1]], device=device))
    out = decoded[0, 0].float().cpu().numpy()[: len(audio)]
    if len(out) < len(audio):
        out = np.pad(out, (0, len(audio) - len(out)))
    wave, mel = _snr_db(audio, out), mel_snr_db(audio, out, rate)
    detail = (f"{clip.name} ({len(audio) / rate:.1f} s) → {codes.shape[0]}×{codes.shape[1]} codes → audio: "
              f"mel SNR {mel:.1f} dB, waveform SNR {wave:.1f} dB")
    if codes.shape[1] != frames_for(codec, len(audio)) or not np.isfinite(out).all():
        return Row("codec", "round trip", FAIL, f"{detail}; frames or samples are wrong",
                   "codec.pth: delete it and run python -m pipeline download.")
    if random:
        return Row("codec", "round trip", PASS, f"{detail} — random weights give noise: a low SNR is expected")
    if mel < MEL_SNR_OK_DB:
        return Row("codec", "round trip", WARN, f"{detail}; below {MEL_SNR_OK_DB:g} dB, lower than a trained codec gives",
                   "Listen to a round trip; if it is noise, codec.pth is not the s1-mini codec: re-download it.")
    return Row("codec", "round trip", PASS, detail)


def speech_scores(result, sentence: str, ended: bool) -> str:
    """What the quality scorecard can say offline about one spoken sentence: the signal checks and
    DNSMOS (ASR and speaker similarity need a model download or a reference voice)."""
    from pipeline.quality.naturalness import dnsmos
    from pipeline.quality.signal_checks import check_signal

    checks = check_signal(result.audio, result.sample_rate, sentence, ended)
    text = f"signal: {', '.join(checks.flags) or 'no problems'}"
    try:
        mos = dnsmos(result.audio, result.sample_rate)
    except Exception as exc:  # noqa: BLE001 - a scorer missing on this machine is a note, not a failure
        return f"{text}; DNSMOS not scored ({type(exc).__name__}: {exc})"
    return f"{text}; DNSMOS {'not scored: ' + mos.flag if mos.flag else f'OVRL {mos.ovrl:.2f}, SIG {mos.sig:.2f}'}"


def speech_row(model_dir: Path, device: torch.device, random: bool, out_dir: Path, max_frames: int = 400) -> Row:
    from pipeline.generate.synth import Synthesizer, save_wav
    from pipeline.data.text import example_sentences

    sentence = (example_sentences() or ["Hyvää huomenta, tänään on aurinkoinen päivä."])[0]
    started = time.perf_counter()
    synth = Synthesizer(model_dir, device=device)
    load_s = time.perf_counter() - started
    synth.speak("Hei.", max_new_tokens=8, seed=0)  # compiles the decoder; not part of the timing
    started = time.perf_counter()
    result = synth.speak(sentence, max_new_tokens=max_frames, seed=0)
    elapsed = time.perf_counter() - started
    wav = save_wav(result, Path(out_dir) / "doctor-speech.wav")
    seconds = len(result.audio) / result.sample_rate
    detail = (f"“{sentence[:40]}…”: {seconds:.1f} s of audio, {result.frames} frames in {elapsed:.1f} s "
              f"({result.frames / max(elapsed, 1e-9):.0f} frames/s, first audio after {elapsed:.1f} s; "
              f"model load {load_s:.0f} s) → {wav}; {speech_scores(result, sentence, result.frames < max_frames)}")
    if random:
        return Row("model", "speech", PASS, f"{detail} — random weights: noise, not speech")
    if result.frames >= max_frames:
        return Row("model", "speech", WARN, f"{detail}; never ended within {max_frames} frames",
                   "Listen to the file: a base model that does not stop suggests a tokenizer/config mismatch.")
    return Row("model", "speech", PASS, detail)


# -- LoRA smoke run ---------------------------------------------------------------------------------
def smoke_clips(config, progress=None):
    """(where they come from, up to SMOKE_CLIPS shortest accepted clips, the commonest rejection
    reason) of the selected dataset, else of the configured one when prepared, else of the sample."""
    from pipeline.data.dataset import DatasetError, load_dataset, open_dataset
    from pipeline.data.selection import load_selection
    from pipeline.data.source_spec import SourceError, SourceSpec

    candidates = [load_selection(config).get("dataset_id")]
    try:
        candidates.append(SourceSpec.from_config(config).dataset_id())
    except SourceError:
        pass
    dataset = None
    for dataset_id in filter(None, candidates):
        try:
            dataset = open_dataset(config, dataset_id)
            break
        except DatasetError:
            continue
    if dataset is None:
        dataset = load_dataset(SourceSpec(kind="sample"), config, progress=progress)
    accepted = dataset.accepted()
    if "duration_s" in accepted.columns:
        accepted = accepted.sort_values("duration_s", kind="stable")
    rejected = dataset.manifest.loc[dataset.manifest["status"] != "ok", "reason"].astype(str)
    reason = rejected.value_counts().index[0] if len(rejected) else ""
    return dataset.id, accepted.head(SMOKE_CLIPS).reset_index(drop=True), reason


def _train_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [float(r["loss"]) for r in rows if r.get("kind") == "train"]


@torch.no_grad()
def merged_equals_stacked(model_dir: Path, adapter: Path, merged_dir: Path, device: torch.device) -> tuple[float, float]:
    """(relative difference merged vs base+adapter, relative change the adapter makes) of token logits."""
    from pipeline.model.adapters import load_adapters
    from pipeline.model.checkpoints import load_lm
    from pipeline.train.forward import slow_forward, token_logits
    from pipeline.model.merge import merge_lora

    merge_lora(model_dir, adapter, merged_dir)
    stacked, tokenizer = load_lm(model_dir, device=device)
    cfg = stacked.config
    prompt, frames = check_inputs(tokenizer, cfg.num_codebooks, cfg.codebook_size, seed=2)
    tokens = torch.cat([prompt, frames], dim=1)[None].to(device)

    def logits(model):
        return token_logits(model, slow_forward(model.eval(), tokens))

    base = logits(stacked)
    load_adapters(stacked, [(adapter, 1.0)])
    want = logits(stacked)
    del stacked
    merged = logits(load_lm(merged_dir, device=device)[0])
    return _rel(merged, want), _rel(want, base)


def smoke_row(config, model_dir: Path, work_dir: Path, device: torch.device, steps: int = SMOKE_STEPS,
              progress=None) -> Row:
    from pipeline.model.codes import extract_codes
    from pipeline.train.loop import TrainSettings, train

    group, name = "training", "LoRA smoke run"
    from pipeline.train.lock import holder

    busy = holder(Path(config.workspace))
    if busy:
        return Row(group, name, WARN, f"not run: a training is running on this machine ({busy.get('run_id', '?')})",
                   "Run the full check again when it has finished.")
    dataset_id, clips, reason = smoke_clips(config, progress)
    if len(clips) < 2:
        why = f"; most clips rejected as: {reason}" if reason else ""
        return Row(group, name, FAIL, f"dataset {dataset_id} has {len(clips)} accepted clips{why}",
                   "Prepare a dataset with at least 2 accepted clips (Dataset tab or python -m pipeline prepare); "
                   "if every clip of the bundled sample is rejected, this machine cannot analyse audio: fix what "
                   "the reason names.")
    work_dir = Path(tempfile.mkdtemp(prefix="doctor-smoke-", dir=work_dir))
    try:
        codes = extract_codes(clips, model_dir, Path(config.workspace) / "codes", device=device)
        max_seq_len = json.loads((model_dir / "config.json").read_text())["max_seq_len"]
        settings = TrainSettings.from_config(
            config, "lora", steps=steps, lr=SMOKE_LR, warmup_steps=2, val_every=steps, save_every=steps,
            keep_last=1, eval_texts=(), max_length=min(config.training.max_length, max_seq_len),
            device=device.type)
        started = time.perf_counter()
        result = train(work_dir / "run", model_dir, codes.manifest, settings)
        train_s = time.perf_counter() - started
        if result.status != "finished":
            return Row(group, name, FAIL, f"training {result.status}: {result.message}",
                       "Fix what the message says (memory: lower training.batch_size) and run the doctor again.")
        losses = _train_losses(work_dir / "run")
        k = max(1, min(3, len(losses) // 3))
        first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
        adapter = Path(result.latest or "")
        saved = (adapter / "adapter_model.safetensors").is_file()
        detail = (f"{len(clips)} clips of {dataset_id}, {steps} steps in {train_s:.0f} s: loss {first:.3f} → {last:.3f}"
                  + (", adapter saved" if saved else ""))
        if not saved:
            return Row(group, name, FAIL, f"{detail}; no adapter_model.safetensors in {adapter}",
                       "Check free disk and write access to the workspace.")
        if not last < first:
            return Row(group, name, FAIL, f"{detail}; the loss did not fall",
                       "Training does not learn on this machine: report it with the JSON report and metrics.jsonl.")
        merge_diff, effect = merged_equals_stacked(model_dir, adapter, work_dir / "merged", device)
        detail += f"; merged vs stacked logits {merge_diff:.1e} (the adapter changes them by {effect:.1e})"
        if merge_diff > max(MERGE_ROUNDING, MERGE_SHARE * effect):
            return Row(group, name, FAIL, detail,
                       "The merged model differs from base + adapter: use the adapter (not the merged model) and "
                       "report it with the JSON report.")
        return Row(group, name, PASS, detail)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
