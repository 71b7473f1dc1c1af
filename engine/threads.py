"""CPU threads per process (`train.threads`): set before any work and recorded, so that a run computes the same
numbers wherever and however often it is started.

The thread count changes results, not only speed: a CPU kernel splits its reductions by thread, and torchrun
sets OMP_NUM_THREADS=1 only when a node runs more than one process, so `--nproc 2` and 2 nodes x 1 process used
to differ in most tensors. `auto` resolves once, on the first start, to $OMP_NUM_THREADS where the user set it
(bot's own `--nproc` sets it to cores / N for its workers, so torchrun's blanket 1 never applies), else the cores
this process may use divided by the processes on this node (torchrun's LOCAL_WORLD_SIZE). The number is written
into config.yaml, so a resume or a torchrun restart uses it again; give `--set train.threads=K` to make different
topologies (`--nproc N` against N nodes x 1) compute alike.
"""
from __future__ import annotations

import os


def cores() -> int:
    """The CPUs this process may run on (its affinity mask: taskset, SLURM's cgroup cpusets), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def env_threads(environ=os.environ) -> int | None:
    value = environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


def resolve(value, environ=os.environ) -> int:
    """`train.threads` as a number: itself, or for `auto` $OMP_NUM_THREADS, else cores / local processes."""
    if value not in (None, "auto"):
        return int(value)
    local = int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return env_threads(environ) or max(1, cores() // max(1, local))


def apply(threads: int) -> None:
    """This process's intra-op threads, and OMP_NUM_THREADS for anything it starts."""
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


# DataLoader workers per process for `data.workers: auto`. On CUDA the GPU waits on decoding: one worker gives 250-380
# img/s (benchmarks/pretrain_throughput.py), so 4 capped a GPU near 1-1.5k img/s, under the 3,000 img/s target; every
# core of this process's share but one (the training process's own loop) decodes, up to 16 (past which a node's
# memory for prefetched batches grows and the rate stops rising). On a CPU the training threads use those cores and
# workers compete with them: 4, as before.
CPU_WORKERS, MAX_CUDA_WORKERS = 4, 16


def resolve_workers(value, device: str, environ=os.environ) -> int:
    """`data.workers` as a number: itself, or for `auto` the rule above for `device` (train.device; auto: CUDA when
    one is visible)."""
    if value not in (None, "auto"):
        return int(value)
    if device in (None, "", "auto"):
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not str(device).startswith("cuda"):
        return CPU_WORKERS
    local = int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(MAX_CUDA_WORKERS, cores() // max(1, local) - 1))
