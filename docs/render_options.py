"""Render each command's "Options" table into its docs page, from click's own command objects.

    python docs/render_options.py            # rewrite the tables in docs/*.md
    python docs/render_options.py --check    # exit 1 (and name the pages) where a table is not current

Rerun it after any change to an option of cli.py (a name, type, default or help text): tests/test_docs.py compares
every table with what this script renders and fails until the pages are re-rendered. Each command's page is in
COMMAND_PAGES; its table goes between the lines

    <!-- options of bot COMMAND: python docs/render_options.py -->
    <!-- end of options -->

which must be in that page. A table lists every parameter of the command as click sees it: the option's names,
its type (a choice lists its values, a range its bounds), its default as click holds it ("-" where the value comes
from the stage's configuration or another option; the help text says which), and its help text.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import click

DOCS = Path(__file__).resolve().parent

# Every command of `bot` and the page that documents it (a page may document several).
COMMAND_PAGES = {
    "pretrain": "pretrain.md",
    "recipes": "pretrain.md",
    "inspect": "checkpoints.md",
    "evaluate-cls": "checkpoints.md",
    "finetune-detect": "detection.md",
    "evaluate-detect": "detection.md",
    "finetune-seg": "segmentation.md",
    "evaluate-seg": "segmentation.md",
    "compare": "compare.md",
    "plot": "compare.md",
    "demo": "compare.md",
    "reproduce": "reproduce.md",
}

END = "<!-- end of options -->"


def start_marker(command: str) -> str:
    return f"<!-- options of bot {command}: python docs/render_options.py -->"


def bot_commands() -> dict[str, click.Command]:
    from bot.cli import main
    return dict(main.commands)


def type_of(param: click.Parameter) -> str:
    """The parameter's type in words: what a user may write."""
    t = param.type
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    if isinstance(t, click.Choice):
        words = " \\| ".join(f"`{c}`" for c in t.choices)
    elif isinstance(t, (click.IntRange, click.FloatRange)):
        kind = "integer" if isinstance(t, click.IntRange) else "number"
        bounds = []
        if t.min is not None:
            bounds.append(f"{'>' if t.min_open else '>='} {t.min}")
        if t.max is not None:
            bounds.append(f"{'<' if t.max_open else '<='} {t.max}")
        words = f"{kind} {' and '.join(bounds)}".strip()
    elif isinstance(t, click.Path):
        words = "path"
    elif t is click.INT:
        words = "integer"
    elif t is click.FLOAT:
        words = "number"
    elif t is click.BOOL:
        words = "true \\| false"
    else:
        words = param.metavar if getattr(param, "metavar", None) else "text"
    if param.multiple or (isinstance(param, click.Argument) and param.nargs == -1):
        words += ", repeatable"
    return words


def default_of(param: click.Parameter) -> str:
    if isinstance(param, click.Argument):
        return "-" if not param.required else "required"
    if getattr(param, "required", False):
        return "required"
    d = param.to_info_dict().get("default")  # click's own reading of the default (None where there is none)
    if isinstance(param, click.Option) and param.is_flag and not param.secondary_opts:
        return "off" if not d else "on"
    if d is None or d == () or d == [] or d == "":
        return "-"
    if isinstance(param, click.Option) and param.secondary_opts and isinstance(d, bool):
        return param.opts[0] if d else param.secondary_opts[0]
    return f"`{d}`"


def names_of(param: click.Parameter) -> str:
    if isinstance(param, click.Argument):
        return f"`{param.human_readable_name}` (argument)"
    names = " / ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    return names


def cell(text: str) -> str:
    return re.sub(r"\s+", " ", text).replace("|", "\\|").strip()


def options_table(command: click.Command) -> str:
    """The Markdown table of one command's parameters, in click's order (the order of `--help`)."""
    ctx = click.Context(command, info_name=command.name)
    rows = ["| option | type | default | what it does |", "|---|---|---|---|"]
    help_option = command.get_help_option(ctx)
    for param in command.get_params(ctx):
        if help_option is not None and param.name == help_option.name:
            continue
        if isinstance(param, click.Argument):  # click's arguments carry no help: the command's description says
            help_text = (command.help or "").split("\n\n")[0]
        else:
            help_text = param.help or ""
        rows.append(f"| {names_of(param)} | {type_of(param)} | {cell(default_of(param))} | {cell(help_text)} |")
    return "\n".join(rows)


def render_page(text: str, commands: dict[str, click.Command], page: str) -> str:
    """`text` with the table of every command whose markers it holds replaced by the current one."""
    for name, command in commands.items():
        start = start_marker(name)
        if start not in text:
            continue
        head, rest = text.split(start, 1)
        if END not in rest:
            raise SystemExit(f"error: docs/{page}: {start!r} has no {END!r} after it")
        text = head + start + "\n" + options_table(command) + "\n" + END + rest.split(END, 1)[1]
    return text


def problems(commands: dict[str, click.Command]) -> list[str]:
    """Commands without a page, pages without a command's markers, markers of commands that do not exist."""
    out = [f"bot {name}: no page in COMMAND_PAGES (docs/render_options.py)" for name in commands
           if name not in COMMAND_PAGES]
    for name, page in COMMAND_PAGES.items():
        if name not in commands:
            out.append(f"COMMAND_PAGES names bot {name}, which is not a command")
        elif start_marker(name) not in (DOCS / page).read_text():
            out.append(f"docs/{page}: no line {start_marker(name)!r} (and {END!r}) for bot {name}'s options")
    for page in sorted(DOCS.glob("*.md")):
        for name in re.findall(r"<!-- options of bot ([\w-]+):", page.read_text()):
            if COMMAND_PAGES.get(name) != page.name:
                out.append(f"docs/{page.name}: options of bot {name}, whose page is {COMMAND_PAGES.get(name)}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a table is not current")
    args = parser.parse_args()
    commands = bot_commands()
    found = problems(commands)
    if found:
        print("\n".join(f"error: {p}" for p in found), file=sys.stderr)
        return 2
    stale = []
    for page in sorted(set(COMMAND_PAGES.values())):
        path = DOCS / page
        old = path.read_text()
        new = render_page(old, commands, page)
        if new != old:
            stale.append(page)
            if not args.check:
                path.write_text(new)
    verb = "not current" if args.check else "rewrote"
    for page in stale:
        print(f"{verb}: docs/{page}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
