"""The run directory must be one folder that every rank sees (multi-node runs): checked before any work.

Only rank 0 writes the run directory, but every rank reads from it (the resume state, the cached start-up results
of engine/check_cache.py) and assumes rank 0's files are there. With `--out` on node-local storage, each node has a
folder of its own: rank 0's writes land on whichever node c10d made rank 0, and the other nodes would resume from
nothing or wait for files that never appear. So, right after the process group is up, rank 0 writes a token file
with a random value, every rank reads it after a barrier, and if any rank cannot, every rank stops with one line
naming the folder, the ranks and their hosts.
"""
from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from . import distributed as dist
from .errors import BotError

TOKEN = ".shared-check"


def check_shared(out: Path, ctx: dist.DistContext) -> None:
    if not ctx.distributed:
        return
    token = Path(out) / TOKEN
    value = secrets.token_hex(16) if ctx.is_main else None
    if ctx.is_main:
        token.write_text(value)
    value = dist.broadcast_object(value, ctx)  # also the barrier: rank 0 wrote the file before it sent this
    try:
        seen = token.read_text() == value
    except OSError:
        seen = False
    views = dist.all_gather_object((seen, socket.gethostname()), ctx)
    if ctx.is_main:
        try:
            token.unlink()
        except OSError:
            pass
    blind = [f"rank {r} on {host}" for r, (ok, host) in enumerate(views) if not ok]
    if blind:
        raise BotError(f"{os.path.abspath(out)}: the run directory must be on storage every node sees (a shared "
                       f"file system): {', '.join(blind)} cannot see the file rank 0 on {views[0][1]} wrote there; "
                       f"give --out a path on shared storage")
