"""Find run directories under the paths a user gives and read what each one says about itself.

A run directory is any folder holding one of the files every stage writes (summary.json, config.yaml,
metrics.jsonl, last.ckpt). It is finished when summary.json is there (written last, atomically); without it the
run is listed as unfinished. A summary that cannot be read is named in a warning and skipped, never fatal.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bot.engine.errors import BotError, first_line

MARKERS = ("summary.json", "config.yaml", "metrics.jsonl", "last.ckpt")
TASKS = ("pretrain", "classify", "detect", "segment")   # classify: `bot evaluate-cls` of any checkpoint


@dataclass
class Run:
    path: Path
    task: str
    metrics: dict
    backbone: dict
    summary: dict
    config: dict | None = None

    @property
    def sha256(self) -> str:
        return str(self.backbone.get("sha256") or "")

    @property
    def recipe(self) -> str:
        return str(self.backbone.get("recipe") or "")

    @property
    def arch(self) -> str:
        return str(self.backbone.get("arch") or "")


@dataclass
class Unfinished:
    path: Path
    last_epoch: int | None = None   # from metrics.jsonl, when it logged one
    has_checkpoint: bool = False


@dataclass
class Discovery:
    runs: list[Run] = field(default_factory=list)
    unfinished: list[Unfinished] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def find_run_dirs(root: Path) -> list[Path]:
    """`root` itself and every folder below it that holds a run-dir marker file, in a stable (sorted) order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if any(m in filenames for m in MARKERS):
            found.append(Path(dirpath))
    return found


def read_summary(path: Path) -> dict:
    """summary.json as a dict with the keys compare needs, or ValueError saying what is wrong with it."""
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    if data.get("task") not in TASKS:
        raise ValueError(f"task {data.get('task')!r} is not one of {', '.join(TASKS)}")
    if not isinstance(data.get("metrics"), dict):
        raise ValueError("no 'metrics' object")
    if not isinstance(data.get("backbone", {}), dict):
        raise ValueError("'backbone' is not an object")
    for key, value in data["metrics"].items():
        if value is not None and not isinstance(value, (int, float)):
            raise ValueError(f"metric {key!r} is not a number")
    return data


def last_epoch(metrics_file: Path) -> int | None:
    epoch = None
    try:
        for line in metrics_file.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("epoch"), int):
                epoch = record["epoch"]
    except (OSError, UnicodeDecodeError):
        return None
    return epoch


def read_run(path: Path, out: Discovery) -> None:
    summary_file = path / "summary.json"
    if not summary_file.exists():
        out.unfinished.append(Unfinished(path, last_epoch(path / "metrics.jsonl"), (path / "last.ckpt").exists()))
        return
    try:
        summary = read_summary(summary_file)
    except (OSError, ValueError) as e:
        out.warnings.append(f"{summary_file}: {e}; skipped")
        return
    config = None
    if (path / "config.yaml").exists():
        try:
            config = yaml.safe_load((path / "config.yaml").read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            out.warnings.append(f"{path / 'config.yaml'}: unreadable ({first_line(e)}); using summary.json only")
    backbone = dict(summary.get("backbone") or {})
    if summary["task"] == "pretrain" and not backbone.get("sha256") and (path / "model.safetensors").exists():
        from bot.engine.rundir import sha256_file
        backbone["sha256"] = sha256_file(path / "model.safetensors")
    out.runs.append(Run(path, summary["task"], dict(summary["metrics"]), backbone, summary, config))


def unique_names(paths: list[Path]) -> list[str]:
    """The shortest trailing part of each path that no other path shares: `a/r50d` and `b/r50d` stay apart."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clash = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clash and depth[i] < len(parts[i])]
        if not grow:
            return names
        for i in grow:
            depth[i] += 1


def discover(paths: list[str | Path]) -> Discovery:
    """Every run directory under `paths` (in argument order, each folder once). A missing path is a BotError."""
    out = Discovery()
    seen = set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise BotError(f"{p}: no such file or directory")
        if p.is_file():
            # A summary.json (or any file in a run dir) stands for its folder.
            p = p.parent
        for run_dir in find_run_dirs(p):
            key = os.path.realpath(run_dir)
            if key not in seen:
                seen.add(key)
                read_run(run_dir, out)
    return out
