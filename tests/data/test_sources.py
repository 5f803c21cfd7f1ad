"""pipeline.data.sources: folder layouts, LJSpeech csv, Hugging Face parquet, local parquet, max_clips
(the zip source: test_source_zip.py)."""

import os

import pandas as pd
import pytest

from audio_fixtures import speech_like, wav_bytes, write_audio, write_clip
from pipeline.data.sources import MISSING_TRANSCRIPT, read_folder, read_source
from pipeline.data.source_spec import SourceError, SourceSpec


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


def test_hf_hub_fetches_only_needed_shards_and_local_picks_across_speakers(tmp_path, monkeypatch, hub_reachable):
    from huggingface_hub import HfApi

    root = write_shards(tmp_path / "hub", fmt="FLAC")
    names = [f"fi/train/{i:04d}.parquet" for i in range(3)]
    fetched = []
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo, **kw: names)
    monkeypatch.setattr("huggingface_hub.hf_hub_download",
                        lambda repo, name, **kw: fetched.append(name) or str(root / name))
    spec = SourceSpec("huggingface", hf_repo="someone/fi", hf_config="fi", hf_split="train", max_clips=6)
    clips = read_source(spec, tmp_path / "work")
    assert len(clips) == 6 and fetched == names[:2]          # 8 rows in 2 shards are enough for 6
    assert clips.available == 8 and "using 6 of 8 clips" in clips.selection
    assert [c.speaker for c in clips].count("spk0") == 3 and len({c.id for c in clips}) == 6
    first = clips[0].source_path
    assert first.startswith(str(tmp_path / "work" / "extracted")) and first.endswith(".flac")
    with open(first, "rb") as fh:
        assert fh.read(4) == b"fLaC"

    local = SourceSpec("huggingface", path=str(root), hf_config="fi", hf_split="train", max_clips=6)
    clips = read_source(local, tmp_path / "work2")   # on disk: the pick spans every shard
    assert [c.text for c in clips] == [f"Lause numero {n}." for n in (0, 1, 4, 5, 8, 9)]
    assert [c.speaker for c in clips] == ["spk0", "spk1"] * 3 and clips.available == 12
    assert local.dataset_id().startswith("hf-hub-fi-train-")


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


def test_hf_repo_layout_and_hub_errors(tmp_path, monkeypatch, hub_reachable):
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


# -- max_clips: spread over speakers ---------------------------------------------------------------
def test_balanced_indices_keeps_every_speaker():
    from pipeline.data.source_spec import balanced_indices

    counts = {"a": 4000, "b": 3000, "c": 2000, "d": 900, "e": 100}
    speakers = [s for s, n in sorted(counts.items()) for _ in range(n)]
    picked = balanced_indices(speakers, 3000)
    assert len(picked) == 3000 and picked == sorted(set(picked))
    per = pd.Series([speakers[i] for i in picked]).value_counts().to_dict()
    assert per == {"a": 725, "b": 725, "c": 725, "d": 725, "e": 100}
    assert balanced_indices(speakers, 3000) == picked                      # deterministic
    a_rows = [i for i in picked if speakers[i] == "a"]
    assert a_rows[0] == 0 and a_rows[-1] > 3900                            # spread through the speaker's clips
    assert balanced_indices(["x", "y"], 5) == [0, 1]
    assert len(balanced_indices([str(i % 7) for i in range(100)], 3)) == 3


def test_folder_over_max_clips_samples_across_speakers_and_says_so(tmp_path):
    root = tmp_path / "voices"
    for speaker in ("anna", "bert", "cecilia", "daniel", "eero"):
        for i in range(4):
            write_clip(root, speaker, f"c{i}", f"Lause {i}.")
    clips = read_source(SourceSpec("folder", path=str(root), max_clips=10), tmp_path / "work")
    assert len(clips) == 10 and clips.available == 20
    assert pd.Series([c.speaker for c in clips]).value_counts().to_dict() == dict.fromkeys(
        ["anna", "bert", "cecilia", "daniel", "eero"], 2)
    assert clips.selection.startswith("using 10 of 20 clips") and "5 speakers" in clips.selection
    assert read_source(SourceSpec("folder", path=str(root)), tmp_path / "work").selection == ""


# -- local parquet: a file, a folder of files, a Hub-layout folder -----------------------------------
def voxpopuli_table(first: int, count: int, speakers=("1001", "1002", "1003")):
    """Rows in VoxPopuli's parquet-conversion schema (audio {bytes, path}, raw/normalized text, speaker_id)."""
    import pyarrow as pa

    audio = [{"bytes": wav_bytes(speech_like(sr=16_000, seed=n), 16_000), "path": f"fi_{n}.wav"}
             for n in range(first, first + count)]
    return pa.table({
        "audio_id": [f"id{n}" for n in range(first, first + count)],
        "language": [14] * count,
        "audio": pa.array(audio, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "raw_text": [f"Lause numero {n}." for n in range(first, first + count)],
        "normalized_text": [f"lause numero {n}" for n in range(first, first + count)],
        "gender": ["female"] * count,
        "speaker_id": [speakers[n % len(speakers)] for n in range(first, first + count)],
        "is_gold_transcript": [True] * count,
    })


def write_parquet_layouts(tmp_path):
    import pyarrow.parquet as pq

    single = tmp_path / "single" / "export.parquet"
    single.parent.mkdir()
    pq.write_table(voxpopuli_table(0, 6), single)
    flat = tmp_path / "flat"
    flat.mkdir()
    pq.write_table(voxpopuli_table(0, 3), flat / "part-a.parquet")
    pq.write_table(voxpopuli_table(3, 3), flat / "part-b.parquet")
    hub = tmp_path / "voxpopuli"
    (hub / "fi").mkdir(parents=True)
    pq.write_table(voxpopuli_table(0, 6), hub / "fi" / "train-00000-of-00001.parquet")
    pq.write_table(voxpopuli_table(100, 2), hub / "fi" / "test-00000-of-00001.parquet")
    (hub / "README.md").write_text("VoxPopuli parquet conversion")
    return single, flat, hub


@pytest.mark.parametrize("layout", ["single", "flat", "hub"])
def test_local_parquet_as_a_folder_source(tmp_path, layout):
    from pipeline.data.sources import is_parquet_source

    single, flat, hub = write_parquet_layouts(tmp_path)
    path = {"single": single, "flat": flat, "hub": hub}[layout]
    assert is_parquet_source(path)
    spec = SourceSpec("folder", path=str(path), max_clips=100)   # what the studio's folder form builds
    clips = read_source(spec, tmp_path / "work")
    assert [c.text for c in clips] == [f"Lause numero {n}." for n in range(6)]    # train only, not test
    assert [c.speaker for c in clips] == ["1001", "1002", "1003"] * 2
    assert all(c.problem is None for c in clips)
    with open(clips[0].source_path, "rb") as fh:
        assert fh.read(4) == b"RIFF"
    assert clips[0].source_path.startswith(str(tmp_path / "work" / "extracted"))
    assert spec.dataset_id().startswith("folder-")


def test_parquet_with_plain_binary_audio_cells(tmp_path):
    """Some exports store the encoded file itself in a binary column, not the {bytes, path} struct."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = voxpopuli_table(0, 3)
    plain = pa.array([cell["bytes"] for cell in table.column("audio").to_pylist()], type=pa.binary())
    table = table.set_column(table.schema.get_field_index("audio"), "audio", plain)
    path = tmp_path / "plain" / "export.parquet"
    path.parent.mkdir()
    pq.write_table(table, path)
    clips = read_source(SourceSpec("folder", path=str(path)), tmp_path / "work")
    assert len(clips) == 3 and all(c.problem is None for c in clips)
    with open(clips[0].source_path, "rb") as fh:
        assert fh.read(4) == b"RIFF"


def test_local_parquet_from_config_and_its_errors(tmp_path):
    from pipeline.config import Config

    _, _, hub = write_parquet_layouts(tmp_path)
    config = Config().with_overrides({"dataset.source": "folder", "dataset.path": str(hub),
                                      "dataset.columns.text": "normalized_text", "dataset.max_clips": 4})
    clips = read_source(SourceSpec.from_config(config), tmp_path / "work")   # hf_config: fi from the defaults
    assert [c.text for c in clips] == [f"lause numero {n}" for n in range(4)]  # 1001 twice, the others once
    assert {c.speaker for c in clips} == {"1001", "1002", "1003"} and clips.available == 6

    import pyarrow.parquet as pq
    (hub / "sv").mkdir()
    pq.write_table(voxpopuli_table(0, 2), hub / "sv" / "train-00000-of-00001.parquet")
    with pytest.raises(SourceError, match=r"several configs \(fi, sv\)"):
        read_source(SourceSpec("folder", path=str(hub)), tmp_path / "work")
    assert len(read_source(SourceSpec("folder", path=str(hub), hf_config="sv"), tmp_path / "w2")) == 2
    with pytest.raises(SourceError, match=r"columns.speaker = 'spk'.*speaker_id"):
        read_source(SourceSpec("folder", path=str(hub / "fi"),
                               columns={"audio": "audio", "text": "raw_text", "speaker": "spk"}), tmp_path / "w3")


def test_local_parquet_given_as_a_repository(tmp_path):
    _, _, hub = write_parquet_layouts(tmp_path)
    spec = SourceSpec("huggingface", hf_repo=str(hub), hf_config="fi")
    assert spec.path == str(hub) and spec.hf_repo is None
    assert len(read_source(spec, tmp_path / "work")) == 6
    with pytest.raises(SourceError, match="not a Hugging Face repository id"):
        read_source(SourceSpec("huggingface", hf_repo="not a repo!", hf_config="fi"), tmp_path / "work")


def test_parquet_folder_fingerprint_follows_the_column_mapping(tmp_path):
    from pipeline.data.sources import source_fingerprint

    _, flat, _ = write_parquet_layouts(tmp_path)
    spec = SourceSpec("folder", path=str(flat))
    other = SourceSpec("folder", path=str(flat), columns={"audio": "audio", "text": "normalized_text",
                                                         "speaker": "speaker_id"})
    assert source_fingerprint(spec) != source_fingerprint(other)
