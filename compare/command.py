"""What `bot compare` does once cli.py has parsed its options: discover, join, print, write files."""
from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from bot.engine.errors import BotError
from bot.engine.rundir import atomic_write_text, check_output_file

from .bootstrap import DEFAULT_RESAMPLES
from .discover import Discovery, discover
from .intervals import attach_intervals
from .join import Comparison, join
from .render import print_terminal, to_csv, to_json, to_markdown, unfinished_lines

FORMATS = ("table", "markdown", "csv", "json")


def build(paths, baseline: str | None = None, paper: bool = False,
          bootstrap: int = DEFAULT_RESAMPLES) -> tuple[Comparison, Discovery]:
    found = discover(paths)
    warn = Console(stderr=True, highlight=False)
    for w in found.warnings:
        warn.print(f"warning: {w}", soft_wrap=True)
    if not found.runs:
        where = ", ".join(str(p) for p in paths)
        detail = f" ({len(found.unfinished)} unfinished)" if found.unfinished else ""
        if found.unfinished:
            for line in unfinished_lines(found):
                warn.print(line, soft_wrap=True)
        raise BotError(f"{where}: no finished run directories (summary.json) found{detail}")
    comp = join(found.runs, baseline)
    if paper:
        from .paper import attach_paper
        attach_paper(comp, rebase=baseline is None)  # measured deltas against B-standard, as the paper's
    attach_intervals(comp, bootstrap)
    return comp, found


def run_compare(paths, *, baseline=None, fmt="table", csv_file=None, json_file=None, markdown_file=None,
                plot_file=None, out=None, paper: bool = False, bootstrap: int = DEFAULT_RESAMPLES) -> Comparison:
    if fmt not in FORMATS:
        raise BotError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if bootstrap is None or bootstrap < 0:
        raise BotError(f"--bootstrap {bootstrap}: give a number of resamples (0 turns the intervals off)")
    for flag, path in (("--csv", csv_file), ("--json", json_file), ("--markdown", markdown_file), ("--plot", plot_file)):
        check_output_file(path, flag)
    comp, found = build(paths or ["runs"], baseline, paper, bootstrap)
    out = out or sys.stdout
    if fmt == "table":
        print_terminal(comp, found, Console(file=out) if out is not sys.stdout else None)
    else:
        text = {"markdown": to_markdown, "csv": to_csv}.get(fmt)
        out.write(text(comp) if text else to_json(comp, found))
        # Keep stdout machine-readable; unfinished runs go to stderr.
        err = Console(stderr=True, highlight=False)
        for line in unfinished_lines(found):
            err.print(line, soft_wrap=True)
    for path, text in ((csv_file, lambda: to_csv(comp)), (json_file, lambda: to_json(comp, found)),
                       (markdown_file, lambda: to_markdown(comp))):
        if path:
            atomic_write_text(Path(path), text())
    if plot_file:
        from .plot import write_plot
        write_plot(comp, plot_file)
    return comp
