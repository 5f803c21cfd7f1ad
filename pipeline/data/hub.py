"""Is the Hugging Face Hub reachable from here? Asked before any download, so that an offline
machine gets its answer in seconds instead of after the HTTP client's retries and timeouts."""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 3.0
_REMEMBER_S = 60.0  # one answer serves the calls of one action (a dataset's shards, a model's files)
_answers: dict[str, tuple[float, str | None]] = {}


class HubUnreachable(ConnectionError):
    """The Hub cannot be reached; the message says why in a few words."""


def _connect(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
        pass


def unreachable_reason() -> str | None:
    """None when a TCP connection to the Hub's endpoint opens within a few seconds, else why not
    (offline mode set, the name does not resolve, the connection is refused or times out)."""
    from huggingface_hub import constants

    # huggingface_hub reads the variable once at import; a later change counts too
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    remembered = _answers.get(f"{host}:{port}")
    if remembered and time.monotonic() - remembered[0] < _REMEMBER_S:
        return remembered[1]
    # name resolution has no timeout of its own: the whole probe runs under one deadline
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(_connect, host, port).result(timeout=PROBE_TIMEOUT_S + 0.5)
        reason = None
    except FutureTimeout:
        reason = f"no answer from {host} within {PROBE_TIMEOUT_S:.0f} s"
    except OSError as exc:
        reason = f"{host}: {exc.strerror or exc}"
    finally:
        pool.shutdown(wait=False)
    _answers[f"{host}:{port}"] = (time.monotonic(), reason)
    return reason


def require_hub() -> None:
    """Raise `HubUnreachable` at once when the Hub cannot be reached."""
    reason = unreachable_reason()
    if reason:
        raise HubUnreachable(f"the Hugging Face Hub is unreachable ({reason})")
