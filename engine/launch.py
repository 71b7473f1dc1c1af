"""Starting bot in another process: `--nproc N` (torchrun) and the stage runs of `bot demo` / `bot reproduce`.

A child is started as `python -P -m bot.cli` (Python >= 3.11; on 3.10 an equivalent `-c` that drops the working
directory from sys.path): plain `python -m bot.cli` would put the working directory first on sys.path, so a user's
own `bot/` folder there would run instead of bot's.

It also keeps the command line as the user typed it, so that a message suggesting a command (continue an interrupted
run, go on at a smaller --lr) prints one that works when pasted: `restart_command` is that line with `--resume auto`.
"""
from __future__ import annotations

import json
import os
import shlex
import sys

ENTRY = "bot.cli"
ARGV_ENV = "BOT_ARGV"  # the launcher's own command line (with --nproc), for the workers it starts under torchrun
_typed: list[str] | None = None


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


def command_line() -> str:
    """The user's command line as typed, e.g. for `bot demo` to say how to run it again."""
    return "bot " + shlex.join(typed_argv())


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
    os.environ[ARGV_ENV] = json.dumps(sys.argv[1:] if _typed is None else _typed)
    torchrun(["--standalone", f"--nproc_per_node={nproc}", "--no-python", *bot_argv(), *cleaned])
    return 0
