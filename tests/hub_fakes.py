"""Stand-ins for the Hub in tests: huggingface_hub's own error classes need a response object."""

from types import SimpleNamespace


def fake_response(status: int):
    return SimpleNamespace(status_code=status, headers={}, request=None)


def raising(exc):
    """A function that raises `exc` whatever it is called with (monkeypatched over a Hub call)."""
    def fake(*args, **kwargs):
        raise exc

    return fake
