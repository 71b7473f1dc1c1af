"""A start-up check over many files on forked processes, for when the threads of engine/images.py cannot use the
cores: Pillow releases the GIL while it inflates a PNG, but the rest of each file's check (opening it, the plugin's
chunk parsing, the histogram's conversion, the per-file Python) holds it, about a quarter of an ADE20K mask's time.

Same contract as `engine.images.map_until_error`: results in item order up to the first failure, and that failure
(index, exception) in item order. The items go out in contiguous chunks, in order; at the first failed chunk the
pool is terminated, so a bad file early costs about one chunk per process more, not the whole pass. The function
and items reach the workers through fork (closures cannot be pickled; nothing is copied up front); only results
and exceptions travel back pickled. A worker dies with its parent (PR_SET_PDEATHSIG, engine/launch.py).
"""
from __future__ import annotations

import pickle

_TASK: tuple | None = None  # (fn, items) for the forked workers, set only while a pool runs


def wanted(n_items: int, min_items: int = 512) -> int:
    """Processes for a pass over `n_items`: this process's thread budget (train.threads, set before the checks),
    and 1 (threads in this process) for a pass too small to repay the forks, or off Linux (fork is Linux's safe
    default start method only)."""
    import sys

    import torch

    if n_items < min_items or not sys.platform.startswith("linux"):
        return 1
    return max(1, torch.get_num_threads())


def _init_worker() -> None:
    import signal

    from .launch import parent_death_signal
    parent_death_signal(signal.SIGKILL)


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _run_chunk(bounds: tuple[int, int]):
    fn, items = _TASK
    results = []
    for i in range(*bounds):
        try:
            results.append(fn(items[i]))
        except Exception as e:
            return results, (i, _picklable(e))
    return results, None


def map_processes(fn, items: list, processes: int, chunk: int = 64) -> tuple[list, tuple[int, BaseException] | None]:
    global _TASK
    import multiprocessing as mp

    bounds = [(s, min(s + chunk, len(items))) for s in range(0, len(items), chunk)]
    results: list = []
    _TASK = (fn, items)
    try:
        with mp.get_context("fork").Pool(processes, initializer=_init_worker) as pool:  # exit: terminate()
            for part, failure in pool.imap(_run_chunk, bounds):
                results += part
                if failure is not None:
                    return results, failure
    finally:
        _TASK = None
    return results, None
