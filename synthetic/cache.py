"""Where generated data sets live, and how they get there without half-written folders.

A data set is built in a temporary folder beside its final place and renamed into it when complete, so a crash
leaves nothing that looks finished, and two processes (torchrun ranks) building it at once both end with the
same folder. The key hashes the generation parameters, so changing them builds a new set.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

GENERATOR_VERSION = 2  # bump when the world's drawing changes, so stale caches are not reused


def cache_root() -> Path:
    return Path(os.environ.get("BOT_CACHE", Path.home() / ".cache" / "bot")) / "synthetic"


def cached(name: str, params: dict, build: Callable[[Path], None]) -> Path:
    key = hashlib.sha256(json.dumps({"v": GENERATOR_VERSION, **params}, sort_keys=True).encode()).hexdigest()[:12]
    final = cache_root() / f"{name}-{key}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}-{key}."))
    try:
        build(tmp)
        (tmp / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True))
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
