"""`bot pretrain`: resolve the recipe into a config, then train and evaluate a classifier, top to bottom.

The run directory gets config.yaml first, metrics.jsonl as it goes, last.ckpt every epoch, and at the end
model.safetensors (the backbone checkpoint downstream stages load) and summary.json, written last.
"""
from __future__ import annotations

import random
import time
import warnings
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from engine import distributed as dist
from engine.config import apply_options, apply_sets
from engine.errors import BotError
from engine.loop import Position, fit, restore_state, unwrap
from engine.precision import Precision
from engine.progress import report
from engine.rundir import RunDir, versions
from engine.schedules import Schedule, scaled_lr

from .backbones import create_backbone, parse_arch
from .data import build_datasets, build_loaders
from .optim import build_optimizer
from .recipes import apply_synthetic_scale, load_recipe
from .tricks import distillation_loss, mixup, smooth_targets, soft_cross_entropy
from .weights import WEIGHTS_NAME, load_backbone, save_classifier

SYNTHETIC = "synthetic-shapes"
OPTION_KEYS = {"data": "data.path", "arch": "model.arch", "epochs": "schedule.epochs", "batch_size": "optim.batch_size",
               "lr": "optim.lr", "image_size": "data.image_size", "precision": "train.precision",
               "device": "train.device", "workers": "data.workers", "seed": "train.seed", "teacher": "train.teacher",
               "init_weights": "train.init_weights"}


def resolve_config(recipe: str | None, sets=(), **options) -> dict:
    """Recipe, then the synthetic scale when no --data, then CLI options, then --set pairs."""
    cfg = load_recipe(recipe or "resnet50d")
    if options.get("data") is None and not any(s.startswith("data.path=") for s in sets):
        apply_synthetic_scale(cfg)
    apply_options(cfg, {OPTION_KEYS[k]: v for k, v in options.items() if k in OPTION_KEYS})
    apply_sets(cfg, sets)
    parse_arch(cfg["model"]["arch"])
    if "teacher" in cfg.get("requires", []) and not cfg["train"]["teacher"]:
        raise BotError(f"recipe {cfg['recipe']!r} distils from a teacher: give --teacher RUN_DIR|FILE.safetensors")
    if cfg["train"]["smoothing_form"] not in ("paper", "uniform"):
        raise BotError(f"train.smoothing_form {cfg['train']['smoothing_form']!r}: use paper or uniform")
    if cfg["schedule"]["kind"] not in ("step", "cosine"):
        raise BotError(f"schedule.kind {cfg['schedule']['kind']!r}: use step or cosine")
    return cfg


def run_from_cli(*, recipe=None, out=None, resume=False, sets=(), **options) -> Path:
    if resume:
        if not out:
            raise BotError("--resume needs --out RUN_DIR")
        run = RunDir(out, enabled=False)
        if not run.config_file.is_file():
            raise BotError(f"{out}: no run to resume here (no config.yaml)")
        given = [k for k, v in options.items() if v is not None] + (["set"] if sets else []) + (["recipe"] if recipe else [])
        if given:
            raise BotError(f"--resume continues {run.config_file} as it is: drop --{', --'.join(given).replace('_', '-')}")
        if run.finished():
            report(f"{out}: already finished (summary.json present)")
            return Path(out)
        cfg = run.read_config()
    else:
        cfg = resolve_config(recipe, sets, **options)
        out = out or f"runs/pretrain-{cfg['recipe']}"
        run = RunDir(out, enabled=False)
        if run.finished():
            raise BotError(f"{out}: holds a finished run; choose another --out")
        if run.checkpoint_file.exists():
            raise BotError(f"{out}: holds an unfinished run; add --resume to continue it or choose another --out")
        device = dist.pick_device(cfg["train"]["device"])
        if device.type == "cpu" and cfg["train"]["precision"] == "fp16" and options.get("precision") is None:
            cfg["train"]["precision"] = "fp32"
            report("note: the recipe asks for fp16, which needs a GPU to pay off; training in fp32 on the CPU "
                   "(--precision fp16 forces it)")
    return train(cfg, Path(out), resume)


def train(cfg: dict, out: Path, resume: bool = False) -> Path:
    ctx = dist.setup(cfg["train"]["device"])
    try:
        return _train(cfg, out, resume, ctx)
    finally:
        dist.cleanup()


def _train(cfg: dict, out: Path, resume: bool, ctx: dist.DistContext) -> Path:
    started = time.time()
    t, o, s, d = cfg["train"], cfg["optim"], cfg["schedule"], cfg["data"]
    seed = t["seed"]
    torch.manual_seed(seed)
    random.seed(seed)
    if d["path"] is None:
        from synthetic.imagefolder import synthetic_imagefolder
        root = synthetic_imagefolder(**d["synthetic"])
    else:
        root = Path(d["path"])
    data = build_datasets(root, d, seed)
    num_classes = len(data.classes)
    if o["batch_size"] % ctx.world_size:
        raise BotError(f"--batch-size {o['batch_size']} does not split over {ctx.world_size} processes")
    per_rank = o["batch_size"] // ctx.world_size
    train_loader, sampler, val_loader = build_loaders(data, ctx, per_rank, d["workers"], seed)
    lr = o["lr"] if o["lr"] is not None else scaled_lr(o["base_lr"], o["batch_size"], o["base_batch"])

    model = create_backbone(cfg["model"]["arch"], num_classes=num_classes, zero_gamma=cfg["model"]["zero_gamma"],
                            init=cfg["model"]["init"])
    if t["init_weights"]:
        source, _ = load_backbone(t["init_weights"], arch=cfg["model"]["arch"], num_classes=num_classes)
        model.load_state_dict(source.state_dict())
    model.to(ctx.device)
    teacher = None
    if t["teacher"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            teacher, tinfo = load_backbone(t["teacher"], allow_random=False)
        if tinfo.num_classes != num_classes:
            raise BotError(f"{tinfo.source}: teacher has {tinfo.num_classes} classes, the data has {num_classes}")
        teacher.to(ctx.device).eval().requires_grad_(False)
    net = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None) \
        if ctx.distributed else model

    optimizer = build_optimizer(model, o, lr)
    precision = Precision(t["precision"], ctx.device)
    steps_per_epoch = len(train_loader)
    schedule = Schedule(lr=lr, total_steps=s["epochs"] * steps_per_epoch, warmup_steps=int(s["warmup_epochs"] * steps_per_epoch),
                        kind=s["kind"], milestones=[int(m * steps_per_epoch) for m in s["milestones"]], gamma=s["gamma"])
    generator = torch.Generator().manual_seed(seed * 7919 + ctx.rank)
    run = RunDir(out, enabled=ctx.is_main)
    elapsed_before = 0.0
    start = Position()
    if resume:
        start, extra = restore_state(run, model, optimizer, precision, generator)
        elapsed_before = extra.get("wall_seconds", 0.0)
        report(f"resuming {out} at epoch {start.epoch + 1}, step {start.step}", ctx.is_main)
    else:
        if ctx.is_main and run.metrics_file.exists():
            run.metrics_file.unlink()
        run.write_config(cfg)
    report(f"pretrain {cfg['recipe']}: {cfg['model']['arch']}, {num_classes} classes, {len(data.train)} train / "
           f"{len(data.val)} val images, batch {o['batch_size']}, lr {lr:.4g}, {s['epochs']} epochs, "
           f"{t['precision']}, {ctx.world_size} x {ctx.device}", ctx.is_main)

    def train_step(batch):
        crops, alphas, labels = (x.to(ctx.device, non_blocking=True) for x in batch)
        images = data.device_pipeline(crops, alphas)  # uint8 crops -> lit, normalised float images, batched
        target = smooth_targets(labels, num_classes, t["label_smoothing"], t["smoothing_form"])
        if t["mixup_alpha"] > 0:
            images, target, _ = mixup(images, target, t["mixup_alpha"], generator)
        logits = net(images)
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(images)
            loss = distillation_loss(logits, teacher_logits, target, t["distill_temperature"])
        else:
            loss = soft_cross_entropy(logits, target)
        return loss, images.shape[0], {}

    @torch.no_grad()
    def evaluate() -> dict:
        model.eval()
        counts = torch.zeros(3, dtype=torch.float64)
        for images, labels in val_loader:
            images, labels = images.to(ctx.device), labels.to(ctx.device)
            with precision.autocast():
                logits = model(images)
            top5 = logits.float().topk(min(5, num_classes), dim=1).indices
            hit = top5 == labels[:, None]
            counts += torch.tensor([hit[:, 0].sum().item(), hit.any(1).sum().item(), labels.numel()], dtype=torch.float64)
        counts = dist.all_reduce_sum(counts, ctx)
        model.train()
        return {"top1": float(counts[0] / counts[2]), "top5": float(counts[1] / counts[2])}

    result = fit(model=net, optimizer=optimizer, precision=precision, schedule=schedule, loader=train_loader,
                 sampler=sampler, train_step=train_step, evaluate=evaluate, run=run, ctx=ctx, epochs=s["epochs"],
                 batch_size=per_rank, eval_every=t["eval_every"], log_every=t["log_every"], start=start,
                 generator=generator, extra_state=lambda: {"wall_seconds": elapsed_before + time.time() - started})
    metrics = result["metrics"]
    if ctx.is_main:
        weights = out / WEIGHTS_NAME
        name, _, variant = parse_arch(cfg["model"]["arch"])
        sha = save_classifier(unwrap(model), weights, arch=name, num_classes=num_classes, recipe=cfg["recipe"],
                              top1=metrics["top1"])
        run.write_summary({
            "task": "pretrain",
            "metrics": metrics,
            "backbone": {"arch": name, "variant": variant.upper(), "recipe": cfg["recipe"], "sha256": sha,
                         "source": str(weights.resolve()), "top1": metrics["top1"]},
            "dataset": {"name": SYNTHETIC if d["path"] is None else root.name, "path": str(root),
                        "splits": {"train": len(data.train), "val": len(data.val)}, "num_classes": num_classes,
                        "classes": data.classes},
            "epochs": s["epochs"],
            "wall_seconds": elapsed_before + time.time() - started,
            "images_per_second": result["images_per_second"],
            "versions": versions(),
        })
        report(f"done: top-1 {metrics['top1'] * 100:.2f}%  top-5 {metrics['top5'] * 100:.2f}%  -> {out}")
    dist.barrier(ctx)
    return out
