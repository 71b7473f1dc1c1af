"""The training loop every stage shares, as one plain function you can read top to bottom.

A stage gives `fit` its model, optimiser, loader and two functions: `train_step(batch) -> (loss, n_images, logs)`
(the forward pass and the loss) and `evaluate() -> metrics`. `fit` owns the rest: the LR of every batch,
backward with loss scaling, the non-finite check, logging, progress, per-epoch evaluation and resume state,
which it writes every epoch, every `checkpoint_every` steps or seconds within an epoch (train.checkpoint_every), and
when SIGINT/SIGTERM asks the run to stop.

Randomness inside a step (mixup, dropout, the detectors' proposal sampling) comes from the global RNGs, which
`fit` seeds from (seed, step, rank) before every step: a resumed run draws exactly what an uninterrupted one
would, on every rank, without saving any generator state. Losses are read back to the host every `check_every`
steps (not every step, which would stall a GPU), and a non-finite one stops the run with its step number.
"""
from __future__ import annotations

import math
import os
import random
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import checkpoint
from .distributed import DistContext, EpochSampler, sample_seed
from .errors import BotError
from .precision import Precision
from .progress import Bar, report
from .rundir import RunDir
from .status import StatusFile
from .schedules import Schedule, set_lr


class Interrupt:
    """SIGINT/SIGTERM set a flag; the loop finishes its batch, saves resume state and stops.

    Python runs a signal handler only when the main thread is back in the interpreter. A rank blocked in native code
    waiting for a peer that is gone (a collective, or a device sync on one, after another rank failed) never gets
    there, so the flag alone would turn torchrun's SIGTERM into a hang until its SIGKILL. A watcher thread reads the
    signal wakeup fd (written by the C-level handler from any thread): under torchrun, when the Python handler has
    not run `grace` seconds after a signal, the process says so in one line and exits 128 + signal at once, saving
    nothing (last.ckpt keeps the last saved state). GPU work is asynchronous, so a rank's host blocks that long only
    on a peer; a single process has no peer and always waits for the handler.
    """

    def __init__(self, grace: float | None = None, watch: bool | None = None):
        self.requested = False
        self._old = {}
        self._handled = threading.Event()
        self.grace = 5.0 if grace is None else grace
        self.watch = int(os.environ.get("WORLD_SIZE", "1")) > 1 if watch is None else watch
        self._pipe = None
        self._old_wakeup = -1

    def request(self, *_):
        self.requested = True
        self._handled.set()

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self.request)
            except ValueError:  # not the main thread: leave handlers alone
                pass
        if self.watch and self._old:
            read, write = os.pipe()
            os.set_blocking(write, False)  # the C handler must never block
            self._old_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
            self._pipe = (read, write)
            threading.Thread(target=self._watch, args=(read,), daemon=True, name="bot-signal-watch").start()
        return self

    def _watch(self, read: int) -> None:
        main = threading.main_thread().ident
        stops = {int(signal.SIGINT), int(signal.SIGTERM)}  # the fd also gets others (the DataLoader's SIGCHLD)
        try:
            sig = None
            while sig is None:
                data = os.read(read, 16)
                if not data:  # write end closed: the loop is over
                    return
                sig = next((b for b in data if b in stops), None)
            waited = 0.0
            while waited < self.grace:
                if _readable(read, 0.5) and os.read(read, 16) == b"":
                    return
                if not self._handled.is_set():  # the handler has not run: the main thread is stuck in native code
                    waited += 0.5
                else:  # it ran; the stop still meets the peers (agreement, resume state), which may be gone
                    waited = waited + 0.5 if _in_collective(sys._current_frames().get(main)) else 0.0
            os.write(2, (f"error: {signal.Signals(sig).name} while this process waited {self.grace:g} s on "
                         f"another process (a collective or a device sync; is a peer gone?): exiting without "
                         f"saving; resume from the last saved state\n").encode())
            os._exit(128 + sig)
        except OSError:
            return
        finally:
            try:
                os.close(read)
            except OSError:
                pass

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            os.close(self._pipe[1])  # the watcher's read returns b"" and it ends; it closes nothing else
            self._pipe = None


def _readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def _in_collective(frame) -> bool:
    """Whether the main thread's innermost Python frame is a collective (torch.distributed, bot's reductions)."""
    name = frame.f_code.co_filename.replace("\\", "/") if frame is not None else ""
    return "/torch/distributed/" in name or name.endswith("/engine/distributed.py")


class Interrupted(Exception):
    """The run stopped on request after saving its resume state."""


def seed_step(seed: int, step: int, rank: int, device: torch.device | None = None) -> None:
    """Seed the global RNGs for one training step from (seed, step, rank) alone."""
    value = sample_seed(seed + 7919, rank, step) % (2 ** 63)
    torch.default_generator.manual_seed(value)
    random.seed(value)
    if device is not None and device.type == "cuda":
        torch.cuda.manual_seed(value)


@dataclass
class Position:
    epoch: int = 0           # epochs fully done
    batch_in_epoch: int = 0  # batches done in the current epoch
    step: int = 0            # batches done in the whole run (the schedule's clock)
    best: dict = field(default_factory=dict)
    loss_sum: float = 0.0    # the losses of the batches done in the current epoch (its train_loss, across a resume)
    loss_n: int = 0


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network itself, inside torch.compile's OptimizedModule (`_orig_mod`) and DDP (`module`) in any nesting:
    resume state and weights keep the plain module's keys, so a run resumes compiled or not, in any process count."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def plain_keys(state: dict) -> dict:
    """A state dict saved through wrappers (by runs before unwrap knew torch.compile) with the plain module's keys."""
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(isinstance(k, str) and k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def params_finite(params) -> bool:
    """One host read for all parameters: False when any weight is NaN or infinite."""
    flags = [torch.isfinite(p.detach()).all() for p in params]
    return bool(torch.stack(flags).all()) if flags else True


def save_state(run: RunDir, model, optimizer, precision: Precision, pos: Position, extra=None, task: str = "") -> None:
    if not run.enabled:
        return
    state = {
        "task": task,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": precision.scaler.state_dict(),
        "epoch": pos.epoch, "batch_in_epoch": pos.batch_in_epoch, "step": pos.step,
        "epoch_loss": [pos.loss_sum, pos.loss_n] if pos.batch_in_epoch else [0.0, 0],
        "extra": extra or {},
    }
    checkpoint.save(run.checkpoint_file, state)


def restore_state(run: RunDir, model, optimizer, precision: Precision, task: str = "") -> tuple[Position, dict]:
    """Load last.ckpt into the model and optimiser; one line naming the file when it does not belong to this run."""
    path = run.checkpoint_file
    state = checkpoint.load(path)
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "step"} <= set(state):
        raise BotError(f"{path}: not a bot resume state (keys model, optimizer, epoch, step missing)")
    if task and state.get("task", task) != task:
        raise BotError(f"{path}: a resume state of a {state['task']} run, not of this {task} run")
    try:
        unwrap(model).load_state_dict(plain_keys(state["model"]))
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()
        raise BotError(f"{path}: does not fit this run's model ({first[1].strip() if len(first) > 1 else first[0]})") from None
    if state.get("scaler"):
        precision.scaler.load_state_dict(state["scaler"])
    loss_sum, loss_n = state.get("epoch_loss") or (0.0, 0)
    pos = Position(int(state["epoch"]), int(state["batch_in_epoch"]), int(state["step"]),
                   loss_sum=float(loss_sum), loss_n=int(loss_n))
    run.truncate_log(pos.step)
    return pos, state.get("extra", {})


def stop_requested(interrupt: Interrupt, ctx: DistContext, check_point: bool, save_due: bool = False
                   ) -> tuple[bool, bool]:
    """(stop, save) after this step. Under torchrun every rank must stop at the same step (a rank that stopped
    alone would leave the others waiting in an all-reduce), so ranks agree at check points, where they sync anyway;
    `save_due` (rank 0's clock says a timed checkpoint is due) rides on the same reduction, so all save together."""
    if not ctx.distributed:
        return interrupt.requested, save_due
    if not check_point:
        return False, False
    from .distributed import all_reduce_sum
    flags = all_reduce_sum([float(interrupt.requested), float(save_due and ctx.is_main)], ctx)
    return bool(flags[0] > 0), bool(flags[1] > 0)


class Diverged(BotError):
    """A non-finite loss or weight: the run stops, and the resume state on disk is the last good one."""


def fit(*, model, optimizer, precision: Precision, schedule: Schedule, loader, sampler: EpochSampler,
        train_step: Callable, evaluate: Callable[[], dict], run: RunDir, ctx: DistContext, epochs: int,
        batch_size: int, eval_every: int = 1, log_every: int = 10, start: Position | None = None, seed: int = 0,
        extra_state: Callable[[], dict] | None = None, clip_grad: float = 0.0, task: str = "",
        on_step: Callable[[Position], None] | None = None, checkpoint_every: tuple[int, float] = (0, 0.0),
        restart_hint: Callable[[float], str] | None = None) -> dict:
    """Train from `start` to `epochs`; return the last evaluation's metrics plus training throughput.

    `batch_size` is per rank; `on_step` runs after each optimiser step (tests use it to request an interrupt);
    `checkpoint_every` (steps, seconds; 0: never) adds resume states within an epoch, at every multiple of the steps
    and when the seconds have passed since the last save; `restart_hint(lr)` is the command that continues the run
    at that lr, for the divergence message.
    """
    pos = start or Position()
    saved = Position(pos.epoch, pos.batch_in_epoch, pos.step) if start is not None else None
    metrics: dict = {}
    images, train_seconds = 0, 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    # steps between host reads of the loss: every step on a CPU (free), at each log line on a GPU (one sync)
    check_every = 1 if ctx.device.type == "cpu" else max(1, log_every)
    pending: list[torch.Tensor] = []  # losses of the steps since the last host read
    status = StatusFile(run.path, run.enabled, task=task, epochs=epochs)  # progress.json, for bot demo's live view

    def check(epoch: int) -> list[float]:
        """Read the pending losses back (one sync); stop at the first non-finite one, naming its step."""
        if not pending:
            return []
        values = torch.stack(pending).float().cpu().tolist()
        first = pos.step - len(values)
        pending.clear()
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if ctx.distributed:
            # every rank stops at the same check point: one that raised alone would leave the others waiting in
            # their next all-reduce. Slot r holds rank r's first bad step + 1 (0: none).
            from .distributed import all_reduce_sum
            slots = [0.0] * ctx.world_size
            slots[ctx.rank] = float(first + bad + 1) if bad is not None else 0.0
            seen = [(r, int(s) - 1) for r, s in enumerate(all_reduce_sum(slots, ctx).tolist()) if s > 0]
            if seen and bad is None:
                rank, step = seen[0]
                raise Diverged(f"loss became non-finite on rank {rank} at step {step} (epoch {epoch + 1}): "
                               f"run stopped on every rank; " + kept())
        if bad is not None:
            where = f" on rank {ctx.rank}" if ctx.distributed else ""
            raise Diverged(f"loss is {values[bad]} at step {first + bad}{where} (epoch {epoch + 1}): run stopped; "
                           + kept())
        return values

    def kept() -> str:
        """Where the last good state is, and the advice that fits the cause: a smaller lr for a divergence; for an
        fp16 run whose loss scaler skipped steps before it, fp16's range is as likely a cause as the lr."""
        skipped = precision.skipped_steps()
        if skipped:
            cause = (f"the fp16 loss scaler skipped {skipped} step(s) with inf/NaN gradients by then, so fp16's "
                     f"range may be the cause rather than the learning rate: try --precision bf16 or fp32")
        if saved is None or not run.checkpoint_file.exists():
            where = "no resume state was written before it (it failed before the first checkpoint); "
            return where + (cause if skipped else f"start again at a smaller rate with: {hint()}")
        where = f"{run.checkpoint_file} keeps the last good state (epoch {saved.epoch}, step {saved.step}); "
        return where + (cause + " (a new run: --precision cannot change on --resume)" if skipped
                        else f"continue at a smaller rate with: {hint()}")

    def hint() -> str:
        smaller = f"{schedule.lr / 10:.3g}"
        return restart_hint(smaller) if restart_hint else f"--resume auto --lr {smaller}"

    every_steps, every_seconds = checkpoint_every
    last_save = time.monotonic()

    def save(epoch: int) -> None:
        nonlocal saved, last_save, loss_sum, loss_n
        values = check(epoch)
        loss_sum, loss_n = loss_sum + sum(values), loss_n + len(values)
        pos.loss_sum, pos.loss_n = loss_sum, loss_n
        if not params_finite(params):
            raise Diverged(f"weights became non-finite by step {pos.step} (epoch {epoch + 1}): run stopped; " + kept())
        save_state(run, model, optimizer, precision, pos, extra_state() if extra_state else None, task)
        saved = Position(pos.epoch, pos.batch_in_epoch, pos.step)
        last_save = time.monotonic()

    with Interrupt() as interrupt:
        for epoch in range(pos.epoch, epochs):
            sampler.set_epoch(epoch, skip=pos.batch_in_epoch * batch_size)
            epoch_end = pos.batch_in_epoch + len(loader)  # the epoch's last batch saves after its evaluation anyway
            model.train()
            bar = Bar(len(loader), f"epoch {epoch + 1}/{epochs}", enabled=ctx.is_main)
            if not status.state["batches"]:
                batches = pos.batch_in_epoch + len(loader)
                status.update(batches=batches, steps=epochs * batches)
            status.update(force=True, phase="train", epoch=epoch + 1, batch=pos.batch_in_epoch, step=pos.step)
            tic = time.perf_counter()
            loss_sum, loss_n = (pos.loss_sum, pos.loss_n) if pos.batch_in_epoch else (0.0, 0)
            try:
                for batch in loader:
                    lr = schedule(pos.step)
                    set_lr(optimizer, lr)
                    seed_step(seed, pos.step, ctx.rank, ctx.device)
                    with precision.autocast():
                        loss, n, logs = train_step(batch)
                    pending.append(loss.detach())
                    precision.backward_and_step(loss, optimizer, clip_grad, params)
                    pos.step += 1
                    pos.batch_in_epoch += 1
                    images += n * ctx.world_size
                    if pos.step % check_every == 0:
                        values = check(epoch)
                        loss_sum, loss_n = loss_sum + sum(values), loss_n + len(values)
                        elapsed = train_seconds + time.perf_counter() - tic
                        rate = images / max(elapsed, 1e-9)
                        bar.update(advance=len(values), loss=values[-1], lr=lr, **{"img/s": rate})
                        status.update(batch=pos.batch_in_epoch, step=pos.step, loss=values[-1], images_per_second=rate)
                        if pos.step % log_every == 0:
                            run.log({"epoch": epoch + 1, "step": pos.step, "lr": lr, "loss": values[-1],
                                     "images_per_second": rate, **{k: float(v) for k, v in logs.items()}})
                    if on_step is not None:
                        on_step(pos)
                    timed = bool(every_seconds) and time.monotonic() - last_save >= every_seconds
                    stop, save_now = stop_requested(interrupt, ctx, pos.step % check_every == 0, timed)
                    if stop:
                        train_seconds += time.perf_counter() - tic
                        save(epoch)
                        raise Interrupted(f"stopped at step {pos.step}; resume state saved to {run.checkpoint_file}")
                    if (save_now or (every_steps and pos.step % every_steps == 0)) and pos.batch_in_epoch < epoch_end:
                        save(epoch)
                values = check(epoch)
                loss_sum, loss_n = loss_sum + sum(values), loss_n + len(values)
            finally:
                bar.close()
            train_seconds += time.perf_counter() - tic
            pos.epoch, pos.batch_in_epoch = epoch + 1, 0
            record = {"epoch": epoch + 1, "step": pos.step, "lr": schedule(pos.step), "train_loss": loss_sum / max(loss_n, 1)}
            if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
                status.update(force=True, phase="evaluate", batch=status.state["batches"])
                metrics = evaluate()
                record.update(metrics)
                status.update(force=True, phase="train", metrics=metrics)
            run.log(record)
            report(f"epoch {epoch + 1}/{epochs}  " + "  ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items() if k not in ("epoch",)), ctx.is_main)
            save(epoch)
    if not metrics:  # resumed after the last epoch's evaluation had already run
        status.update(force=True, phase="evaluate")
        metrics = evaluate()
    status.update(force=True, phase="done", metrics=metrics)
    return {"metrics": metrics, "images_per_second": images / train_seconds if train_seconds > 0 else 0.0,
            "train_seconds": train_seconds}
