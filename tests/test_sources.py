"""pipeline.sources: folder layouts, LJSpeech csv, safe zip extraction, Hugging Face parquet."""

import os
import stat
import zipfile

import pandas as pd
import pytest

from audio_fixtures import speech_like, wav_bytes, write_audio, write_clip
from pipeline import hf_source
from pipeline.sources import (MISSING_TRANSCRIPT, SourceError, SourceSpec, extract_zip, read_folder,
                              read_source)


def by_id(clips):
    return {c.id: c for c in clips}


# -- folder ------------------------------------------------------------------------------------
def test_upstream_layout_with_lab_txt_missing_and_non_utf8(tmp_path):
    root = tmp_path / "data"
    write_clip(root, "anna", "a1", "Hyvää päivää.")
    write_clip(root, "anna", "a2", "Näkemiin.", transcript_suffix=".txt", ext=".flac")
    write_clip(root, "bert", "b1", None, ext=".ogg")                    # no transcript
    write_clip(root, "bert", "b2", None)
    (root / "bert" / "b2.lab").write_bytes("Hyvää yötä".encode("latin-1"))  # not UTF-8
    (root / "bert" / "notes.txt").write_text("not a clip")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    clips = by_id(read_folder(root))
    assert set(clips) == {"anna/a1", "anna/a2", "bert/b1", "bert/b2"}
    assert clips["anna/a1"].text == "Hyvää päivää." and clips["anna/a1"].speaker == "anna"
    assert clips["anna/a2"].text == "Näkemiin." and clips["anna/a2"].problem is None
    assert clips["bert/b1"].problem == MISSING_TRANSCRIPT and clips["bert/b1"].text is None
    assert "b2.lab" in clips["bert/b2"].problem and "UTF-8" in clips["bert/b2"].problem
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # user's files untouched


def test_flat_folder_speaker_is_the_folder_and_bom_is_stripped(tmp_path):
    root = tmp_path / "wrapper" / "Maija"
    write_audio(root / "c1.wav", speech_like())
    (root / "c1.lab").write_bytes("\ufeffMoi.".encode("utf-8"))
    (clip,) = read_folder(tmp_path / "wrapper")  # descends through the single wrapper folder
    assert (clip.id, clip.speaker, clip.text) == ("c1", "Maija", "Moi.")


def test_empty_folder_is_a_source_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="No audio files"):
        read_folder(tmp_path / "empty")
    with pytest.raises(SourceError, match="does not exist"):
        read_folder(tmp_path / "nope")


# -- LJSpeech metadata.csv ----------------------------------------------------------------------
def test_ljspeech_csv_two_columns_with_wavs_dir(tmp_path):
    root = tmp_path / "lj"
    for name in ("LJ001", "LJ002"):
        write_audio(root / "wavs" / f"{name}.wav", speech_like())
    (root / "metadata.csv").write_text("LJ001|Ensimmäinen lause.\nLJ002.wav|Toinen lause.\nLJ003|Puuttuu.\n")
    clips = by_id(read_folder(root))
    assert clips["LJ001"].speaker == "lj" and clips["LJ001"].text == "Ensimmäinen lause."
    assert clips["LJ002"].source_path.endswith("wavs/LJ002.wav")
    assert "LJ003" in clips["LJ003"].problem and "not found" in clips["LJ003"].problem


def test_ljspeech_third_column_speaker_vs_normalized_text(tmp_path):
    multi = tmp_path / "multi"
    write_audio(multi / "x1.wav", speech_like())
    write_audio(multi / "x2.flac", speech_like())
    (multi / "metadata.csv").write_text("file|text|speaker\nx1|Moi.|anna\nx2.flac|Hei.|bert\n")
    clips = by_id(read_folder(multi))
    assert (clips["x1"].speaker, clips["x2"].speaker) == ("anna", "bert")

    original = tmp_path / "LJSpeech"
    write_audio(original / "wavs" / "LJ1.wav", speech_like())
    (original / "metadata.csv").write_text("LJ1|Printing, in 1850|Printing, in eighteen fifty\n")
    (clip,) = read_folder(original)
    assert clip.speaker == "LJSpeech" and clip.text == "Printing, in 1850"


def test_ljspeech_csv_without_separator_or_utf8_is_an_error(tmp_path):
    root = tmp_path / "bad"
    write_audio(root / "a.wav", speech_like())
    (root / "metadata.csv").write_text("a,Moi\n")
    with pytest.raises(SourceError, match="line 1"):
        read_folder(root)
    (root / "metadata.csv").write_bytes("a|Hyvää".encode("latin-1"))
    with pytest.raises(SourceError, match="UTF-8"):
        read_folder(root)


# -- zip ---------------------------------------------------------------------------------------
def make_zip(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_zip_source_extracts_into_work_dir_and_skips_junk(tmp_path):
    audio = wav_bytes(speech_like(sr=16_000))
    archive = make_zip(tmp_path / "voices.zip", {
        "voices/anna/a1.wav": audio, "voices/anna/a1.lab": "Moi.",
        "voices/bert/b1.wav": audio, "voices/bert/b1.lab": "Hei.",
        "__MACOSX/voices/anna/._a1.wav": b"junk",
    })
    work = tmp_path / "work"
    clips = by_id(read_source(SourceSpec("zip", path=str(archive)), work))
    assert set(clips) == {"anna/a1", "bert/b1"}
    assert clips["anna/a1"].source_path.startswith(str(work / "extracted"))
    first = (work / "extracted" / "voices" / "anna" / "a1.wav").stat().st_mtime_ns
    read_source(SourceSpec("zip", path=str(archive)), work)      # second read reuses the extraction
    assert (work / "extracted" / "voices" / "anna" / "a1.wav").stat().st_mtime_ns == first


@pytest.mark.parametrize("name", ["../evil.wav", "ok/../../evil.wav", "/abs/evil.wav"])
def test_zip_with_escaping_entry_is_rejected(tmp_path, name):
    archive = make_zip(tmp_path / "bad.zip", {"a/a1.lab": "Moi.", name: b"x"})
    with pytest.raises(SourceError, match="outside the archive"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "evil.wav").exists() and not (tmp_path / "out").exists()


def test_zip_with_symlink_and_limits(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("a/link.wav")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(SourceError, match="symbolic link"):
        extract_zip(archive, tmp_path / "out")
    big = make_zip(tmp_path / "big.zip", {f"a/{i}.lab": "x" * 1000 for i in range(5)})
    with pytest.raises(SourceError, match="limit"):
        extract_zip(big, tmp_path / "out", max_bytes=4000)
    with pytest.raises(SourceError, match="5 files"):
        extract_zip(big, tmp_path / "out", max_files=4)
    (tmp_path / "not.zip").write_text("hello")
    with pytest.raises(SourceError, match="not a readable zip"):
        extract_zip(tmp_path / "not.zip", tmp_path / "out")


# -- Hugging Face parquet (local directory in the Hub's layout) ------------------------------------
def write_shards(root, rows_per_shard=(4, 4, 4), fmt="WAV", config="fi", split="train"):
    folder = root / config / split
    folder.mkdir(parents=True)
    n = 0
    for shard, count in enumerate(rows_per_shard):
        rows = []
        for _ in range(count):
            audio = wav_bytes(speech_like(sr=16_000, seed=n), 16_000, fmt)
            rows.append({"audio": {"bytes": audio, "path": f"clip{n}.{fmt.lower()}"},
                         "raw_text": f"Lause numero {n}.", "speaker_id": f"spk{n % 2}", "extra": n})
            n += 1
        pd.DataFrame(rows).to_parquet(folder / f"{shard:04d}.parquet")
    return root


def test_hf_local_dir_reads_only_needed_shards(tmp_path, monkeypatch):
    root = write_shards(tmp_path / "hub", fmt="FLAC")
    fetched = []
    real_fetch = hf_source._fetch_shard
    monkeypatch.setattr(hf_source, "_fetch_shard", lambda spec, shard: fetched.append(shard) or real_fetch(spec, shard))
    spec = SourceSpec("huggingface", path=str(root), hf_config="fi", hf_split="train", max_clips=6)
    clips = read_source(spec, tmp_path / "work")
    assert len(clips) == 6 and fetched == ["fi/train/0000.parquet", "fi/train/0001.parquet"]
    assert [c.speaker for c in clips[:2]] == ["spk0", "spk1"] and clips[5].text == "Lause numero 5."
    assert len({c.id for c in clips}) == 6
    first = clips[0].source_path
    assert first.startswith(str(tmp_path / "work" / "extracted")) and first.endswith(".flac")
    with open(first, "rb") as fh:
        assert fh.read(4) == b"fLaC"
    assert spec.dataset_id().startswith("hf-hub-fi-train-")


def test_hf_missing_column_lists_available_columns(tmp_path):
    root = write_shards(tmp_path / "hub", rows_per_shard=(2,))
    spec = SourceSpec("huggingface", path=str(root), hf_config="fi",
                      columns={"audio": "audio", "text": "sentence", "speaker": "speaker_id"})
    with pytest.raises(SourceError, match=r"columns.text = 'sentence'.*raw_text"):
        read_source(spec, tmp_path / "work")


def test_hf_without_speaker_column_and_with_path_audio(tmp_path):
    root = tmp_path / "hub"
    (root / "data").mkdir(parents=True)
    write_audio(root / "data" / "c0.wav", speech_like(sr=16_000), 16_000)
    pd.DataFrame({"file": ["c0.wav", "gone.wav"], "sentence": ["Moi.", None]}).to_parquet(
        root / "data" / "train-00000-of-00001.parquet")
    spec = SourceSpec("huggingface", path=str(root), columns={"audio": "file", "text": "sentence", "speaker": None})
    c0, gone = read_source(spec, tmp_path / "work")
    assert (c0.speaker, c0.text, c0.problem) == ("speaker", "Moi.", None)
    assert c0.source_path == str(root / "data" / "c0.wav")
    assert gone.text is None and "gone.wav" in gone.problem


def test_hf_unknown_split_names_what_exists(tmp_path):
    root = write_shards(tmp_path / "hub", rows_per_shard=(1,))
    with pytest.raises(SourceError, match="fi/train"):
        read_source(SourceSpec("huggingface", path=str(root), hf_config="fi", hf_split="test"), tmp_path / "w")


def test_hf_repo_layout_and_hub_errors(tmp_path, monkeypatch):
    import httpx
    from huggingface_hub import HfApi, errors

    root = write_shards(tmp_path / "hub", rows_per_shard=(2, 2), config="fi", split="partial-train")
    names = ["README.md", "en/train/0000.parquet", "fi/partial-train/0000.parquet", "fi/partial-train/0001.parquet"]
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo, **kw: names)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda repo, name, **kw: str(root / name))
    spec = SourceSpec("huggingface", hf_repo="facebook/voxpopuli", hf_config="fi",
                      hf_revision="refs/convert/parquet", max_clips=3)
    assert spec.dataset_id() == "hf-facebook-voxpopuli-fi-train"
    assert len(read_source(spec, tmp_path / "work")) == 3

    response = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co"))
    for exc, expected in [(errors.GatedRepoError("x", response=response), "HF_TOKEN"),
                          (errors.RepositoryNotFoundError("x", response=response), "check dataset.hf_repo"),
                          (errors.OfflineModeIsEnabled("offline"), "bundled sample"),
                          (httpx.ConnectError("no route"), "bundled sample"),
                          # what huggingface_hub 1.x really raises here with no network (seen offline)
                          (pytest.importorskip("httpx2").ConnectError("[Errno -2] Name or service not known"),
                           "bundled sample")]:
        def fail(self, repo, exc=exc, **kw):
            raise exc
        monkeypatch.setattr(HfApi, "list_repo_files", fail)
        with pytest.raises(SourceError, match=expected) as info:
            read_source(spec, tmp_path / "work")
        assert "facebook/voxpopuli" in str(info.value)


def test_dataset_ids_are_stable_and_safe(tmp_path):
    folder = tmp_path / "My Voices!"
    folder.mkdir()
    a = SourceSpec("folder", path=str(folder)).dataset_id()
    assert a == SourceSpec("folder", path=str(folder)).dataset_id()
    assert a.startswith("folder-my-voices-") and len(a.rsplit("-", 1)[1]) == 8
    assert all(ch.isalnum() or ch in "-._" for ch in a)
    assert SourceSpec("sample").dataset_id() == "sample"
    assert SourceSpec("zip", path=str(tmp_path / "x.zip")).dataset_id().startswith("zip-x-")
    assert os.sep not in SourceSpec("huggingface", hf_repo="a/b", hf_config="c").dataset_id()
