"""Starting bot in another process: `--nproc N` (torchrun) and the stage runs of `bot demo` / `bot reproduce`.

A child is started as `python -P -m bot.cli` (Python >= 3.11; on 3.10 an equivalent `-c` that drops the working
directory from sys.path): plain `python -m bot.cli` would put the working directory first on sys.path, so a user's
own `bot/` folder there would run instead of bot's.

No orphans: a child dies with the process that started it, even when that one is SIGKILLed (which runs no handler
and leaves children running; torchrun even starts its workers in sessions of their own, so a signal to the
launcher's process group misses them). The launcher names itself in the child's environment (`child_env`) and the
child, first thing in `bot.cli`, asks Linux for a signal when its parent dies (PR_SET_PDEATHSIG, `die_with_parent`):
SIGTERM for the stage runs of `bot demo` / `bot reproduce` (a stage saves its resume state and stops, an `--nproc`
launcher stops its workers the same way), SIGKILL for torchrun's workers (their agent only dies without stopping
them when it was killed outright).
"""
from __future__ import annotations

import os
import signal
import sys

ENTRY = "bot.cli"
PARENT_ENV = "BOT_PARENT_PID"            # the launcher's pid, as the child should see it in getppid()
DEATH_SIGNAL_ENV = "BOT_PARENT_DEATH_SIGNAL"
PR_SET_PDEATHSIG = 1                      # <linux/prctl.h>


def child_env(sig: int = signal.SIGTERM) -> dict[str, str]:
    """Environment entries that make a bot child started by this process die (by `sig`) when this process dies."""
    return {PARENT_ENV: str(os.getpid()), DEATH_SIGNAL_ENV: str(int(sig))}


def die_with_parent(environ=os.environ) -> int | None:
    """In a child: have the kernel send the signal `child_env` asked for when the parent dies; a torchrun worker
    started by any torchrun gets SIGKILL. Returns the signal armed (None: nothing asked for, or not Linux).

    The parent may have died before this ran (between fork and here, a torch import can take seconds): then the
    child is already an orphan, its parent pid no longer the launcher's, and it signals itself now.
    """
    parent = environ.pop(PARENT_ENV, None)  # popped: a grandchild must not compare against this pid
    sig = environ.pop(DEATH_SIGNAL_ENV, None)
    if parent is None and "TORCHELASTIC_RUN_ID" in environ:  # a worker of a torchrun the user started
        sig = str(int(signal.SIGKILL))
    if sig is None or not parent_death_signal(int(sig)):
        return None
    if parent is not None and os.getppid() != int(parent):
        os.kill(os.getpid(), int(sig))
    return int(sig)


def parent_death_signal(sig: int) -> bool:
    """Ask Linux to send `sig` to this process when its parent (the thread that forked it) ends; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


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
    os.environ.update(child_env(signal.SIGKILL))  # the workers are this process's children: they die with it
    if "OMP_NUM_THREADS" not in os.environ:  # else torchrun sets 1 for every worker (engine/threads.py)
        from .threads import cores
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores() // nproc))
    torchrun(["--standalone", f"--nproc_per_node={nproc}", "--no-python", *bot_argv(), *cleaned])
    return 0
