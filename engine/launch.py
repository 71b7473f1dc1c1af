"""Starting bot in another process: `--nproc N` (torchrun) and the stage runs of `bot demo` / `bot reproduce`.

A child is started as `python -P -m bot.cli` (Python >= 3.11; on 3.10 an equivalent `-c` that drops the working
directory from sys.path): plain `python -m bot.cli` would put the working directory first on sys.path, so a user's
own `bot/` folder there would run instead of bot's.
"""
from __future__ import annotations

import os
import sys

ENTRY = "bot.cli"


def bot_argv() -> list[str]:
    """The command prefix that runs bot's CLI in a child process, immune to modules in the working directory."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", ENTRY]
    return [sys.executable, "-c", f"import sys; del sys.path[0]; from {ENTRY} import main; sys.exit(main())"]


def relaunch_with_torchrun(nproc: int) -> int:
    from torch.distributed.run import main as torchrun

    if "LOCAL_RANK" in os.environ:  # already under torchrun: the flag has done its job
        return 0
    cleaned, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    torchrun(["--standalone", f"--nproc_per_node={nproc}", "--no-python", *bot_argv(), *cleaned])
    return 0
