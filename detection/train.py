"""`bot finetune-detect`: what is detection's own in a run (data, detector, optimiser, VOC/COCO scoring); the run
lifecycle (checks, resume, lock, process group, summary) is engine/stage.py's.

The run directory gets config.yaml, metrics.jsonl, last.ckpt, then model.safetensors, detections_<split>.json and
summary.json (last).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from bot.engine.config import given, load_yaml, overlay
from bot.engine.distributed import EpochSampler, broadcast_object
from bot.engine.errors import BotError
from bot.engine.per_image import FILE_NAME as PER_IMAGE_FILE
from bot.engine.precision import Precision
from bot.engine.schedules import Schedule, milestone_steps, scaled_lr
from bot.engine.stage import Session, StageDef, fresh_config, launch, run_config
from bot.pretrain.weights import check_checkpoint, is_arch_name

from .data import AspectBatchSampler, DetectionDataset, check_val, collate, load_split, parse_spec, resolve_data
from .evaluate import predict, score_all, write_detections
from .per_image import write_detect
from .model import build_detector, resolve_auto, resolve_detector, save_detector

HERE = Path(__file__).parent
OPTION_KEYS = {"backbone": "model.backbone", "arch": "model.arch", "detector": "model.detector", "data": "data.spec", "train_sets": "data.train_sets",
               "val_set": "data.val_set", "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr",
               "image_size": "data.min_size", "max_size": "data.max_size", "precision": "train.precision",
               "device": "train.device", "workers": "data.workers", "seed": "train.seed",
               "compile": "train.compile"}
RENAMED = {"backbone": "model.backbone", "device": "train.device"}


def defaults(options: dict, sets=()) -> dict:
    """defaults.yaml, then synthetic.yaml when no real data is given."""
    cfg = load_yaml(HERE / "defaults.yaml")
    if parse_spec(given(options, sets, "data.spec"))[0] == "synthetic":
        overlay(cfg, load_yaml(HERE / "synthetic.yaml"), HERE / "synthetic.yaml")
    keep_long_side_ratio(cfg, given(options, sets, "data.min_size"), given(options, sets, "data.max_size"))
    return cfg


LONG_SIDE_RATIO = 1000 / 600  # GluonCV's VOC short/long sides, 600 and 1000 (faster_rcnn.py: short=600, max_size=1000)


def keep_long_side_ratio(cfg: dict, min_size, max_size) -> None:
    """A short side given without a long side (by --image-size or --set data.min_size) moves the long side cap with
    it, at the reference 600/1000 ratio (800 -> 1333, GluonCV's COCO pair); a long side given too is the user's.
    Values of the wrong type are left for the schema check to refuse."""
    if isinstance(min_size, int) and not isinstance(min_size, bool) and max_size is None:
        cfg["data"]["max_size"] = round(min_size * LONG_SIDE_RATIO)


def schema() -> dict:
    from bot.engine.config import read_schema
    return read_schema(HERE / "schema.yaml", load_yaml(HERE / "defaults.yaml"))


def check(cfg: dict) -> None:
    if cfg["model"]["backbone"] is None:
        raise BotError("finetune-detect: --backbone is required (a pretrain run dir, a .safetensors file or an arch name)")
    check_checkpoint(cfg["model"]["backbone"], cfg["model"]["arch"])
    parse_spec(cfg["data"]["spec"])
    if cfg["data"]["max_size"] < cfg["data"]["min_size"]:
        raise BotError(f"--max-size {cfg['data']['max_size']}: smaller than --image-size {cfg['data']['min_size']}")


def upgrade(cfg: dict) -> None:
    """Runs written before the milestones became fractions held train.lr_decay_epochs: the same points as fractions;
    runs written before the GluonCV keys of model.c4 (C4_BEFORE) keep torchvision's behaviour there."""
    from .model import C4_BEFORE

    c4 = (cfg.get("model") or {}).get("c4")
    if isinstance(c4, dict) and c4:  # a run from before these keys resumes with the detector it started with
        for key, value in C4_BEFORE.items():
            c4.setdefault(key, value)
    t = cfg.get("train", {})
    if "lr_decay_epochs" in t and "milestones" not in t:
        epochs = t.get("epochs") or 1
        t["milestones"] = [min(1.0, e / epochs) for e in t.pop("lr_decay_epochs")]


def cache_dir(cfg: dict):
    if parse_spec(cfg["data"]["spec"])[0] != "synthetic":
        return None
    from bot.synthetic.cache import cache_root
    return cache_root()


def default_out(cfg: dict) -> Path:
    return Path(f"runs/detect-{Path(str(cfg['model']['backbone']).rstrip('/')).name}")


STAGE = StageDef(task="detect", command="finetune-detect", option_keys=OPTION_KEYS, defaults=defaults, schema=schema,
                 check=check, default_out=default_out, cache_dir=cache_dir, renamed=RENAMED,
                 upgrade=upgrade, cudnn_benchmark=False, eval_benchmark=False)  # every batch its own image sizes


def resolve_config(options: dict, sets=()) -> dict:
    """The checked config of a fresh run from CLI-style options (tests plan with it)."""
    return fresh_config(STAGE, options, sets)


def run_from_cli(*, out=None, resume=False, sets=(), on_step=None, **options) -> dict:
    return launch(STAGE, train_session, out=out, resume=resume, sets=sets, on_step=on_step, **options)


def run_finetune(cfg: dict, out: str | Path, resume: bool = False, on_step=None) -> dict:
    """Run a resolved config into `out`; returns the summary."""
    return run_config(STAGE, train_session, cfg, Path(out), resume, on_step)


def train_lr(t: dict) -> float:
    """The lr the optimiser starts from (before warmup): train.lr if given, else train.base_lr per train.base_batch
    images scaled linearly to train.batch_size (VOC: GluonCV's published run, 0.001 at 4 images, defaults.yaml)."""
    return t["lr"] if t["lr"] is not None else scaled_lr(t["base_lr"], t["batch_size"], t["base_batch"])


def compile_trunk(model, backend) -> None:
    """`--compile` for a detector: the backbone (with the FPN) and the box head compiled in place with dynamic
    shapes; the RPN, the RoI sampling, RoIAlign and NMS stay eager. Compiling the whole detector (what the other
    stages do) traced 51 graphs with 35 graph breaks over 8 variable-size batches of the synthetic FPN detector
    (data-dependent proposal counts), its steps several times slower than eager even with the no-op `eager`
    backend; the trunk alone is one graph for every image size (docs/design.md section 7). In place
    (Module.compile): the state dict keeps its keys."""
    backend = "inductor" if backend is True else backend
    model.backbone.compile(backend=backend, dynamic=True)
    model.roi_heads.box_head.compile(backend=backend, dynamic=True)


def targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    """The boxes and labels the detector trains on, copied to `device` without blocking: from the loader's pinned
    memory on CUDA these copies queue behind the step instead of syncing twice per image."""
    return [{"boxes": t["boxes"].to(device, non_blocking=True), "labels": t["labels"].to(device, non_blocking=True)}
            for t in targets]


def train_session(session: Session) -> dict:
    cfg, ctx, run = session.cfg, session.ctx, session.run
    d, m, t = cfg["data"], cfg["model"], cfg["train"]
    torch.manual_seed(session.seed)
    kind, root, train_sets, val_set = resolve_data(d["spec"], d["train_sets"], d["val_set"], d["synthetic"])
    train_split = load_split(kind, root, train_sets, d["classes"], cache_dir=run.path, ctx=ctx)
    val_split = load_split(kind, root, val_set, d["classes"] or (train_split.classes if kind == "voc" else None),
                           cache_dir=run.path, ctx=ctx)
    if val_split.classes != train_split.classes:
        raise BotError(f"{root}: train and val splits have different classes")
    check_val(val_split, train_split, ctx, run.path / "data_check.json")
    d["classes"] = train_split.classes  # config.yaml records the classes, also when discovered from the annotations
    # recorded resolved, so that config.yaml says what ran and a rebuild from it makes the same modules
    resolve_detector(cfg, "synthetic" if parse_spec(d["spec"])[0] == "synthetic" else kind)
    cfg["model"] = m = resolve_auto(m, is_arch_name(str(m["backbone"])))
    model, info = build_detector(m["backbone"], len(train_split.classes), m, d["min_size"], d["max_size"])
    session.place(model)
    if t["compile"]:
        compile_trunk(model, t["compile"])
    net = session.ddp(model, compile=False)

    batch = session.per_rank(t["batch_size"])
    train_ds = DetectionDataset(train_split, True, d["min_size"], d["max_size"], d["flip_p"], session.seed,
                                train_ignored=d["train_difficult"] and kind == "voc")
    sampler = EpochSampler(len(train_ds), ctx, session.seed, shuffle=True, drop_last=True, batch_size=batch)
    aspects = [r.width / r.height for r in train_split.records]
    loader = session.loader(train_ds, batch_sampler=AspectBatchSampler(sampler, aspects, batch), collate_fn=collate,
                            num_workers=d["workers"], persistent_workers=d["workers"] > 0)
    steps_per_epoch = len(sampler) // batch
    if steps_per_epoch == 0:
        raise BotError(f"{root}: {len(train_ds)} training images make no batch of {t['batch_size']}")

    lr = train_lr(t)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=t["momentum"], weight_decay=t["weight_decay"],
                                **session.optimizer_options())
    schedule = Schedule(lr, t["epochs"] * steps_per_epoch, min(t["warmup_iters"], steps_per_epoch), kind="step",
                        milestones=milestone_steps(t["milestones"], t["epochs"], steps_per_epoch, "train.milestones"),
                        gamma=t["lr_decay"])
    precision = Precision(t["precision"], ctx.device)

    val_ds = DetectionDataset(val_split, False, d["min_size"], d["max_size"])
    split_tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", val_set)
    last: dict = {}

    def train_step(batch_data):
        images, targets = batch_data
        images = [im.to(ctx.device, non_blocking=True) for im in images]
        targets = targets_to(targets, ctx.device)
        losses = net(images, targets)
        return sum(losses.values()), len(images), {k: v.detach() for k, v in losses.items()}

    def evaluate() -> dict:
        dets, speed = predict(model, val_ds, ctx, batch, d["workers"], t["precision"])
        last["eval_images_per_second"] = speed * ctx.world_size
        result = None
        if ctx.is_main:
            metrics, per_class, table, last["per_image"] = score_all(val_split, dets)
            write_detections(run.path / f"detections_{split_tag}.json", val_split, dets)
            result = (metrics, per_class, table)
        metrics, last["per_class"], last["table"] = broadcast_object(result, ctx)
        return {k: v for k, v in metrics.items() if v is not None}

    result = session.fit(model=net, optimizer=optimizer, precision=precision, schedule=schedule, loader=loader,
                         sampler=sampler, train_step=train_step, evaluate=evaluate, epochs=t["epochs"],
                         batch_size=batch, eval_every=t["eval_every"], log_every=t["log_every"],
                         clip_grad=t["clip_grad"])
    summary = {"metrics": result["metrics"]}
    if ctx.is_main:
        save_detector(model, run.weights_file, {
            "classes": train_split.classes, "category_ids": train_split.category_ids, "model": m,
            "min_size": d["min_size"], "max_size": d["max_size"], "mean": list(info.mean), "std": list(info.std),
            "precision": t["precision"],  # evaluate-detect --weights evaluates under it (on CUDA)
            "backbone": info.summary() | {"variant": info.variant}, "synthetic": d["synthetic"]})
        write_detect(run.path / PER_IMAGE_FILE, val_split, last["per_image"])
        summary = session.finish({
            "metrics": result["metrics"], "per_class": last.get("per_class"), "backbone": info.summary(),
            "dataset": {"name": ("synthetic-shapes-" + kind) if parse_spec(d["spec"])[0] == "synthetic" else kind,
                        "path": str(root), "splits": {train_sets: len(train_split), val_set: len(val_split)}},
            "eval_images_per_second": last.get("eval_images_per_second")}, result)
        if last.get("table"):
            print(last["table"])
    return summary
