"""What `bot demo` and `bot reproduce` show while their stage runs go on: one live view of every run.

Each stage run is a process of its own whose output goes to a log file; this view reads the `progress.json` every
training run keeps in its run directory (engine/status.py) and shows, per run: stage, row, state, epoch x/y, the
batch within it, img/s, ETA and, once finished, its headline metric (top-1, VOC07 mAP, mIoU). Finished, skipped
and failed runs stay listed. On a terminal it is a rich Live table redrawn twice a second; where stderr is not a
terminal (a log file, CI) it prints one line per run per epoch instead, plus a line per running run whenever
nothing was printed for `heartbeat` seconds, so a log moves too.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from bot.engine.status import read_status

STAGE_LABELS = {"pretrain": "pretrain", "finetune-detect": "detect", "finetune-seg": "segment"}
# The one number a finished run is known by, per stage command: (summary metric, label)
HEADLINE = {"pretrain": ("top1", "top-1"), "finetune-detect": ("voc07_map50", "VOC07 mAP"),
            "finetune-seg": ("miou", "mIoU")}


@dataclass
class Entry:
    stage: str          # the bot command: pretrain | finetune-detect | finetune-seg
    row: str
    out: Path
    log: Path | None
    state: str = "waiting"      # waiting | running | done | skipped | failed
    started: float = 0.0
    seconds: float = 0.0
    result: str = ""            # the headline metric, or why it failed
    printed: set = field(default_factory=set)  # (epoch, evaluating) already announced on the line-per-epoch path


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def headline(stage: str, out: Path) -> str:
    key, label = HEADLINE.get(stage, ("", ""))
    try:
        value = json.loads((out / "summary.json").read_text())["metrics"][key]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"{label} {100 * value:.2f}" if isinstance(value, (int, float)) else ""


def progress_text(status: dict | None) -> tuple[str, str, str, str]:
    """(epoch x/y, batch x/y or the phase, img/s, ETA) of a running run's last status."""
    if not status:
        return "-", "starting", "-", "-"
    epoch = f"{status.get('epoch', 0)}/{status.get('epochs', '?')}"
    if status.get("phase") == "evaluate":
        where = "evaluating"
    else:
        where = f"{status.get('batch', 0)}/{status.get('batches', '?')}"
    rate = status.get("images_per_second") or 0.0
    return epoch, where, f"{rate:.0f}" if rate else "-", duration(status.get("eta_seconds"))


class LiveView:
    """Thread-safe: the runner threads call `started`/`finished`, the waiting loop calls `refresh`."""

    def __init__(self, console: Console, *, terminal: bool | None = None, heartbeat: float = 10.0, clock=time.monotonic):
        self.console, self.clock, self.heartbeat = console, clock, heartbeat
        self.terminal = console.is_terminal if terminal is None else terminal
        self.entries: list[Entry] = []
        self.lock = threading.Lock()
        self.live: Live | None = None
        self.last_print = clock()

    # -- the runs' lifecycle (runner threads) --
    def add(self, stage: str, row: str, out: Path, log: Path | None) -> Entry:
        with self.lock:
            entry = Entry(stage, row, Path(out), log)
            self.entries.append(entry)
            return entry

    def started(self, entry: Entry) -> None:
        with self.lock:
            entry.state, entry.started = "running", self.clock()
        self.say(f"{self.name(entry)}: started" + (f" (log: {entry.log})" if entry.log else ""))

    def finished(self, entry: Entry, state: str, seconds: float = 0.0, why: str = "") -> None:
        with self.lock:
            entry.state, entry.seconds = state, seconds
            entry.result = why or headline(entry.stage, entry.out)
        if state == "skipped":
            self.say(f"{self.name(entry)}: finished earlier, skipped" + (f" ({entry.result})" if entry.result else ""))
        elif state == "done":
            self.say(f"{self.name(entry)}: done in {duration(seconds)}" + (f", {entry.result}" if entry.result else ""))
        else:
            self.say(f"{self.name(entry)}: failed: {entry.result}")

    # -- drawing --
    @staticmethod
    def name(entry: Entry) -> str:
        return f"{STAGE_LABELS.get(entry.stage, entry.stage)} {entry.row}"

    def say(self, message: str) -> None:
        """A line that stays: above the live table on a terminal, in order in a log."""
        self.console.print(message, markup=False)
        self.last_print = self.clock()

    def table(self) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("stage", "row", "state", "epoch", "batch", "img/s", "eta", "result"):
            table.add_column(column, justify="right" if column in ("epoch", "batch", "img/s", "eta") else "left")
        with self.lock:
            entries = list(self.entries)
        for e in entries:
            if e.state == "running":
                epoch, where, rate, eta = progress_text(read_status(e.out))
                table.add_row(STAGE_LABELS.get(e.stage, e.stage), e.row, "running", epoch, where, rate, eta,
                              f"{duration(self.clock() - e.started)} so far")
            else:
                style = {"failed": "red", "done": "green"}.get(e.state, "")
                took = f" in {duration(e.seconds)}" if e.state == "done" else ""
                table.add_row(STAGE_LABELS.get(e.stage, e.stage), e.row, f"[{style}]{e.state}[/]" if style else e.state,
                              "", "", "", "", e.result + took)
        return table

    def lines(self) -> None:
        """The log path: a line when a run enters a new epoch or its evaluation, a heartbeat line when quiet."""
        quiet = self.clock() - self.last_print >= self.heartbeat
        with self.lock:
            running = [e for e in self.entries if e.state == "running"]
        for e in running:
            status = read_status(e.out)
            if not status:
                continue
            key = (status.get("epoch"), status.get("phase") == "evaluate")
            if status.get("phase") == "done":  # its "done in" line follows when the process exits
                continue
            if key not in e.printed or quiet:
                e.printed.add(key)
                epoch, where, rate, eta = progress_text(status)
                loss = status.get("loss")
                self.say(f"{self.name(e)}: epoch {epoch}, "
                         + ("evaluating" if where == "evaluating" else f"batch {where}")
                         + (f", loss {loss:.4f}" if isinstance(loss, (int, float)) else "")
                         + (f", {rate} img/s" if rate != "-" else "") + (f", eta {eta}" if eta != "-" else ""))

    def refresh(self) -> None:
        """Called by the waiting loop: the terminal view redraws itself; the log path prints what changed."""
        if not self.terminal:
            self.lines()

    def __enter__(self):
        if self.terminal:
            # get_renderable: each redraw reads the runs' progress.json afresh
            self.live = Live(console=self.console, get_renderable=self.table, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.refresh()
            self.live.__exit__(*exc)
            self.live = None
