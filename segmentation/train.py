"""`bot finetune-seg`: resolve the config, build data and network, train with engine.loop.fit, write the run dir.

Optimiser: SGD (momentum 0.9, wd 1e-4) in two param groups, the heads' lr scaled by `head_lr_mult` (GluonCV: 10);
schedule: linear warmup then poly decay (power 0.9) over all batches (PAPER.md section 6). Loss: pixel-wise
cross-entropy over labelled pixels, plus aux_weight x the auxiliary head's.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from engine import distributed as dist
from engine.config import apply_options, apply_sets, load_yaml, set_key
from engine.errors import BotError
from engine.loop import fit, restore_state
from engine.precision import Precision
from engine.progress import report
from engine.rundir import RunDir, versions
from engine.schedules import Schedule

from .data import SegDataset, SegSource, list_pairs, parse_data
from .evaluate import confusion, ms_options, save_segmenter
from .metrics import headline, per_class_table
from .models import build_model, param_groups
from .transforms import eval_transform, train_transform

CLI_KEYS = {"backbone": "model.backbone", "data": "data.spec", "head": "model.head", "num_classes": "data.num_classes",
            "ignore_index": "data.ignore_index", "class_names": "data.class_names", "epochs": "train.epochs",
            "batch_size": "train.batch_size", "lr": "train.lr", "base_size": "data.base_size",
            "crop_size": "data.crop_size", "norm": "model.norm", "aux": "model.aux", "precision": "train.precision",
            "device": "train.device", "workers": "data.workers", "seed": "train.seed"}


def default_config() -> dict:
    return load_yaml(Path(__file__).with_name("defaults.yaml"))


def resolve_config(options: dict, sets=()) -> dict:
    """defaults.yaml, then its `synthetic` block when no --data, then CLI options, then --set pairs."""
    cfg = default_config()
    synthetic = cfg.pop("synthetic")
    if not options.get("data"):
        for key, value in synthetic.items():
            set_key(cfg, key, value, "defaults.yaml synthetic")
    apply_options(cfg, {CLI_KEYS[k]: v for k, v in options.items() if k in CLI_KEYS})
    apply_sets(cfg, sets)
    if not cfg["model"]["backbone"]:
        raise BotError("--backbone: required (a pretrain run dir, a .safetensors file, or an arch name for random init)")
    return cfg


def source_from_config(cfg: dict) -> SegSource:
    d = cfg["data"]
    synthetic = {"train": d["synthetic_train"], "val": d["synthetic_val"], "size": d["synthetic_size"]}
    source = parse_data(d["spec"], d["num_classes"], d["ignore_index"], d["class_names"], synthetic)
    source.splits = (d["train_split"] or source.splits[0], d["val_split"] or source.splits[1])
    return source


def check_config(cfg: dict, world_size: int) -> None:
    t, d = cfg["train"], cfg["data"]
    if t["batch_size"] % world_size:
        raise BotError(f"--batch-size {t['batch_size']}: not divisible by the {world_size} processes")
    if cfg["model"]["head"] != "fcn" and d["crop_size"] % 32:
        raise BotError(f"--crop-size {d['crop_size']}: smp heads need a multiple of 32")
    if t["epochs"] < 1:
        raise BotError(f"--epochs {t['epochs']}: must be at least 1")


def segmentation_loss(out: dict, masks: torch.Tensor, ignore_index: int, aux_weight: float) -> tuple[torch.Tensor, dict]:
    """Cross-entropy averaged over labelled pixels (0, not NaN, for a crop with none)."""
    n = (masks != ignore_index).sum().clamp(min=1)
    main = F.cross_entropy(out["out"].float(), masks, ignore_index=ignore_index, reduction="sum") / n
    logs = {"loss_main": main.detach()}
    loss = main
    if "aux" in out:
        aux = F.cross_entropy(out["aux"].float(), masks, ignore_index=ignore_index, reduction="sum") / n
        loss = loss + aux_weight * aux
        logs["loss_aux"] = aux.detach()
    return loss, logs


def default_out(cfg: dict) -> Path:
    name = Path(str(cfg["model"]["backbone"]).rstrip("/")).name.replace(".safetensors", "")
    return Path("runs") / f"segment-{cfg['model']['head']}-{name}"


def run_from_cli(*, out=None, resume=False, sets=(), **options) -> dict:
    if resume:
        if not out:
            raise BotError("--resume: needs --out, the run directory to continue")
        config_file = Path(out) / "config.yaml"
        if not config_file.is_file():
            raise BotError(f"{config_file}: no config to resume from")
        if (Path(out) / "summary.json").is_file():
            report(f"{out}: already finished (summary.json present)")
            return json.loads((Path(out) / "summary.json").read_text())
        cfg = load_yaml(config_file)
        for key in ("device", "workers"):  # where it runs may change; what it computes may not
            if options.get(key) is not None:
                set_key(cfg, CLI_KEYS[key], options[key])
    else:
        cfg = resolve_config(options, sets)
    return finetune(cfg, Path(out) if out else default_out(cfg), resume=resume)


def finetune(cfg: dict, out: Path, resume: bool = False, on_step=None) -> dict:
    """Train and write the run dir; `on_step(position)` runs after each optimiser step (tests interrupt with it)."""
    wall = time.perf_counter()
    ctx = dist.setup(cfg["train"]["device"])
    try:
        return _finetune(cfg, out, resume, ctx, wall, on_step)
    finally:
        dist.cleanup()


def _finetune(cfg: dict, out: Path, resume: bool, ctx, wall: float, on_step) -> dict:
    t, d, m = cfg["train"], cfg["data"], cfg["model"]
    check_config(cfg, ctx.world_size)
    run = RunDir(out, enabled=ctx.is_main)
    if not resume and run.finished():
        raise BotError(f"{out}: already holds a finished run (summary.json); choose another --out")
    if not resume and run.checkpoint_file.exists():
        raise BotError(f"{out}: holds an unfinished run; add --resume to continue it or choose another --out")
    torch.manual_seed(t["seed"])

    source = source_from_config(cfg)
    train_pairs, val_pairs = list_pairs(source, source.splits[0]), list_pairs(source, source.splits[1])
    d["num_classes"], d["ignore_index"] = source.num_classes, source.ignore_index

    model, info = build_model(m["backbone"], m["head"], source.num_classes, aux=m["aux"], output_stride=m["output_stride"],
                              norm=m["norm"],
                              # torch's SyncBatchNorm runs on GPUs only; on CPU ranks "sync" stays per-rank BN
                              distributed=ctx.distributed and ctx.device.type == "cuda")
    m["arch"], m["normalize"] = info.arch, {"mean": list(info.mean), "std": list(info.std)}
    model.to(ctx.device)
    per_rank = t["batch_size"] // ctx.world_size
    train_set = SegDataset(train_pairs, source, train_transform(d["base_size"], d["crop_size"], (d["scale_min"], d["scale_max"]),
                                                                source.ignore_index, info.mean, info.std, d["flip"]), t["seed"])
    val_set = SegDataset(val_pairs, source, eval_transform(info.mean, info.std))
    sampler = dist.EpochSampler(len(train_set), ctx, t["seed"], shuffle=True, drop_last=True, batch_size=per_rank)
    if len(sampler) < per_rank:
        raise BotError(f"{source.folders(source.splits[0])[0]}: {len(train_set)} images, fewer than one batch of {t['batch_size']}")
    # The loader draws its workers' base seed from its own generator, not the global RNG that dropout uses, so a
    # resumed run replays the same dropout masks (augmentation is seeded per sample anyway).
    generator = torch.Generator().manual_seed(t["seed"])
    loader = torch.utils.data.DataLoader(train_set, batch_size=per_rank, sampler=sampler, num_workers=d["workers"],
                                         drop_last=True, persistent_workers=False, generator=generator,
                                         collate_fn=lambda b: (torch.stack([x[0] for x in b]), torch.stack([x[1] for x in b])))
    steps_per_epoch = len(sampler) // per_rank
    schedule = Schedule(t["lr"], steps_per_epoch * t["epochs"], int(t["warmup_epochs"] * steps_per_epoch), kind="poly", power=t["power"])
    optimizer = torch.optim.SGD(param_groups(model, t["weight_decay"], t["head_lr_mult"]), lr=t["lr"], momentum=t["momentum"])
    precision = Precision(t["precision"], ctx.device)
    net = model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    start = None
    if resume:
        start, _ = restore_state(run, model, optimizer, precision, generator)
        report(f"resumed {out} at epoch {start.epoch}, step {start.step}", ctx.is_main)
    else:
        run.write_config(cfg)

    def train_step(batch):
        images, masks = batch[0].to(ctx.device, non_blocking=True), batch[1].to(ctx.device, non_blocking=True)
        loss, logs = segmentation_loss(net(images), masks, source.ignore_index, m["aux_weight"])
        return loss, images.shape[0], logs

    last = {}

    def evaluate(mode: str | None = None) -> dict:
        # ms-flip costs a dozen forward passes per image: the periodic evaluations score whole images, the final one ms-flip
        mode = mode or ("whole" if cfg["eval"]["mode"] == "ms-flip" else cfg["eval"]["mode"])
        cm = confusion(model, val_set, ctx, batch_size=cfg["eval"]["batch_size"], mode=mode,
                       window=d["crop_size"], overlap=cfg["eval"]["slide_overlap"], workers=d["workers"],
                       ms=ms_options(cfg))
        last["result"] = cm.compute()
        return headline(last["result"])

    result = fit(model=net, optimizer=optimizer, precision=precision, schedule=schedule, loader=loader, sampler=sampler,
                 train_step=train_step, evaluate=evaluate, run=run, ctx=ctx, epochs=t["epochs"], batch_size=per_rank,
                 eval_every=t["eval_every"], log_every=t["log_every"], start=start, on_step=on_step,
                 generator=generator)
    if cfg["eval"]["mode"] == "ms-flip":
        result["metrics"] = evaluate("ms-flip")
    table = per_class_table(last["result"], source.class_names)
    summary = {
        "task": "segment", "metrics": result["metrics"], "backbone": info.summary(),
        "dataset": {"name": source.name, "path": str(source.root), "num_classes": source.num_classes,
                    "ignore_index": source.ignore_index,
                    "splits": {source.splits[0]: len(train_set), source.splits[1]: len(val_set)}},
        "head": m["head"], "eval_mode": cfg["eval"]["mode"], "epochs": t["epochs"], "wall_seconds": time.perf_counter() - wall,
        "images_per_second": result["images_per_second"], "versions": versions(),
        "per_class_iou": {n: (None if math.isnan(v) else v) for n, v in zip(source.class_names, last["result"]["iou"])},
    }
    if run.enabled:
        save_segmenter(model, run.weights_file, {"format": "bot-segmenter-1", "head": m["head"], "arch": info.arch,
                                                 "num_classes": source.num_classes, "backbone_sha256": info.sha256})
        (run.path / "per_class.md").write_text(table)
        run.write_summary(summary)
    report(table, ctx.is_main)
    report(f"mIoU {result['metrics']['miou']:.4f}  pixel acc {result['metrics']['pixel_acc']:.4f}  -> {out}", ctx.is_main)
    return summary
