"""Resume state: written atomically, read back with torch.load(weights_only=True) only.

The state holds tensors, numbers, strings and lists of those, nothing that needs unpickling of code:
model and optimiser state dicts, the GradScaler's state and epoch/step counters (no RNG state: engine/loop.py
seeds every step from (seed, step, rank)).
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from .errors import BotError
from .rundir import atomic_write_bytes


def save(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BotError(f"{path}: no resume state here (was the run started with this --out?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, never unpickle it
        first = (str(e).strip().splitlines() or ["empty or truncated file"])[0][:120]
        raise BotError(f"{path}: not a readable resume state ({type(e).__name__}: {first})") from None
