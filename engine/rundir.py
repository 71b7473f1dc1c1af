"""The run directory every stage writes: config.yaml, metrics.jsonl (and TensorBoard events), summary.json (last,
atomically).

Only rank 0 holds a writable RunDir; other ranks get one with `enabled=False` whose writes do nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

from .errors import BotError

SUMMARY_KEYS = ("task", "metrics", "backbone", "dataset", "epochs", "wall_seconds", "images_per_second", "versions")


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


FILE_MODE = 0o666 & ~_umask()  # what open() would give: teammates on shared storage can read a run


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write to a temporary file beside `path`, then rename: a reader sees the old file or the whole new one.
    `fsync` makes the new file survive a machine crash too (results, checkpoints); a status file can skip it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), fsync)


def writable_folder_problem(folder: Path) -> str | None:
    """Why `folder` cannot take files (it is a file, or cannot be made or written into), or None when it can:
    made if missing, then probed with a temporary file."""
    if folder.exists() and not folder.is_dir():
        return "is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return f"is not writable ({e.strerror or type(e).__name__})"
    return None


def check_output_file(path: str | Path | None, flag: str) -> None:
    """Before any work: `path` (an output file) can be written: not a folder, its folder creatable and writable."""
    if not path:
        return
    path = Path(path)
    if path.is_dir():
        raise BotError(f"{flag} {path}: is a folder; give a file name")
    problem = writable_folder_problem(path.parent)
    if problem:
        raise BotError(f"{flag} {path}: {path.parent} {problem}")


def check_output_folder(path: str | Path | None, flag: str) -> None:
    """Before any work: `path` (an output folder) exists or can be made, and can be written into."""
    if path:
        problem = writable_folder_problem(Path(path))
        if problem:
            raise BotError(f"{flag} {path}: {problem}")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def versions() -> dict:
    import timm
    import torch
    import torchvision
    from importlib.metadata import PackageNotFoundError, version

    try:
        bot_version = version("bot")
    except PackageNotFoundError:
        bot_version = "dev"
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__, "bot": bot_version}


def _record_step(line: str) -> float:
    """A metrics line's step; a partial line (a kill mid-write) or a foreign one counts as past every step."""
    try:
        record = json.loads(line)
        return float(record.get("step", 0)) if isinstance(record, dict) else float("inf")
    except ValueError:
        return float("inf")


class RunDir:
    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.started = time.time()
        self.tensorboard = None  # a SummaryWriter once open_tensorboard found one wanted (engine/tensorboard.py)
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)

    config_file = property(lambda self: self.path / "config.yaml")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    summary_file = property(lambda self: self.path / "summary.json")
    checkpoint_file = property(lambda self: self.path / "last.ckpt")
    weights_file = property(lambda self: self.path / "model.safetensors")

    def write_config(self, config: dict) -> None:
        if self.enabled:
            atomic_write_text(self.config_file, yaml.safe_dump(config, sort_keys=False))

    def log(self, record: dict) -> None:
        if self.enabled:
            with open(self.metrics_file, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.tensorboard is not None:
                from .tensorboard import write_record
                write_record(self.tensorboard, record)

    def open_tensorboard(self, setting, purge_step: int = 0) -> None:
        """Mirror every later `log` record into TensorBoard event files here (train.tensorboard: auto|true|false);
        a resumed run purges the events a killed process logged after its checkpoint's step."""
        if self.enabled and self.tensorboard is None:
            from .tensorboard import open_writer
            self.tensorboard = open_writer(self.path, setting, purge_step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def truncate_log(self, step: int) -> None:
        """On resume, drop records logged after the checkpoint's step, so the log reads as one uninterrupted run."""
        if not (self.enabled and self.metrics_file.exists()):
            return
        kept = [ln for ln in self.metrics_file.read_text().splitlines() if _record_step(ln) <= step]
        atomic_write_text(self.metrics_file, "".join(ln + "\n" for ln in kept))

    def write_summary(self, summary: dict) -> None:
        missing = [k for k in SUMMARY_KEYS if k not in summary]
        if missing:
            raise ValueError(f"summary lacks keys {missing}")
        if self.enabled:
            atomic_write_text(self.summary_file, json.dumps(summary, indent=2) + "\n")

    def finished(self) -> bool:
        return self.summary_file.exists()
