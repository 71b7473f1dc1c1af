"""`bot plot RUN...`: training curves of one or more runs from their metrics.jsonl, as one picture (matplotlib).

One panel of training loss per stage (pretrain, detection and segmentation losses are not on one scale) against
the global step, then one panel per evaluation metric against the step it was measured at (each stage's headline
metrics by default, `--metric` for others). Runs are found as `bot compare` finds them (any folder below the paths
that holds a run-dir file) and named by the shortest distinct tail of their paths. Unfinished runs are drawn too:
their curves are what they logged so far. Headless: matplotlib's Agg backend.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bot.engine.errors import BotError

from .discover import find_run_dirs, unique_names

# What a run's evaluation panels show unless --metric says otherwise: the stage's headline metrics.
HEADLINE = {"pretrain": ("top1",), "detect": ("voc07_map50", "coco_map"), "segment": ("miou", "pixel_acc")}
TASK_LABELS = {"pretrain": "pretrain", "detect": "detection", "segment": "segmentation"}


@dataclass
class Curves:
    name: str
    task: str                                                  # pretrain | detect | segment | "" (unknown)
    loss: tuple[list[int], list[float]] = ([], [])             # (steps, per-batch loss)
    metrics: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)  # eval metric -> (steps, values)


def task_of(run: Path) -> str:
    """The stage that wrote `run`: summary.json's task, else progress.json's, else config.yaml's layout."""
    for name in ("summary.json", "progress.json"):
        try:
            task = json.loads((run / name).read_text()).get("task", "")
        except (OSError, ValueError, AttributeError):
            continue
        if task:
            return str(task)
    return ""


def read_curves(run: Path, name: str) -> Curves:
    """A run's logged loss and evaluation metrics; lines a kill cut short are skipped."""
    steps, losses, metrics = [], [], {}
    try:
        lines = (run / "metrics.jsonl").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
            continue
        step = int(record["step"])
        if "train_loss" in record:  # an epoch record: its other numbers are the evaluation's
            for key, value in record.items():
                if key not in ("epoch", "step", "lr", "train_loss") and isinstance(value, (int, float)) \
                        and not isinstance(value, bool):
                    xs, ys = metrics.setdefault(key, ([], []))
                    xs.append(step)
                    ys.append(float(value))
        elif isinstance(record.get("loss"), (int, float)):
            steps.append(step)
            losses.append(float(record["loss"]))
    return Curves(name, task_of(run), (steps, losses), metrics)


def collect(paths: list[str | Path]) -> list[Curves]:
    """Every run under `paths` that logged something, in argument order; a missing path is one line."""
    runs: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise BotError(f"{p}: no such file or directory")
        for run in find_run_dirs(p.parent if p.is_file() else p):
            if (run / "metrics.jsonl").exists() and run not in runs:
                runs.append(run)
    if not runs:
        raise BotError(f"{', '.join(map(str, paths))}: no run with a metrics.jsonl here")
    return [read_curves(run, name) for run, name in zip(runs, unique_names(runs))]


def panels(curves: list[Curves], metrics: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """The panels to draw, in order: ("loss", task) per stage present, then ("metric", key) per metric shown."""
    tasks = list(dict.fromkeys(c.task for c in curves if c.loss[0]))
    wanted = list(metrics) or list(dict.fromkeys(k for c in curves for k in HEADLINE.get(c.task, ()) if k in c.metrics))
    if metrics:
        unknown = [m for m in metrics if not any(m in c.metrics for c in curves)]
        if unknown:
            known = sorted({k for c in curves for k in c.metrics})
            raise BotError(f"--metric {unknown[0]}: no run logged it (logged: {', '.join(known) or 'none'})")
    return [("loss", t) for t in tasks] + [("metric", m) for m in wanted]


def plot_curves(curves: list[Curves], file: str | Path, metrics: tuple[str, ...] = ()):
    """Draw the panels into `file` (.png, .svg or .pdf; written atomically); returns the matplotlib figure."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bot.engine.rundir import atomic_write_bytes

    file = Path(file)
    if file.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise BotError(f"--out {file}: give a .png, .svg or .pdf file")
    shown = panels(curves, metrics)
    if not shown:
        raise BotError("nothing to plot: the runs logged no loss and no evaluation yet")
    cols = min(3, len(shown))
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (kind, key) in zip(axes.flat, shown):
        for c in curves:
            xs, ys = c.loss if kind == "loss" else c.metrics.get(key, ([], []))
            if (kind == "loss" and c.task != key) or not xs:
                continue
            scale = 100.0 if kind == "metric" else 1.0  # metrics are fractions; people read them in %
            ax.plot(xs, [y * scale for y in ys], marker="" if kind == "loss" else "o", ms=3, label=c.name)
        ax.set_title(f"{TASK_LABELS.get(key, key)} training loss" if kind == "loss" else f"{key} (%)", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=file.suffix.lower()[1:], dpi=110)
    atomic_write_bytes(file, buffer.getvalue())
    plt.close(fig)
    return fig


def run_plot(paths: list[str], out: str = "curves.png", metrics: tuple[str, ...] = ()) -> Path:
    from bot.engine.rundir import check_output_file

    check_output_file(out, "--out")
    plot_curves(collect(paths or ["runs"]), out, tuple(metrics))
    return Path(out)
