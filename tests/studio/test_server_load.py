"""The real studio server under concurrent use: 20 synthesis requests at once, all served."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from studio_server import start_studio

REQUESTS = 20


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    config_path = root / "launchable.yaml"
    config_path.write_text(yaml.safe_dump({"base_model": {"local_dir": str(tiny_checkpoint)},
                                           "studio": {"workspace": str(root / "workspace")}}))
    studio = start_studio(root / "workspace", config_path=config_path)
    yield studio
    studio.stop()


def _arguments(client, endpoint: str, text: str) -> dict:
    """Every parameter of `endpoint` at its default, with the text and a short frame cap."""
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"][endpoint]
    values = {}
    for parameter in info["parameters"]:
        name, label = parameter["parameter_name"], (parameter.get("label") or "").lower()
        values[name] = parameter.get("parameter_default") if parameter.get("parameter_has_default") else None
        if label.startswith("text"):
            values[name] = text
        elif "max" in label and ("frame" in label or "token" in label or "length" in label):
            values[name] = 16
    return values


def test_twenty_concurrent_synthesis_requests_are_all_served(server, tiny_checkpoint):
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    models = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert "/speak" in models, sorted(models)

    def speak(i: int):
        arguments = _arguments(client, "/speak", f"Hyvää huomenta, tämä on pyyntö numero {i + 1}.")
        return client.predict(api_name="/speak", **arguments)

    with ThreadPoolExecutor(REQUESTS) as pool:
        results = list(pool.map(speak, range(REQUESTS)))
    # outputs: the finished speech, its download, the message, the live player's stream
    audio_paths = [result[0] for result in results]
    messages = [str(result[2]) for result in results]
    assert all(audio_paths), messages
    assert not any("error" in m.lower() or "failed" in m.lower() for m in messages), messages
    assert len(set(map(str, audio_paths))) == REQUESTS  # one file each, none overwritten
    assert "Traceback" not in server.output()


def test_a_run_is_deleted_from_the_studio(server):
    from gradio_client import Client

    from pipeline.train.runs import update_run

    run_dir = server.workspace / "runs" / "20260101-000000-quick_lora"
    update_run(run_dir, id=run_dir.name, mode="quick_lora", status="finished")
    (run_dir / "artifacts").mkdir()
    (run_dir / "artifacts" / "adapter.zip").write_bytes(b"zip")
    client = Client(server.url, verbose=False)
    client.predict(api_name="/artifacts")
    client.predict(run_dir.name, False, api_name="/delete_run")  # not confirmed: nothing happens
    assert run_dir.exists()
    client.predict(run_dir.name, True, api_name="/delete_run")
    assert not run_dir.exists(), server.output()[-3000:]
