"""Configuration as plain dicts: YAML defaults, then CLI options, then `--set key=value`, with unknown keys refused.

Every stage resolves its config this way and writes the result to the run dir's config.yaml, which is enough to
rerun (and is what --resume reads back).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .errors import BotError


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise BotError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise BotError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise BotError(f"{path}: expected a mapping of keys to values")
    return data


def parse_value(text: str):
    """`--set` values are YAML scalars/lists: 0.1 -> float, true -> bool, [30,60] -> list, other -> str."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_key(config: dict, dotted: str, value, source: str = "--set") -> None:
    """Set `a.b.c` in a nested dict; the key must already exist, so a typo is an error, not a silent no-op."""
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


def apply_sets(config: dict, pairs: tuple[str, ...] | list[str], source: str = "--set") -> dict:
    for pair in pairs:
        if "=" not in pair:
            raise BotError(f"{source} {pair!r}: expected key=value")
        key, text = pair.split("=", 1)
        set_key(config, key.strip(), parse_value(text), source)
    return config


def apply_options(config: dict, options: dict) -> dict:
    """CLI options that were given (not None) override the config's keys of the same dotted name."""
    for key, value in options.items():
        if value is not None:
            set_key(config, key, value, f"--{key.replace('_', '-')}")
    return config
