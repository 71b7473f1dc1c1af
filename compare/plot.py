"""The comparison as one PNG: top-1 against each transfer metric (one labelled point per backbone, the baseline
marked, min-max whiskers for repeated runs; with --paper the published numbers as hollow points), and a bar chart
of every row's difference against the baseline, with its 95% paired-bootstrap interval as an error bar.

Headless: matplotlib's Agg backend, selected before pyplot is imported.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bot.engine.errors import BotError  # noqa: E402
from bot.engine.rundir import atomic_write_bytes  # noqa: E402

from .join import Comparison  # noqa: E402
from .render import row_label  # noqa: E402


def transfer_metrics(comp: Comparison):
    return [m for m in comp.metrics(shown_only=True) if m.task != "pretrain"]


def scatter(ax, comp: Comparison, metric) -> None:
    base = comp.baseline
    points = [(r, r.stats["top1"], r.stats[metric.key]) for r in comp.rows if "top1" in r.stats and metric.key in r.stats]
    labels: dict[tuple, list[str]] = {}     # backbones on the same spot share one label instead of overprinting
    for row, x, y in points:
        is_base = row is base
        yerr = [[y.mean - y.min], [y.max - y.mean]] if y.n > 1 else None
        xerr = [[x.mean - x.min], [x.max - x.mean]] if x.n > 1 else None
        ax.errorbar(x.mean, y.mean, xerr=xerr, yerr=yerr, fmt="*" if is_base else "o",
                    ms=16 if is_base else 7, color="tab:red" if is_base else "tab:blue",
                    ecolor="0.6", capsize=3, zorder=4 if is_base else 3)
        spot = (round(x.mean, 2), round(y.mean, 2))
        labels.setdefault(spot, []).append(row_label(comp, row) + (f" n={y.n}" if y.n > 1 else ""))
    # --paper: the published numbers of ladder rows, hollow, so that they never pass for measured ones; x is the top-1
    # the metric's own table prints for the row
    published = [(r, r.paper_top1[metric.key], r.paper[metric.key]) for r in comp.rows if metric.key in r.paper_top1]
    for row, x, y in published:
        ax.scatter([x], [y], s=60, marker="o", facecolors="none", edgecolors="tab:gray", linewidths=1.2, zorder=2)
        labels.setdefault((round(x, 2), round(y, 2)), []).append(f"{row.paper_label or row.name} (paper)")
    for (x, y), names in labels.items():
        ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    if not points and not published:
        ax.text(0.5, 0.5, "no backbone has both\ntop-1 and this metric", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    else:
        xs = [v for p in points for v in (p[1].min, p[1].max)] + [p[1] for p in published]
        ys = [v for p in points for v in (p[2].min, p[2].max)] + [p[2] for p in published]
        widen(ax.set_xlim, xs, right=0.6)  # labels go right
        widen(ax.set_ylim, ys)
    if "top1" in base.stats and metric.key in base.stats:
        ax.axvline(base.stats["top1"].mean, color="tab:red", lw=0.8, ls=":")
        ax.axhline(base.stats[metric.key].mean, color="tab:red", lw=0.8, ls=":")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.set_xlabel("pretrain top-1 accuracy (%)")
    ax.set_ylabel(f"{metric.label} (%)")
    ax.set_title(f"{metric.label} vs top-1")
    ax.grid(alpha=0.3)


def widen(set_lim, values: list[float], min_span: float = 1.0, right: float = 0.25) -> None:
    """Axis limits around the points with room for labels; at least `min_span` points wide, so that equal values
    do not blow tiny float differences up to a whole axis."""
    lo, hi = min(values), max(values)
    span = max(hi - lo, min_span)
    mid = (lo + hi) / 2
    lower = mid - span * 0.75
    if lo >= 0 and lower < 0:
        lower = -0.05 * span        # percentages: no empty negative half below points at 0
    set_lim(lower, mid + span * (0.5 + right))


def delta_bars(ax, comp: Comparison) -> None:
    metrics = [m for m in comp.metrics(shown_only=True)]
    others = [r for r in comp.rows if r is not comp.baseline]
    width = 0.8 / max(1, len(others))
    cmap = plt.get_cmap("tab10")
    for i, row in enumerate(others):
        xs, hs, errs = [], [], [[], []]
        for j, m in enumerate(metrics):
            d = row.deltas.get(m.key)
            if d is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                hs.append(d)
                ci = row.ci.get(m.key)
                # whiskers from the bar's top to the interval's ends (none where there is no interval)
                errs[0].append(max(0.0, d - ci.low) if ci else 0.0)
                errs[1].append(max(0.0, ci.high - d) if ci else 0.0)
        bars = ax.bar(xs, hs, width=width * 0.95, color=cmap(i % 10), label=row.name,
                      yerr=errs if any(errs[0] + errs[1]) else None, capsize=3, error_kw={"ecolor": "0.25", "lw": 1})
        labels = [f"{h:+.2f}" + ("*" if row.ci.get(m.key) and row.ci[m.key].excludes_zero else "")
                  for h, m in zip(hs, [m for m in metrics if row.deltas.get(m.key) is not None])]
        ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(metrics)), [m.label for m in metrics])
    ax.set_ylabel("difference vs baseline (percentage points)")
    ci = "; whiskers: 95% paired-bootstrap interval over images, * excludes 0" if any(r.ci for r in others) else ""
    ax.set_title(f"Difference against the baseline ({comp.baseline.name}); blank = stage not run{ci}")
    if others:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "only one backbone: nothing to compare", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.2)


def write_plot(comp: Comparison, path: str | Path) -> Path:
    """Draw the figure and write it (atomically) to `path`; the format follows the suffix (.png, .svg, .pdf)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in ("png", "svg", "pdf"):
        raise BotError(f"{path}: plot file must end in .png, .svg or .pdf")
    panels = transfer_metrics(comp)
    ncols = max(1, len(panels))
    fig = plt.figure(figsize=(max(10, 4.6 * ncols), 9.5), layout="constrained")
    grid = fig.add_gridspec(2, ncols, height_ratios=[1.1, 1])
    for i, metric in enumerate(panels):
        scatter(fig.add_subplot(grid[0, i]), comp, metric)
    if not panels:
        ax = fig.add_subplot(grid[0, :])
        ax.axis("off")
        ax.text(0.5, 0.5, "no detection or segmentation runs found", ha="center", va="center", color="0.4")
    delta_bars(fig.add_subplot(grid[1, :]), comp)
    fig.suptitle("How classification gains carry over to detection and segmentation", fontsize=13)
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
