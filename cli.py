"""`bot`: the command line. It parses, builds a config and calls one stage; no training logic lives here."""
from __future__ import annotations

import sys

import click

from bot.engine.errors import BotError, one_line


class BotGroup(click.Group):
    """Turns a BotError (bad input) into one line on stderr and exit code 2, wherever it was raised; keeps the
    arguments as typed, for messages that suggest a command to paste (engine/launch.py's restart_command)."""

    def parse_args(self, ctx, args):
        from bot.engine.launch import remember_argv
        remember_argv(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BotError as e:
            click.echo(f"error: {one_line(e)}", err=True)
            sys.exit(2)


SHARED_TRAINING_OPTIONS = [
    click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]),
                 help="fp32, fp16 (autocast + loss scaling) or bf16 (autocast); weights stay fp32 (default: train.precision: "
                      "the recipe's for pretrain, whose fp16 runs as fp32 on a CPU; fp32 for the fine-tunes)."),
    click.option("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)."),
    click.option("--workers", callback=lambda ctx, param, value: workers_value(value),
                 help="DataLoader workers per process: a number >= 0 or auto (default: data.workers, auto: on CUDA "
                      "the cores per local process less one, at most 16; 4 on a CPU; 0 on the synthetic defaults)."),
    click.option("--seed", type=int, help="Seed of initialisation, data order and every augmentation draw (default: 0)."),
    click.option("--compile/--no-compile", "compile", default=None, help="torch.compile the network with inductor (default: off; --set train.compile=BACKEND picks another backend)."),
    click.option("--resume", type=click.Choice(["auto", "must"]), is_flag=False, flag_value="must", default=None,
                 help="`--resume auto`: one command line for a first start and every restart: start the run in --out "
                      "if it holds none, continue it if unfinished, report it (exit 0) if finished. `--resume` alone "
                      "(= must): continue the unfinished run in --out, an error if there is none. Options equal to "
                      "the run's own are accepted beside either. Default: no resume (a folder holding a run is "
                      "refused)."),
    click.option("--nproc", type=int, default=1, show_default=True, help="Processes to launch on this machine under torchrun, e.g. one per GPU (1: run in this process)."),
]


def workers_value(value):
    """--workers as an int or "auto", checked while the command line is parsed: one line otherwise."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)  # its range is checked with the config's other values
    except ValueError:
        raise BotError(f"--workers (data.workers) = {value!r}: expected an integer >= 0 or auto") from None


def training_options(command):
    """The options every training command (pretrain, finetune-detect, finetune-seg) takes alike."""
    for option in reversed(SHARED_TRAINING_OPTIONS):
        command = option(command)
    return command


def run_training_stage(nproc: int, entry: str, **options) -> None:
    """Shared by the training commands: relaunch under torchrun for --nproc N, or call the stage's entry point
    (`module:function`); a requested stop (Ctrl-C, SIGTERM) exits 130 after the stage saved its resume state."""
    import importlib

    from bot.engine.launch import relaunch_with_torchrun, restart_command
    from bot.engine.loop import Interrupted

    if nproc > 1:
        from bot.engine.distributed import pick_device
        if str(options.get("device") or "").startswith("cuda:"):  # one line here, not one per rank after start-up
            pick_device(options["device"], world_size=nproc)
        sys.exit(relaunch_with_torchrun(nproc))
    module, function = entry.split(":")
    try:
        getattr(importlib.import_module(module), function)(**options)
    except Interrupted as e:
        click.echo(f"interrupted: {e}; continue with: {restart_command()}", err=True)
        sys.exit(130)


@click.group(cls=BotGroup)
@click.version_option(package_name="bot")
def main():
    """Bag of Tricks for image classification: pretrain backbones, fine-tune them for detection and
    segmentation, and compare what each training choice is worth downstream.

    Each command's reference, with a table of its options, is a page of docs/ in the repository (pretrain.md,
    detection.md, segmentation.md, compare.md, reproduce.md, checkpoints.md); README.md says where to start."""
    from bot.engine.launch import die_with_parent

    die_with_parent()  # a child of `--nproc`, `bot demo` or `bot reproduce` dies with its launcher


# ---- pretrain -------------------------------------------------------------------------------------------------
@main.command()
@click.option("--data", type=click.Path(), help="ImageFolder root with train/ and val/ (default: the synthetic shapes set).")
@click.option("--recipe", help="Recipe name (see `bot recipes`) or a YAML file (default: resnet50d).")
@click.option("--arch", help="resnet{10,18,26,34,50,101,152}{a,b,c,d}; b is timm's plain resnetN (default: the recipe's, "
                            "resnet50d for resnet50d).")
@click.option("--epochs", type=int, help="Training epochs (default: the recipe's, 120, or 200 with mixup; the synthetic "
                                         "default runs 16 per 120).")
@click.option("--batch-size", type=int, help="Global batch size in images per step, split over processes (default: the "
                                             "recipe's, 256 or 1024; 32 on the synthetic default).")
@click.option("--lr", type=float, help="Peak learning rate (default: linear scaling, base_lr * batch / 256).")
@click.option("--image-size", type=int, help="Training crop side in px; validation resizes the short side to size x 256/224 "
                                             "and centre-crops it (default: 224; 32 on the synthetic default).")
@click.option("--loader", help="Training input pipeline: torch (default; DataLoader workers) or dali "
                               "(NVIDIA DALI decoding on the GPU, --workers reader processes; pip install 'bot[dali]').")
@training_options
@click.option("--teacher", help="Distillation teacher: a pretrain run dir, any ResNet weights file (see `bot inspect`) or "
                               "timm:NAME (default: none; the distillation recipes need one).")
@click.option("--init", "init", help="Start from these weights: a run dir, any ResNet weights file or timm:NAME (default: "
                                     "the recipe's random init).")
@click.option("--out", type=click.Path(), help="Run directory (default: runs/pretrain-<recipe>).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other recipe key, e.g. train.label_smoothing=0.1; repeatable (default: none).")
def pretrain(nproc, **options):
    """Train a classification backbone with the paper's recipe."""
    run_training_stage(nproc, "bot.pretrain.train:run_from_cli", **options)


@main.command()
@click.argument("files", nargs=-1, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print name, arch, variant, depth, requires, epochs as JSON (default: a table).")
def recipes(files, as_json):
    """List the shipped pretrain recipes (and describe recipe FILES given)."""
    from bot.pretrain.recipes import describe_recipes, recipe_catalogue
    if as_json:
        import json
        click.echo(json.dumps(recipe_catalogue(files)))
    else:
        click.echo(describe_recipes())


@main.command()
@click.argument("source")
@click.option("--arch", help="Check the file against this arch and take A vs B from it (default: inferred from the tensors).")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON (default: text).")
def inspect(source, arch, as_json):
    """What bot sees in a checkpoint: FILE (safetensors, .pth/.pt/.bin/.ckpt), a RUN dir, or timm:NAME."""
    from bot.pretrain.inspect import run_inspect
    click.echo(run_inspect(source, arch, as_json))


@main.command("evaluate-cls")
@click.option("--weights", required=True, help="A pretrain run dir, any ResNet weights file (.safetensors/.pth/...) or timm:NAME.")
@click.option("--data", type=click.Path(), help="ImageFolder root holding the split folder (default: the run's own data, "
                                                "else the synthetic shapes set).")
@click.option("--split", default="val", show_default=True, help="Split folder under --data.")
@click.option("--arch", help="The checkpoint's arch when the file cannot say (A vs B), checked against its tensors "
                             "(default: inferred; A only from bot's metadata).")
@click.option("--image-size", type=click.IntRange(min=8), help="Centre crop side in px after resizing the short side to "
                                                               "size * 256/224 (default: the run's, else 224).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per forward pass (default: the run's batch size, else 64).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes (0: decode in this process).")
@click.option("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Numeric precision of the forward pass (fp16/bf16: autocast).")
@click.option("--out", type=click.Path(), help="Run directory for summary.json and per_image.npz "
                                               "(default: runs/classify-<name>).")
def evaluate_cls(**options):
    """Top-1/top-5 of any checkpoint on an ImageFolder split, as a run directory `bot compare` shows."""
    from bot.pretrain.evaluate import run_from_cli
    run_from_cli(**options)


# ---- compare --------------------------------------------------------------------------------------------------
@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--baseline", help="Row to diff against: a run name, recipe, run path or sha256 prefix (default: the first).")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table", show_default=True,
              help="What stdout gets: a rich table, or Markdown, CSV or JSON for scripts.")
@click.option("--csv", "csv_file", type=click.Path(), help="Also write the comparison as CSV here (default: not written).")
@click.option("--json", "json_file", type=click.Path(), help="Also write it as JSON here (default: not written).")
@click.option("--markdown", "markdown_file", type=click.Path(), help="Also write it as a Markdown table here (default: not written).")
@click.option("--plot", "plot_file", type=click.Path(), help="Write the plots here, .png, .svg or .pdf (default: none).")
@click.option("--paper", is_flag=True, help="Set the paper's published top-1 / VOC mAP / pixAcc / mIoU over all classes (beside miou_all; Tables 6, 8, 9, each with its own table's top-1) "
              "beside each ladder row, deltas against B-standard (resnet50b-standard, the default baseline then); default: off.")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Resamples of the validation images for each difference's 95% paired interval (0: none).")
def compare(paths, **options):
    """Compare backbones: join pretrain runs under PATHS (default: runs/) with their fine-tune runs by weights sha256."""
    from bot.compare.command import run_compare
    run_compare(list(paths), **options)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--out", default="curves.png", show_default=True, type=click.Path(), help="Picture to write (.png, .svg or .pdf).")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Evaluation metric to draw (repeatable; default: each stage's headline metrics, e.g. top1, voc07_map50, miou).")
def plot(paths, out, metrics):
    """Training curves: the loss and evaluation metrics of the runs under PATHS (default: runs/) from their metrics.jsonl."""
    from bot.compare.curves import run_plot
    click.echo(f"wrote {run_plot(list(paths), out, metrics)}")


# ---- demo -----------------------------------------------------------------------------------------------------
@main.command()
@click.option("--recipes", default="resnet50b-standard,resnet50d", show_default=True,
              help="Comma-separated pretrain recipes; `+x` extends the last plain one (resnet50d,+cosine,+label-smoothing); "
                   "a checkpoint (timm:NAME, a .safetensors/.pth file, a run dir) is a row fine-tuned as it is.")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(), help="Where every run and the comparison go.")
@click.option("--depth", type=click.Choice(["10", "18", "26", "34", "50"]), default="10", show_default=True,
              help="ResNet depth at demo scale (each recipe keeps its A/B/C/D variant).")
@click.option("--teacher", type=click.Path(), help="Distillation teacher for recipes that need one (default: none).")
@click.option("--baseline", help="Row the others are compared with (default: the first recipe).")
@click.option("--pretrain-args", default="", help="Extra `bot pretrain` options, quoted, e.g. \"--epochs 2\" (default: none).")
@click.option("--detect-args", default="", help="Extra `bot finetune-detect` options, quoted (default: none).")
@click.option("--segment-args", default="", help="Extra `bot finetune-seg` options, quoted (default: none).")
@click.option("--jobs", type=click.IntRange(min=1), help="Stage runs side by side, each on cores/jobs threads (default: 2 where there are 2 cores).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run every row with N seeds (0..N-1; seed k > 0 in OUT/<stage>/<recipe>/seed<k>); compare shows "
                   "their spread beside the image interval.")
def demo(depth, **options):
    """Pretrain each recipe, fine-tune it for detection and segmentation on synthetic data, and compare (minutes on a CPU)."""
    from bot.compare.demo import run_demo
    run_demo(depth=int(depth), **options)


@main.command()
@click.option("--imagenet", type=click.Path(), help="ImageFolder root (train/, val/) for every pretrain (default: demo scale, synthetic).")
@click.option("--voc", type=click.Path(), help="VOCdevkit for detection (C4, the paper's; default: synthetic).")
@click.option("--ade20k", type=click.Path(), help="ADEChallengeData2016 for segmentation (default: synthetic).")
@click.option("--nproc", type=int, default=1, show_default=True, help="Processes per run (torchrun), e.g. one per GPU.")
@click.option("--recipes", help="Ladder rows to run, comma-separated recipes or labels (default: all; the teacher joins distillation rows).")
@click.option("--teacher", type=click.Path(), help="An existing teacher pretrain run to distil from (default: trained here first).")
@click.option("--out", default="runs/paper", show_default=True, type=click.Path(), help="Where every run and the comparison go.")
@click.option("--pretrain-args", default="", help="Extra `bot pretrain` options for every pretrain, quoted (default: none).")
@click.option("--detect-args", default="", help="Extra `bot finetune-detect` options for every detection run, quoted (default: none).")
@click.option("--segment-args", default="", help="Extra `bot finetune-seg` options for every segmentation run, quoted (default: none).")
@click.option("--plan-only", is_flag=True, help="Print the plan (runs, order, what exists) and stop (default: run it).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Every ladder row with N seeds (OUT/<stage>/<recipe>/seed<k> for k > 0), one teacher for all.")
def reproduce(**options):
    """The paper's Tables 6, 8 and 9: pretrain each ladder row, fine-tune it for detection and segmentation, compare
    with the published numbers. Re-running skips finished runs and resumes interrupted ones."""
    from bot.compare.reproduce import run_reproduce
    run_reproduce(**options)


# ---- segmentation ---------------------------------------------------------------------------------------------
@main.command("finetune-seg")
@click.option("--backbone", help="Pretrain run dir, any ResNet weights file (.safetensors/.pth/...), timm:NAME, or an arch name (random init); required unless --resume.")
@click.option("--arch", help="The backbone's arch when the file cannot say (A vs B), checked against its tensors "
                             "(default: inferred; A only from bot's metadata).")
@click.option("--data", help="ade20k:PATH or folder:PATH (default: the synthetic shapes set in the ADE20K layout).")
@click.option("--head", help="fcn (default, the paper's) or an smp decoder: deeplabv3, deeplabv3plus, fpn, unet, upernet, pspnet, ...")
@click.option("--num-classes", type=int, help="Classes, the ignore value not counted (default: ade20k 150 or its classes.txt's "
                                             "count; a folder data set needs it or --class-names).")
@click.option("--ignore-index", type=int, help="Label value that is not scored (default: 255).")
@click.option("--class-names", type=click.Path(), help="File with one class name per line (default: ade20k's objectInfo150.csv "
                                                       "or classes.txt, else class_0, class_1, ...).")
@click.option("--epochs", type=int, help="Training epochs (default: 50; 20 on the synthetic default).")
@click.option("--batch-size", type=int, help="Global batch size in images per step, split over processes (default: 16).")
@click.option("--lr", type=float, help="Peak learning rate of the backbone; the heads' is x train.head_lr_mult, 10 (default: 0.01).")
@click.option("--base-size", type=int, help="Shorter side in px before random scaling 0.5-2.0 (default: 520; 64 on the synthetic default).")
@click.option("--crop-size", type=int, help="Training crop (and sliding-window) side in px (default: 480; 48 on the synthetic default).")
@click.option("--image-size", type=int, help="Sets --base-size and --crop-size together, px (default: unset, each its own).")
@click.option("--norm", type=click.Choice(["bn", "frozen", "sync"]), help="Backbone BatchNorm: trained, frozen, or SyncBN under "
                                                                         "torchrun on GPUs (default: sync, plain BN otherwise).")
@click.option("--aux/--no-aux", default=None, help="FCN auxiliary head on stage 3, loss weight 0.5 (default: on).")
@training_options
@click.option("--out", type=click.Path(), help="Run directory (default: runs/segment-<head>-<backbone>).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other key of segmentation/defaults.yaml; repeatable (default: none).")
def finetune_seg(nproc, image_size, **options):
    """Fine-tune a backbone checkpoint for semantic segmentation (FCN on ADE20K by default)."""
    if image_size is not None:
        options["base_size"] = options["base_size"] or image_size
        options["crop_size"] = options["crop_size"] or image_size
    run_training_stage(nproc, "bot.segmentation.train:run_from_cli", **options)


@main.command("evaluate-seg")
@click.option("--run", type=click.Path(), help="A finetune-seg run directory to score; this or --predictions is required.")
@click.option("--predictions", type=click.Path(), help="Or: a folder of predicted PNG masks (class ids 0..N-1, image stems); this or --run is required.")
@click.option("--data", help="ade20k:PATH or folder:PATH (default: the run's data set, or the synthetic set).")
@click.option("--split", help="Split folder name (default: the validation split).")
@click.option("--num-classes", type=int, help="Classes (default: the run's, else as finetune-seg: ade20k 150).")
@click.option("--ignore-index", type=int, help="Label value that is not scored (default: the run's, else 255).")
@click.option("--class-names", type=click.Path(), help="File with one class name per line (default: the run's, else as finetune-seg).")
@click.option("--mode", type=click.Choice(["whole", "slide", "ms-flip"]),
              help="Full image, sliding crop-size windows, or GluonCV's multi-scale (0.5-1.75) + flip test (eval.ms_*) "
                   "(default: the run's eval.mode, whole unless set).")
@click.option("--batch-size", type=int, help="Images per forward pass (default: the run's eval.batch_size, 1; 50 on the synthetic default).")
@click.option("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu).")
@click.option("--save-predictions", type=click.Path(), help="Write the run's predicted masks here as PNGs (default: not written).")
@click.option("--json", "json_out", type=click.Path(), help="Also write the metrics to this JSON file (default: not written).")
def evaluate_seg(**options):
    """Score a segmentation run (or predicted masks) on a split: per-class IoU table, mIoU, pixel accuracy."""
    from bot.segmentation.evaluate import run_from_cli
    run_from_cli(**options)


# ---- detection ------------------------------------------------------------------------------------------------
@main.command("finetune-detect")
@click.option("--backbone", help="A pretrain run dir, any ResNet weights file (.safetensors/.pth/...), timm:NAME, or an arch name (random init, with a warning); required unless --resume.")
@click.option("--arch", help="The backbone's arch when the file cannot say (A vs B), checked against its tensors "
                             "(default: inferred; A only from bot's metadata).")
@click.option("--data", help="voc:PATH (VOCdevkit), coco:PATH, or synthetic[:voc|:coco] (default: synthetic VOC layout).")
@click.option("--train-sets", help="VOC: YEAR-SPLIT list (default: 2007-trainval,2012-trainval); COCO: a split (default: train2017).")
@click.option("--val-set", help="VOC: a YEAR-SPLIT (default: 2007-test); COCO: a split (default: val2017).")
@click.option("--detector", type=click.Choice(["c4", "fpn"]),
              help="c4: GluonCV's C4 Faster R-CNN, the paper's (default for voc:); fpn: torchvision's FPN (default for coco: and synthetic).")
@click.option("--epochs", type=int, help="Training epochs (default: 20; 8 on the synthetic default).")
@click.option("--batch-size", type=int, help="Global batch size in images per step, split over processes (default: 8).")
@click.option("--lr", type=float, help="Learning rate (default: train.base_lr per train.base_batch images, scaled linearly "
                                       "to the batch size; 0.02 on the synthetic default).")
@click.option("--image-size", type=int, help="Short side after resizing, px (default 600; long side capped at 5/3 of it unless --max-size, as with --set data.min_size).")
@click.option("--max-size", type=int, help="Long side cap in px (default: 1000; 128 on the synthetic default).")
@training_options
@click.option("--out", type=click.Path(), help="Run directory (default: runs/detect-<backbone>).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other key of detection/defaults.yaml; repeatable (default: none).")
def finetune_detect(nproc, **options):
    """Fine-tune Faster R-CNN (C4 or FPN) on a backbone checkpoint; VOC07/VOC/COCO box AP."""
    run_training_stage(nproc, "bot.detection.train:run_from_cli", **options)


@main.command("evaluate-detect")
@click.option("--data", help="voc:PATH, coco:PATH or synthetic[:voc|:coco] (default: synthetic VOC layout).")
@click.option("--val-set", help="VOC: a YEAR-SPLIT (default: 2007-test); COCO: a split (default: val2017).")
@click.option("--detections", type=click.Path(), help="A COCO results JSON (image_id, category_id, bbox [x,y,w,h] in px, score); this or --weights is required.")
@click.option("--weights", type=click.Path(), help="A finetune-detect run dir (or its model.safetensors) to run instead of --detections; one of the two is required.")
@click.option("--classes", help="VOC layout: class names, comma-separated, in label order (default: ROOT/classes.txt, "
                                "else the names found in the annotations).")
@click.option("--device", help="cpu, cuda or cuda:N, for --weights (default: cuda if available, else cpu).")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Images per forward pass, for --weights.")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader worker processes, for --weights (0: this process).")
@click.option("--out", type=click.Path(), help="Also write the metrics and per-class APs to this JSON file (default: not written).")
def evaluate_detect(**options):
    """Score detections (or a finetuned detector) on a VOC or COCO split: per-class AP, VOC07/VOC/COCO means."""
    from bot.detection.evaluate import run_evaluate_cli
    run_evaluate_cli(**options)


if __name__ == "__main__":
    main()
