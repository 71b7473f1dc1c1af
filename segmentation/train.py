"""`bot finetune-seg`: what is segmentation's own in a run (data, network, loss, mIoU); the run lifecycle (checks,
resume, lock, process group, summary) is engine/stage.py's.

Optimiser: SGD (momentum 0.9, wd 1e-4) in two param groups, the heads' lr scaled by `head_lr_mult` (GluonCV: 10);
schedule: linear warmup then poly decay (power 0.9) over all batches (docs/paper.md section 6). Loss: pixel-wise
cross-entropy over labelled pixels, plus aux_weight x the auxiliary head's.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from bot.engine.config import given, load_yaml, overlay
from bot.engine.errors import BotError
from bot.engine.per_image import FILE_NAME as PER_IMAGE_FILE
from bot.engine.precision import Precision
from bot.engine.progress import report
from bot.engine.rundir import atomic_write_text
from bot.engine.schedules import Schedule
from bot.engine.stage import Session, StageDef, fresh_config, launch, run_config
from bot.engine import distributed as dist
from bot.pretrain.weights import check_checkpoint

from .data import SegDataset, check_splits, default_config, list_pairs, source_from_config
from .evaluate import confusion, ms_options, save_segmenter
from .metrics import headline, per_class_table
from .models import build_model, param_groups
from .per_image import PerImageCounts, write_segment
from .transforms import eval_transform, train_transform

HERE = Path(__file__).parent
CLI_KEYS = {"backbone": "model.backbone", "arch": "model.arch", "data": "data.spec", "head": "model.head", "num_classes": "data.num_classes",
            "ignore_index": "data.ignore_index", "class_names": "data.class_names", "epochs": "train.epochs",
            "batch_size": "train.batch_size", "lr": "train.lr", "base_size": "data.base_size",
            "crop_size": "data.crop_size", "norm": "model.norm", "aux": "model.aux", "precision": "train.precision",
            "device": "train.device", "workers": "data.workers", "seed": "train.seed",
               "compile": "train.compile"}


def defaults(options: dict, sets=()) -> dict:
    """defaults.yaml, then synthetic.yaml when no --data is given."""
    cfg = default_config()
    if not given(options, sets, "data.spec"):
        overlay(cfg, load_yaml(HERE / "synthetic.yaml"), HERE / "synthetic.yaml")
    return cfg


def schema() -> dict:
    from bot.engine.config import read_schema
    return read_schema(HERE / "schema.yaml", default_config())


def check(cfg: dict) -> None:
    d = cfg["data"]
    if not cfg["model"]["backbone"]:
        raise BotError("--backbone: required (a pretrain run dir, a .safetensors file, or an arch name for random init)")
    check_checkpoint(cfg["model"]["backbone"], cfg["model"]["arch"])
    if cfg["model"]["head"] != "fcn" and d["crop_size"] % 32:
        raise BotError(f"--crop-size {d['crop_size']}: smp heads need a multiple of 32")
    if d["scale_max"] < d["scale_min"]:
        raise BotError(f"data.scale_max {d['scale_max']}: smaller than data.scale_min {d['scale_min']}")


def upgrade(cfg: dict) -> None:
    """Runs written before the heads got the multiplier had the backbone's instead (heads at lr, backbone at lr x b);
    the same rates now read lr x b for the backbone and a head multiplier of 1 / b."""
    t = cfg.get("train", {})
    if "backbone_lr_mult" in t and "head_lr_mult" not in t:
        b = t.pop("backbone_lr_mult")
        if not (isinstance(b, (int, float)) and b > 0):
            raise BotError(f"train.backbone_lr_mult {b!r}: this older run froze its backbone by lr; it cannot resume")
        t["lr"], t["head_lr_mult"] = t["lr"] * b, 1.0 / b
    d = cfg.get("data", {})
    if isinstance(d, dict) and "crop_size" in d and "blur_p" not in d:
        d["blur_p"] = 0.0  # runs written before the key trained without GluonCV's blur
    m = cfg.get("model", {})
    if isinstance(m, dict) and "head" in m and "dilated_shortcut" not in m:
        m["dilated_shortcut"] = "timm"  # runs written before the key had timm's pool on the dilated D shortcut


def cache_dir(cfg: dict):
    if cfg["data"]["spec"]:
        return None
    from bot.synthetic.cache import cache_root
    return cache_root()


def default_out(cfg: dict) -> Path:
    name = Path(str(cfg["model"]["backbone"]).rstrip("/")).name.replace(".safetensors", "")
    return Path("runs") / f"segment-{cfg['model']['head']}-{name}"


STAGE = StageDef(task="segment", command="finetune-seg", option_keys=CLI_KEYS, defaults=defaults, schema=schema,
                 check=check, default_out=default_out, cache_dir=cache_dir, upgrade=upgrade,
                 eval_benchmark=False)  # fixed training crops; whole images and ms-flip scales in evaluation


def resolve_config(options: dict, sets=()) -> dict:
    """The checked config of a fresh run from CLI-style options (tests plan with it)."""
    return fresh_config(STAGE, options, sets)


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


def run_from_cli(*, out=None, resume=False, sets=(), on_step=None, **options) -> dict:
    return launch(STAGE, train_session, out=out, resume=resume, sets=sets, on_step=on_step, **options)


def finetune(cfg: dict, out: Path, resume: bool = False, on_step=None) -> dict:
    """Run a resolved config into `out`; `on_step(position)` runs after each optimiser step (tests interrupt with it)."""
    return run_config(STAGE, train_session, cfg, Path(out), resume, on_step)


def train_session(session: Session) -> dict:
    cfg, ctx, run, out = session.cfg, session.ctx, session.run, session.out
    t, d, m = cfg["train"], cfg["data"], cfg["model"]
    torch.manual_seed(t["seed"])

    source = source_from_config(cfg)
    # headers are checked by check_splits, which opens every file anyway (shared by the ranks, cached in the run)
    train_pairs = list_pairs(source, source.splits[0], headers=False)
    val_pairs = list_pairs(source, source.splits[1], headers=False)
    check_splits(source, train_pairs, val_pairs, ctx, run.path / "data_check.json")
    d["num_classes"], d["ignore_index"] = source.num_classes, source.ignore_index

    model, info = build_model(m["backbone"], m["head"], source.num_classes, aux=m["aux"], output_stride=m["output_stride"],
                              norm=m["norm"], arch=m["arch"], dilated_shortcut=m["dilated_shortcut"],
                              # torch's SyncBatchNorm runs on GPUs only; on CPU ranks "sync" stays per-rank BN
                              distributed=ctx.distributed and ctx.device.type == "cuda")
    m["arch"], m["normalize"] = info.arch, {"mean": list(info.mean), "std": list(info.std)}
    session.place(model)
    per_rank = session.per_rank(t["batch_size"])
    train_set = SegDataset(train_pairs, source, train_transform(d["base_size"], d["crop_size"], (d["scale_min"], d["scale_max"]),
                                                                source.ignore_index, info.mean, info.std, d["flip"],
                                                                d["blur_p"]), t["seed"])
    val_set = SegDataset(val_pairs, source, eval_transform(info.mean, info.std))
    sampler = dist.EpochSampler(len(train_set), ctx, t["seed"], shuffle=True, drop_last=True, batch_size=per_rank)
    if len(sampler) < per_rank:
        raise BotError(f"{source.folders(source.splits[0])[0]}: {len(train_set)} images, fewer than one batch of {t['batch_size']}")
    loader = session.loader(train_set, batch_size=per_rank, sampler=sampler, num_workers=d["workers"], drop_last=True,
                            collate_fn=lambda b: (torch.stack([x[0] for x in b]), torch.stack([x[1] for x in b])))
    steps_per_epoch = len(sampler) // per_rank
    schedule = Schedule(t["lr"], steps_per_epoch * t["epochs"], int(t["warmup_epochs"] * steps_per_epoch), kind="poly", power=t["power"])
    optimizer = torch.optim.SGD(param_groups(model, t["weight_decay"], t["head_lr_mult"]), lr=t["lr"],
                                momentum=t["momentum"], **session.optimizer_options())
    precision = Precision(t["precision"], ctx.device)
    net = session.ddp(model)

    def train_step(batch):
        images, masks = session.inputs(batch[0]), batch[1].to(ctx.device, non_blocking=True)
        loss, logs = segmentation_loss(net(images), masks, source.ignore_index, m["aux_weight"])
        return loss, images.shape[0], logs

    last = {}

    def evaluate(mode: str | None = None) -> dict:
        # ms-flip runs 20-30x the pixels of a whole image (6 scales, windows, flips): the periodic evaluations score whole
        # images, the final one ms-flip
        mode = mode or ("whole" if cfg["eval"]["mode"] == "ms-flip" else cfg["eval"]["mode"])
        counts = PerImageCounts(source.num_classes, source.ignore_index)
        cm = confusion(model, val_set, ctx, batch_size=cfg["eval"]["batch_size"], mode=mode,
                       window=d["crop_size"], overlap=cfg["eval"]["slide_overlap"], workers=d["workers"],
                       ms=ms_options(cfg), per_image=counts, precision=t["precision"])
        last["result"] = cm.compute()
        last["per_image"] = counts.gather(len(val_set), ctx)
        return headline(last["result"])

    result = session.fit(model=net, optimizer=optimizer, precision=precision, schedule=schedule, loader=loader,
                         sampler=sampler, train_step=train_step, evaluate=evaluate, epochs=t["epochs"],
                         batch_size=per_rank, eval_every=t["eval_every"], log_every=t["log_every"])
    if cfg["eval"]["mode"] == "ms-flip":
        result["metrics"] = evaluate("ms-flip")
    table = per_class_table(last["result"], source.class_names)
    summary = {
        "metrics": result["metrics"], "backbone": info.summary(),
        "dataset": {"name": source.name, "path": str(source.root), "num_classes": source.num_classes,
                    "ignore_index": source.ignore_index,
                    "splits": {source.splits[0]: len(train_set), source.splits[1]: len(val_set)}},
        "head": m["head"], "eval_mode": cfg["eval"]["mode"],
        "per_class_iou": {n: (None if math.isnan(v) else v) for n, v in zip(source.class_names, last["result"]["iou"])},
    }
    if run.enabled:
        save_segmenter(model, run.weights_file, {"head": m["head"], "arch": info.arch,
                                                 "num_classes": source.num_classes, "backbone_sha256": info.sha256})
        atomic_write_text(run.path / "per_class.md", table)
        write_segment(run.path / PER_IMAGE_FILE, [Path(m).stem for _, m in val_pairs], last["per_image"],
                      source.class_names)
        summary = session.finish(summary, result)
    report(table, ctx.is_main)
    report(f"mIoU {result['metrics']['miou']:.4f}  pixel acc {result['metrics']['pixel_acc']:.4f}  -> {out}", ctx.is_main)
    return summary
