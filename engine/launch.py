"""Starting bot in another process: `--nproc N` (torchrun) and the stage runs of `bot demo` / `bot reproduce`.

A child is started as `python -P -m bot.cli` (Python >= 3.11; on 3.10 an equivalent `-c` that drops the working
directory from sys.path): plain `python -m bot.cli` would put the working directory first on sys.path, so a user's
own `bot/` folder there would run instead of bot's.

It also keeps the command line as the user typed it, so that a message suggesting a command (continue an interrupted
run, go on at a smaller --lr) prints one that works when pasted: `restart_command` is that line with `--resume auto`.

No orphans: a child dies with the process that started it, even when that one is SIGKILLed (which runs no handler
and leaves children running; torchrun even starts its workers in sessions of their own, so a signal to the
launcher's process group misses them). The launcher names itself in the child's environment (`child_env`) and the
child, first thing in `bot.cli`, asks Linux for a signal when its parent dies (PR_SET_PDEATHSIG, `die_with_parent`):
SIGTERM for the stage runs of `bot demo` / `bot reproduce` (a stage saves its resume state and stops, an `--nproc`
launcher stops its workers the same way), SIGKILL for torchrun's workers (their agent only dies without stopping
them when it was killed outright).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import sys

ENTRY = "bot.cli"
PARENT_ENV = "BOT_PARENT_PID"            # the launcher's pid, as the child should see it in getppid()
DEATH_SIGNAL_ENV = "BOT_PARENT_DEATH_SIGNAL"
PR_SET_PDEATHSIG = 1                      # <linux/prctl.h>
ARGV_ENV = "BOT_ARGV"  # the launcher's own command line (with --nproc), for the workers it starts under torchrun
_typed: list[str] | None = None


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


def remember_argv(args) -> None:
    """cli.py: the arguments after `bot`, as given (sys.argv is not them under click's test runner)."""
    global _typed
    _typed = [str(a) for a in args]


def typed_argv() -> list[str]:
    """The arguments the user gave `bot`: the launcher's under `--nproc` (a worker's own lack `--nproc N`)."""
    try:
        launcher = json.loads(os.environ.get(ARGV_ENV, "null"))
    except ValueError:
        launcher = None
    if isinstance(launcher, list):
        return [str(a) for a in launcher]
    return list(_typed) if _typed is not None else sys.argv[1:]


def drop_option(args: list[str], flag: str, values=None) -> list[str]:
    """`args` without `flag` and its value (`--flag V` or `--flag=V`); `values`: the words the flag may take as an
    optional value (None: it always takes one)."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a == flag:
            takes = i + 1 < len(args) and (values is None or args[i + 1] in values)
            i += 2 if takes else 1
            continue
        if not a.startswith(flag + "="):
            out.append(a)
        i += 1
    return out


def restart_command(**replace: str) -> str:
    """The user's command line with `--resume auto` (and each `--name value` in `replace`, e.g. lr="0.01", given
    once): pasted, it continues the run in --out, or starts it if nothing was saved."""
    args = drop_option(typed_argv(), "--resume", ("auto", "must"))
    for name, value in replace.items():
        flag = "--" + name.replace("_", "-")
        args = drop_option(args, flag) + [flag, str(value)]
    return "bot " + shlex.join([*args, "--resume", "auto"])


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
    os.environ[ARGV_ENV] = json.dumps(sys.argv[1:] if _typed is None else _typed)  # for restart_command
    os.environ.update(child_env(signal.SIGKILL))  # the workers are this process's children: they die with it
    if "OMP_NUM_THREADS" not in os.environ:  # else torchrun sets 1 for every worker (engine/threads.py)
        from .threads import cores
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores() // nproc))
    torchrun(["--standalone", f"--nproc_per_node={nproc}", "--no-python", *bot_argv(), *cleaned])
    return 0
