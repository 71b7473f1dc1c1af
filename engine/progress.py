"""A rich progress bar (loss, lr, images/s, ETA) on rank 0, and plain one-line epoch reports for logs."""
from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False, soft_wrap=True)  # a message stays one line, whatever the width


class Bar:
    def __init__(self, total: int, description: str, enabled: bool = True):
        self.enabled = enabled and sys.stderr.isatty()
        self.progress = None
        if self.enabled:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=console, transient=True)
            self.task = self.progress.add_task(description, total=total, info="")
            self.progress.start()

    def update(self, advance: int = 1, **fields) -> None:
        if self.progress is not None:
            info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            self.progress.update(self.task, advance=advance, info=info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


_quiet = 0


def report(message: str, enabled: bool = True) -> None:
    if enabled and not _quiet:
        console.print(message)


@contextlib.contextmanager
def quiet():
    """No reports inside: for work done only to compare (a resume's options with its run), whose notes would mislead."""
    global _quiet
    _quiet += 1
    try:
        yield
    finally:
        _quiet -= 1
