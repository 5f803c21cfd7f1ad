"""Per-item CPU work (decoding, measuring, resampling clips) over all cores, results in input order.

`map_in_processes` runs a picklable function over items in a process pool and returns the
results in the items' order, whatever order they finish in, so a parallel run gives exactly
what a serial one gives. A worker that dies (a decoder's segfault, the kernel's OOM killer)
breaks the whole pool in `concurrent.futures`; here the items it may have been running are
retried one by one in their own process, the one that kills its process again gets
`on_crash(item)`, and every other item still gets its result.

The number of workers: the `workers` argument, else `PIPELINE_WORKERS` in the environment,
else the cores this process may use; 1 runs serially in this process (the comparison point).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

WORKERS_ENV = "PIPELINE_WORKERS"
PARALLEL_MIN_ITEMS = 16  # below this, starting the processes costs more than they save


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_count(workers: int | None = None) -> int:
    """`workers`, else PIPELINE_WORKERS, else all available cores; at least 1."""
    if workers is None:
        raw = os.environ.get(WORKERS_ENV, "").strip()
        if raw:
            try:
                workers = int(raw)
            except ValueError:
                raise ValueError(f"{WORKERS_ENV}={raw!r} in the environment is not a whole number of "
                                 "worker processes; set it to e.g. 1 (serial) or 8, or unset it") from None
        else:
            workers = available_cores()
    return max(1, int(workers))


def _context():
    # forkserver: children start from a clean single-threaded server, so a lock held by another
    # thread of this process (the studio's server, CUDA) cannot deadlock them, as fork could
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def map_in_processes(fn: Callable[[Any], Any], items: Sequence, workers: int | None = None,
                     on_done: Callable[[int], None] | None = None,
                     on_crash: Callable[[Any], Any] | None = None) -> list:
    """[fn(item) for item in items], computed by `workers` processes (see the module doc).

    `on_done(n)` is called in this process each time another item has finished (n so far).
    `on_crash(item)` gives the result of an item whose process died twice (default: re-raise).
    Exceptions raised by `fn` itself propagate; `fn` should turn per-item failures into results.
    """
    items = list(items)
    workers = min(worker_count(workers), len(items))
    done_count = [0]

    def finished() -> None:
        done_count[0] += 1
        if on_done:
            on_done(done_count[0])

    if workers <= 1 or len(items) < PARALLEL_MIN_ITEMS:
        results = []
        for item in items:
            results.append(fn(item))
            finished()
        return results

    results: dict[int, Any] = {}
    pending = list(range(len(items)))
    while pending:
        suspects = _run_pool(fn, items, pending, workers, results, finished)
        pending = [i for i in pending if i not in results]
        if not pending:
            break
        # Work is taken from the queue in order, so whatever was running when the pool broke is
        # among the first `workers` unfinished items: retry those alone, the rest in a new pool.
        for index in [i for i in pending if i in suspects][:workers]:
            results[index] = _run_alone(fn, items[index], on_crash)
            finished()
        pending = [i for i in pending if i not in results]
    return [results[i] for i in range(len(items))]


def _run_pool(fn, items, indices: list[int], workers: int, results: dict, finished) -> set[int]:
    """Run `indices` in one pool until all finish or the pool breaks; returns the suspects."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=_context()) as pool:
        try:
            return _collect(pool, fn, items, indices, workers, results, finished)
        except BaseException:  # a cancel or an error: drop the queued items instead of finishing them
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _collect(pool, fn, items, indices: list[int], workers: int, results: dict, finished) -> set[int]:
    """Submit `indices` and gather their results; the suspects when the pool broke, else none.
    as_completed waits on every future once: a wait(FIRST_COMPLETED) per result would walk all
    the pending futures each time, quadratic in the clips (seconds of the main thread at 3,000)."""
    futures = {pool.submit(fn, items[i]): i for i in indices}
    broken = False
    for future in as_completed(futures):
        try:
            results[futures[future]] = future.result()
        except BrokenProcessPool:  # every unfinished future of a broken pool ends so, at once
            broken = True
            continue
        finished()
    if broken:
        unfinished = [i for i in indices if i not in results]
        return set(unfinished[:workers])
    return set()


def _run_alone(fn, item, on_crash):
    """One item in a fresh single process; `on_crash(item)` when that process dies too."""
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=_context()) as pool:
            return pool.submit(fn, item).result()
    except BrokenProcessPool:
        if on_crash is None:
            raise
        return on_crash(item)
