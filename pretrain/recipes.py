"""Pretrain recipes: YAML files named after the paper's rows, each a `base` plus the keys it changes.

A recipe resolves to a full config by walking its `base` chain down to `_defaults.yaml`; a key that
`_defaults.yaml` does not have is an error (so a typo never silently trains the wrong thing).
"""
from __future__ import annotations

import copy
from pathlib import Path

from bot.engine.config import load_yaml, migrate, read_schema
from bot.engine.errors import BotError
from bot.engine.schedules import milestone_steps  # noqa: F401  (pretrain.train and the tests import it from here)

RECIPE_DIR = Path(__file__).parent / "recipes"
META_KEYS = ("base", "description", "requires")
# Keys that moved so that the three stages name the same things alike; old recipes and config.yaml files still read.
RENAMED = {"schedule.epochs": "train.epochs", "optim.batch_size": "train.batch_size", "optim.lr": "train.lr"}


def schema() -> dict:
    """Every pretrain key's type and range (recipes/_schema.yaml, else the default's type)."""
    return read_schema(RECIPE_DIR / "_schema.yaml", load_yaml(RECIPE_DIR / "_defaults.yaml"))


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def _merge(into: dict, over: dict, defaults: dict, source: Path, prefix: str = "") -> None:
    for key, value in over.items():
        if key not in defaults:
            raise BotError(f"{source}: unknown recipe key {prefix + key!r}")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise BotError(f"{source}: {prefix + key!r} must be a mapping")
            _merge(into[key], value, defaults[key], source, f"{prefix}{key}.")
        else:
            into[key] = copy.deepcopy(value)


def _path_of(name_or_file: str) -> Path:
    p = Path(name_or_file)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise BotError(f"{p}: recipe file not found")
        return p
    p = RECIPE_DIR / f"{name_or_file}.yaml"
    if not p.is_file() or name_or_file.startswith("_"):
        raise BotError(f"unknown recipe {name_or_file!r}: choose one of {', '.join(recipe_names())} or give a YAML file")
    return p


def load_recipe(name_or_file: str) -> dict:
    """The full config of a recipe: defaults, then each base in order, then the recipe itself."""
    defaults = load_yaml(RECIPE_DIR / "_defaults.yaml")
    chain, seen = [], set()
    path = _path_of(name_or_file)
    while True:
        data = migrate(load_yaml(path), RENAMED)
        chain.append((path, data))
        base = data.get("base", "_defaults")
        if base == "_defaults":
            break
        if base in seen:
            raise BotError(f"{path}: recipe base loop through {base!r}")
        seen.add(base)
        path = RECIPE_DIR / f"{base}.yaml" if not Path(base).suffix else Path(base)
        if not path.is_file():
            raise BotError(f"{chain[-1][0]}: base recipe {base!r} not found")
    config = copy.deepcopy(defaults)
    requires: list[str] = []
    for path, data in reversed(chain):
        body = {k: v for k, v in data.items() if k not in META_KEYS}
        _merge(config, body, defaults, path)
        requires = data.get("requires", requires)
        if "description" in data:
            config["description"] = data["description"]
    config["recipe"] = Path(name_or_file).stem
    config["requires"] = list(requires)
    return config


REFERENCE_EPOCHS = 120  # the paper's schedule; mixup's 200 is 5/3 of it


def scaled_epochs(recipe_epochs: int, epochs_per_reference: float) -> int:
    """A recipe's epochs at a smaller scale that keeps its ratio to the paper's 120 (mixup: 200/120 of the others)."""
    return max(1, round(epochs_per_reference * recipe_epochs / REFERENCE_EPOCHS))


def apply_synthetic_scale(config: dict) -> dict:
    """Scale a recipe to the synthetic set (no --data): small images, a few epochs (in the recipe's ratio to 120),
    warmup of at most one epoch."""
    over = migrate(load_yaml(RECIPE_DIR / "_synthetic.yaml"), RENAMED)
    had_warmup = config["schedule"]["warmup_epochs"] > 0
    recipe_epochs = config["train"]["epochs"]
    _merge(config, over, load_yaml(RECIPE_DIR / "_defaults.yaml"), RECIPE_DIR / "_synthetic.yaml")
    config["train"]["epochs"] = scaled_epochs(recipe_epochs, over["train"]["epochs"])
    config["schedule"]["warmup_epochs"] = 1 if had_warmup else 0
    return config


def recipe_catalogue(files=()) -> list[dict]:
    """What a planner (bot demo, bot reproduce) needs of each recipe, as plain data: `bot recipes --json`."""
    from .backbones import parse_arch

    rows = []
    for name in [*recipe_names(), *files]:
        cfg = load_recipe(name)
        _, depth, variant = parse_arch(cfg["model"]["arch"])
        rows.append({"name": name, "arch": cfg["model"]["arch"], "variant": variant.upper(), "depth": depth,
                     "requires": cfg["requires"], "epochs": cfg["train"]["epochs"], "reference_epochs": REFERENCE_EPOCHS,
                     "description": cfg["description"]})
    return rows


def describe_recipes() -> str:
    lines = []
    for name in recipe_names():
        lines.append(f"{name:26s} {load_yaml(RECIPE_DIR / f'{name}.yaml').get('description', '')}")
    return "\n".join(lines)
