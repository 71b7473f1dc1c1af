"""What the benchmark scripts share: medians of interleaved rounds, bot's loop against a bare loop, the `--json FILE`
results file ({measurement: {"baseline", "bot", "ratio", "unit", ...}}), and, run as a script, the performance
table of docs/performance.md rendered from such files:

    python benchmarks/results.py                     # the committed results/*.json into docs/performance.md
    python benchmarks/results.py --json runs/gpu_check.json [--into FILE]   # print other results (or write them)

Rerun the first after committing a new results file; tests/test_docs.py fails while the page's table differs.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="FILE", help="also write the measurements to FILE as JSON")


def interleaved(baseline: Callable[[], float], bot: Callable[[], float], rounds: int) -> tuple[float, float]:
    """Medians of `rounds` alternating calls of each (a noisy, shared machine drifts: alternation hits both alike)."""
    a, b = [], []
    for _ in range(rounds):
        a.append(baseline())
        b.append(bot())
    return statistics.median(a), statistics.median(b)


def entry(baseline: float, bot: float, unit: str, baseline_is: str, rounds: int, **detail) -> dict:
    """One measurement; `unit` is a rate (higher is better) so that ratio > 1 always means bot is faster."""
    return {"baseline": baseline, "bot": bot, "ratio": bot / baseline if baseline > 0 else float("nan"), "unit": unit,
            "baseline_is": baseline_is, "rounds": rounds, **detail}


def cpu_model() -> str:
    """The CPU's model name as lscpu shows it (/proc/cpuinfo), or the platform's guess elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPUs ({cpu_model()}, {torch.get_num_threads()} torch threads), {dev}, " \
           f"torch {torch.__version__}, Python {platform.python_version()}"


def write_json(path: str | None, measurements: dict) -> None:
    """Write {measurement: entry} with the command, date and machine added to each entry; atomic (tmp + rename)."""
    if not path:
        return
    stamp = {"command": "python " + " ".join(sys.argv), "date": datetime.date.today().isoformat(), "machine": machine()}
    out = {name: {**e, **stamp} if "ratio" in e else e for name, e in measurements.items()}
    from bot.engine.rundir import atomic_write_text
    atomic_write_text(Path(path), json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


def print_table(measurements: dict) -> None:
    print(f"{'measurement':60s} {'baseline':>10s} {'bot':>10s} {'ratio':>7s}  unit")
    for name, e in measurements.items():
        print(f"{name:60s} {e['baseline']:10.2f} {e['bot']:10.2f} {e['ratio']:7.3f}  {e['unit']}")


class _Once:
    """A 'sampler' for fit: nothing to shuffle, the loader already is the batch list."""

    def set_epoch(self, epoch, skip=0):
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_rate(step: Callable[[], None], steps: int, images_per_step: int, device: torch.device) -> float:
    """Images/s of `steps` calls of a bare training step (forward, loss, backward, optimiser step)."""
    _sync(device)
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * images_per_step / (time.perf_counter() - tic)


def fit_rate(model, optimizer, precision, train_step: Callable, batch, steps: int, images_per_step: int,
             device: torch.device, clip_grad: float = 0.0, loader=None, sampler=None, warmup: int = 0) -> float:
    """Images/s of engine.loop.fit (LR per batch, loss scaling, non-finite check, progress, logging) driving
    `train_step`, as the stages use it: on the same `batch` `steps` times, or on `loader` (with its `sampler`).

    With `warmup` > 0 the clock starts after that many steps (synchronised), so one-off costs (cudnn autotuning,
    torch.compile, worker start-up, filling the prefetch queue) stay out of the rate.
    """
    from bot.engine.distributed import DistContext
    from bot.engine.loop import fit
    from bot.engine.rundir import RunDir
    from bot.engine.schedules import Schedule

    total = steps if loader is None else len(loader)
    clock = {}

    def on_step(pos):
        if pos.step == warmup:
            _sync(device)
            clock["start"] = time.perf_counter()

    schedule = Schedule(lr=0.01, total_steps=total, warmup_steps=total // 4, kind="cosine")
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(model=model, optimizer=optimizer, precision=precision, schedule=schedule,
                     loader=[batch] * steps if loader is None else loader, sampler=sampler or _Once(),
                     train_step=train_step, evaluate=lambda: {}, run=RunDir(tmp, enabled=False),
                     ctx=DistContext(device=device), epochs=1, batch_size=images_per_step, log_every=20,
                     clip_grad=clip_grad, on_step=on_step if warmup else None)
    _sync(device)
    if not warmup:
        return result["images_per_second"]
    if total <= warmup:
        raise ValueError(f"{total} steps leave none to time after {warmup} warm-up steps")
    return (total - warmup) * images_per_step / (time.perf_counter() - clock["start"])


def render(files: list[str]) -> str:
    """A Markdown table of every measurement in `files`, each with the command that made it."""
    lines = ["| measurement | baseline | bot | ratio | unit | baseline is | command, date, machine |",
             "|---|---:|---:|---:|---|---|---|"]
    for f in files:
        for name, e in json.loads(Path(f).read_text()).items():
            if not isinstance(e, dict) or "ratio" not in e:  # e.g. gpu_check's pass/fail checks
                continue
            lines.append(f"| {name} | {e['baseline']:.4g} | {e['bot']:.4g} | **{e['ratio']:.2f}** | {e['unit']} | "
                         f"{e.get('baseline_is', '')} | `{e.get('command', '')}`, {e.get('date', '')}, "
                         f"{e.get('machine', '')} |")
    return "\n".join(lines)


START, END = "<!-- performance table: python benchmarks/results.py -->", "<!-- end of performance table -->"
REPO = Path(__file__).resolve().parents[1]
# The page whose table the committed results render into, and those results, in the table's order.
PERFORMANCE_PAGE = REPO / "docs" / "performance.md"
COMMITTED_RESULTS = [REPO / "benchmarks" / "results" / f"{name}.json" for name in ("pretrain", "segment", "detect", "bootstrap")]


def table_in(page: Path) -> str:
    """The table between `page`'s two marker lines (both must be there, in order)."""
    text = page.read_text()
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise SystemExit(f"error: {page}: needs the marker lines {START!r} and {END!r}, in that order")
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n")


def replace_table(page: Path, table: str) -> None:
    """Put `table` between the page's two marker lines (both must be there, in order)."""
    table_in(page)  # checks the markers
    text = page.read_text()
    head, rest = text.split(START, 1)
    page.write_text(head + START + "\n" + table + "\n" + END + rest.split(END, 1)[1])
    print(f"wrote the table into {page}")


def main() -> None:
    p = argparse.ArgumentParser(description="Render the performance table (Markdown) from benchmark JSON files. "
                                            "Without --json: the committed results into docs/performance.md.")
    p.add_argument("--json", metavar="FILE", action="append", help="a results file (repeatable; default: the "
                   "committed benchmarks/results/{pretrain,segment,detect,bootstrap}.json)")
    p.add_argument("--into", "--readme", dest="into", type=Path, help="write the table into this file, between "
                   "its marker lines (default without --json: docs/performance.md; with --json: print it)")
    args = p.parse_args()
    files = args.json or [str(f) for f in COMMITTED_RESULTS]
    into = args.into or (None if args.json else PERFORMANCE_PAGE)
    table = render(files)
    if into:
        replace_table(into, table)
    else:
        print(table)


if __name__ == "__main__":
    main()
