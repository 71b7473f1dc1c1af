"""`bot reproduce`: the paper's transfer experiment (Tables 6, 8 and 9) as one command.

Each ladder row is pretrained on ImageNet, then fine-tuned for detection (Faster R-CNN, C4 on VOC: the paper's) and
segmentation (FCN on ADE20K); the teacher is pretrained first for the distillation rows. Every run is a separate
stage command in its own process (compare/demo.py's Step: `bot <stage> ... --out DIR`), never imported here, so
re-running skips finished runs and resumes interrupted ones. Without data paths the stages run at demo scale on
the synthetic default. Layout: OUT/pretrain/<recipe>, OUT/detect/<recipe>, OUT/segment/<recipe>, OUT/compare.*.
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from bot.engine.errors import BotError

from .demo import (DEMO_ARGS, DEMO_DEPTH, STAGE_DIRS, Step, command_line, console, demo_arch, demo_epochs, recipe_info,
                   run_steps, run_subprocess, seed_dir, seed_variants, split_args)

# (row label in the paper's tables, recipe), in the order they run: the teacher first (distillation needs it)
LADDER = (
    ("teacher (ResNet-152-D)", "resnet152d-teacher"),
    ("B-standard", "resnet50b-standard"),
    ("D-efficient", "resnet50d"),
    ("+ cosine", "resnet50d-cosine"),
    ("+ label smoothing", "resnet50d-ls"),
    ("+ distill w/o mixup", "resnet50d-distill"),
    ("+ mixup w/o distill", "resnet50d-mixup"),
    ("+ mixup w/ distill", "resnet50d-mixup-distill"),
)
TEACHER = "resnet152d-teacher"
LABELS = {recipe: label for label, recipe in LADDER}
DEMO_TEACHER_DEPTH = 34  # demo scale: the students at the demo's depth (10), a deeper teacher


@dataclass
class DataPaths:
    imagenet: str | None = None   # ImageFolder root (train/, val/)
    voc: str | None = None        # VOCdevkit
    ade20k: str | None = None     # ADEChallengeData2016


def choose_rows(text: str | None) -> list[str]:
    """--recipes: comma-separated ladder recipes or labels (e.g. `resnet50b-standard,+ cosine`); default every row.
    The teacher joins the plan when a distillation row needs it; the result keeps the ladder's order."""
    by_name = {r: r for _, r in LADDER} | {label.lower().replace(" ", ""): r for label, r in LADDER}
    if not text:
        wanted = {r for _, r in LADDER}
    else:
        wanted = set()
        for token in (t.strip() for t in text.split(",")):
            if not token:
                continue
            recipe = by_name.get(token) or by_name.get(token.lower().replace(" ", ""))
            if recipe is None:
                raise BotError(f"--recipes: {token!r} is not a row of the paper's ladder "
                               f"({', '.join(r for _, r in LADDER)})")
            wanted.add(recipe)
    if not wanted:
        raise BotError("--recipes: give at least one ladder row")
    return [r for _, r in LADDER if r in wanted]


def needs_teacher(recipe: str) -> bool:
    return "teacher" in recipe_info(recipe)["requires"]


def plan_reproduce(recipes: list[str], out: Path, data: DataPaths, *, nproc: int = 1, teacher: str | None = None,
                   extra: dict[str, list[str]] | None = None, seeds: int = 1) -> list[Step]:
    """The runs in order: each recipe's pretrain, then its detection and segmentation (none for the teacher); with
    `seeds` > 1, every ladder row again per seed (OUT/<stage>/<recipe>/seed<k>, `--seed k`), all distilling from
    the one teacher."""
    extra = extra or {}
    if any(needs_teacher(r) for r in recipes) and TEACHER not in recipes and not teacher:
        recipes = [TEACHER, *recipes]
    teacher_dir = Path(teacher) if teacher else out / "pretrain" / TEACHER
    parallel = ["--nproc", str(nproc)] if nproc > 1 else []
    steps = []
    for seed, sub, seed_args in seed_variants(seeds):
        for recipe in recipes:
            if recipe == TEACHER and seed:
                continue  # one teacher for every seed
            pre = seed_dir(out / "pretrain" / recipe, sub)
            if data.imagenet:
                args = ["--recipe", recipe, "--data", str(data.imagenet)]
            else:  # demo scale on the synthetic set, each recipe keeping its epoch ratio (mixup: 200/120)
                depth = DEMO_TEACHER_DEPTH if recipe == TEACHER else DEMO_DEPTH
                epochs = demo_epochs(recipe)
                args = ["--recipe", recipe, "--arch", demo_arch(recipe, depth), "--epochs", str(epochs)]
            if needs_teacher(recipe):
                args += ["--teacher", str(teacher_dir)]
            steps.append(Step("pretrain", recipe, pre, args + seed_args + parallel + list(extra.get("pretrain", [])),
                              seed))
            if recipe == TEACHER:
                continue  # Tables 8 and 9 have no teacher row
            # on ADE20K the final evaluation is GluonCV's multi-scale + flip, as the model zoo's (Table 9's) were
            seg = ["--data", f"ade20k:{data.ade20k}", "--set", "eval.mode=ms-flip"] if data.ade20k else DEMO_ARGS["finetune-seg"]
            downstream = {"finetune-detect": ["--data", f"voc:{data.voc}"] if data.voc else DEMO_ARGS["finetune-detect"],
                          "finetune-seg": seg}
            for stage, data_args in downstream.items():
                steps.append(Step(stage, recipe, seed_dir(out / STAGE_DIRS[stage] / recipe, sub),
                                  ["--backbone", str(pre), *data_args, *seed_args, *parallel, *extra.get(stage, [])],
                                  seed))
    return steps


def plan_text(steps: list[Step]) -> str:
    """The plan as printed before anything runs: order, stage, row, run directory, and what exists already."""
    what = {"finished": "finished earlier: skipped", "resume": "interrupted: resumes from last.ckpt", "start": "to run"}
    lines = [f"{'#':>3}  {'stage':15s} {'row':24s} {'seed':>4s}  {'run directory':48s} state"]
    for i, s in enumerate(steps, 1):
        lines.append(f"{i:>3}  {s.stage:15s} {LABELS.get(s.recipe, s.recipe):24s} {s.seed:>4d}  {str(s.out):48s} "
                     f"{what[s.state()]}")
    return "\n".join(lines)


def run_reproduce(*, out: str | Path = "runs/paper", imagenet=None, voc=None, ade20k=None, nproc: int = 1,
                  recipes: str | None = None, teacher: str | None = None, pretrain_args: str = "",
                  detect_args: str = "", segment_args: str = "", plan_only: bool = False,
                  runner=run_subprocess, seeds: int = 1) -> Path:
    from .command import run_compare

    out = Path(out)
    data = DataPaths(imagenet, voc, ade20k)
    for flag, path in (("--imagenet", imagenet), ("--voc", voc), ("--ade20k", ade20k)):
        if path and not Path(path).is_dir():
            raise BotError(f"{flag} {path}: no such directory")
    extra = {"pretrain": split_args("--pretrain-args", pretrain_args),
             "finetune-detect": split_args("--detect-args", detect_args),
             "finetune-seg": split_args("--segment-args", segment_args)}
    steps = plan_reproduce(choose_rows(recipes), out, data, nproc=nproc, teacher=teacher, extra=extra, seeds=seeds)
    scale = "the data given" if imagenet else "demo scale on the synthetic set (no --imagenet)"
    console.print(f"[bold]bot reproduce[/]: {len(steps)} runs at {scale}{f', {seeds} seeds' if seeds > 1 else ''} "
                  f"-> {out}")
    console.print(plan_text(steps), highlight=False)
    if plan_only:
        return out
    t0 = time.time()
    again = command_line("reproduce", {"out": out, "imagenet": imagenet, "voc": voc, "ade20k": ade20k, "nproc": nproc,
                                       "recipes": recipes, "teacher": teacher, "pretrain_args": pretrain_args,
                                       "detect_args": detect_args, "segment_args": segment_args, "seeds": seeds},
                         {"nproc": 1, "pretrain_args": "", "detect_args": "", "segment_args": "", "seeds": 1})
    run_steps(steps, runner, again=again)
    console.print(f"[bold]all runs finished[/] in {time.time() - t0:.0f} s; comparing with the paper:")
    rows = [s.out for s in steps if not (s.stage == "pretrain" and s.recipe == TEACHER)]  # seeds: nested, found once
    run_compare(rows, paper=True, csv_file=out / "compare.csv", json_file=out / "compare.json",
                markdown_file=out / "compare.md", plot_file=out / "compare.png")
    console.print(f"wrote {out}/compare.png, compare.md, compare.csv, compare.json "
                  f"(again any time: {shlex.join(['bot', 'compare', str(out), '--paper'])})")
    return out
