"""Resume state: written atomically, read back with torch.load(weights_only=True) only.

The state holds tensors, numbers, strings and lists of those, nothing that needs unpickling of code:
model and optimiser state dicts, the GradScaler's state, epoch/step counters and RNG states.
"""
from __future__ import annotations

import io
import random
from pathlib import Path

import torch

from .errors import BotError
from .rundir import atomic_write_bytes


def rng_state(generator: torch.Generator | None = None) -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


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
