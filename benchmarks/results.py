"""What the benchmark scripts share: medians of interleaved rounds, bot's loop against a bare loop, the `--json FILE`
results file ({measurement: {"baseline", "bot", "ratio", "unit", ...}}), and, run as a script, the performance
table of docs/performance.md rendered from such files:

    python benchmarks/results.py                     # the committed results/*.json into docs/performance.md
    python benchmarks/results.py --json runs/gpu_check.json [--into FILE]   # print other results (or write them)
    python benchmarks/results.py --gpu benchmarks/results/gpu.json --into docs/performance.md   # the GPU table

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


# benchmarks/gpu_check.py's table (`--gpu FILE`), on the same page
GPU_START, GPU_END = "<!-- gpu table: python benchmarks/results.py --gpu -->", "<!-- end of gpu table -->"


def table_in(page: Path, start: str = START, end: str = END) -> str:
    """The table between `page`'s two marker lines (both must be there, in order)."""
    text = page.read_text()
    if start not in text or end not in text or text.index(start) > text.index(end):
        raise SystemExit(f"error: {page}: needs the marker lines {start!r} and {end!r}, in that order")
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def replace_table(page: Path, table: str, start: str = START, end: str = END) -> None:
    """Put `table` between the page's two marker lines (both must be there, in order)."""
    table_in(page, start, end)  # checks the markers
    text = page.read_text()
    head, rest = text.split(start, 1)
    page.write_text(head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1])
    print(f"wrote the table into {page}")


def _pass(ok) -> str:
    return "pass" if ok is True else "**FAIL**" if ok is False else "-"


def render_gpu(path: str) -> str:
    """benchmarks/gpu_check.py's JSON as one Markdown table: every check with its numbers and pass/fail, then the
    (f) ratios as rows of the performance table."""
    data = json.loads(Path(path).read_text())
    meta = data.get("meta", {})
    rows = [f"`{meta.get('machine', '?')}`, {'smoke (CPU)' if meta.get('smoke') else 'GPU'}, "
            f"{meta.get('seconds', {}).get('total', '?')} s in all", "",
            "| section | check | result | |", "|---|---|---|---|"]
    c = data.get("correctness", {})
    for stage, by_precision in c.get("stages", {}).items():
        for p, r in by_precision.items():
            if isinstance(r, dict):
                rows.append(f"| (a) correctness vs CPU fp32 | {stage} {p} | loss {r['loss']:.1e}, grad norm "
                            f"{r['grad_norm']:.1e}, weight change {r['weight_change']:.1e} (tolerance "
                            f"{r['tolerance']['loss']:g} / {r['tolerance']['grad_norm']:g} / "
                            f"{r['tolerance']['weight_change']:g}; {r['skipped_steps']} skipped) | {_pass(r['ok'])} |")
    if "device_pipeline" in c:
        r = c["device_pipeline"]
        rows.append(f"| (a) device pipeline | {r['device']} vs CPU | max diff {r['max_abs_diff']:.1e} (tolerance "
                    f"{r['tolerance']:g}) | {_pass(r['ok'])} |")
    for name, r in c.get("dali", {}).items():
        if isinstance(r, dict):
            rows.append(f"| (a) DALI ({r['backend']}) vs default loader | {name} | mean {r['mean_levels']:.2f} / max "
                        f"{r['max_levels']:.2f} levels (bounds {r['bounds'][0]:g} / {r['bounds'][1]:g}), same draws "
                        f"{r['same_draws']} | {_pass(r['ok'])} |")
        else:
            rows.append(f"| (a) DALI | - | {r} | - |")
    for stage, r in data.get("overflow", {}).items():
        rows.append(f"| (b) inf loss on step 0, fp16 | {stage} {r['optimizer_options']} | finite {r['finite']}, "
                    f"max abs weight {r['max_abs_weight']:.3g}, vs foreach {r['rel_diff_to_foreach']:.1e} | {_pass(r['ok'])} |")
    audit = data.get("sync_audit", {})
    for stage, r in audit.items():
        if isinstance(r, dict):
            rows.append(f"| (c) host syncs | {stage} | {r['train']['syncs']} in {r['train']['steps']} steps inside fit, "
                        f"{r['evaluation']['syncs']} in one evaluation | {_pass(r['run_ok'])} |")
    for name, r in data.get("evaluation", {}).items():
        rows.append(f"| (d) evaluation, 30 variable-size images | {name} | {r['seconds']:.2f} s, "
                    f"{r['images_per_second']:.2f} img/s, peak memory {r['peak_memory_gib']} GiB | - |")
    for name, r in data.get("loaders", {}).items():
        rows.append(f"| (e) loader alone, {r['batches']} batches of {r['batch']} | {name} ({r['workers']} workers) | "
                    f"{r['images_per_second']:.1f} img/s | - |")
    compile_ = data.get("throughput", {}).get("compile")
    if compile_:
        rows.append(f"| (f) torch.compile | pretrain ({compile_['backend']}) | {compile_['compile_seconds']:.1f} s "
                    f"to compile | - |")
    for stage, r in data.get("ranks", {}).items():
        if isinstance(r, dict):
            rows.append(f"| (g) 2 ranks over gloo, SIGINT + resume | {stage} | stopped after step "
                        f"{r['steps_before_stop']}, resumed to {r['steps_logged']} | {_pass(r['ok'])} |")
    for key in ("failed", "skipped"):
        if meta.get(key):
            rows.append(f"| {key} | {len(meta[key])} | {', '.join(meta[key])[:300]} | - |")
    return "\n".join(rows) + "\n\n" + render([path])




def main() -> None:
    p = argparse.ArgumentParser(description="Render the performance table (Markdown) from benchmark JSON files. "
                                            "Without --json: the committed results into docs/performance.md.")
    p.add_argument("--json", metavar="FILE", action="append", help="a results file (repeatable; default: the "
                   "committed benchmarks/results/{pretrain,segment,detect,bootstrap}.json)")
    p.add_argument("--into", "--readme", dest="into", type=Path, help="write the table into this file, between "
                   "its marker lines (default without --json: docs/performance.md; with --json: print it)")
    p.add_argument("--gpu", metavar="FILE", help="benchmarks/gpu_check.py's results file: render the GPU table "
                   "instead (default: none), with --into between that page's GPU table markers")
    args = p.parse_args()
    if args.gpu:
        table = render_gpu(args.gpu)
        if args.into:
            replace_table(args.into, table, GPU_START, GPU_END)
        else:
            print(table)
        return
    files = args.json or [str(f) for f in COMMITTED_RESULTS]
    into = args.into or (None if args.json else PERFORMANCE_PAGE)
    table = render(files)
    if into:
        replace_table(into, table)
    else:
        print(table)


if __name__ == "__main__":
    main()
