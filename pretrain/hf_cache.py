"""`timm:NAME[.TAG]` from the local Hugging Face cache only (HF_HUB_OFFLINE semantics: nothing is downloaded),
and what a file inside that cache says about itself (its timm name, its config.json).

The cache is found as huggingface_hub finds it: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub,
read at call time (huggingface_hub's constants are fixed when it is imported).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bot.engine.errors import BotError

FILENAMES = ("model.safetensors", "pytorch_model.bin")
_REPO_DIR = re.compile(r"^models--(.+?)--(.+)$")


def hub_cache_dir() -> Path:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def timm_pretrained_cfg(name: str):
    """timm's pretrained config for `name` (arch or arch.tag), or None when timm has none."""
    import bot.pretrain.backbones  # noqa: F401  bot's own A/C names are timm models too
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(name)
    except (RuntimeError, KeyError, ValueError):
        return None


def resolve_timm(spec: str) -> tuple[Path, str]:
    """`timm:NAME[.TAG]` -> (the cached weights file, the full timm name)."""
    name = spec.split(":", 1)[1].strip()
    cfg = timm_pretrained_cfg(name)
    if cfg is None:
        raise BotError(f"{spec}: timm has no pretrained weights of that name (see timm.list_pretrained('{name.split('.')[0]}*'))")
    full = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    repo = cfg.hf_hub_id
    if not repo:
        raise BotError(f"{spec}: timm keeps these weights outside the Hugging Face hub ({cfg.url or 'no url'}); "
                       "download the file yourself and pass its path")
    repo = repo.split("@")[0]
    cache = hub_cache_dir()
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else list(FILENAMES)
    found = _cached(repo, names, cache)
    if found is None:
        looked = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / "*" / names[0]
        raise BotError(f"{spec}: not in the local Hugging Face cache (looked for {looked}); nothing is downloaded at "
                       f"run time: fetch it once with `hf download {repo} {names[0]}` where there is a network, "
                       "or point HF_HUB_CACHE / HF_HOME at the cache that holds it")
    return found, full


def _cached(repo: str, filenames: list[str], cache: Path) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        hit = try_to_load_from_cache(repo, filename, cache_dir=cache)
        if isinstance(hit, str):
            return Path(hit)
    # a snapshot without refs/main (copied caches often lack it): newest snapshot holding the file
    snapshots = cache / f"models--{repo.replace('/', '--')}" / "snapshots"
    for filename in filenames:
        hits = sorted(snapshots.glob(f"*/{filename}"), key=lambda p: p.stat().st_mtime, reverse=True)
        if hits:
            return hits[0]
    return None


def describe_cached_file(path: Path) -> tuple[str | None, dict]:
    """For a file inside a HF cache snapshot of a timm repo: (its timm name, its config.json's pretrained_cfg)."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        m = _REPO_DIR.match(part)
        if m and i + 2 < len(parts) and parts[i + 1] == "snapshots":
            owner, name = m.groups()
            if owner != "timm":
                return None, {}
            config = Path(*parts[:i + 3]) / "config.json"
            try:
                data = json.loads(config.read_text()) if config.is_file() else {}
            except (OSError, ValueError):
                data = {}
            pretrained = data.get("pretrained_cfg") if isinstance(data, dict) else None
            cfg = dict(pretrained) if isinstance(pretrained, dict) else {}
            if isinstance(data, dict) and "num_classes" in data:
                cfg.setdefault("num_classes", data["num_classes"])
            return name, cfg
    return None, {}
