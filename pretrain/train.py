"""`bot pretrain`: the recipe resolved into a config, then a classifier trained and evaluated, top to bottom.

The run lifecycle (checks, resume, lock, process group, summary) is engine/stage.py's; this file holds what is
pretraining's own: the recipe, the data, the network (+ teacher), the loss with the paper's tricks and top-1/top-5.
The run directory gets config.yaml first, metrics.jsonl as it goes, last.ckpt every epoch, and at the end
model.safetensors (the backbone checkpoint downstream stages load) and summary.json, written last.
"""
from __future__ import annotations

import shlex
import warnings
from pathlib import Path

import torch

from bot.engine import distributed as dist
from bot.engine.config import given
from bot.engine.errors import BotError
from bot.engine.loop import unwrap
from bot.engine.per_image import FILE_NAME as PER_IMAGE_FILE
from bot.engine.precision import Precision, eval_autocast
from bot.engine.progress import report
from bot.engine.schedules import Schedule, scaled_lr
from bot.engine.stage import Session, StageDef, launch, run_config

from .backbones import create_backbone, parse_arch
from .data import build_datasets, build_loaders, check_val
from .optim import build_optimizer
from .per_image import gather_top5, image_ids, write_classify
from .recipes import RENAMED, apply_synthetic_scale, load_recipe, milestone_steps, schema
from .tricks import distillation_loss, mixup, smooth_targets, soft_cross_entropy
from .weights import WEIGHTS_NAME, check_checkpoint, load_backbone, save_classifier

SYNTHETIC = "synthetic-shapes"
OPTION_KEYS = {"data": "data.path", "recipe": "recipe", "arch": "model.arch", "epochs": "train.epochs",
               "batch_size": "train.batch_size", "lr": "train.lr", "image_size": "data.image_size", "loader": "data.loader",
               "precision": "train.precision", "device": "train.device", "workers": "data.workers",
               "seed": "train.seed",
               "compile": "train.compile", "teacher": "train.teacher", "init": "train.init_weights"}


def defaults(options: dict, sets=()) -> dict:
    """The recipe's full config, scaled to the synthetic set when no data path is given."""
    cfg = load_recipe(options.pop("recipe", None) or "resnet50d")
    if given(options, sets, "data.path") is None:
        apply_synthetic_scale(cfg)
    device = options.get("train.device") or cfg["train"]["device"]
    if cfg["train"]["precision"] == "fp16" and options.get("train.precision") is None and \
            str(device) in ("cpu", "auto") and not torch.cuda.is_available():
        cfg["train"]["precision"] = "fp32"
        report("note: the recipe asks for fp16, which needs a GPU to pay off; training in fp32 on the CPU "
               "(--precision fp16 forces it)")
    return cfg


def check(cfg: dict) -> None:
    parse_arch(cfg["model"]["arch"])
    if cfg["data"]["loader"] == "dali":
        from .dali_loader import require_dali
        require_dali()
    if "teacher" in cfg.get("requires", []) and not cfg["train"]["teacher"]:
        data = ["--data", str(cfg["data"]["path"])] if cfg["data"].get("path") else []
        first = shlex.join(["bot", "pretrain", *data, "--recipe", "resnet152d-teacher", "--out", "runs/teacher"])
        raise BotError(f"recipe {cfg['recipe']!r} distils from a teacher: give --teacher RUN_DIR|FILE.safetensors "
                       f"(to train one first: {first}; then add --teacher runs/teacher)")
    check_checkpoint(cfg["train"]["init_weights"], cfg["model"]["arch"])
    check_checkpoint(cfg["train"]["teacher"])


def upgrade(cfg: dict) -> None:
    """Runs written before milestones became fractions held epoch numbers: the same points as fractions."""
    s, epochs = cfg.get("schedule", {}), cfg.get("train", {}).get("epochs")
    milestones = s.get("milestones")
    if isinstance(milestones, list) and milestones and isinstance(epochs, int) and epochs > 0 and \
            all(isinstance(m, (int, float)) and m > 1 for m in milestones):
        s["milestones"] = [m / epochs for m in milestones]
        report(f"note: schedule.milestones {milestones} (epochs, as older runs wrote them) read as {s['milestones']} "
               f"(fractions of {epochs} epochs)")


def cache_dir(cfg: dict):
    if cfg["data"]["path"] is not None:
        return None
    from bot.synthetic.cache import cache_root
    return cache_root()


STAGE = StageDef(task="pretrain", command="pretrain", option_keys=OPTION_KEYS, defaults=defaults, schema=schema,
                 check=check, default_out=lambda cfg: Path(f"runs/pretrain-{cfg['recipe']}"), cache_dir=cache_dir,
                 renamed=RENAMED, upgrade=upgrade)


def resolve_config(recipe: str | None = None, sets=(), **options) -> dict:
    """The checked config a fresh run would use (tests and `bot reproduce` plan with it)."""
    from bot.engine.stage import fresh_config
    return fresh_config(STAGE, {"recipe": recipe, **options}, sets)


def run_from_cli(*, recipe=None, out=None, resume=False, sets=(), on_step=None, **options) -> dict:
    return launch(STAGE, train_session, out=out, resume=resume, sets=sets, on_step=on_step, recipe=recipe, **options)


def train(cfg: dict, out: str | Path, resume: bool = False, on_step=None) -> dict:
    """Run a resolved config (see resolve_config) into `out`; returns the summary."""
    return run_config(STAGE, train_session, cfg, Path(out), resume, on_step)


def topk_hits(top: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(top-1 hits, top-k hits) of a batch's top-k class indices (B, k) as an int64 tensor on its device: nothing
    read back, no tensor made from host values (on CUDA each would be a sync per validation batch)."""
    hit = top == labels[:, None]
    return torch.stack([hit[:, 0].sum(), hit.any(1).sum()])


def train_session(session: Session) -> dict:
    cfg, ctx, out = session.cfg, session.ctx, session.out
    t, o, s, d = cfg["train"], cfg["optim"], cfg["schedule"], cfg["data"]
    seed = session.seed
    torch.manual_seed(seed)
    if d["path"] is None:
        from bot.synthetic.imagefolder import synthetic_imagefolder
        root = synthetic_imagefolder(**d["synthetic"])
    else:
        root = Path(d["path"])
    data = build_datasets(root, d, seed)
    check_val(data, ctx, session.run.path / "data_check.json")
    num_classes = len(data.classes)
    per_rank = session.per_rank(t["batch_size"])
    train_loader, sampler, val_loader = build_loaders(data, ctx, per_rank, d["workers"], seed)
    if d["loader"] == "dali":
        from .dali_loader import DaliTrainLoader
        train_loader = DaliTrainLoader(data.train, sampler, per_rank, d, ctx.device, threads=d["workers"])
    data.device_pipeline.channels_last = session.channels_last
    lr = t["lr"] if t["lr"] is not None else scaled_lr(o["base_lr"], t["batch_size"], o["base_batch"])

    model = create_backbone(cfg["model"]["arch"], num_classes=num_classes, zero_gamma=cfg["model"]["zero_gamma"],
                            init=cfg["model"]["init"])
    if t["init_weights"]:
        source, _ = load_backbone(t["init_weights"], arch=cfg["model"]["arch"], num_classes=num_classes)
        model.load_state_dict(source.state_dict())
    session.place(model)
    teacher = None
    if t["teacher"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            teacher, tinfo = load_backbone(t["teacher"], allow_random=False)
        if tinfo.num_classes != num_classes:
            raise BotError(f"{tinfo.source}: teacher has {tinfo.num_classes} classes, the data has {num_classes}")
        session.place(teacher).eval().requires_grad_(False)
    net = session.ddp(model)

    optimizer = build_optimizer(model, o, lr, **session.optimizer_options())
    precision = Precision(t["precision"], ctx.device)
    steps_per_epoch = len(train_loader)
    schedule = Schedule(lr=lr, total_steps=t["epochs"] * steps_per_epoch, warmup_steps=int(s["warmup_epochs"] * steps_per_epoch),
                        kind=s["kind"], milestones=milestone_steps(s["milestones"], t["epochs"], steps_per_epoch), gamma=s["gamma"])
    report(f"pretrain {cfg['recipe']}: {cfg['model']['arch']}, {num_classes} classes, {len(data.train)} train / "
           f"{len(data.val)} val images, batch {t['batch_size']}, lr {lr:.4g}, {t['epochs']} epochs, "
           f"{t['precision']}, {ctx.world_size} x {ctx.device}", ctx.is_main)

    def train_step(batch):
        crops, alphas, labels = (x.to(ctx.device, non_blocking=True) for x in batch)
        images = data.device_pipeline(crops, alphas)  # uint8 crops -> lit, normalised float images, batched
        target = smooth_targets(labels, num_classes, t["label_smoothing"], t["smoothing_form"])
        if t["mixup_alpha"] > 0:  # draws from the global RNG, which fit seeds from (seed, step, rank)
            images, target, _ = mixup(images, target, t["mixup_alpha"], None)
        logits = net(images)
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(images)
            loss = distillation_loss(logits, teacher_logits, target, t["distill_temperature"], t["distill_hard_weight"])
        else:
            loss = soft_cross_entropy(logits, target)
        return loss, images.shape[0], {}

    last_eval: dict = {}

    @torch.no_grad()
    def evaluate() -> dict:
        model.eval()
        hits, images_seen = torch.zeros(2, dtype=torch.int64, device=ctx.device), 0
        tops, labs = [], []  # per image, kept on the device: per_image.npz of the final evaluation
        for images, labels in val_loader:
            images, labels = session.inputs(images), labels.to(ctx.device, non_blocking=True)
            with eval_autocast(t["precision"], ctx.device):
                logits = model(images)
            top5 = logits.float().topk(min(5, num_classes), dim=1).indices
            tops.append(top5)
            labs.append(labels)
            hits += topk_hits(top5, labels)  # summed on the device
            images_seen += labels.shape[0]  # known on the host
        counts = dist.all_reduce_sum(torch.cat([hits.cpu().double(), torch.tensor([float(images_seen)])]), ctx)
        last_eval["per_image"] = gather_top5(tops, labs, len(data.val), ctx)
        model.train()
        return {"top1": float(counts[0] / counts[2]), "top5": float(counts[1] / counts[2])}

    result = session.fit(model=net, optimizer=optimizer, precision=precision, schedule=schedule, loader=train_loader,
                         sampler=sampler, train_step=train_step, evaluate=evaluate, epochs=t["epochs"],
                         batch_size=per_rank, eval_every=t["eval_every"], log_every=t["log_every"])
    metrics = result["metrics"]
    summary = None
    if ctx.is_main:
        weights = out / WEIGHTS_NAME
        name, _, variant = parse_arch(cfg["model"]["arch"])
        sha = save_classifier(unwrap(model), weights, arch=name, num_classes=num_classes, recipe=cfg["recipe"],
                              top1=metrics["top1"], classes=data.classes)
        labels, top5 = last_eval["per_image"]
        write_classify(out / PER_IMAGE_FILE, image_ids(data.val.samples, root / "val"), labels, top5, data.classes)
        summary = session.finish({
            "metrics": metrics,
            "backbone": {"arch": name, "variant": variant.upper(), "recipe": cfg["recipe"], "sha256": sha,
                         "source": str(weights.resolve()), "top1": metrics["top1"]},
            "dataset": {"name": SYNTHETIC if d["path"] is None else root.name, "path": str(root),
                        "splits": {"train": len(data.train), "val": len(data.val)}, "num_classes": num_classes,
                        "classes": data.classes},
        }, result)
        report(f"done: top-1 {metrics['top1'] * 100:.2f}%  top-5 {metrics['top5'] * 100:.2f}%  -> {out}")
    dist.barrier(ctx)
    return summary or {"metrics": metrics}
