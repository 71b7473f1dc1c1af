"""Start-up results kept in the run directory, so a restart skips the pass over the data that made them.

A result (the label statistics of a mask folder, "these validation images decode") holds for as long as the files
it was computed from are unchanged. Its key is a sha256 over what the caller says the result depends on (class
count, ignore index, ...) and every file's path, size and modification time (ns): an added, removed, rewritten
or touched file changes the key and the pass runs again. The file is JSON, written atomically by rank 0 and read
by rank 0, which hands the result to the other ranks (the run directory may be on rank 0's node only).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .distributed import DistContext, broadcast_object
from .rundir import atomic_write_text

FORMAT = 1


def files_key(paths, depends_on) -> str:
    """sha256 of `depends_on` (JSON-able) and each path with its size and mtime; a missing file keys as missing."""
    h = hashlib.sha256(json.dumps([FORMAT, depends_on], sort_keys=True).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def load(cache_file: Path | None, key: str):
    """The payload stored under `key`, or None (no file, another key, or unreadable: then the pass runs)."""
    if cache_file is None:
        return None
    try:
        stored = json.loads(Path(cache_file).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("format") != FORMAT or stored.get("key") != key:
        return None
    return stored.get("payload")


def store(cache_file: Path | None, key: str, payload) -> None:
    if cache_file is not None:
        atomic_write_text(Path(cache_file), json.dumps({"format": FORMAT, "key": key, "payload": payload}) + "\n")


def cached_pass(cache_file: Path | None, paths, depends_on, compute, ctx: DistContext | None = None):
    """(payload, from_cache): rank 0 looks the key up in `cache_file`; on a miss every rank runs `compute()` (a
    collective: each rank does its share) and rank 0 stores the payload it returns. Every rank gets the same."""
    ctx = ctx or DistContext()
    hit = None
    key = ""
    if ctx.is_main and cache_file is not None:
        key = files_key(paths, depends_on)
        hit = load(cache_file, key)
    hit = broadcast_object(hit, ctx)
    if hit is not None:
        return hit, True
    payload = compute()
    if ctx.is_main and cache_file is not None:
        store(cache_file, key, payload)
    return payload, False
