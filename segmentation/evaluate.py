"""Scoring: predict a split (whole image or sliding window), accumulate the confusion matrix over ranks, and
`bot evaluate-seg` for a finetuned run or a folder of predicted PNG masks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bot.engine.distributed import DistContext, ShardSampler, process_group
from bot.engine.errors import BotError, first_line
from bot.engine.images import decode
from bot.engine.precision import eval_autocast
from bot.engine.rundir import atomic_write_text, check_output_file, check_output_folder
from bot.engine.weights_file import load_tensors, write_weights

from .data import INDEX_MODES, SegDataset, SegSource, list_masks, list_pairs, read_mask
from .metrics import ConfusionMatrix, classes_scored, per_class_table
from .transforms import eval_transform, pad_collate

from .predict import PAD_MULTIPLE, predict_logits


def ms_options(config: dict) -> dict:
    """The ms-flip settings of a finetune-seg config (its `eval` block, data.base_size and the backbone's
    normalisation, whose black pixel pads the small scales; defaults.yaml's for a config written before these keys
    existed, GluonCV's ImageNet mean/std for one without model.normalize)."""
    from .data import default_config
    from .multiscale import GLUONCV_MEAN, GLUONCV_STD, black

    e = {**default_config()["eval"], **config["eval"]}
    norm = (config.get("model") or {}).get("normalize") or {"mean": GLUONCV_MEAN, "std": GLUONCV_STD}
    return {"scales": [float(s) for s in e["ms_scales"]], "flip": bool(e["ms_flip"]),
            "base_size": int(e["ms_base_size"] or config["data"]["base_size"]),
            "pad_value": black(norm["mean"], norm["std"]), "batch": int(e["ms_batch"])}


@torch.no_grad()
def predict_labels(model, images: torch.Tensor, sizes, mode: str, window: int, overlap: float,
                   ms: dict | None = None) -> torch.Tensor:
    """Predicted class ids (B, H, W) of a padded batch; ms-flip scores each image at its own size (`sizes`), so
    that no padding is rescaled with it (the windows of all its images share forward passes), and leaves class 0
    on the padding (labelled ignore)."""
    if mode != "ms-flip":
        return predict_logits(model, images, mode, window, overlap).argmax(1)
    if not ms:
        raise BotError("eval.mode ms-flip: needs eval.ms_scales, eval.ms_flip and a base size")
    from .multiscale import iter_ms_flip_scores

    pred = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.int64, device=images.device)
    crops = [images[i, :, :h, :w] for i, (h, w) in enumerate(sizes)]
    for i, scores in iter_ms_flip_scores(model, crops, window=window, overlap=overlap, **ms):
        h, w = sizes[i]
        pred[i, :h, :w] = scores.argmax(0)
    return pred


@torch.no_grad()
def confusion(model, dataset: SegDataset, ctx: DistContext, *, batch_size: int, mode: str, window: int,
              overlap: float, workers: int = 0, on_batch=None, ms: dict | None = None,
              per_image=None, precision: str = "fp32") -> ConfusionMatrix:
    """The confusion matrix of `model` on `dataset`, each image scored once over all ranks, then summed;
    `per_image` (segmentation.per_image.PerImageCounts) also gets each image's own counts. The network runs under
    the run's `precision` as engine.precision.eval_autocast says; scores and counts stay fp32 or wider."""
    source = dataset.source
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), ctx), num_workers=workers,
        collate_fn=lambda b: pad_collate(b, PAD_MULTIPLE, source.ignore_index), pin_memory=ctx.device.type == "cuda")
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(source.num_classes, source.ignore_index)
    for images, masks, sizes, indices in loader:
        with eval_autocast(precision, ctx.device):
            pred = predict_labels(model, images.to(ctx.device, non_blocking=True), sizes, mode, window, overlap, ms)
        cm.update(pred, masks)  # padding is labelled ignore, so it counts nowhere; on a GPU, counted there
        if per_image is not None:
            per_image.update(pred, masks, indices)
        if on_batch is not None:
            on_batch(pred.cpu(), sizes, indices)
    model.train(was_training)
    return cm.reduce(ctx)


def save_segmenter(model, path: Path, meta: dict) -> None:
    write_weights(Path(path), model.state_dict(), "segmenter", meta)


def load_run_model(run: Path, config: dict):
    """Rebuild a finetuned run's network from its config and load its model.safetensors."""
    from .models import build_model

    weights = run / "model.safetensors"
    if not weights.is_file():
        raise BotError(f"{run}: no model.safetensors (is the finetune-seg run finished?)")
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    arch = (summary.get("backbone") or {}).get("arch") or config["model"]["arch"]
    m = config["model"]
    model, _ = build_model(arch, m["head"], config["data"]["num_classes"], aux=m["aux"], output_stride=m["output_stride"],
                           norm=m["norm"], quiet_random=True,
                           # runs saved before the key existed were trained and scored with timm's pool
                           dilated_shortcut=m.get("dilated_shortcut", "timm"))
    try:
        state = load_tensors(weights)
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise BotError(f"{weights}: does not fit the network of {run / 'config.yaml'} ({first_line(e, 160)})") from None
    return model


def score_predictions(pred_dir: Path, source: SegSource, split: str) -> ConfusionMatrix:
    """Confusion matrix of a folder of predicted PNG masks (class ids 0..N-1, named as the split's masks); only
    the masks and the predictions are read, never the images."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise BotError(f"{pred_dir}: no such predictions folder")
    cm = ConfusionMatrix(source.num_classes, source.ignore_index)
    for mask_path in list_masks(source, split):
        p = pred_dir / mask_path.name
        if not p.is_file():
            raise BotError(f"{p}: no prediction for {mask_path}")
        target = read_mask(mask_path, source)
        im = decode(p)
        if im.mode not in INDEX_MODES:
            raise BotError(f"{p}: prediction is a {im.mode} colour image; expected single-channel class ids")
        pred = torch.from_numpy(np.asarray(im).astype(np.int64))
        if pred.shape != target.shape:
            raise BotError(f"{p}: prediction size {pred.shape[1]}x{pred.shape[0]} differs from its mask "
                           f"{mask_path.name} ({target.shape[1]}x{target.shape[0]})")
        if int(pred.max()) >= source.num_classes:
            raise BotError(f"{p}: predicted value {int(pred.max())} is not a class of {source.num_classes}")
        cm.update(pred, target)
    return cm


def read_run_config(run: Path) -> dict:
    """config.yaml of a finetune-seg run; BotError naming the run's task when it is another stage's."""
    import yaml

    config_file = run / "config.yaml"
    if not config_file.is_file():
        raise BotError(f"{run}: not a finetune-seg run directory (no config.yaml)")
    try:
        config = yaml.safe_load(config_file.read_text())
    except yaml.YAMLError as e:
        raise BotError(f"{config_file}: not valid YAML ({first_line(e)})") from None
    config = config if isinstance(config, dict) else {}
    model, data = config.get("model"), config.get("data")
    if not (isinstance(model, dict) and "head" in model and isinstance(data, dict) and "crop_size" in data
            and "eval" in config):
        task = "another stage's"
        summary = run / "summary.json"
        if summary.is_file():
            try:
                task = f"a {json.loads(summary.read_text()).get('task')}"
            except (json.JSONDecodeError, AttributeError):
                pass
        else:
            task = "a pretrain" if "recipe" in config else "a detect" if "backbone" in config else task
        raise BotError(f"{config_file}: not a finetune-seg run directory (it is {task} run)")
    return config


def run_from_cli(*, run=None, predictions=None, data=None, split=None, num_classes=None, ignore_index=None,
                 class_names=None, mode=None, batch_size=None, device=None, save_predictions=None, json_out=None) -> dict:
    """`bot evaluate-seg`: score a finetune-seg run dir, or a folder of predicted masks, on a split."""
    from .data import source_from_config

    if (run is None) == (predictions is None):
        raise BotError("evaluate-seg: give exactly one of --run RUN_DIR or --predictions FOLDER")
    check_output_file(json_out, "--json")
    check_output_folder(save_predictions, "--save-predictions")
    if run is not None:
        run = Path(run)
        config = read_run_config(run)
        d = config["data"]
        if data is not None:  # a different data set, same classes
            d.update(spec=data, train_split=None, val_split=None)
        for key, value in (("num_classes", num_classes), ("ignore_index", ignore_index), ("class_names", class_names)):
            if value is not None:
                d[key] = value
        source = source_from_config(config)
        split = split or source.splits[1]
        with process_group(device) as ctx:  # under torchrun: every rank scores its shard, counts summed
            model = load_run_model(run, config).to(ctx.device)
            mean, std = config["model"]["normalize"]["mean"], config["model"]["normalize"]["std"]
            dataset = SegDataset(list_pairs(source, split), source, eval_transform(mean, std))
            saver = None
            if save_predictions:
                out_dir = Path(save_predictions)
                out_dir.mkdir(parents=True, exist_ok=True)

                def saver(pred, sizes, indices):
                    for p, (h, w), i in zip(pred, sizes, indices):
                        Image.fromarray(p[:h, :w].numpy().astype(np.uint8), mode="L").save(out_dir / f"{dataset.pairs[i][0].stem}.png")
            cm = confusion(model, dataset, ctx, batch_size=batch_size or config["eval"]["batch_size"],
                           mode=mode or config["eval"]["mode"], window=d["crop_size"], overlap=config["eval"]["slide_overlap"],
                           on_batch=saver, ms=ms_options(config), precision=config["train"].get("precision", "fp32"))
        if not ctx.is_main:  # the counts are every rank's; one rank prints and writes
            return {}
    else:
        source = _source(data, num_classes, ignore_index, class_names)
        split = split or source.splits[1]
        cm = score_predictions(Path(predictions), source, split)
    result = cm.compute()
    click_echo(per_class_table(result, source.class_names).rstrip())
    out = {"split": split, "dataset": str(source.root), "miou": result["miou"], "miou_all": result["miou_all"],
           "mode": mode or (config["eval"]["mode"] if run is not None else "predictions"), "pixel_acc": result["pixel_acc"],
           "mean_class_acc": result["mean_class_acc"],
           "per_class_iou": {n: (None if math.isnan(v) else v) for n, v in zip(source.class_names, result["iou"])}}
    out.update(classes_scored=classes_scored(result), classes_declared=source.num_classes)
    if json_out:
        atomic_write_text(Path(json_out), json.dumps(out, indent=2) + "\n")
    return out


def _source(data, num_classes, ignore_index, class_names) -> SegSource:
    from .data import default_config, source_from_config

    config = default_config()
    config["data"].update(spec=data, num_classes=num_classes, ignore_index=ignore_index, class_names=class_names)
    return source_from_config(config)


def click_echo(text: str) -> None:
    import click
    click.echo(text)
