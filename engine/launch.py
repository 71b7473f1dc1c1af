"""`--nproc N`: re-run this same command under torchrun with N processes on this machine."""
from __future__ import annotations

import os
import sys


def relaunch_with_torchrun(nproc: int) -> int:
    from torch.distributed.run import main as torchrun

    if "LOCAL_RANK" in os.environ:  # already under torchrun: the flag has done its job
        return 0
    args = [a for a in sys.argv[1:]]
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    torchrun(["--standalone", f"--nproc_per_node={nproc}", "-m", "cli", *cleaned])
    return 0
