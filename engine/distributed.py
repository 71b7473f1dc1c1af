"""One process per device: torchrun environment, process group, samplers and reductions.

Without torchrun the same code runs as a world of one. Only rank 0 writes to the run directory.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .errors import BotError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str | None, local_rank: int = 0, world_size: int = 1) -> torch.device:
    if requested in (None, "", "auto"):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if world_size > 1 and requested.startswith("cuda:"):
        raise BotError(f"--device {requested}: under torchrun (--nproc) every process takes the GPU of its local rank; "
                       f"give --device cuda (choose GPUs with CUDA_VISIBLE_DEVICES)")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BotError(f"--device {requested}: no CUDA device is visible on this machine")
        if requested == "cuda":
            return torch.device("cuda", local_rank)
    elif requested not in ("cpu", "mps"):
        raise BotError(f"--device {requested!r}: use cpu, cuda, cuda:N or mps")
    return torch.device(requested)


def setup(requested_device: str | None = None) -> DistContext:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK, pick the device, and join the process group (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank, world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # cudnn.benchmark and TF32: per stage, engine/backends.py
    if world_size > 1 and not dist.is_initialized():
        backend = backend_for(device)
        if backend == "nccl":  # bound to its GPU: NCCL connects eagerly and never guesses the device
            dist.init_process_group(backend=backend, device_id=device)
        else:
            dist.init_process_group(backend=backend)
    return DistContext(rank, world_size, local_rank, device)


BACKENDS = ("nccl", "gloo")


def backend_for(device: torch.device) -> str:
    """NCCL on GPUs, gloo on CPUs; $BOT_DIST_BACKEND overrides it (gloo puts 2 ranks on one GPU, which NCCL
    refuses: benchmarks/gpu_check.py's 2-rank check on a one-GPU machine)."""
    override = os.environ.get("BOT_DIST_BACKEND", "").strip()
    if override and override not in BACKENDS:
        raise BotError(f"BOT_DIST_BACKEND={override!r}: use one of {', '.join(BACKENDS)}")
    return override or ("nccl" if device.type == "cuda" else "gloo")


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(requested_device: str | None = None):
    """`setup` for a command that is not a training stage (evaluate-detect, evaluate-seg): the context, and the
    process group destroyed when the command ends, however it ends."""
    try:
        yield setup(requested_device)
    finally:
        cleanup()


def all_reduce_sum(values: list[float] | torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a vector of numbers (e.g. correct counts, sample counts) over all ranks, in float64."""
    t = torch.as_tensor(values, dtype=torch.float64)
    if ctx.distributed:
        t = t.to(ctx.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def all_reduce_int(values, ctx: DistContext) -> torch.Tensor:
    """Sum a vector of integers (e.g. pixel counts) over all ranks, exactly, in int64 (on the CPU under gloo)."""
    t = torch.as_tensor(values, dtype=torch.int64)
    if ctx.distributed:
        t = t.to(ctx.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def all_gather_object(obj, ctx: DistContext) -> list:
    """Every rank's `obj` (picklable, small), in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, ctx: DistContext):
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj, ctx: DistContext) -> list:
    """Every rank's `obj` (any picklable value of our own making, e.g. numpy arrays), in rank order; [obj] alone."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def unshard(parts: list, size: int):
    """Per-rank arrays from a ShardSampler pass back in dataset order: rank r scored indices r, r + W, r + 2W, ..."""
    import numpy as np

    parts = [np.asarray(p) for p in parts]
    out = np.empty((size, *parts[0].shape[1:]), dtype=parts[0].dtype)
    for rank, part in enumerate(parts):
        out[rank::len(parts)] = part
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


@contextlib.contextmanager
def seeded_sample(seed: int, epoch: int, index: int):
    """Seed torch's CPU RNG for one sample's augmentation, and restore it after.

    Keyed by the (epoch, index) pair an EpochSampler yields, so a sample's augmentation does not depend on the
    worker that draws it or on where a run was resumed. Seeds the CPU generator only: torch.manual_seed would
    also queue a CUDA/XPU seeding with a captured traceback, a third of a 32 px sample's time.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(sample_seed(seed, epoch, index))
        yield


class EpochSampler(Sampler):
    """Training order for one rank: a seeded shuffle per epoch, sharded over ranks, resumable mid-epoch.

    Yields (epoch, index) pairs so that a dataset can seed each sample's augmentation from (seed, epoch, index),
    which makes a run's random augmentation independent of worker count and of where it was resumed.
    """

    def __init__(self, size: int, ctx: DistContext, seed: int, shuffle: bool = True, drop_last: bool = True, batch_size: int = 1):
        self.size, self.ctx, self.seed, self.shuffle = size, ctx, seed, shuffle
        # Every rank gets the same number of whole batches, so DDP never waits on a rank that ran out.
        per_rank = size // ctx.world_size
        self.per_rank = (per_rank // batch_size) * batch_size if drop_last else per_rank
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        return order[self.ctx.rank::self.ctx.world_size][: self.per_rank]

    def __iter__(self):
        for i in self.indices()[self.skip:]:
            yield (self.epoch, i)

    def __len__(self) -> int:
        return self.per_rank - self.skip


class ShardSampler(Sampler):
    """Evaluation order: every sample exactly once over all ranks (no padding), so reduced metrics are exact."""

    def __init__(self, size: int, ctx: DistContext):
        self.idx = list(range(size))[ctx.rank::ctx.world_size]

    def __iter__(self):
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)
