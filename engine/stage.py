"""One lifecycle for the three training stages (pretrain, finetune-detect, finetune-seg), command line to summary.

`launch` does, for every stage alike and before any work starts:
  1. the configuration: defaults (+ the stage's synthetic overlay), CLI options, `--set` pairs, then every value's
     type and range checked (engine/schema.py); on a resume, the run's own config.yaml: options and `--set` keys
     equal to its values are accepted, and only the safe overrides (RESUME_OVERRIDES: lr, workers, device, eval,
     log and checkpoint cadence) may differ;
  2. the run-directory policy (`--resume auto`: one command line for a first start and every restart): a folder
     without a run starts one; an unfinished run is continued with `--resume` or `--resume auto`, refused
     without; a finished one is reported, not redone;
  3. writability of the run directory and of the synthetic-data cache, a lock on the run directory (released by the
     OS when the process dies, so a stale lock never blocks), and removal of temporaries a killed run left.
Then it sets up the process group and hands the stage a `Session`: DDP wrap, per-rank batch, DataLoaders with
their own generators, resume state, `fit`, wall time across resumes, and the summary written last.
"""
from __future__ import annotations

import fcntl
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml

from . import backends
from . import distributed as dist
from . import threads
from .shared_dir import check_shared
from .config import apply_options, apply_sets, migrate
from .errors import BotError, first_line
from .loop import fit, restore_state
from .precision import Precision
from .progress import report
from .rundir import RunDir, versions, writable_folder_problem
from .schema import flatten, validate
from .tensorboard import check_setting as check_tensorboard

# What may change when a run is continued: where and how fast it runs, not what it computes (lr is allowed so that
# a diverged run can go on at a lower rate; compile changes rounding only, and resume state has the plain keys).
RESUME_OVERRIDES = ("train.lr", "data.workers", "train.device", "train.eval_every", "train.log_every",
                    "train.tensorboard", "train.compile", "train.checkpoint_every")
RESUME_MODES = ("auto", "must")  # --resume auto | --resume (must: there has to be a run to continue)
KILL_AT_STEP_ENV, KILL_MARKER_ENV = "BOT_TEST_KILL_AT_STEP", "BOT_TEST_KILL_MARKER"


@dataclass
class StageDef:
    task: str                                         # pretrain | detect | segment (summary.json's task)
    command: str                                      # the CLI command, for messages
    option_keys: dict[str, str]                       # CLI option name -> config key
    defaults: Callable[[dict, tuple], dict]           # (given options as config keys, sets) -> defaults + overlays
    schema: Callable[[], dict]                        # config key -> engine.schema.Spec
    check: Callable[[dict], None] = lambda cfg: None  # cross-key checks after types and ranges
    default_out: Callable[[dict], Path] = lambda cfg: Path("runs/run")
    cache_dir: Callable[[dict], Path | None] = lambda cfg: None  # where synthetic data will be written, if any
    renamed: dict = field(default_factory=dict)       # old key -> present key
    upgrade: Callable[[dict], None] = lambda cfg: None  # turn an older config.yaml's values into today's meaning
    cudnn_benchmark: bool = True                      # training's input shapes repeat (fixed crops): autotune them
    eval_benchmark: bool = True                       # evaluation's too (engine/backends.py)


def optimizer_options(device: torch.device) -> dict:
    """SGD's options on `device`: the fused kernel on CUDA (one launch for all parameters, and it reads GradScaler's
    inf flag on the device, where foreach SGD needs a host read of it every step). Fused SGD would leave its momentum
    buffers uninitialised when loss scaling skips its first step; engine/precision.py creates them as zeros first
    (docs/design.md section 7, "CUDA paths")."""
    return {"fused": True} if device.type == "cuda" else {}


def rank_local_buffers(model: torch.nn.Module) -> bool:
    """Whether DDP must broadcast rank 0's buffers before every forward: only when BatchNorm layers update running
    statistics from each rank's own shard (plain BN), so that every rank evaluates with rank 0's, the ones saved.
    Frozen BN (detection's default, segmentation's `frozen` backbone), SyncBN (statistics of the global batch) and
    every other buffer (anchors, masks) are identical on every rank by construction: the same seed and weights, never
    updated or updated identically, so re-sending them each forward would only cost a collective per step."""
    from torch.nn.modules.batchnorm import _BatchNorm
    return any(isinstance(m, _BatchNorm) and not isinstance(m, torch.nn.SyncBatchNorm) and m.track_running_stats
               for m in model.modules())


def flag_of(stage: StageDef, key: str) -> str:
    for option, k in stage.option_keys.items():
        if k == key:
            return "--" + option.replace("_", "-")
    return f"--set {key}"


def fresh_config(stage: StageDef, options: dict, sets=()) -> dict:
    keyed = {stage.option_keys[k]: v for k, v in options.items() if v is not None}
    cfg = stage.defaults(keyed, tuple(sets))
    origins: dict = {}
    apply_options(cfg, keyed, origins, {k: flag_of(stage, k) for k in keyed})
    apply_sets(cfg, sets, origins=origins, renamed=stage.renamed)
    validate(cfg, stage.schema(), origins)
    stage.check(cfg)
    return cfg


def given_config(stage: StageDef, options: dict, sets=()) -> dict:
    """The config a fresh run would get from these options, types and ranges checked, without the stage's
    cross-key checks (a resumed run is compared with it, key by key, and need not be startable from it alone)."""
    from .progress import quiet
    keyed = {stage.option_keys[k]: v for k, v in options.items() if v is not None}
    with quiet():
        cfg = stage.defaults(dict(keyed), tuple(sets))
    origins: dict = {}
    apply_options(cfg, keyed, origins, {k: flag_of(stage, k) for k in keyed})
    apply_sets(cfg, sets, origins=origins, renamed=stage.renamed)
    validate(cfg, stage.schema(), origins)
    return cfg


# Keys whose `auto` is resolved once, when the run starts, and recorded as a number in config.yaml: `auto` beside a
# resume means "what the run recorded", on whatever machine the restart lands (a requeue may land on other cores).
RESOLVED_AT_START = ("train.threads",)


def same_value(key: str, given, stored) -> bool:
    return given == stored or (key in RESOLVED_AT_START and given == "auto")


def get_key(cfg: dict, dotted: str, missing=None):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return missing
        node = node[part]
    return node


def resumed_config(stage: StageDef, out: Path, options: dict, sets=()) -> dict:
    """The run's own config.yaml, checked like a fresh one. Options and `--set` keys beside a resume are compared,
    key by key, with the values the same command line would give a fresh run: equal ones are accepted (the first
    start's command line resumes as it is), RESUME_OVERRIDES may differ, any other difference is refused."""
    run = RunDir(out, enabled=False)
    try:
        cfg = yaml.safe_load(run.config_file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise BotError(f"{run.config_file}: cannot read the run's config ({first_line(e, 100)})") from None
    if not isinstance(cfg, dict):
        raise BotError(f"{run.config_file}: not a bot config (expected a mapping)")
    migrate(cfg, stage.renamed)
    stage.upgrade(cfg)
    specs = stage.schema()
    flat = flatten(cfg)
    unknown = [k for k in flat if k not in specs and not any(s.startswith(k + ".") for s in specs)
               and not any(k.startswith(s + ".") for s in specs)  # inside a free-form value (model.normalize)
               and k.split(".")[0] not in ("recipe", "requires", "description")]
    missing = [k for k in specs if k not in flat and not any(k.startswith(f + ".") for f in flat)]
    if unknown or len(missing) > len(specs) // 2:
        raise BotError(f"{run.config_file}: not a {stage.command} run's config (unknown key {(unknown or missing)[0]!r})")
    # keys added since the run was written take the defaults of this run's own recipe and data (the synthetic
    # overlay only for a synthetic run)
    base = run_defaults(stage, flat) if missing else {}
    for k in missing:
        node, default = cfg, base
        for part in k.split(".")[:-1]:
            node, default = node.setdefault(part, {}), default[part]
        node[k.split(".")[-1]] = default[k.split(".")[-1]]
    file_origins = {k: str(run.config_file) for k in specs}
    validate(cfg, specs, file_origins)
    keyed = {stage.option_keys[k]: v for k, v in options.items() if v is not None}
    set_keys = [stage.renamed.get(p.split("=", 1)[0].strip(), p.split("=", 1)[0].strip()) for p in sets]
    flags = {**{k: flag_of(stage, k) for k in keyed}, **{k: f"--set {k}" for k in set_keys}}
    fixed = [k for k in flags if k not in RESUME_OVERRIDES]
    if fixed:
        fresh = given_config(stage, options, sets)
        differ = [k for k in fixed if not same_value(k, get_key(fresh, k, "<unset>"), get_key(cfg, k, "<unset>"))]
        if differ:
            allowed = ", ".join(flag_of(stage, k) for k in RESUME_OVERRIDES)
            values = "; ".join(f"{flags[k]}: the run's {get_key(cfg, k)!r}, given {get_key(fresh, k)!r}" for k in differ)
            raise BotError(f"--resume continues {run.config_file} as configured: {', '.join(flags[k] for k in differ)} "
                           f"cannot change ({values}; may differ on resume: {allowed})")
    origins: dict = {}
    overrides = [k for k in keyed if k in RESUME_OVERRIDES]
    apply_options(cfg, {k: keyed[k] for k in overrides}, origins, {k: flag_of(stage, k) for k in overrides})
    apply_sets(cfg, [p for p, k in zip(sets, set_keys) if k in RESUME_OVERRIDES], origins=origins,
               renamed=stage.renamed)
    validate(cfg, specs, {**file_origins, **origins})
    return cfg


def run_defaults(stage: StageDef, flat: dict) -> dict:
    """The stage's defaults for a run's own values (its recipe, its data); the plain defaults when its recipe file
    is gone."""
    try:
        return stage.defaults(dict(flat), ())
    except BotError:
        return stage.defaults({}, ())


def check_writable(path: Path, what: str) -> None:
    """Create `path` as a folder (if needed) and write a probe file there: one line when that is not possible."""
    problem = writable_folder_problem(Path(path))
    if problem:
        raise BotError(f"{path}: {what} {problem}")


class RunLock:
    """An exclusive lock on a run directory for this process's life; a second run on the same folder is refused.

    flock, not a pid file: the OS drops it when the holder dies (even by SIGKILL), so a stale lock cannot block.
    """

    def __init__(self, folder: Path, enabled: bool = True):
        self.path, self.enabled, self.fd = Path(folder) / ".lock", enabled, None

    def __enter__(self):
        if not self.enabled:
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.fd = None
            raise BotError(f"{self.path.parent}: another bot run is using this folder ({holder}); "
                           f"wait for it or choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def remove_temporaries(folder: Path) -> None:
    """Half-written files (`.name.XXXX.tmp`) that a kill during an atomic write left behind."""
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


@dataclass
class Session:
    """What a stage's training function gets: its config, the process context, the run dir, and the shared steps."""
    stage: StageDef
    cfg: dict
    out: Path
    resume: bool
    ctx: dist.DistContext
    run: RunDir
    started: float = field(default_factory=time.time)
    wall_before: float = 0.0
    on_step: Callable | None = None
    backends: dict = field(default_factory=dict)  # cuDNN / TF32 / determinism settings (engine/backends.py)

    @property
    def seed(self) -> int:
        return int(self.cfg["train"]["seed"])

    def per_rank(self, global_batch: int) -> int:
        if global_batch % self.ctx.world_size:
            raise BotError(f"--batch-size {global_batch}: does not split over {self.ctx.world_size} processes")
        return global_batch // self.ctx.world_size

    @property
    def channels_last(self) -> bool:
        value = self.cfg["train"].get("channels_last", "auto")
        return self.ctx.device.type == "cuda" if value == "auto" else bool(value)

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on this rank's device, in NHWC layout when channels_last is on."""
        model.to(self.ctx.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """A batch on the device (asynchronously from pinned memory), in the model's memory layout."""
        images = images.to(self.ctx.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last and images.ndim == 4 else images

    def ddp(self, model: torch.nn.Module, compile: bool = True) -> torch.nn.Module:
        """The network a step runs: DDP-wrapped under torchrun (gradients as bucket views: no copy), compiled when
        train.compile is on (`compile=False`: the stage compiled its own parts, as finetune-detect does). Weights are
        saved from the unwrapped `model`, whose parameters these share."""
        net = model
        if self.ctx.distributed:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None,
                gradient_as_bucket_view=True, broadcast_buffers=rank_local_buffers(model))
        backend = self.cfg["train"].get("compile")
        if backend and compile:
            net = torch.compile(net, backend="inductor" if backend is True else backend)
        return net

    def optimizer_options(self) -> dict:
        return optimizer_options(self.ctx.device)

    def loader(self, dataset, **kwargs) -> torch.utils.data.DataLoader:
        """A DataLoader with a generator of its own (worker seeds never touch the global RNG) and pinned memory on GPUs."""
        kwargs.setdefault("generator", torch.Generator().manual_seed(self.seed))
        kwargs.setdefault("pin_memory", self.ctx.device.type == "cuda")
        return torch.utils.data.DataLoader(dataset, **kwargs)

    def wall_seconds(self) -> float:
        return self.wall_before + time.time() - self.started

    def fit(self, *, model, optimizer, precision: Precision, **kwargs) -> dict:
        """Restore the resume state (when resuming) or write config.yaml, then engine.loop.fit (resume states at
        every epoch end and every train.checkpoint_every within one)."""
        from .launch import restart_command
        from .schema import parse_every

        start = None
        if self.resume and self.run.checkpoint_file.exists():
            start, extra = restore_state(self.run, model, optimizer, precision, task=self.stage.task)
            self.wall_before = float(extra.get("wall_seconds", 0.0))
            report(f"resuming {self.out} at epoch {start.epoch + 1}, step {start.step}", self.ctx.is_main)
        elif self.ctx.is_main:
            if self.run.metrics_file.exists():
                self.run.metrics_file.unlink()
            self.run.write_config(self.cfg)
        self.run.open_tensorboard(self.cfg["train"].get("tensorboard", "auto"), start.step + 1 if start else 0)
        evaluate = kwargs.pop("evaluate")

        def evaluate_with_its_benchmark() -> dict:
            with backends.evaluation(self.stage.eval_benchmark):
                return evaluate()

        return fit(model=model, optimizer=optimizer, precision=precision, run=self.run, ctx=self.ctx, start=start,
                   evaluate=evaluate_with_its_benchmark,
                   seed=self.seed, task=self.stage.task, on_step=self.on_step,
                   extra_state=lambda: {"wall_seconds": self.wall_seconds()},
                   checkpoint_every=parse_every(self.cfg["train"].get("checkpoint_every", "off")),
                   restart_hint=lambda lr: restart_command(lr=lr), **kwargs)

    def finish(self, summary: dict, fit_result: dict) -> dict:
        """summary.json, written last and atomically by rank 0: the stage's fields plus the ones every stage shares."""
        full = {"task": self.stage.task, **summary, "epochs": self.cfg["train"]["epochs"],
                "wall_seconds": self.wall_seconds(), "images_per_second": fit_result["images_per_second"],
                "threads": torch.get_num_threads(), "workers": self.cfg["data"]["workers"],
                "backends": self.backends, "versions": versions()}
        self.run.write_summary(full)
        return full


def resume_mode(resume) -> str | None:
    """--resume's value: None (no resume), "must" (`--resume` alone, or True) or "auto"."""
    if resume in (None, False, ""):
        return None
    if resume is True:
        return "must"
    if resume not in RESUME_MODES:
        raise BotError(f"--resume {resume!r}: use --resume auto, or --resume alone")
    return resume


def holds_run(out: Path) -> bool:
    run = RunDir(out, enabled=False)
    return run.config_file.exists() or run.checkpoint_file.exists() or run.summary_file.exists()


def launch(stage: StageDef, train: Callable[[Session], dict], *, out=None, resume=None, sets=(),
           on_step=None, **options) -> dict:
    """From the command line's options: resolve and check the config, then `run_config`. `resume`: None, "must"
    (or True) or "auto": start when --out holds no run, else continue (or report) the run it holds."""
    mode = resume_mode(resume)
    if mode == "must" and not out:
        raise BotError("--resume needs --out, the run directory to continue (--resume auto starts one there if it holds none)")
    if mode and out and holds_run(Path(out)):
        return resume_run(stage, train, Path(out), options, sets, on_step)
    if mode == "must":
        raise BotError(f"{out}: no run to resume here (no config.yaml); --resume auto starts one when there is none")
    cfg = fresh_config(stage, options, sets)
    out = Path(out or stage.default_out(cfg))
    if mode == "auto" and holds_run(out):  # the default --out of these options holds a run
        return resume_run(stage, train, out, options, sets, on_step)
    return run_config(stage, train, cfg, out, False, on_step)


def resume_run(stage: StageDef, train: Callable[[Session], dict], out: Path, options: dict, sets, on_step) -> dict:
    """Continue the run in `out`, or report it when it is finished (one line, nothing written); the options must
    agree with its config.yaml (resumed_config) either way."""
    run = RunDir(out, enabled=False)
    if not run.config_file.is_file() and not run.finished():
        raise BotError(f"{out}: no run to resume here (no config.yaml)")
    if run.finished():
        if run.config_file.is_file():
            resumed_config(stage, out, options, sets)  # a changed option is refused, not silently ignored
        report(f"{out}: already finished (summary.json present); nothing to do", int(os.environ.get("RANK", "0")) == 0)
        return _read_summary(run)
    cfg = resumed_config(stage, out, options, sets)
    return run_config(stage, train, cfg, out, True, on_step)


def run_config(stage: StageDef, train: Callable[[Session], dict], cfg: dict, out: Path, resume: bool = False,
               on_step=None) -> dict:
    """Run `train(session)` on a resolved config: checks, run-dir policy, lock, process group; returns the summary."""
    validate(cfg, stage.schema())
    check_tensorboard(cfg["train"].get("tensorboard", "auto"))
    cfg["train"]["threads"] = threads.resolve(cfg["train"].get("threads", "auto"))  # recorded in config.yaml
    cfg["data"]["workers"] = threads.resolve_workers(cfg["data"].get("workers", "auto"), cfg["train"]["device"])
    out = Path(out)
    run = RunDir(out, enabled=False)
    if resume and run.finished():
        report(f"{out}: already finished (summary.json present); nothing to do")
        return _read_summary(run)
    if not resume and run.finished():
        raise BotError(f"{out}: holds a finished run (summary.json); choose another --out")
    if not resume and (run.checkpoint_file.exists() or run.config_file.exists()):
        from .launch import restart_command
        raise BotError(f"{out}: holds an unfinished run; continue it with `{restart_command()}` or choose another --out")
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        check_writable(out, "--out")
        cache = stage.cache_dir(cfg)
        if cache is not None:
            check_writable(cache, "the synthetic data cache ($BOT_CACHE)")
    with RunLock(out, enabled=rank == 0):
        if rank == 0:
            remove_temporaries(out)
        threads.apply(cfg["train"]["threads"])
        deterministic = bool(cfg["train"].get("deterministic", False))
        backends.prepare(deterministic)  # before CUDA starts
        ctx = dist.setup(cfg["train"]["device"])
        try:
            check_shared(out, ctx)
            session = Session(stage, cfg, out, resume, ctx, RunDir(out, enabled=ctx.is_main),
                              on_step=kill_hook(on_step))
            session.backends = backends.configure(ctx.device, benchmark=stage.cudnn_benchmark,
                                                  deterministic=deterministic)
            try:
                return train(session)
            finally:
                session.run.close()
        finally:
            backends.restore()
            dist.cleanup()


def kill_hook(on_step):
    """For the preemption tests (tests/test_restart.py): with BOT_TEST_KILL_AT_STEP=N and BOT_TEST_KILL_MARKER=FILE
    set, the process SIGKILLs itself right after step N, as a node failure would, the first time only (the first to
    create FILE; a restart finds it), so that the same command line's restart can be checked. Unset: `on_step`."""
    at, marker = os.environ.get(KILL_AT_STEP_ENV), os.environ.get(KILL_MARKER_ENV)
    if not (at and marker):
        return on_step

    def hook(pos):
        if on_step is not None:
            on_step(pos)
        if pos.step == int(at):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def _read_summary(run: RunDir) -> dict:
    import json

    try:
        return json.loads(run.summary_file.read_text())
    except (OSError, ValueError) as e:
        raise BotError(f"{run.summary_file}: unreadable ({e})") from None
