"""Background warm-up of the Playground's first model at studio start."""

import threading

from studio.logic.playground import SynthCache
from studio.logic.warmup import WarmUp, warm_up_wanted


def test_warm_up_loads_once_and_the_first_request_reuses_it(tiny_checkpoint):
    cache = SynthCache(size=2, device="cpu")
    warm = WarmUp(cache)
    thread = warm.start(tiny_checkpoint)
    assert warm.state == "warming" and "background" in warm.describe()
    thread.join(timeout=120)
    assert warm.state == "ready" and "warm" in warm.describe()
    assert cache.loads == 1
    with cache.use(tiny_checkpoint) as synth:          # the first user request: no second load
        assert synth.speak("Hei maailma.", seed=1, max_new_tokens=8).audio.size > 0
    assert cache.loads == 1


def test_a_request_during_warm_up_waits_instead_of_loading_twice(tiny_checkpoint):
    cache = SynthCache(size=2, device="cpu")
    warm = WarmUp(cache)
    warm.start(tiny_checkpoint)
    done = threading.Event()

    def request():
        with cache.use(tiny_checkpoint):
            done.set()

    user = threading.Thread(target=request)
    user.start()
    user.join(timeout=120)
    warm.thread.join(timeout=120)
    assert done.is_set() and cache.loads == 1


def test_failed_warm_up_is_reported_not_raised(tmp_path):
    warm = WarmUp(SynthCache(size=1, device="cpu"))
    warm.start(tmp_path / "no-model").join(timeout=60)
    assert warm.state == "failed" and "first request" in warm.describe()


def test_only_on_gpu_unless_asked(monkeypatch):
    monkeypatch.setenv("STUDIO_WARMUP", "1")
    assert warm_up_wanted()
    monkeypatch.setenv("STUDIO_WARMUP", "0")
    assert not warm_up_wanted()
