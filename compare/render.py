"""The comparison as text: a rich table for the terminal, Markdown, CSV and JSON.

Every format says the same thing: metrics in percent, the difference against the baseline in percentage points
with its paired-bootstrap interval (compare/intervals.py; marked * where it excludes 0), and for repeated runs
(seeds) the mean with min-max and count. A stage a backbone has no run for is blank (JSON null), never 0.
"""
from __future__ import annotations

import csv
import io
import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .bootstrap import LEVEL, SEED
from .discover import Discovery
from .join import Comparison, Interval, Metric, Row, Stat

LEGEND = ("metrics in %; (±x) = difference vs the baseline row in percentage points; "
          "[min–max, n] = spread over n repeated runs; blank = no finished run of that stage")
PAPER_LEGEND = ("; \"paper\" columns: the published value (He et al. 2019; top-1: Table 6, A-standard Tables 2-3, "
                "B-standard Tables 8-9) and (±x) its difference vs the paper's B-standard row, @t = the top-1 that "
                "value's own table (8: VOC, 9: ADE20K) prints for the row")
MIOU_LEGEND = ("; mIoU = mean over the classes present in ground truth or predictions, mIoU all = mean over every "
               "class (the paper's and GluonCV's mIoU; the paper's mIoU is in the mIoU all paper column)")


CI_LEGEND = ("; [a, b] after a difference = its 95% paired-bootstrap interval over the validation images ({n} "
             "resamples; image sampling only, not training noise), * = the interval excludes 0")
MARK = "*"


def legend(comp: Comparison) -> str:
    ci = CI_LEGEND.format(n=comp.bootstrap) if any(r.ci for r in comp.rows) else ""
    keys = {m.key for m in comp.metrics(shown_only=True)}
    miou = MIOU_LEGEND if {"miou", "miou_all"} <= keys else ""
    return LEGEND + ci + (PAPER_LEGEND if comp.has_paper else "") + miou


def interval_text(ci: Interval | None) -> str:
    """` [+1.9, +4.4]*`: one decimal (the interval's own precision), the mark where it excludes 0."""
    if ci is None:
        return ""
    return f" [{ci.low:+.1f}, {ci.high:+.1f}]" + (MARK if ci.excludes_zero else "")


def delta_text(row: Row, key: str) -> str:
    d = row.deltas.get(key)
    return "" if d is None else f"{d:+.2f}" + interval_text(row.ci.get(key))


def note_lines(comp: Comparison) -> list[str]:
    """Why a row's differences have no interval, and the seed spread of rows with several seeds."""
    lines = []
    for row in comp.rows:
        for stage, reason in row.ci_notes.items():
            lines.append(f"note: {row.name}: {stage}: no interval: {reason}")
        if row.seeds:
            spread = ", ".join(f"{m.label} sd {row.stats[m.key].std:.2f}" for m in comp.metrics(shown_only=True)
                               if m.key in row.stats and row.stats[m.key].n > 1)
            lines.append(f"note: {row.name}: {len(row.seeds)} seeds ({', '.join(map(str, row.seeds))}); "
                         f"seed-to-seed spread (training noise, not in the intervals): {spread}")
    return lines


def columns(comp: Comparison) -> list[tuple[Metric, bool]]:
    """(metric, is_paper) per shown column: each measured metric, then its published value under --paper."""
    out = []
    for m in comp.metrics(shown_only=True):
        out.append((m, False))
        if any(m.key in r.paper for r in comp.rows):
            out.append((m, True))
    return out


def paper_text(row: Row, key: str) -> str:
    if key not in row.paper:
        return ""
    d = row.paper_deltas.get(key)
    top1 = row.paper_top1.get(key)
    return fmt(row.paper[key]) + (f" ({d:+.2f})" if d else "") + (f" @{fmt(top1)}" if top1 is not None else "")


def fmt(v: float) -> str:
    return f"{v:.2f}"


def spread_text(s: Stat) -> str:
    return f"[{fmt(s.min)}–{fmt(s.max)}, n={s.n}]" if s.n > 1 else ""


def cell_text(row: Row, key: str, is_baseline: bool) -> str:
    s = row.stats.get(key)
    if s is None:
        return ""
    parts = [fmt(s.mean)]
    delta = row.deltas.get(key)
    if not is_baseline and delta is not None:
        parts.append(f"({delta_text(row, key)})")
    if s.n > 1:
        parts.append(spread_text(s))
    return " ".join(parts)


def row_label(comp: Comparison, row: Row) -> str:
    if row is not comp.baseline or row.name == "baseline":
        return row.name
    return f"{row.name} (baseline)"


def to_markdown(comp: Comparison) -> str:
    cols = columns(comp)
    head = ["backbone", "recipe", "arch"] + [f"{m.label} paper" if p else m.label for m, p in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * len(cols)]
    for row in comp.rows:
        cells = [row_label(comp, row), row.recipe, row.arch]
        cells += [paper_text(row, m.key) if p else cell_text(row, m.key, row is comp.baseline) for m, p in cols]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    notes = "".join(f"- {line}\n" for line in note_lines(comp))
    return "\n".join(lines) + f"\n\n{legend(comp)}\n" + (f"\n{notes}" if notes else "")


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def to_csv(comp: Comparison) -> str:
    """One row per backbone; for each metric: mean, delta, min, max, std, n (blank when the stage is missing)."""
    metrics = comp.metrics()
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    head = ["name", "baseline", "recipe", "arch", "sha256", "pretrain_runs", "detect_runs", "segment_runs",
            "classify_runs"]
    for m in metrics:
        head += [m.key, f"{m.key}_delta", f"{m.key}_ci_low", f"{m.key}_ci_high", f"{m.key}_min", f"{m.key}_max",
                 f"{m.key}_std", f"{m.key}_n"]
    paper = [m for m in metrics if any(m.key in r.paper for r in comp.rows)]
    for m in paper:
        head += [f"{m.key}_paper", f"{m.key}_paper_delta"] + ([f"{m.key}_paper_top1"] if m.task != "pretrain" else [])
    w.writerow(head)
    for row in comp.rows:
        line = [row.name, int(row is comp.baseline), row.recipe, row.arch, row.sha256]
        line += [";".join(str(r.path) for r in row.runs(t)) for t in ("pretrain", "detect", "segment", "classify")]
        for m in metrics:
            s = row.stats.get(m.key)
            ci = row.ci.get(m.key)
            if s is None:
                line += [""] * 8
            else:
                line += [_num(s.mean), _num(row.deltas.get(m.key)), _num(ci and ci.low), _num(ci and ci.high),
                         _num(s.min), _num(s.max), _num(s.std), s.n]
        for m in paper:
            line += [_num(row.paper.get(m.key)), _num(row.paper_deltas.get(m.key))]
            line += [_num(row.paper_top1.get(m.key))] if m.task != "pretrain" else []
        w.writerow(line)
    return out.getvalue()


def to_dict(comp: Comparison, found: Discovery | None = None) -> dict:
    rows = []
    for row in comp.rows:
        stats = {}
        for m in comp.metrics():
            s = row.stats.get(m.key)
            ci = row.ci.get(m.key)
            stats[m.key] = None if s is None else {
                "mean": s.mean, "min": s.min, "max": s.max, "std": s.std, "n": s.n, "delta": row.deltas.get(m.key),
                "ci_low": ci and ci.low, "ci_high": ci and ci.high, "ci_excludes_zero": ci and ci.excludes_zero}
        rows.append({"name": row.name, "baseline": row is comp.baseline, "recipe": row.recipe, "arch": row.arch,
                     "sha256": row.sha256, "metrics": stats, "seeds": list(row.seeds), "ci_notes": dict(row.ci_notes),
                     "runs": {t: [str(r.path) for r in row.runs(t)]
                              for t in ("pretrain", "detect", "segment", "classify")}})
        if comp.has_paper:
            rows[-1]["paper"] = {"label": row.paper_label or None, "metrics": {
                k: {"value": v, "delta": row.paper_deltas.get(k), **({"top1": row.paper_top1[k]} if k in row.paper_top1
                                                                      else {})}
                for k, v in row.paper.items()}}
    out = {"units": "percent; delta = mean minus the baseline's mean, in percentage points",
           "baseline": comp.baseline.name,
           "metrics": [{"key": m.key, "label": m.label, "task": m.task} for m in comp.metrics()],
           "bootstrap": {"resamples": comp.bootstrap, "seed": SEED, "level": LEVEL,
                         "method": "paired percentile bootstrap over validation images (compare/intervals.py); "
                                   "ci_low/ci_high bound the delta, in percentage points"},
           "rows": rows}
    if comp.has_paper:
        from .paper import paper_table
        out["paper"] = {"source": "He et al. 2019, Tables 6, 8, 9 (compare/paper.yaml)",
                        "delta_against": paper_table()["reference"]}
    if found is not None:
        out["unfinished"] = [{"path": str(u.path), "last_epoch": u.last_epoch, "has_checkpoint": u.has_checkpoint}
                             for u in found.unfinished]
        out["warnings"] = list(found.warnings)
    return out


def to_json(comp: Comparison, found: Discovery | None = None) -> str:
    return json.dumps(to_dict(comp, found), indent=2) + "\n"


def rich_table(comp: Comparison) -> Table:
    cols = columns(comp)
    table = Table(title="Backbones compared (joined by the sha256 of their weights)", caption=Text(legend(comp)),
                  show_lines=True)
    table.add_column("backbone", style="bold", no_wrap=True)
    table.add_column("recipe", overflow="fold")
    table.add_column("arch", no_wrap=True)
    for m, p in cols:
        table.add_column(f"{m.label}\npaper" if p else m.label, justify="right", style="italic" if p else None)
    for row in comp.rows:
        cells = [Text(row_label(comp, row)), Text(row.recipe), Text(row.arch)]
        for m, p in cols:
            if p:
                cells.append(Text(paper_text(row, m.key).replace(" (", "\n(").replace(" @", "\n@")))
                continue
            s = row.stats.get(m.key)
            cell = Text()
            if s is not None:
                cell.append(fmt(s.mean))
                d = row.deltas.get(m.key)
                if row is not comp.baseline and d is not None:
                    ci = row.ci.get(m.key)
                    cell.append(f"\n({d:+.2f}", style="green" if d > 0 else "red" if d < 0 else "")
                    cell.append(interval_text(ci), style="bold" if ci and ci.excludes_zero else "dim")
                    cell.append(")")
                if s.n > 1:
                    cell.append("\n" + spread_text(s), style="dim")
            cells.append(cell)
        table.add_row(*cells)
    return table


def unfinished_lines(found: Discovery) -> list[str]:
    lines = []
    for u in found.unfinished:
        state = []
        if u.last_epoch is not None:
            state.append(f"last logged epoch {u.last_epoch}")
        state.append("resumable (last.ckpt)" if u.has_checkpoint else "no checkpoint yet")
        lines.append(f"unfinished (no summary.json): {u.path} — {', '.join(state)}")
    return lines


def print_terminal(comp: Comparison, found: Discovery, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:
            # Piped or redirected: rich would squeeze the table into 80 columns.
            console = Console(width=200)
    console.print(rich_table(comp))
    for row in comp.rows:
        if not row.pretrain:
            console.print(f"note: {row.name}: no pretrain run among these paths has these weights"
                          + (" (top-1 from the checkpoint's metadata)" if "top1" in row.stats else ""))
    for line in note_lines(comp):
        console.print(line, highlight=False, soft_wrap=True)
    for line in unfinished_lines(found):
        console.print(line, highlight=False)
