"""The studio: app construction, password rules, charts, the Dataset tab's views, and a real
server driven through gradio_client (the bundled sample loaded end to end)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from audio_fixtures import write_clip, write_audio, test_config
from studio.logic import charts
from pipeline.data.source_spec import SourceError
from studio.auth import needs_password, resolve_credentials
from studio_server import start_studio


def small_manifest() -> pd.DataFrame:
    """Seven clips, three speakers; one unreadable clip with NaN measurements."""
    rows = [
        ("a1", "anna", 2.0, 30.0, "ok", ""), ("a2", "anna", 4.0, 28.0, "ok", ""),
        ("a3", "anna", 0.3, 25.0, "rejected", "too short (0.30 s < 0.6 s)"),
        ("b1", "bert", 3.0, 3.0, "rejected", "low SNR (3.0 dB < 5 dB)"),
        ("b2", "bert", 6.0, 35.0, "ok", ""),
        ("c1", "cia", 1.5, 22.0, "ok", ""),
        ("c2", "cia", math.nan, math.nan, "rejected", "unreadable audio: c2.wav: cannot decode"),
    ]
    frame = pd.DataFrame(rows, columns=["id", "speaker", "duration_s", "snr_db", "status", "reason"])
    return frame.assign(text=[f"lause {i}" for i in range(len(frame))], audio_path="x.wav")


# -- charts --------------------------------------------------------------------------------------
def test_speaker_overview_counts_clips_and_minutes_per_speaker():
    fig = charts.speaker_overview(small_manifest())
    assert isinstance(fig, go.Figure)
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {"accepted clips", "rejected clips", "usable minutes"}
    by_speaker = lambda trace: dict(zip(trace.x, trace.y))  # noqa: E731
    assert by_speaker(traces["accepted clips"]) == {"anna": 2, "bert": 1, "cia": 1}
    assert by_speaker(traces["rejected clips"]) == {"anna": 1, "bert": 1, "cia": 1}
    minutes = by_speaker(traces["usable minutes"])
    assert minutes["anna"] == pytest.approx(0.1) and minutes["bert"] == pytest.approx(0.1)
    assert list(traces["usable minutes"].x)[-1] == "cia"  # most usable minutes first


def test_duration_histogram_splits_status_and_skips_unmeasured_clips():
    fig = charts.duration_histogram(small_manifest())
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {"accepted", "rejected"}
    assert sorted(traces["accepted"].x) == [1.5, 2.0, 4.0, 6.0]
    assert sorted(traces["rejected"].x) == [0.3, 3.0]  # the NaN clip is left out


def test_snr_scatter_colours_by_status_or_speaker():
    by_status = charts.snr_scatter(small_manifest())
    assert [t.name for t in by_status.data] == ["accepted", "rejected"]
    assert all(t.type == "scatter" for t in by_status.data)  # SVG, not WebGL: renders headless
    assert sum(len(t.x) for t in by_status.data) == 6
    by_speaker = charts.snr_scatter(small_manifest(), color_by="speaker")
    assert [t.name for t in by_speaker.data] == ["anna", "bert", "cia"]
    with pytest.raises(ValueError, match="color_by"):
        charts.snr_scatter(small_manifest(), color_by="pitch")


def test_rejection_reasons_groups_by_category():
    fig = charts.rejection_reasons(small_manifest())
    assert dict(zip(fig.data[0].y, fig.data[0].x)) == {"too short": 1, "low SNR": 1, "unreadable audio": 1}
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tickformat == "d"  # whole clips only
    clean = small_manifest().query("status == 'ok'")
    assert charts.rejection_reasons(clean).data == ()  # a message instead of bars


def test_charts_accept_an_empty_manifest():
    empty = small_manifest().iloc[0:0]
    for fig in (charts.speaker_overview(empty), charts.duration_histogram(empty),
                charts.snr_scatter(empty), charts.rejection_reasons(empty)):
        assert isinstance(fig, go.Figure) and fig.data == () and fig.layout.annotations


# -- password rules -------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_localhost_runs_without_password(host):
    assert not needs_password(host)
    assert resolve_credentials(host, env={}) is None


def test_public_bind_generates_password_when_env_missing():
    first = resolve_credentials("0.0.0.0", env={})
    second = resolve_credentials("0.0.0.0", env={})
    assert first.user == "studio" and first.generated and len(first.password) >= 12
    assert first.password != second.password
    assert resolve_credentials("127.0.0.1", share=True, env={}).generated  # share link: public too


def test_public_bind_uses_password_from_env():
    creds = resolve_credentials("0.0.0.0", env={"STUDIO_PASSWORD": "s3cret-s3cret"})
    assert creds.password == "s3cret-s3cret" and not creds.generated
    assert creds.as_gradio_auth() == [("studio", "s3cret-s3cret")]


def test_main_reports_a_bad_config_without_traceback(tmp_path, capsys):
    from studio.__main__ import main

    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


# -- app and dataset views ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """A tiny folder dataset: three speakers, one broken clip."""
    root = tmp_path_factory.mktemp("voices")
    for s, speaker in enumerate(["aino", "eero", "liisa"]):
        for i in range(3 + s):
            write_clip(root, speaker, f"{speaker}{i}", text=f"Tämä on lause {i}.", seed=10 * s + i)
    write_audio(root / "aino" / "rikki.wav", np.zeros(10, dtype=np.float32))
    (root / "aino" / "rikki.lab").write_text("rikki")
    return root


@pytest.fixture(scope="module")
def voice_dataset(voices, tmp_path_factory):
    from pipeline.data.dataset import load_dataset
    from pipeline.data.source_spec import SourceSpec

    config = test_config(tmp_path_factory.mktemp("ws"))
    return load_dataset(SourceSpec(kind="folder", path=str(voices)), config)


def test_build_app_has_the_dataset_tab_and_its_elements(tmp_path, monkeypatch):
    import gradio as gr

    from studio.app import TABS, build_app

    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    demo = build_app(test_config(tmp_path))
    assert isinstance(demo, gr.Blocks)
    titles = [title for title, *_ in TABS]
    assert titles[0] == "Dataset" and len(set(titles)) == len(titles)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    for elem_id in ("load-dataset", "dataset-summary", "chart-speakers", "chart-snr", "clip-table",
                    "speaker-choice", "gallery-audio-0", "use-speaker", "rejected-table", "speaker-table"):
        assert elem_id in ids
    api_names = {fn.api_name for fn in demo.fns.values()}
    assert {"load_dataset", "open_selection", "filter_clips", "speaker_details", "use_speaker",
            "speaker_stats", "dataset_summary"} <= api_names


def test_gradio_temp_cache_is_bounded_and_the_login_gate_installed(tmp_path, monkeypatch):
    from studio.app import DELETE_CACHE, build_app, launch_options
    from studio.login_gate import LoginGate

    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    config = test_config(tmp_path)
    frequency, age = DELETE_CACHE
    assert 0 < frequency <= age <= 7 * 86400
    assert build_app(config, tabs=[]).delete_cache == DELETE_CACHE  # a Blocks setting in gradio 6
    options = launch_options(config)
    assert [m.cls for m in options["app_kwargs"]["middleware"]] == [LoginGate]
    assert options["ssr_mode"] is False


def test_make_spec_checks_required_fields():
    from studio.tabs.dataset_view import make_spec

    assert make_spec("sample", None, None, None, None, None, None, None, None, None, 50).max_clips == 50
    with pytest.raises(SourceError, match="folder"):
        make_spec("folder", "  ", None, None, None, None, None, None, None, None, 10)
    with pytest.raises(SourceError, match="zip"):
        make_spec("zip", None, None, None, None, None, None, None, None, None, 10)
    hf = make_spec("huggingface", None, None, "org/data", "", "", "", "audio", "sentence", "", 10)
    assert (hf.hf_config, hf.hf_split, hf.columns["speaker"]) == (None, "train", None)
    with pytest.raises(SourceError, match="Max clips"):
        make_spec("sample", None, None, None, None, None, None, None, None, None, 0)


def test_views_of_a_loaded_dataset(voice_dataset):
    from studio.tabs import dataset_view as view

    ds = voice_dataset
    numbers = view.summary_numbers(ds)
    assert (numbers["total"], numbers["accepted"], numbers["rejected"]) == (13, 12, 1)
    assert "12" in view.summary_html(ds) and "Rejection reasons" in view.summary_html(ds)
    limited = dataclasses.replace(ds, summary={**ds.summary, "selection": "using 3,000 of 10,000 clips"})
    assert "using 3,000 of 10,000 clips" in view.summary_html(limited)  # clips left out are said, never silent
    assert len(view.clip_table(ds.manifest)) == 13
    assert set(view.clip_table(ds.manifest, "eero")["speaker"]) == {"eero"}
    assert len(view.clip_table(ds.manifest, status="rejected")) == 1
    assert list(view.clip_table(ds.manifest, query="LAUSE 4")["id"]) == ["liisa/liisa4"]
    assert len(view.rejected_table(ds.manifest)) == 1
    choices = view.speaker_choices(ds)
    assert choices[0][1] == "liisa" and "recommended" in choices[0][0]  # most minutes first
    assert view.initial_speaker(ds, saved="eero") == "eero"
    assert view.initial_speaker(ds, saved="nobody") == ds.recommendation.speaker
    items = view.gallery_items(ds, "aino", seed=1)
    assert [path is not None for path, *_ in items] == [True, True, True]
    assert view.gallery_items(ds, "aino", seed=1) == items  # the same seed gives the same clips
    assert "Median pitch" in view.speaker_card_html(ds, "aino")


# -- a real server ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    studio = start_studio(tmp_path_factory.mktemp("studio-ws"))
    yield studio
    studio.stop()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


def _load(client, kind, folder=None):
    """The Load button: kind, folder, zip, HF repo/config/split/revision, columns, max clips, force."""
    return client.predict(kind, folder, None, "", "", "train", "", "audio", "text", "", 3000, False,
                          api_name="/load_dataset")


def test_server_loads_the_sample_and_reports_statistics(server, client):
    result = _load(client, "sample")
    dataset_id = result[0]
    assert dataset_id == "sample", result
    manifest = pd.read_parquet(server.workspace / "datasets" / "sample" / "manifest.parquet")
    summary = client.predict(dataset_id, api_name="/dataset_summary")
    assert summary["total"] == len(manifest)
    assert summary["accepted"] == int((manifest["status"] == "ok").sum())
    assert summary["rejected"] == summary["total"] - summary["accepted"]
    stats = client.predict(dataset_id, api_name="/speaker_stats")
    names = [row["speaker"] for row in stats["speakers"]]
    assert 4 <= len(names) <= 10 and set(names) == set(manifest["speaker"].astype(str))
    assert sum(row["clips"] for row in stats["speakers"]) == len(manifest)
    assert stats["recommendation"]["speaker"] in names and stats["recommendation"]["reason"]
    shown = next(v for v in result if isinstance(v, str) and v.startswith("**Recommended speaker"))
    assert stats["recommendation"]["speaker"] in shown
    dropdown = next(v for v in result if isinstance(v, dict) and "choices" in v)
    assert dropdown["value"] == stats["recommendation"]["speaker"]  # prefilled with the recommendation
    assert [value for _, value in dropdown["choices"]] == names  # most usable minutes first

    one = names[-1]
    table = client.predict(dataset_id, one, "all", "", api_name="/filter_clips")
    assert {row[1] for row in table["data"]} == {one}
    assert len(table["data"]) == int((manifest["speaker"].astype(str) == one).sum())

    details = client.predict(dataset_id, one, api_name="/speaker_details")
    audio = [value for value in details if isinstance(value, dict) and value.get("value")]
    assert len(audio) == 3, details  # three playable clips of that speaker
    for clip in audio:
        assert clip["label"].startswith(f"{one}/") and Path(clip["value"]).read_bytes()[:4] == b"RIFF"
    refused = client.predict(dataset_id, "nobody", api_name="/use_speaker")
    assert "note error" in refused and "nobody" in refused
    confirmation = client.predict(dataset_id, one, api_name="/use_speaker")
    assert one in confirmation and "error" not in confirmation
    saved = json.loads((server.workspace / "selection.json").read_text())
    assert saved == {"dataset_id": "sample", "speaker": one, "speakers": {"sample": one}}
    reopened = client.predict(api_name="/open_selection")  # what a browser reload does
    assert reopened[0] == "sample"


def test_server_loads_an_uploaded_zip(client, voices, tmp_path):
    from gradio_client import handle_file

    archive = shutil.make_archive(str(tmp_path / "voices"), "zip", root_dir=voices)
    result = client.predict("zip", None, handle_file(archive), "", "", "train", "", "audio", "text", "",
                            3000, False, api_name="/load_dataset")
    dataset_id = result[0]
    assert dataset_id.startswith("zip-voices"), result
    summary = client.predict(dataset_id, api_name="/dataset_summary")
    assert (summary["total"], summary["rejected"], summary["speakers"]) == (13, 1, 3)


def test_server_shows_source_errors_as_messages(client):
    result = _load(client, "folder", "/definitely/not/here")
    message = next(v for v in result if isinstance(v, str) and "note error" in v)
    assert "/definitely/not/here" in message and "Traceback" not in message


CANARY_RUN = "run-canary-4711"
ENDPOINT_NAMES = ("load_dataset", "speaker_stats", "dataset_summary", "open_selection", "show_run")


@pytest.fixture(scope="module")
def public_server(tmp_path_factory):
    """A studio bound to 0.0.0.0 (generated password) whose workspace holds one run."""
    workspace = tmp_path_factory.mktemp("public-ws")
    run_dir = workspace / "runs" / CANARY_RUN
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"id": CANARY_RUN, "status": "finished", "mode": "quick_lora"}))
    studio = start_studio(workspace, host="0.0.0.0")
    yield studio
    studio.stop()


def _password(studio) -> str:
    return (studio.workspace / "studio-password.txt").read_text().strip()


def test_public_server_writes_the_generated_password_to_a_private_file(public_server):
    path = public_server.workspace / "studio-password.txt"
    assert path.stat().st_mode & 0o777 == 0o600
    password = _password(public_server)
    assert len(password) >= 12
    assert str(path) in public_server.output() and password not in public_server.output()  # stdout is no TTY


def test_public_server_requires_the_password(public_server):
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    password = _password(public_server)
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(public_server.url + "config", timeout=10)
    assert denied.value.code == 401
    with pytest.raises(AuthenticationError):
        Client(public_server.url, verbose=False)
    with pytest.raises(ValueError, match="login"):
        Client(public_server.url, auth=("studio", "wrong"), verbose=False)
    authed = Client(public_server.url, auth=("studio", password), verbose=False)
    assert "/load_dataset" in authed.view_api(print_info=False, return_format="dict")["named_endpoints"]


def test_login_page_shows_nothing_but_the_login_form(public_server):
    import httpx

    anonymous = httpx.Client(base_url=public_server.url, timeout=30)
    page = anonymous.get("/")
    assert page.status_code == 200 and '"auth_required":true' in page.text
    responses = {path: anonymous.get(path) for path in
                 ("/", "/config", "/gradio_api/info", "/gradio_api/openapi.json", "/openapi.json",
                  "/gradio_api/runs", "/gradio_api/app_id", "/?view=api", "/gradio_api/info?all_endpoints=true")}
    for path, response in responses.items():
        text = response.text
        leaked = [word for word in (str(public_server.workspace), CANARY_RUN, *ENDPOINT_NAMES) if word in text]
        assert not leaked, f"{path} shows {leaked} before login"
        assert path.startswith("/?") or path == "/" or response.status_code == 401, path

    member = httpx.Client(base_url=public_server.url, timeout=30)
    login = member.post("/login", data={"username": "studio", "password": _password(public_server)})
    assert login.status_code == 200, login.text
    config = member.get("/config")
    assert config.status_code == 200 and CANARY_RUN in config.text  # the canary is really there
    assert "load_dataset" in member.get("/gradio_api/info").text and "load_dataset" in member.get("/").text


def test_failed_logins_are_logged_and_slowed_down(public_server):
    import httpx

    logged = lambda: public_server.output().count("failed login from 127.0.0.1")  # noqa: E731
    before = logged()
    guesser = httpx.Client(base_url=public_server.url, timeout=30)
    codes = [guesser.post("/login", data={"username": "studio", "password": f"guess-{i}-xyz"}).status_code
             for i in range(10)]
    assert codes[:5] == [400] * 5 and 429 in codes, codes
    refused = guesser.post("/login", data={"username": "studio", "password": _password(public_server)})
    if refused.status_code == 429:  # while refused, even the right password is refused
        assert int(refused.headers["Retry-After"]) >= 1 and "try again" in refused.json()["detail"]
        time.sleep(int(refused.headers["Retry-After"]) + 0.5)
    assert guesser.post("/login", data={"username": "studio",
                                        "password": _password(public_server)}).status_code == 200
    deadline = time.monotonic() + 10
    while logged() < before + codes.count(400) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert logged() == before + codes.count(400), public_server.output()[-3000:]  # one line per failure
    assert "guess-" not in public_server.output()
