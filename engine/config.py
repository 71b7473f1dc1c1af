"""Configuration as plain dicts: YAML defaults, then CLI options, then `--set key=value`, with unknown keys refused.

Every stage resolves its config this way, checks every value's type and range (engine/schema.py) before anything
is written, and writes the result to the run dir's config.yaml, which is enough to rerun (and is what --resume
reads back). `origins` records which option or `--set` gave a key, so an error can name it.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .errors import BotError, first_line


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise BotError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise BotError(f"{path}: not valid YAML ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise BotError(f"{path}: expected a mapping of keys to values")
    return data


def parse_value(text: str):
    """`--set` values are YAML scalars/lists: 0.1 -> float, true -> bool, [30,60] -> list, other -> str."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def given(options: dict, sets, key: str):
    """`key`'s value as the command line gives it (a `--set`, which wins, else an option), None if not given.

    For the stages' defaults, which choose the synthetic overlay before the options and sets are applied."""
    for pair in reversed(tuple(sets)):
        name, _, text = pair.partition("=")
        if name.strip() == key:
            return parse_value(text.strip())
    return options.get(key)


def set_key(config: dict, dotted: str, value, source: str = "--set", origins: dict | None = None,
            renamed: dict | None = None) -> None:
    """Set `a.b.c` in a nested dict; the key must already exist, so a typo is an error, not a silent no-op.

    `renamed` maps a key's former name to its present one (old config.yaml files and habits keep working)."""
    dotted = (renamed or {}).get(dotted, dotted)
    if origins is not None:
        origins[dotted] = source
    node = config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else ""
            raise BotError(f"{source}: unknown key {'.'.join(parts[:i + 1])!r} (known: {known})")
        if i == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]


def apply_sets(config: dict, pairs: tuple[str, ...] | list[str], source: str = "--set", origins: dict | None = None,
               renamed: dict | None = None) -> dict:
    for pair in pairs:
        if "=" not in pair:
            raise BotError(f"{source} {pair!r}: expected key=value")
        key, text = pair.split("=", 1)
        set_key(config, key.strip(), parse_value(text), source, origins, renamed)
    return config


def apply_options(config: dict, options: dict, origins: dict | None = None, flags: dict | None = None) -> dict:
    """CLI options that were given (not None) override the config's keys of the same dotted name.

    `flags` maps a key to the option that sets it, for messages (default: the key's last part as --a-b)."""
    for key, value in options.items():
        if value is not None:
            flag = (flags or {}).get(key) or f"--{key.split('.')[-1].replace('_', '-')}"
            set_key(config, key, value, flag, origins)
    return config


def overlay(config: dict, over: dict, source) -> dict:
    """Lay `over` (a nested mapping, e.g. a stage's synthetic.yaml) onto `config`; a key `config` lacks is an error."""
    for key, value in over.items():
        if key not in config:
            raise BotError(f"{source}: unknown key {key!r} (known: {', '.join(sorted(config))})")
        if isinstance(value, dict) and isinstance(config[key], dict):
            overlay(config[key], value, source)
        else:
            config[key] = value
    return config


def migrate(config: dict, renamed: dict) -> dict:
    """Move keys of an older config.yaml to their present names, so an old run still resumes."""
    for old, new in renamed.items():
        node, parts = config, old.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and parts[-1] in node:
            value = node.pop(parts[-1])
            target, new_parts = config, new.split(".")
            for part in new_parts[:-1]:
                target = target.setdefault(part, {})
            target.setdefault(new_parts[-1], value)
    return config


def read_schema(path: Path, defaults: dict):
    """The specs of every key: the schema file's lines where given, else each default's own type."""
    from .schema import build_schema

    return build_schema(defaults, load_yaml(path))
