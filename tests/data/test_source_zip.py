"""pipeline.data.sources' zip source: extraction into the work folder, entries that escape it or
that the file system cannot hold, symlinks, bombs and disk space, and what is kept."""

import stat
import zipfile

import pytest

from audio_fixtures import speech_like, wav_bytes
from pipeline.data.sources import extract_zip, read_source
from pipeline.data.source_spec import SourceError, SourceSpec


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
    clips = {c.id: c for c in read_source(SourceSpec("zip", path=str(archive)), work)}
    assert set(clips) == {"anna/a1", "bert/b1"}
    assert clips["anna/a1"].source_path.startswith(str(work / "extracted"))
    first = (work / "extracted" / "voices" / "anna" / "a1.wav").stat().st_mtime_ns
    read_source(SourceSpec("zip", path=str(archive)), work)      # second read reuses the extraction
    assert (work / "extracted" / "voices" / "anna" / "a1.wav").stat().st_mtime_ns == first


def test_zip_made_on_windows_keeps_its_speaker_folders(tmp_path):
    """Windows tools may write "\\" between folders: the speakers are still the folders."""
    audio = wav_bytes(speech_like(sr=16_000))
    archive = make_zip(tmp_path / "voices.zip", {
        "voices\\anna\\a1.wav": audio, "voices\\anna\\a1.lab": "Moi.", "voices\\anna\\": b"",
        "voices\\bert\\b1.wav": audio, "voices\\bert\\b1.lab": "Hei.",
    })
    clips = {c.id: c for c in read_source(SourceSpec("zip", path=str(archive)), tmp_path / "work")}
    assert set(clips) == {"anna/a1", "bert/b1"} and {c.speaker for c in clips.values()} == {"anna", "bert"}


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


# -- zip: names the file system cannot hold, bombs, disk space, what is kept ---------------------
def assert_no_server_path(message, tmp_path):
    assert str(tmp_path) not in message and "Traceback" not in message


def test_zip_entry_with_overlong_name_or_deep_path_is_a_source_error(tmp_path, monkeypatch):
    audio = wav_bytes(speech_like(sr=16_000))
    long_name = "v/anna/" + "a" * 300 + ".wav"
    deep_name = "v/" + "d/" * 2100 + "x.wav"
    for entry, expected in [(long_name, "longer than 255 bytes"), (deep_name, "nested too deep")]:
        archive = make_zip(tmp_path / "names.zip", {"v/anna/ok.wav": audio, "v/anna/ok.lab": "Moi.", entry: audio})
        with pytest.raises(SourceError, match=expected) as info:
            extract_zip(archive, tmp_path / "out")
        message = str(info.value)
        assert "names.zip" in message and entry[:40] in message and len(message) < 400
        assert_no_server_path(message, tmp_path)
    # should the file system still refuse a name (another limit), the OSError becomes a SourceError
    from pipeline.data import sources

    monkeypatch.setattr(sources, "_check_names", lambda *a: None)
    with pytest.raises(SourceError, match=r"too long for the file system") as info:
        extract_zip(make_zip(tmp_path / "names.zip", {long_name: audio}), tmp_path / "out")
    assert_no_server_path(str(info.value), tmp_path)
    assert not list(tmp_path.glob(".extract-*")) and not (tmp_path / "out").exists()


def test_zip_keeps_only_audio_transcripts_and_metadata(tmp_path):
    audio = wav_bytes(speech_like(sr=16_000))
    archive = make_zip(tmp_path / "mixed.zip", {
        "v/anna/a1.wav": audio, "v/anna/a1.lab": "Moi.", "v/bert/b1.flac": wav_bytes(speech_like(sr=16_000), fmt="FLAC"),
        "v/bert/b1.txt": "Hei.", "v/metadata.csv.bak": b"x", "v/readme.pdf": b"%PDF", "v/tool.exe": b"MZ",
    })
    work = tmp_path / "work"
    clips = read_source(SourceSpec("zip", path=str(archive)), work)
    kept = sorted(p.relative_to(work / "extracted").as_posix() for p in (work / "extracted").rglob("*")
                  if p.is_file() and not p.name.startswith("."))
    assert kept == ["v/anna/a1.lab", "v/anna/a1.wav", "v/bert/b1.flac", "v/bert/b1.txt"]
    assert len(clips) == 2
    (note,) = clips.notes
    assert note.startswith("skipped 3 files") and "v/readme.pdf" in note and "v/tool.exe" in note
    again = read_source(SourceSpec("zip", path=str(archive)), work)       # cached extraction: same note
    assert again.notes == clips.notes


def test_zip_bombs_are_refused_before_anything_is_written(tmp_path):
    single = tmp_path / "zeros.zip"
    with zipfile.ZipFile(single, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("v/anna/a1.wav", bytes(20 * 1024**2))
        zf.writestr("v/anna/a1.lab", "Moi.")
    assert single.stat().st_size < 100_000
    with pytest.raises(SourceError, match=r"entry 'v/anna/a1.wav' expands .* limit 100:1.*zip bomb") as info:
        extract_zip(single, tmp_path / "out")
    assert "MiB" in str(info.value) and " MB" not in str(info.value)
    assert_no_server_path(str(info.value), tmp_path)

    many = tmp_path / "many.zip"   # each entry below the per-entry threshold, the archive far above 100:1
    with zipfile.ZipFile(many, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):
            zf.writestr(f"v/anna/{i}.wav", bytes(512 * 1024))
    with pytest.raises(SourceError, match=r"many.zip expands .* zip bomb"):
        extract_zip(many, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".extract-*"))


def test_zip_larger_than_free_disk_is_refused_in_binary_units(tmp_path, monkeypatch):
    from pipeline.data import sources

    archive = make_zip(tmp_path / "voices.zip", {"v/anna/a1.wav": wav_bytes(speech_like(sr=16_000)),
                                                 "v/anna/a1.lab": "Moi."})
    monkeypatch.setattr(sources.shutil, "disk_usage", lambda path: __import__("collections").namedtuple(
        "usage", "total used free")(10 * 1024**3, 10 * 1024**3 - 300 * 1024**2, 300 * 1024**2))
    with pytest.raises(SourceError, match=r"only 300.0 MiB free \(keeping 512.0 MiB spare\)") as info:
        extract_zip(archive, tmp_path / "out")
    assert_no_server_path(str(info.value), tmp_path)
    big = make_zip(tmp_path / "big.zip", {f"a/{i}.lab": "x" * 1000 for i in range(5)})
    with pytest.raises(SourceError, match=r"4.9 KiB \(limit 3.9 KiB\)"):
        extract_zip(big, tmp_path / "out2", max_bytes=4000)


def test_zip_without_clips_names_the_zip_not_the_workspace(tmp_path):
    archive = make_zip(tmp_path / "empty.zip", {"docs/readme.txt": "nothing here"})
    with pytest.raises(SourceError, match="No audio files .* found in the zip empty.zip") as info:
        read_source(SourceSpec("zip", path=str(archive)), tmp_path / "work")
    assert_no_server_path(str(info.value), tmp_path)
