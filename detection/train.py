"""`bot finetune-detect`: configuration, data, model and optimiser, then engine.loop.fit, then the run's results
(summary.json, model.safetensors, detections_<split>.json).
"""
from __future__ import annotations

import copy
import re
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from engine.config import apply_options, apply_sets, load_yaml
from engine.distributed import EpochSampler, broadcast_object, cleanup, setup
from engine.errors import BotError
from engine.loop import fit, restore_state
from engine.precision import Precision
from engine.rundir import RunDir, versions
from engine.schedules import Schedule
from pretrain.weights import is_arch_name

from .data import AspectBatchSampler, DetectionDataset, collate, load_split, parse_spec
from .evaluate import predict, score, write_detections
from .model import build_detector, resolve_auto, resolve_detector, save_detector

HERE = Path(__file__).parent
DEFAULTS = {"voc": ("2007-trainval,2012-trainval", "2007-test"), "coco": ("train2017", "val2017"),
            "synthetic:voc": ("2007-trainval", "2007-test"), "synthetic:coco": ("train", "val")}


def resolve_config(options: dict, sets=()) -> dict:
    """defaults.yaml, then synthetic.yaml when no real data is given, then CLI options, then --set."""
    cfg = load_yaml(HERE / "defaults.yaml")
    spec = options.get("data.spec")
    if parse_spec(spec)[0] == "synthetic":
        _merge(cfg, load_yaml(HERE / "synthetic.yaml"))
    apply_options(cfg, options)
    apply_sets(cfg, sets)
    return cfg


def _merge(into: dict, over: dict) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def resolve_data(spec, train_sets, val_set, synthetic: dict | None) -> tuple[str, Path, str, str]:
    """(loader kind "voc"|"coco", root, train sets, val set) for a --data spec; builds the synthetic set if needed."""
    kind, path = parse_spec(spec)
    if kind == "synthetic":
        layout = path or "voc"
        if layout not in ("voc", "coco"):
            raise BotError(f"--data {spec!r}: the synthetic set comes as synthetic:voc or synthetic:coco")
        p = dict(load_yaml(HERE / "defaults.yaml")["data"]["synthetic"], **(synthetic or {}))
        if layout == "voc":
            from synthetic.voc import synthetic_voc
            root = synthetic_voc(n_train=p["n_train"], n_test=p["n_test"], size=p["size"], seed=p["seed"])
        else:
            from synthetic.coco import synthetic_coco
            root = synthetic_coco(n_train=p["n_train"], n_val=p["n_test"], size=p["size"], seed=p["seed"])
        key, kind = f"synthetic:{layout}", layout
    else:
        root, key = Path(path), kind
    default_train, default_val = DEFAULTS[key]
    return kind, Path(root), train_sets or default_train, val_set or default_val


def run_finetune(cfg: dict, out: str | Path, resume: bool = False) -> dict:
    ctx = setup(cfg["device"])
    try:
        return _run(cfg, Path(out), resume, ctx)
    finally:
        cleanup()


def _run(cfg: dict, out: Path, resume: bool, ctx) -> dict:
    run = RunDir(out, enabled=ctx.is_main)
    if not resume and (out / "last.ckpt").exists():
        raise BotError(f"{out}: holds a run already (last.ckpt); use --resume to continue it or another --out")
    if cfg["backbone"] is None:
        raise BotError("finetune-detect: --backbone is required (a pretrain run dir, a .safetensors file or an arch name)")
    d, m, t = cfg["data"], cfg["model"], cfg["train"]
    torch.manual_seed(t["seed"])
    kind, root, train_sets, val_set = resolve_data(d["spec"], d["train_sets"], d["val_set"], d["synthetic"])
    train_split = load_split(kind, root, train_sets, d["classes"])
    val_split = load_split(kind, root, val_set, d["classes"] or (train_split.classes if kind == "voc" else None))
    if val_split.classes != train_split.classes:
        raise BotError(f"{root}: train and val splits have different classes")
    # recorded resolved, so that config.yaml says what ran and a rebuild from it makes the same modules
    resolve_detector(cfg, "synthetic" if parse_spec(d["spec"])[0] == "synthetic" else kind)
    cfg["model"] = m = resolve_auto(m, is_arch_name(str(cfg["backbone"])))
    model, info = build_detector(cfg["backbone"], len(train_split.classes), m, d["min_size"], d["max_size"])
    model.to(ctx.device)
    if ctx.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    world_batch = t["batch_size"]
    if world_batch % ctx.world_size:
        raise BotError(f"--batch-size {world_batch}: must divide over {ctx.world_size} processes")
    batch = world_batch // ctx.world_size
    train_ds = DetectionDataset(train_split, True, d["min_size"], d["max_size"], d["flip_p"], t["seed"],
                                train_ignored=d["train_difficult"] and kind == "voc")
    sampler = EpochSampler(len(train_ds), ctx, t["seed"], shuffle=True, drop_last=True, batch_size=batch)
    aspects = [r.width / r.height for r in train_split.records]
    loader = DataLoader(train_ds, batch_sampler=AspectBatchSampler(sampler, aspects, batch), collate_fn=collate,
                        num_workers=d["workers"], persistent_workers=d["workers"] > 0)
    steps_per_epoch = len(sampler) // batch
    if steps_per_epoch == 0:
        raise BotError(f"{root}: {len(train_ds)} training images make no batch of {world_batch}")

    lr = t["lr"] if t["lr"] is not None else t["base_lr"] * world_batch / t["base_batch"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=t["momentum"], weight_decay=t["weight_decay"])
    schedule = Schedule(lr, t["epochs"] * steps_per_epoch, min(t["warmup_iters"], steps_per_epoch), kind="step",
                        milestones=[e * steps_per_epoch for e in t["lr_decay_epochs"]], gamma=t["lr_decay"])
    precision = Precision(t["precision"], ctx.device)
    start = None
    if resume:
        start, _ = restore_state(run, model, optimizer, precision)
    elif ctx.is_main:
        run.write_config(cfg)

    val_ds = DetectionDataset(val_split, False, d["min_size"], d["max_size"])
    split_tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", val_set)
    eval_speed = {}

    def train_step(batch_data):
        images, targets = batch_data
        images = [im.to(ctx.device, non_blocking=True) for im in images]
        targets = [{"boxes": tg["boxes"].to(ctx.device), "labels": tg["labels"].to(ctx.device)} for tg in targets]
        losses = model(images, targets)
        return sum(losses.values()), len(images), {k: v.detach() for k, v in losses.items()}

    def evaluate() -> dict:
        dets, speed = predict(model.module if ctx.distributed else model, val_ds, ctx, batch, d["workers"])
        eval_speed["images_per_second"] = speed * ctx.world_size
        result = None
        if ctx.is_main:
            metrics, per_class, table = score(val_split, dets)
            write_detections(run.path / f"detections_{split_tag}.json", val_split, dets)
            result = (metrics, per_class)
            eval_speed["table"] = table
        metrics, per_class = broadcast_object(result, ctx)
        eval_speed["per_class"] = per_class
        return {k: v for k, v in metrics.items() if v is not None}

    tic = time.time()
    result = fit(model=model, optimizer=optimizer, precision=precision, schedule=schedule, loader=loader,
                 sampler=sampler, train_step=train_step, evaluate=evaluate, run=run, ctx=ctx, epochs=t["epochs"],
                 batch_size=batch, eval_every=t["eval_every"], log_every=t["log_every"], start=start,
                 clip_grad=t["clip_grad"])
    wall = time.time() - tic
    if ctx.is_main:
        core = model.module if ctx.distributed else model
        save_detector(core, run.weights_file, {
            "classes": train_split.classes, "category_ids": train_split.category_ids, "model": m,
            "min_size": d["min_size"], "max_size": d["max_size"], "mean": list(info.mean), "std": list(info.std),
            "backbone": info.summary() | {"variant": info.variant}, "synthetic": d["synthetic"]})
        summary = {
            "task": "detect", "metrics": result["metrics"], "per_class": eval_speed.get("per_class"),
            "backbone": info.summary(),
            "dataset": {"name": ("synthetic-shapes-" + kind) if parse_spec(d["spec"])[0] == "synthetic" else kind,
                        "path": str(root), "splits": {train_sets: len(train_split), val_set: len(val_split)}},
            "epochs": t["epochs"], "wall_seconds": wall, "images_per_second": result["images_per_second"],
            "eval_images_per_second": eval_speed.get("images_per_second"), "versions": versions()}
        run.write_summary(summary)
        if eval_speed.get("table"):
            print(eval_speed["table"])
    return result["metrics"]


def run_from_cli(*, backbone=None, data=None, train_sets=None, val_set=None, detector=None, epochs=None, batch_size=None, lr=None,
                 image_size=None, max_size=None, precision=None, device=None, workers=None, seed=None, out=None,
                 resume=False, sets=()) -> dict:
    if resume:
        if not out:
            raise BotError("--resume needs --out, the run directory to continue")
        cfg_file = Path(out) / "config.yaml"
        if not cfg_file.is_file():
            raise BotError(f"{cfg_file}: no config here to resume from")
        cfg = load_yaml(cfg_file)
        if device:
            cfg["device"] = device
        return run_finetune(cfg, out, resume=True)
    options = {"backbone": backbone, "device": device, "data.spec": data, "data.train_sets": train_sets,
               "data.val_set": val_set, "model.detector": detector, "data.min_size": image_size, "data.workers": workers, "train.epochs": epochs,
               "train.batch_size": batch_size, "train.lr": lr, "train.precision": precision, "train.seed": seed}
    if image_size is not None:
        options["data.max_size"] = max_size or round(image_size * 1000 / 600)
    elif max_size is not None:
        options["data.max_size"] = max_size
    cfg = resolve_config(options, sets)
    if not out:
        name = Path(str(backbone)).name if backbone else "none"
        out = f"runs/detect-{name}"
    return run_finetune(copy.deepcopy(cfg), out)
