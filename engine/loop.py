"""The training loop every stage shares, as one plain function you can read top to bottom.

A stage gives `fit` its model, optimiser, loader and two functions: `train_step(batch) -> (loss, n_images, logs)`
(the forward pass and the loss) and `evaluate() -> metrics`. `fit` owns the rest: the LR of every batch,
backward with loss scaling, the non-finite check, logging, progress, per-epoch evaluation and resume state,
which it writes every epoch and when SIGINT/SIGTERM asks the run to stop.
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import checkpoint
from .distributed import DistContext, EpochSampler
from .errors import BotError
from .precision import Precision
from .progress import Bar, report
from .rundir import RunDir
from .schedules import Schedule, set_lr


class Interrupt:
    """SIGINT/SIGTERM set a flag; the loop finishes its batch, saves resume state and stops."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def request(self, *_):
        self.requested = True

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self.request)
            except ValueError:  # not the main thread: leave handlers alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Interrupted(Exception):
    """The run stopped on request after saving its resume state."""


@dataclass
class Position:
    epoch: int = 0           # epochs fully done
    batch_in_epoch: int = 0  # batches done in the current epoch
    step: int = 0            # batches done in the whole run (the schedule's clock)
    best: dict = field(default_factory=dict)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def save_state(run: RunDir, model, optimizer, precision: Precision, pos: Position, generator=None, extra=None) -> None:
    if not run.enabled:
        return
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": precision.scaler.state_dict(),
        "epoch": pos.epoch, "batch_in_epoch": pos.batch_in_epoch, "step": pos.step,
        "rng": checkpoint.rng_state(generator),
        "extra": extra or {},
    }
    checkpoint.save(run.checkpoint_file, state)


def restore_state(run: RunDir, model, optimizer, precision: Precision, generator=None) -> tuple[Position, dict]:
    state = checkpoint.load(run.checkpoint_file)
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        precision.scaler.load_state_dict(state["scaler"])
    checkpoint.set_rng_state(state["rng"], generator)
    pos = Position(state["epoch"], state["batch_in_epoch"], state["step"])
    run.truncate_log(pos.step)
    return pos, state.get("extra", {})


def fit(*, model, optimizer, precision: Precision, schedule: Schedule, loader, sampler: EpochSampler,
        train_step: Callable, evaluate: Callable[[], dict], run: RunDir, ctx: DistContext, epochs: int,
        batch_size: int, eval_every: int = 1, log_every: int = 10, start: Position | None = None,
        generator: torch.Generator | None = None, extra_state: Callable[[], dict] | None = None,
        clip_grad: float = 0.0, on_step: Callable[[Position], None] | None = None) -> dict:
    """Train from `start` to `epochs`; return the last evaluation's metrics plus training throughput.

    `batch_size` is per rank; `on_step` runs after each optimiser step (tests use it to request an interrupt).
    """
    pos = start or Position()
    metrics: dict = {}
    images, train_seconds = 0, 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    with Interrupt() as interrupt:
        for epoch in range(pos.epoch, epochs):
            sampler.set_epoch(epoch, skip=pos.batch_in_epoch * batch_size)
            model.train()
            bar = Bar(len(loader), f"epoch {epoch + 1}/{epochs}", enabled=ctx.is_main)
            tic = time.perf_counter()
            loss_sum, loss_n = 0.0, 0
            try:
                for batch in loader:
                    lr = schedule(pos.step)
                    set_lr(optimizer, lr)
                    with precision.autocast():
                        loss, n, logs = train_step(batch)
                    loss_value = float(loss.detach())
                    if not math.isfinite(loss_value):
                        raise BotError(f"loss is {loss_value} at step {pos.step} (epoch {epoch + 1}): run stopped; "
                                       f"the last good resume state {run.checkpoint_file} is kept")
                    precision.backward_and_step(loss, optimizer, clip_grad, params)
                    pos.step += 1
                    pos.batch_in_epoch += 1
                    images += n * ctx.world_size
                    loss_sum, loss_n = loss_sum + loss_value, loss_n + 1
                    elapsed = train_seconds + time.perf_counter() - tic
                    bar.update(loss=loss_value, lr=lr, **{"img/s": images / max(elapsed, 1e-9)})
                    if pos.step % log_every == 0:
                        run.log({"epoch": epoch + 1, "step": pos.step, "lr": lr, "loss": loss_value,
                                 **{k: float(v) for k, v in logs.items()}})
                    if on_step is not None:
                        on_step(pos)
                    if interrupt.requested:
                        train_seconds += time.perf_counter() - tic
                        save_state(run, model, optimizer, precision, pos, generator, extra_state() if extra_state else None)
                        raise Interrupted(f"stopped at step {pos.step}; resume state saved to {run.checkpoint_file}")
            finally:
                bar.close()
            train_seconds += time.perf_counter() - tic
            pos.epoch, pos.batch_in_epoch = epoch + 1, 0
            record = {"epoch": epoch + 1, "step": pos.step, "lr": schedule(pos.step), "train_loss": loss_sum / max(loss_n, 1)}
            if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
                metrics = evaluate()
                record.update(metrics)
            run.log(record)
            report(f"epoch {epoch + 1}/{epochs}  " + "  ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items() if k not in ("epoch",)), ctx.is_main)
            save_state(run, model, optimizer, precision, pos, generator, extra_state() if extra_state else None)
    if not metrics:  # resumed after the last epoch's evaluation had already run
        metrics = evaluate()
    return {"metrics": metrics, "images_per_second": images / train_seconds if train_seconds > 0 else 0.0,
            "train_seconds": train_seconds}
