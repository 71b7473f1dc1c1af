"""The one check for the day a GPU is lent: is bot right, sync-free and fast on it? Under 5 minutes on one H200.

Every model, optimiser, loader and step comes from the stages' own code: each stage (pretrain ResNet-50-D, the C4
and the FPN detector, FCN) is run through its `train_session` up to the call of `Session.fit`, which this script
watches (`watching_fit`): what the stage hands `fit` (its network with its channels_last setting, the optimiser
from `Session.optimizer_options`, its Precision, `train_step`, loader with the default workers or DALI, `evaluate`)
is what the sections below measure. Sections, one function each:

  (a) correctness: one fixed batch, 5 steps through engine.loop.fit, a CPU fp32 reference against the device in
      fp32 / bf16 / fp16 (loss, gradient norm, weight change; tolerances in TOLERANCE); the device input pipeline
      on the device against the CPU; `--loader dali` (the mixed backend on a GPU) against the default loader with
      tests/test_pretrain_dali.py's bounds;
  (b) overflow: an inf loss on step 0 under fp16 (GradScaler), then 2 steps, with each stage's own optimiser
      against a foreach SGD twin: weights finite and equal to 1e-6;
  (c) sync audit: 10 steady steps of each stage inside `fit` and one evaluation, host syncs counted
      (torch.cuda.set_sync_debug_mode("warn") on CUDA; on a CPU the host-read aten ops that are syncs on CUDA);
  (d) evaluation: time and peak memory on 30 variable-size images (segmentation whole and ms-flip, detection);
  (e) loaders alone over >= 100 batches: the default workers, one worker per core, DALI;
  (f) throughput ratios as medians of 3 interleaved rounds (bot's loop / bare loop per stage, compiled / eager,
      each loader / bot's step); compile time reported apart;
  (g) 2 ranks (2 processes) on the one device over gloo (BOT_DIST_BACKEND=gloo) for 5 steps per stage, stopped
      by SIGINT mid-run and resumed.

One JSON out (benchmarks/results/gpu.json by default on a GPU): sections as dicts, the (f) ratios as measurement
entries that `python benchmarks/results.py --gpu FILE --into docs/performance.md` renders with a summary of the other
sections. `--smoke` runs all of it on a CPU at toy sizes (fp16 through CPU autocast and GradScaler("cpu"), DALI's
CPU backend; fp16 steps for pretrain only, SLOW_FP16 says why); what no CPU can run in any form is written as
"skipped: needs CUDA".

    python benchmarks/gpu_check.py                                  # on the GPU machine -> benchmarks/results/gpu.json
    python benchmarks/gpu_check.py --smoke --json /tmp/gpu.json     # anywhere: 16 minutes on 2 cores at load 14
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image


from bot.engine.device_pipeline import DevicePipeline
from bot.engine.launch import bot_argv
from bot.engine.loop import fit, seed_step, unwrap
from bot.engine.precision import Precision
from bot.engine.rundir import RunDir
from bot.engine.schedules import Schedule
from bot.engine.stage import Session
from results import _Once, bare_rate, entry, fit_rate, interleaved, machine, print_table, write_json

ROOT = Path(__file__).resolve().parent.parent
SKIPPED = "skipped: needs CUDA"
STAGES = ("pretrain", "detect-c4", "detect-fpn", "segment")
PRECISIONS = ("fp32", "bf16", "fp16")
# CPU fp32 reference vs the device, relative differences over the 5 steps (max over steps for the loss and the
# gradient norm; |dw_device - dw_cpu| / |dw_cpu| for the weight change). fp32 on CUDA convolves in TF32 by default
# (torch.backends.cudnn.allow_tf32): ~1e-3 per layer. bf16 keeps 8 mantissa bits, fp16 11. The detectors sample
# their RoIs with the device's generator, so CPU and GPU train on different RoIs: their rows get DETECTION_SLACK.
# The bf16 / fp16 bounds are set from the smoke run's CPU autocast at toy size (pretrain measured bf16 0.012 / 0.076
# / 0.35, fp16 0.043 / 0.12 / 0.30 for loss / gradient norm / weight change: batch 4, BatchNorm over 1x1 maps, 5
# steps that memorise the batch, fp16 gradients flushed to zero under the settled scale) with a margin; they catch
# gross faults (a missing unscale is a factor 2^16, a wrong layout or stale weights garbage; skipped steps are
# counted apart), and the first GPU run's numbers are the ones to tighten them to.
TOLERANCE = {"fp32": {"loss": 0.005, "grad_norm": 0.02, "weight_change": 0.05},
             "bf16": {"loss": 0.05, "grad_norm": 0.25, "weight_change": 0.5},
             "fp16": {"loss": 0.1, "grad_norm": 0.25, "weight_change": 0.5}}
DETECTION_SLACK = 5.0
PIPELINE_TOLERANCE = 1e-5   # the device half of the input pipeline, device vs CPU: fp32 multiply-adds
# tests/test_pretrain_dali.py: mean / max per-image |DALI - default| in uint8 levels, without and with colour jitter
DALI_BOUNDS = {0.0: (0.5, 1.0), 0.4: (10.0, 20.0)}
OVERFLOW_TOLERANCE = 1e-6
# On a CPU, fp16 convolution backward has no fast kernel: measured 1.7 s against 0.03 s in bf16 for one 64-channel
# 32x32 conv (torch 2.14.1, one thread), 167 s for one step of the smoke's C4 detector. The smoke runs fp16 steps
# for pretrain only (its convolutions are the smallest); the detectors' and FCN's run on the GPU.
SLOW_FP16 = "skipped in smoke: fp16 backward is emulated on a CPU (~60x slower than bf16); runs on the GPU"


@dataclass(frozen=True)
class Sizes:
    device: str
    arch: str
    threads: int | None       # torch threads here and in the rank processes (None: torch's default)
    compile_backend: str
    eval_precision: str       # the precision of (d) and (f), the efficient recipes' fp16 on a GPU
    # (a)-(c), (g): the stages at correctness size
    image: int                # pretrain crop
    batch: int                # pretrain batch
    det_size: int             # detection short side (long side 5/3 of it, the 600/1000 rule)
    det_batch: int
    seg_crop: int
    seg_batch: int
    det_paper_head: bool      # detection/defaults.yaml's head (proposals, RoIs) or synthetic.yaml's small one
    # (d) evaluation
    eval_sides: tuple         # the 30 segmentation images' sides drawn from this range
    seg_base: int
    # (e), (f) speed
    speed_image: int
    speed_batch: int
    speed_det_size: int
    speed_det_batch: int
    speed_seg_crop: int
    speed_seg_batch: int
    speed_steps: int          # timed steps per round
    loader_batch: int
    loader_batches: int
    jpeg_train: int           # the JPEG folder the loaders read (ImageNet-like sizes)
    jpeg_sides: tuple
    rank_timeout: int
    fp16_stages: tuple = STAGES  # where fp16 steps run (a CPU emulates fp16 backward: see SLOW_FP16)


FULL = Sizes("cuda", "resnet50d", None, "inductor", "fp16",
             224, 16, 320, 2, 256, 2, True, (400, 600), 520,
             224, 256, 600, 8, 480, 8, 10, 64, 100, 2000, (300, 500), 240)
# One thread per process on the CPU: on a shared, busy machine torch's threaded kernels were 10x slower.
SMOKE = Sizes("cpu", "resnet10d", 1, "eager", "fp32",
              32, 4, 64, 2, 32, 2, False, (32, 56), 48,
              32, 4, 64, 2, 32, 2, 1, 2, 100, 40, (40, 64), 1200, ("pretrain",))


# ---- data -----------------------------------------------------------------------------------------------------
def _write_image(job: tuple) -> None:
    from bot.synthetic.imagefolder import classification_image
    path, split, index, label, w, h = job
    Image.fromarray(classification_image(0, split, index, label, 64)).resize((w, h), Image.BILINEAR).save(path, quality=90)


def write_jpeg_folder(root: Path, train: int, val: int, sides: tuple) -> Path:
    """train/<class>/*.jpg and val/<class>/*.jpg: shapes scenes upscaled to random sizes in `sides`."""
    from bot.synthetic.shapes import CLASSES
    rng = np.random.default_rng(0)
    jobs = []
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            folder = root / split / CLASSES[i % len(CLASSES)]
            folder.mkdir(parents=True, exist_ok=True)
            w, h = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
            jobs.append((folder / f"{i:05d}.jpg", split, i, i % len(CLASSES), w, h))
    if len(jobs) > 200:
        with ProcessPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
            list(pool.map(_write_image, jobs, chunksize=32))
    else:
        for job in jobs:
            _write_image(job)
    return root


def write_seg_folder(root: Path, train: int, val: int, train_side: int, val_sides: tuple) -> Path:
    """A `folder:` segmentation set (images/<split>, masks/<split>): square training images, validation images of
    random sizes in `val_sides` (whole-image and ms-flip evaluation see a new shape for nearly every image)."""
    from bot.synthetic.ade20k import segmentation_sample
    rng = np.random.default_rng(1)
    for split, n in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, label = segmentation_sample(0, "training" if split == "train" else "validation", i, 64)
            w, h = (train_side, train_side) if split == "train" else (int(v) for v in rng.integers(*val_sides, 2))
            Image.fromarray(image).resize((w, h), Image.BILINEAR).save(root / "images" / split / f"{i:04d}.jpg", quality=95)
            label = np.where(label == 0, 255, label - 1).astype(np.uint8)  # ADE's seams (0) ignored, classes from 0
            Image.fromarray(label, mode="L").resize((w, h), Image.NEAREST).save(root / "masks" / split / f"{i:04d}.png")
    return root


@dataclass
class Data:
    work: Path
    jpeg_small: Path     # pretrain at correctness size (16 batches; one evaluation batch of val images)
    jpeg_big: Path       # the loaders and pretrain's throughput
    jpeg_ranks: Path     # (g): 5 batches
    seg_small: Path
    seg_eval: Path       # 30 variable-size validation images
    seg_ranks: Path
    cache: Path          # $BOT_CACHE: the synthetic detection sets


def data_paths(work: Path) -> Data:
    return Data(work, *(work / name for name in ("jpeg-small", "jpeg-big", "jpeg-ranks", "seg-small", "seg-eval",
                                                 "seg-ranks", "cache")))


def write_data(sizes: Sizes, work: Path) -> Data:
    """Every data set the sections read, written once into `work` (the detection sets are bot's synthetic VOC)."""
    data = data_paths(work)
    write_jpeg_folder(data.jpeg_small, 16 * sizes.batch, max(10, sizes.batch), sizes.jpeg_sides)  # every class in val/
    write_jpeg_folder(data.jpeg_big, max(sizes.jpeg_train, 2 * sizes.speed_batch), 10, sizes.jpeg_sides)
    write_jpeg_folder(data.jpeg_ranks, 5 * sizes.batch, max(10, sizes.batch), sizes.jpeg_sides)
    write_seg_folder(data.seg_small, 16 * sizes.seg_batch, 1, sizes.seg_base, sizes.eval_sides)
    write_seg_folder(data.seg_eval, 2 * max(sizes.seg_batch, sizes.speed_seg_batch), 30, sizes.seg_base, sizes.eval_sides)
    write_seg_folder(data.seg_ranks, 5 * sizes.seg_batch, 1, sizes.seg_base, sizes.eval_sides)
    os.environ["BOT_CACHE"] = str(data.cache)  # the synthetic detection sets go here, not into the user's cache
    return data


# ---- the stages' own parts ------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised from the watched Session.fit: the stage is built, its training is not wanted."""


@contextlib.contextmanager
def watching_fit(stop: bool):
    """Session.fit wrapped for the time of the block: `seen` gets what the stage hands it (model, optimizer,
    precision, schedule, loader, sampler, train_step, evaluate, clip_grad, ...) and the session; with stop=True the
    stage returns before training (by _Stop). A hook in engine/stage.py would make this patch unneeded."""
    seen: dict = {}
    original = Session.fit

    def fit_watched(self, **kwargs):
        seen.update(kwargs, session=self)
        if stop:
            raise _Stop
        return original(self, **kwargs)
    Session.fit = fit_watched
    try:
        yield seen
    finally:
        Session.fit = original


def stage_config(stage: str, sizes: Sizes, data: Data, device: str, precision: str, *, speed=False, eval_set=False,
                 ranks=False, **options) -> tuple:
    """(the stage's run function, its resolved config) as `bot <stage> ...` would resolve it from these CLI options
    (`options` last: e.g. batch_size, workers, loader, compile); every other key keeps the stage's default."""
    common = {"epochs": 1, "precision": precision, "device": device, "seed": 0}
    if ranks and sizes.device == "cpu":
        common["workers"] = 0  # 8 rank processes share the smoke run's 2 cores already
    if stage == "pretrain":
        from bot.pretrain.train import resolve_config, train
        folder = data.jpeg_ranks if ranks else data.jpeg_big if speed else data.jpeg_small
        opts = {"data": str(folder), "arch": sizes.arch, "image_size": sizes.speed_image if speed else sizes.image,
                "batch_size": sizes.speed_batch if speed else sizes.batch, **common, **options}
        return train, resolve_config(None, ("train.log_every=10",), **opts)
    if stage.startswith("detect"):
        from bot.detection.train import HERE, resolve_config, run_finetune
        from bot.engine.config import load_yaml
        size, batch = (sizes.speed_det_size, sizes.speed_det_batch) if speed else (sizes.det_size, sizes.det_batch)
        opts = {"backbone": sizes.arch, "detector": stage.split("-")[1], "image_size": size, "batch_size": batch,
                **common, **options}
        n_train = (5 if ranks else 16) * opts["batch_size"]
        cfg = resolve_config(opts, (f"data.synthetic.n_train={n_train}",
                                    f"data.synthetic.n_test={30 if eval_set else opts['batch_size']}",
                                    f"data.synthetic.size={min(size, 96)}", "train.warmup_iters=1"))
        if sizes.det_paper_head:  # the paper's proposal and RoI budget, not the synthetic set's small one
            paper = load_yaml(HERE / "defaults.yaml")["model"]
            cfg["model"].update({k: v for k, v in paper.items() if k not in ("backbone", "arch", "detector")})
        return run_finetune, cfg
    from bot.segmentation.train import finetune, resolve_config
    crop, batch = (sizes.speed_seg_crop, sizes.speed_seg_batch) if speed else (sizes.seg_crop, sizes.seg_batch)
    folder = data.seg_ranks if ranks else data.seg_eval if eval_set else data.seg_small
    opts = {"backbone": sizes.arch, "data": f"folder:{folder}", "num_classes": 11, "crop_size": crop,
            "base_size": sizes.seg_base, "batch_size": batch, **common, **options}
    return finetune, resolve_config(opts, ("eval.batch_size=1",))


_PARTS: dict = {}


def stage_parts(stage: str, sizes: Sizes, data: Data, device: str, precision: str, **kw) -> dict:
    """What the stage hands fit, built by its own train_session (and kept: builds are reused across sections)."""
    key = (stage, device, precision, tuple(sorted(kw.items())))
    if key not in _PARTS:
        run, cfg = stage_config(stage, sizes, data, device, precision, **kw)
        out = Path(tempfile.mkdtemp(prefix=f"{stage}-", dir=data.work))
        with watching_fit(stop=True) as seen, contextlib.suppress(_Stop), _quiet():
            run(cfg, out)
        seen["init"] = copy.deepcopy(unwrap(seen["model"]).state_dict())
        seen["optimizer_attrs"] = set(vars(seen["optimizer"]))
        _PARTS[key] = seen
    return _PARTS[key]


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def first_batch(parts: dict):
    """The stage loader's first batch of epoch 0 (CPU tensors, as the workers hand them over)."""
    parts["sampler"].set_epoch(0)
    return next(iter(parts["loader"]))


def to_device(x, device: torch.device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


def fresh(parts: dict, precision: str | None = None) -> Precision:
    """The stage's model back at its initial weights, its optimiser as the stage built it (no state, and none of
    the attributes set on it since: engine/precision.py's buffers-ready flag, GradScaler's grad_scale), a new
    Precision (a fresh loss scaler), so that each run starts as a new stage run would."""
    unwrap(parts["model"]).load_state_dict(parts["init"])
    opt = parts["optimizer"]
    opt.state.clear()
    for name in set(vars(opt)) - parts["optimizer_attrs"]:
        delattr(opt, name)
    opt.zero_grad(set_to_none=True)
    return Precision(precision or parts["precision"].mode, parts["session"].ctx.device)


def params_of(parts: dict) -> list[torch.Tensor]:
    return [p for p in parts["model"].parameters() if p.requires_grad]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- (a) correctness ------------------------------------------------------------------------------------------
def five_steps(parts: dict, batch, init: dict, steps: int = 5, scaler_state: dict | None = None) -> dict:
    """`steps` steps of the stage's train_step on one batch through engine.loop.fit at the stage's peak lr:
    the losses, the unscaled gradient norms (read in an optimizer step pre-hook) and the weight change; with
    `scaler_state` the fp16 loss scaler starts from it (GradScaler.load_state_dict)."""
    precision = fresh(parts)
    if scaler_state:
        precision.scaler.load_state_dict(scaler_state)
    unwrap(parts["model"]).load_state_dict(init)  # the reference's initial weights
    params, opt = params_of(parts), parts["optimizer"]
    before = torch.cat([p.detach().float().cpu().flatten() for p in params])
    losses, norms = [], []

    def pre_hook(optimizer, args, kwargs):
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float())
                                                     for p in params if p.grad is not None]))
        scale = getattr(optimizer, "grad_scale", None)  # GradScaler leaves fused kernels the grads still scaled
        norms.append(norm / scale if scale is not None else norm)

    def step(b):
        loss, n, logs = parts["train_step"](b)
        losses.append(loss.detach().float())
        return loss, n, logs

    handle = opt.register_step_pre_hook(pre_hook)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fit(model=parts["model"], optimizer=opt, precision=precision, loader=[batch] * steps, sampler=_Once(),
                schedule=Schedule(parts["schedule"].lr, steps, 0, kind="constant"), train_step=step,
                evaluate=lambda: {}, run=RunDir(tmp, enabled=False), ctx=parts["session"].ctx, epochs=1,
                batch_size=parts["batch_size"], log_every=steps, clip_grad=parts.get("clip_grad", 0.0),
                seed=parts["session"].seed)
    finally:
        handle.remove()
    after = torch.cat([p.detach().float().cpu().flatten() for p in params])
    return {"loss": torch.stack(losses).cpu().double(), "grad_norm": torch.stack(norms).cpu().double() if norms else None,
            "delta": (after - before).double(), "skipped": steps - len(norms),
            "scaler": precision.scaler.state_dict() if precision.scaler.is_enabled() else None}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """For the per-step series (loss, gradient norm) max_i |a_i - b_i| / max_i |b_i|: the deviation on the scale
    of the first steps (on one batch the loss falls fast, and a relative error of its tail would blow up);
    for the weight change |a - b| / |b| over all weights. b is the CPU fp32 reference."""
    if a is None or b is None or a.shape != b.shape:
        return float("nan")
    if a.numel() <= 16:
        return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp(min=1e-12))


def correctness(sizes: Sizes, data: Data, device: torch.device) -> dict:
    """Per stage, one fixed batch: the CPU fp32 reference against the device in each precision (5 steps)."""
    out = {"tolerance": TOLERANCE, "detection_slack": DETECTION_SLACK, "stages": {}}
    for stage in STAGES:
        ref_parts = stage_parts(stage, sizes, data, "cpu", "fp32", workers=0)  # one batch: no workers needed
        batch = first_batch(ref_parts)
        ref = five_steps(ref_parts, batch, ref_parts["init"])
        rows = {}
        for p in PRECISIONS:
            if p == "fp16" and stage not in sizes.fp16_stages:
                rows[p] = SLOW_FP16
                continue
            parts = stage_parts(stage, sizes, data, device.type, p, workers=0)
            # in the smoke the device is the CPU: its fp32 build is the reference's, and its 5 steps are those
            got = ref if parts is ref_parts else five_steps(parts, batch, ref_parts["init"])
            first_skipped = got["skipped"]
            if first_skipped and got["scaler"]:
                # GradScaler starts at 2^16 and skips steps until the scale fits the gradients: the comparison
                # runs again with the scaler where those steps left it (a resumed run's scaler, in effect)
                got = five_steps(parts, batch, ref_parts["init"], scaler_state=got["scaler"])
            tol = {k: v * (DETECTION_SLACK if stage.startswith("detect") else 1.0) for k, v in TOLERANCE[p].items()}
            row = {"loss": rel(got["loss"], ref["loss"]), "grad_norm": rel(got["grad_norm"], ref["grad_norm"]),
                   "weight_change": rel(got["delta"], ref["delta"]), "skipped_steps": got["skipped"],
                   "skipped_at_initial_scale": first_skipped,
                   "losses": [round(v, 5) for v in got["loss"].tolist()], "tolerance": tol,
                   "optimizer": type(parts["optimizer"]).__name__ + str(parts["session"].optimizer_options()),
                   "channels_last": parts["session"].channels_last}
            row["ok"] = all(row[k] <= tol[k] for k in tol) and got["skipped"] == 0
            rows[p] = row
            print(f"  (a) {stage:10s} {p}: loss {row['loss']:.2e}  grad norm {row['grad_norm']:.2e}  "
                  f"weight change {row['weight_change']:.2e}  {'ok' if row['ok'] else 'FAIL'}", flush=True)
        out["stages"][stage] = {"reference_losses": [round(v, 5) for v in ref["loss"].tolist()], **rows}
    out["device_pipeline"] = device_pipeline_check(sizes, data, device)
    out["dali"] = dali_check(sizes, data, device)
    return out


def device_pipeline_check(sizes: Sizes, data: Data, device: torch.device) -> dict:
    """engine/device_pipeline.py as pretrain builds it (build_datasets), in the stage's channels_last setting, on
    the device against the CPU, on the stage loader's first batch."""
    from bot.pretrain.data import build_datasets
    parts = stage_parts("pretrain", sizes, data, device.type, "fp32", workers=0)
    crops, alphas, _ = first_batch(parts)
    pipeline = build_datasets(data.jpeg_small, parts["session"].cfg["data"], 0).device_pipeline
    cpu = pipeline(crops, alphas)
    pipeline.channels_last = parts["session"].channels_last
    dev = pipeline(crops.to(device), alphas.to(device)).cpu()
    diff = float((dev - cpu).abs().max())
    return {"max_abs_diff": diff, "tolerance": PIPELINE_TOLERANCE, "channels_last": pipeline.channels_last,
            "ok": diff <= PIPELINE_TOLERANCE, "device": str(device)}


def dali_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


def dali_check(sizes: Sizes, data: Data, device: torch.device) -> dict:
    """--loader dali (mixed backend on CUDA, CPU backend on a CPU) against the default loader, the same keys:
    the same draws (alphas, labels) and pixels within tests/test_pretrain_dali.py's bounds."""
    if not dali_installed():
        return {"skipped": "NVIDIA DALI is not installed (pip install 'bot[dali]')"}
    from bot.engine.distributed import DistContext, EpochSampler
    from bot.pretrain.dali_loader import DaliTrainLoader
    from bot.pretrain.data import build_datasets
    from bot.synthetic.imagefolder import write_imagefolder
    root = data.work / "dali-shapes32"  # the test's images, settings and batch: its bounds hold for these
    if not root.is_dir():
        write_imagefolder(root, {"train": 8, "val": 4}, size=32, seed=0)
    rows, batch = {}, 8
    for jitter, (mean_tol, max_tol) in DALI_BOUNDS.items():
        cfg = {"image_size": 32, "scale": [0.35, 1.0], "ratio": [0.75, 1.3333333], "color_jitter": jitter,
               "pca_noise": 0.1, "workers": 0}
        ds = build_datasets(root, cfg, seed=3)
        sampler = EpochSampler(len(ds.train), DistContext(device=device), seed=3, batch_size=batch)
        sampler.set_epoch(2)
        keys = list(sampler)[:batch]
        crops, alphas, labels = next(iter(DaliTrainLoader(ds.train, sampler, batch, cfg, device)))
        ref = [ds.train[k] for k in keys]
        ref_crops = torch.stack([r[0] for r in ref]).float()
        per_image = (crops.cpu().float() - ref_crops).abs().mean((1, 2, 3))
        same_draws = torch.equal(alphas.cpu(), torch.stack([r[1] for r in ref])) and \
            torch.equal(labels.cpu(), torch.tensor([r[2] for r in ref]))
        rows[f"color_jitter {jitter}"] = {
            "mean_levels": float(per_image.mean()), "max_levels": float(per_image.max()), "bounds": [mean_tol, max_tol],
            "same_draws": same_draws, "backend": "mixed" if device.type == "cuda" else "cpu",
            "ok": same_draws and float(per_image.mean()) < mean_tol and float(per_image.max()) < max_tol}
    return rows


# ---- (b) overflow on step 0 -----------------------------------------------------------------------------------
def twin(optimizer: torch.optim.Optimizer, **kernels) -> torch.optim.Optimizer:
    """The same optimiser class, param groups and hyper-parameters, with other kernel options (fused / foreach)."""
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in optimizer.param_groups]
    defaults = {k: v for k, v in optimizer.defaults.items() if k not in ("fused", "foreach", "params")}
    return type(optimizer)(groups, **{**defaults, "foreach": None, "fused": None, **kernels})


def foreach_twin(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return twin(optimizer, foreach=True, fused=False)


def overflow_run(parts: dict, batch, optimizer, steps: int = 3) -> tuple[torch.Tensor, float]:
    """The stage's step with an inf loss on step 0 (GradScaler skips it), then `steps - 1` normal steps, from the
    initial weights under fp16; returns the weights and the loss scale after."""
    precision = fresh(parts, "fp16")
    params, device = params_of(parts), parts["session"].ctx.device
    parts["model"].train()
    for i in range(steps):
        # memory that held huge numbers, where an uninitialised buffer of a parameter's size may land (so a fused
        # optimiser reading unset momentum shows it, as in tests/test_fused_sgd.py)
        junk = [torch.full_like(p, 3e15) for p in params]
        del junk
        seed_step(parts["session"].seed, i, 0, device)
        with precision.autocast():
            loss = parts["train_step"](batch)[0]
        if i == 0:
            loss = loss * float("inf")
        precision.backward_and_step(loss, optimizer, parts.get("clip_grad", 0.0), params)
    return torch.cat([p.detach().float().cpu().flatten() for p in params]), float(precision.scaler.get_scale())


def overflow(sizes: Sizes, data: Data, device: torch.device) -> dict:
    """Per stage: its own optimiser (Session.optimizer_options: fused SGD on CUDA) against a foreach SGD twin, after
    a skipped first step: weights finite and equal to OVERFLOW_TOLERANCE (relative to the largest weight)."""
    rows = {}
    for stage in STAGES:
        if stage not in sizes.fp16_stages:
            rows[stage] = SLOW_FP16
            continue
        parts = stage_parts(stage, sizes, data, device.type, "fp16", workers=0)
        batch = first_batch(parts)
        reference, _ = overflow_run(parts, batch, foreach_twin(parts["optimizer"]))
        own, scale = overflow_run(parts, batch, parts["optimizer"])
        rows[stage] = {**compare_to_foreach(own, reference), "scale_after": scale,
                       "optimizer_options": str(parts["session"].optimizer_options())}
        if device.type == "cpu":  # the stages' CUDA options (fused SGD) on the CPU's kernels, as the smoke can run them
            from bot.engine.stage import optimizer_options
            cuda = optimizer_options(torch.device("cuda"))
            got, _ = overflow_run(parts, batch, twin(parts["optimizer"], **cuda))
            rows[stage]["cuda_options_on_cpu"] = {**compare_to_foreach(got, reference), "optimizer_options": str(cuda)}
        row = rows[stage]
        print(f"  (b) {stage:10s} finite {row['finite']}  max|w| {row['max_abs_weight']:.3g}  vs foreach "
              f"{row['rel_diff_to_foreach']:.1e}  {'ok' if row['ok'] else 'FAIL'}", flush=True)
    return rows


def compare_to_foreach(weights: torch.Tensor, foreach: torch.Tensor) -> dict:
    finite = bool(torch.isfinite(weights).all())
    diff = float((weights - foreach).abs().max() / foreach.abs().max().clamp(min=1e-12))
    return {"finite": finite, "max_abs_weight": float(weights.abs().max()), "rel_diff_to_foreach": diff,
            "tolerance": OVERFLOW_TOLERANCE, "ok": finite and diff <= OVERFLOW_TOLERANCE}


# ---- (c) sync audit -------------------------------------------------------------------------------------------
# The aten ops that read a device tensor back to the host (or make one from host values) when run on CUDA: on a
# CPU they are what can be counted of the syncs (an upper bound: on a CPU every tensor is a host tensor).
HOST_READS = ("_local_scalar_dense", "lift_fresh", "nonzero", "bincount", "is_nonzero", "equal", "item")


class SyncCounter:
    """Host syncs between start() and stop(): CUDA's sync debug mode ("warn"), each warning recorded with the line
    that caused it; on a CPU the HOST_READS ops dispatched (a TorchDispatchMode)."""

    def __init__(self, device: torch.device, record: list):
        self.device, self.record, self.events, self.mode, self.mark = device, record, [], None, None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mark = len(self.record)
            torch.cuda.set_sync_debug_mode("warn")
        else:
            from torch.utils._python_dispatch import TorchDispatchMode
            events = self.events

            class HostReads(TorchDispatchMode):
                def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                    if func.name().split("::")[-1].split(".")[0] in HOST_READS:
                        events.append(func.name())
                    return func(*args, **(kwargs or {}))
            self.mode = HostReads()
            self.mode.__enter__()

    def stop(self) -> dict:
        if self.device.type == "cuda" and self.mark is not None:
            torch.cuda.set_sync_debug_mode(0)
            got = [f"{Path(w.filename).name}:{w.lineno}" for w in self.record[self.mark:]
                   if "synchroniz" in str(w.message)]
            self.mark = None
        elif self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.mode, got, self.events = None, list(self.events), []
        else:
            return {"syncs": 0, "where": {}}
        return {"syncs": len(got), "where": dict(collections.Counter(got).most_common(6))}


def sync_audit(sizes: Sizes, data: Data, device: torch.device, warm: int = 2, steps: int = 10) -> dict:
    """Each stage run for real (one short epoch, its own loader and workers) with the counter on over `steps`
    steady steps inside fit, then once over one evaluation batch (the stage's evaluate)."""
    rows = {"method": "torch.cuda.set_sync_debug_mode('warn')" if device.type == "cuda" else
            f"host-read aten ops dispatched ({', '.join(HOST_READS)}; CPU stand-in for CUDA's sync debug mode)"}
    for stage in STAGES:
        run, cfg = stage_config(stage, sizes, data, device.type, sizes.eval_precision)
        out = Path(tempfile.mkdtemp(prefix=f"audit-{stage}-", dir=data.work))
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            counter = SyncCounter(device, record)
            window = {}

            def on_step(pos):
                if pos.step == warm:
                    counter.start()
                elif pos.step == warm + steps:
                    window.update(counter.stop(), steps=steps)
            with watching_fit(stop=False) as seen:
                run(cfg, out, on_step=on_step)
            if not window:  # the epoch was shorter than warm + steps
                window.update(counter.stop(), steps="fewer than asked")
            counter.start()
            with torch.no_grad():
                seen["evaluate"]()
            evaluation = counter.stop()
        ok, detail = check_run(out, 0, None)
        rows[stage] = {"train": window, "evaluation": evaluation, "run_ok": ok, "run": detail,
                       "log_every": cfg["train"]["log_every"]}
        print(f"  (c) {stage:10s} {window['syncs']} syncs in {steps} steps, {evaluation['syncs']} in one evaluation; "
              f"run {'ok' if ok else 'FAIL: ' + detail}", flush=True)
    return rows


def check_run(run_dir: Path, rc: int, log: Path | None) -> tuple[bool, str]:
    """A stage run passed when it exited 0, logged only finite losses, and wrote summary.json."""
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log else []
        return False, f"exit code {rc}: {(tail or ['(no output)'])[0][:200]}"
    losses = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            losses += [v for k, v in record.items() if "loss" in k and isinstance(v, (int, float))]
    if not losses:
        return False, f"{metrics}: no losses logged"
    if not all(math.isfinite(v) for v in losses):
        return False, f"{metrics}: non-finite loss"
    if not (run_dir / "summary.json").is_file():
        return False, f"{run_dir}: no summary.json"
    return True, f"{len(losses)} finite losses, last {losses[-1]:.3f}, summary.json written"


# ---- (d) evaluation -------------------------------------------------------------------------------------------
def timed(fn, device: torch.device, images: int) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    tic = time.perf_counter()
    with torch.no_grad():
        metrics = fn()
    sync(device)
    seconds = time.perf_counter() - tic
    return {"seconds": round(seconds, 3), "images": images, "images_per_second": round(images / seconds, 2),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3) if device.type == "cuda"
            else SKIPPED, "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def evaluation(sizes: Sizes, data: Data, device: torch.device) -> dict:
    """The stages' own evaluate on 30 variable-size images: segmentation whole and ms-flip, the two detectors."""
    rows = {}
    seg = stage_parts("segment", sizes, data, device.type, sizes.eval_precision, speed=True, eval_set=True)
    for mode in ("whole", "ms-flip"):
        rows[f"segment {mode}"] = timed(lambda: seg["evaluate"](mode), device, 30)
    for stage in ("detect-c4", "detect-fpn"):
        parts = stage_parts(stage, sizes, data, device.type, sizes.eval_precision, speed=True, eval_set=True)
        rows[f"{stage} predict + scoring"] = timed(parts["evaluate"], device, 30)
    for name, row in rows.items():
        print(f"  (d) {name:28s} {row['seconds']:7.2f} s  {row['images_per_second']:7.2f} img/s  peak "
              f"{row['peak_memory_gib']}", flush=True)
    return rows


# ---- (e) loaders alone ----------------------------------------------------------------------------------------
def batches_forever(parts: dict):
    epoch = 0
    while True:
        parts["sampler"].set_epoch(epoch)
        yield from parts["loader"]
        epoch += 1


def loader_rate(stream, batches: int, batch_size: int, device: torch.device) -> float:
    """Images/s of `batches` batches from a running loader, each copied to the device as train_step copies it."""
    sync(device)
    tic = time.perf_counter()
    for _ in range(batches):
        crops = next(stream)[0].to(device, non_blocking=True)
    del crops
    sync(device)
    return batches * batch_size / (time.perf_counter() - tic)


def loaders(sizes: Sizes, data: Data, device: torch.device, step_rate: float | None) -> tuple[dict, dict]:
    """pretrain's training loader as the stage builds it: default workers, one worker per core, --loader dali;
    each over `loader_batches` batches, 3 rounds interleaved, after one batch of start-up. Entries: rate / bot step."""
    configs = {"default workers": {}, f"{os.cpu_count()} workers (one per core)": {"workers": os.cpu_count()}}
    if dali_installed():
        configs["--loader dali"] = {"loader": "dali"}
    streams, info = {}, {}
    for name, kw in configs.items():
        parts = stage_parts("pretrain", sizes, data, device.type, sizes.eval_precision, speed=True,
                            batch_size=sizes.loader_batch, **kw)
        streams[name] = batches_forever(parts)
        next(streams[name])  # start-up (workers, DALI's pipeline) outside the clock
        loader = parts["loader"]
        info[name] = {"workers": getattr(loader, "num_workers", parts["session"].cfg["data"]["workers"]),
                      "type": type(loader).__name__}
    rates = {name: [] for name in configs}
    for _ in range(3):
        for name in configs:
            rates[name].append(loader_rate(streams[name], sizes.loader_batches, sizes.loader_batch, device))
    rows, entries = {}, {}
    for name, r in rates.items():
        median = float(np.median(r))
        rows[name] = {**info[name], "images_per_second": round(median, 1), "rounds": [round(v, 1) for v in r],
                      "batches": sizes.loader_batches, "batch": sizes.loader_batch}
        print(f"  (e) {name:28s} {median:9.1f} img/s ({info[name]['workers']} workers)", flush=True)
        if step_rate:
            entries[f"(f) pretrain loader, {name} / bot step"] = entry(
                step_rate, median, "img/s", f"bot's pretrain step on device-resident data ({sizes.arch} "
                f"{sizes.speed_image}px batch {sizes.speed_batch})", 3, target=1.0)
    return rows, entries


# ---- (f) throughput, 3 interleaved rounds ---------------------------------------------------------------------
def step_rates(parts: dict, device: torch.device, steps: int, rounds: int = 3) -> tuple[float, float, float]:
    """(bare loop, bot's fit) images/s, medians of interleaved rounds, on the stage's first batch kept on the device;
    and the seconds of the first two steps (cuDNN autotuning, torch.compile when the network is compiled)."""
    batch = to_device(first_batch(parts), device)
    precision = fresh(parts)
    model, opt, step, n = parts["model"], parts["optimizer"], parts["train_step"], parts["batch_size"]
    params, clip = params_of(parts), parts.get("clip_grad", 0.0)

    def bare():
        with precision.autocast():
            loss = step(batch)[0]
        precision.backward_and_step(loss, opt, clip, params)
    model.train()
    sync(device)
    tic = time.perf_counter()
    for _ in range(2):
        bare()
    sync(device)
    first = time.perf_counter() - tic
    base, ours = interleaved(lambda: bare_rate(bare, steps, n, device),
                             lambda: fit_rate(model, opt, precision, step, batch, steps + 1, n, device, clip, warmup=1),
                             rounds)
    return base, ours, first


def throughput(sizes: Sizes, data: Data, device: torch.device) -> tuple[dict, dict]:
    """bot's loop / a bare loop per stage at speed size; pretrain compiled / eager with its compile time apart."""
    entries, extra = {}, {}
    p = sizes.eval_precision
    for stage in STAGES:
        parts = stage_parts(stage, sizes, data, device.type, p, speed=True, workers=0)  # one batch, kept on the device
        base, ours, first = step_rates(parts, device, sizes.speed_steps)
        what = {"pretrain": f"{sizes.arch} {sizes.speed_image}px batch {sizes.speed_batch}",
                "segment": f"FCN {sizes.arch} {sizes.speed_seg_crop} crop batch {sizes.speed_seg_batch}"}.get(
            stage, f"Faster R-CNN {stage[7:].upper()} {sizes.arch} {sizes.speed_det_size}px batch {sizes.speed_det_batch}")
        layout = "channels_last" if parts["session"].channels_last else "NCHW"
        entries[f"(f) {stage} {what} {p} {layout}: bot loop / bare loop"] = entry(
            base, ours, "img/s", "bare fwd/bwd/step loop on the stage's model, optimiser and train_step, data on the device",
            3, target=0.95)
        extra[stage] = {"bare": round(base, 2), "bot": round(ours, 2), "first_two_steps_seconds": round(first, 2)}
        print(f"  (f) {stage:10s} bare {base:8.2f}  bot {ours:8.2f} img/s  (first two steps {first:.2f} s)", flush=True)
    eager = stage_parts("pretrain", sizes, data, device.type, p, speed=True, workers=0)
    compiled = stage_parts("pretrain", sizes, data, device.type, p, speed=True, workers=0,
                           compile=True if sizes.compile_backend == "inductor" else sizes.compile_backend)
    e_base, e_bot, e_first = step_rates(eager, device, sizes.speed_steps, rounds=1)
    c_base, c_bot, c_first = step_rates(compiled, device, sizes.speed_steps, rounds=1)
    a, b = interleaved(lambda: fit_rate(eager["model"], eager["optimizer"], eager["precision"], eager["train_step"],
                                        to_device(first_batch(eager), device), sizes.speed_steps + 1,
                                        eager["batch_size"], device, warmup=1),
                       lambda: fit_rate(compiled["model"], compiled["optimizer"], compiled["precision"],
                                        compiled["train_step"], to_device(first_batch(compiled), device),
                                        sizes.speed_steps + 1, compiled["batch_size"], device, warmup=1), 3)
    entries[f"(f) pretrain {sizes.arch} {sizes.speed_image}px batch {sizes.speed_batch} {p}: compiled / eager bot step"] = \
        entry(a, b, "img/s", f"bot's step without torch.compile; compiling ({sizes.compile_backend}) took "
              f"{c_first - e_first:.1f} s, reported apart", 3)
    entries[f"(f) pretrain {sizes.arch} {sizes.speed_image}px batch {sizes.speed_batch} {p}: bot step / 3,000 img/s"] = \
        entry(3000.0, extra["pretrain"]["bot"], "img/s", "the issue's target on one H200 (not measured)", 3, target=1.0)
    extra["compile"] = {"backend": sizes.compile_backend, "compile_seconds": round(c_first - e_first, 2),
                        "first_two_steps_compiled": round(c_first, 2), "first_two_steps_eager": round(e_first, 2)}
    print(f"  (f) compile ({sizes.compile_backend}): {c_first - e_first:.1f} s; compiled / eager {b / a:.2f}", flush=True)
    return entries, extra


# ---- (g) 2 ranks on the one device ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_command(stage: str, work: Path, out: Path, smoke: bool, stop_at: int | None) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--rank-run", stage, "--out", str(work), "--run", str(out),
            *(["--smoke"] if smoke else []), *(["--stop-at", str(stop_at)] if stop_at else [])]


def start_ranks(stage: str, sizes: Sizes, data: Data, out: Path, smoke: bool, stop_at: int | None) -> list:
    """Two processes of one process group (rank 0 and 1, each local rank 0: both on the one device), over gloo."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), BOT_DIST_BACKEND="gloo",
                   **({"OMP_NUM_THREADS": str(sizes.threads)} if sizes.threads else {}))
        log = out.parent / f"{out.name}-{'stop' if stop_at else 'resume'}-rank{rank}.log"
        procs.append((subprocess.Popen(rank_command(stage, data.work, out, smoke, stop_at), env=env, cwd=ROOT,
                                       stdout=log.open("w"), stderr=subprocess.STDOUT), log))
    return procs


def wait_ranks(procs: list, timeout: float) -> tuple[list[int], str]:
    deadline = time.time() + timeout
    codes = []
    for proc, _ in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes, "\n".join(log.read_text(errors="replace") for _, log in procs)


class Ranks:
    """(g) in the background: every stage's 2 ranks, stopped at step 2 and then resumed, all stages side by side
    (one thread each waits for its processes)."""

    def __init__(self, sizes: Sizes, data: Data, smoke: bool):
        from concurrent.futures import ThreadPoolExecutor
        self.sizes, self.data, self.smoke, self.started = sizes, data, smoke, time.perf_counter()
        # on a CPU two stages at a time: 8 processes importing torch at once on 2 busy cores took over 300 s to start
        self.pool = ThreadPoolExecutor(len(STAGES) if sizes.device == "cuda" else 2)
        self.jobs = {stage: self.pool.submit(self.stop_and_resume, stage) for stage in STAGES}

    def stop_and_resume(self, stage: str) -> dict:
        out = self.data.work / f"ranks-{stage}"
        codes, _ = wait_ranks(start_ranks(stage, self.sizes, self.data, out, self.smoke, stop_at=2), self.sizes.rank_timeout)
        stopped = logged_steps(out)
        resumed, rlog = wait_ranks(start_ranks(stage, self.sizes, self.data, out, self.smoke, None), self.sizes.rank_timeout)
        ok, detail = check_run(out, next((c for c in resumed if c), 0), out.parent / f"{out.name}-resume-rank0.log")
        steps = logged_steps(out)
        row = {"stop_exit_codes": codes, "steps_before_stop": stopped, "resume_exit_codes": resumed,
               "resumed": "resuming" in rlog, "steps_logged": steps, "run": detail,
               "ok": ok and codes == [0, 0] and resumed == [0, 0] and "resuming" in rlog and 0 < stopped < steps}
        print(f"  (g) {stage:10s} stopped after step {stopped}, resumed to {steps}: "
              f"{'ok' if row['ok'] else 'FAIL ' + str(codes + resumed) + ' ' + detail}", flush=True)
        return row

    def finish(self) -> dict:
        rows = {stage: job.result() for stage, job in self.jobs.items()}
        self.pool.shutdown()
        rows["seconds"] = round(time.perf_counter() - self.started, 1)
        return rows


def logged_steps(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    return max([json.loads(line).get("step", 0) for line in lines if '"loss"' in line] or [0])


def rank_run(stage: str, smoke: bool, work: Path, out: Path, stop_at: int | None) -> int:
    """One rank of (g): the stage at correctness size, 5 steps per rank, SIGINT to itself after step `stop_at`
    (every rank at the same step: fit agrees on stopping and saves), or resumed from the run directory."""
    from bot.engine.errors import BotError
    from bot.engine.loop import Interrupted
    sizes = SMOKE if smoke else FULL
    if sizes.threads:
        torch.set_num_threads(sizes.threads)
    data = data_paths(work)
    os.environ["BOT_CACHE"] = str(data.cache)
    run, cfg = stage_config(stage, sizes, data, sizes.device, sizes.eval_precision, ranks=True)
    cfg["train"]["log_every"] = 1

    def on_step(pos):
        if stop_at and pos.step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)
    try:
        run(cfg, out, resume=stop_at is None, on_step=on_step)
    except Interrupted as e:
        print(f"interrupted: {e}")
    except BotError as e:
        print(f"error: {e}")
        return 2
    return 0


# ---- the whole check ------------------------------------------------------------------------------------------
# in the order they run: (f)'s bot step rate is the loaders' baseline, so it runs before (e)
SECTIONS = ("correctness", "overflow", "sync_audit", "evaluation", "throughput", "loaders", "ranks")
LETTER = dict(zip(("correctness", "overflow", "sync_audit", "evaluation", "loaders", "throughput", "ranks"), "abcdefg"))


def failures(node, path: str = "") -> list[str]:
    """Every `"ok": false` in the results, by its path."""
    if isinstance(node, dict):
        found = [path] if node.get("ok") is False else []
        return found + [f for k, v in node.items() for f in failures(v, f"{path}/{k}" if path else k)]
    return []


def skipped(node, path: str = "") -> list[str]:
    """The paths whose value says the section or number needs CUDA."""
    if isinstance(node, dict):
        return [f for k, v in node.items() for f in skipped(v, f"{path}/{k}" if path else k)]
    return [path] if node == SKIPPED else []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="all of it at toy sizes on the CPU (default: off; minutes: benchmarks/README.md)")
    p.add_argument("--out", type=Path, help="work folder for the data and the runs (default: a temporary folder)")
    p.add_argument("--json", metavar="FILE", help="results file (default: benchmarks/results/gpu.json on a GPU; "
                   "with --smoke a file in the work folder)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections (default: all: {','.join(SECTIONS)})")
    p.add_argument("--rank-run", help=argparse.SUPPRESS)   # (g)'s rank processes
    p.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--stop-at", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rank_run:
        return rank_run(args.rank_run, args.smoke, args.out, args.run, args.stop_at)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        print(f"error: --only {bad[0]!r}: not a section ({', '.join(SECTIONS)})", file=sys.stderr)
        return 2
    sizes = SMOKE if args.smoke else FULL
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device visible (use --smoke to check the script on a CPU)", file=sys.stderr)
        return 2
    device = torch.device(sizes.device)
    if sizes.threads:
        torch.set_num_threads(sizes.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.out or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        print(f"gpu_check{' --smoke' if args.smoke else ''}: {machine()}", flush=True)
        data = write_data(sizes, work)
        seconds = {"data": round(time.perf_counter() - started, 1)}
        print(f"data in {seconds['data']} s", flush=True)
        out: dict = {}
        # (g)'s rank processes run beside the in-process sections that time nothing ((a)-(c)); on a GPU they are
        # done before the timed ones start ((d)-(f)), on a CPU (the smoke) they may run on beside those
        background = Ranks(sizes, data, args.smoke) if "ranks" in only else None
        step_rate = None
        for name in SECTIONS:
            if name not in only:
                continue
            if background and "ranks" not in out and (name == "ranks" or (
                    device.type == "cuda" and name in ("evaluation", "throughput", "loaders"))):
                out["ranks"] = background.finish()
                seconds["ranks (beside the sections before)"] = out["ranks"]["seconds"]
            tic = time.perf_counter()
            print(f"({LETTER[name]}) {name}", flush=True)
            if name == "throughput":
                entries, out["throughput"] = throughput(sizes, data, device)
                out.update(entries)
                step_rate = out["throughput"]["pretrain"]["bot"]
            elif name == "loaders":
                out["loaders"], entries = loaders(sizes, data, device, step_rate)
                out.update(entries)
            elif name == "ranks":
                pass  # finished above
            else:
                out[name] = globals()[name](sizes, data, device)
            seconds[name] = round(time.perf_counter() - tic, 1)
        seconds["total"] = round(time.perf_counter() - started, 1)
        out["meta"] = {"smoke": args.smoke, "device": str(device), "machine": machine(), "sizes": sizes.__dict__,
                       "seconds": seconds, "sections": only, "failed": failures(out), "skipped": skipped(out)}
        path = args.json or (str(work / "gpu.json") if args.smoke else str(ROOT / "benchmarks/results/gpu.json"))
        print_table({k: v for k, v in out.items() if isinstance(v, dict) and "ratio" in v})
        failed = out["meta"]["failed"]
        print(f"\nfailed: {', '.join(failed) if failed else 'none'}; skipped ({SKIPPED}): "
              f"{len(out['meta']['skipped'])}; seconds {seconds}")
        write_json(path, out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
