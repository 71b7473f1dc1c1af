"""`bot inspect FILE|RUN`: what bot sees in a checkpoint, through the same reader the stages use.

For a backbone: arch and variant and how each was inferred, parameter count, mean/std, classes, metadata, sha256,
the keys a feature extractor drops (fc) and the ones the file lacks. For a fine-tune run (or its weights): the
kind of model, its size and the backbone it was fine-tuned from.
"""
from __future__ import annotations

import json

import timm
import torch

from bot.engine.errors import BotError
from bot.engine.rundir import sha256_file
from bot.engine.weights_file import is_safetensors, load_tensors, read_metadata

from .checkpoints import WEIGHTS_NAME, read_checkpoint, resolve_path


def _finetuned(source: str) -> dict | None:
    """The description of a finetuned detector/segmenter file or run, or None for anything else."""
    if source.startswith("timm:"):
        return None
    path = resolve_path(source)
    if not is_safetensors(path):
        return None
    meta = read_metadata(path)
    if meta.kind not in ("detector", "segmenter"):
        return None
    summary_file = path.parent / "summary.json"
    summary = json.loads(summary_file.read_text()) if path.name == WEIGHTS_NAME and summary_file.is_file() else {}
    backbone = meta.values.get("backbone") or summary.get("backbone") or {"sha256": meta.values.get("backbone_sha256")}
    state = load_tensors(path)
    return {"kind": meta.kind, "file": str(path.resolve()), "sha256": sha256_file(path),
            "parameters": sum(t.numel() for k, t in state.items() if "running_" not in k and "num_batches" not in k),
            "backbone": backbone, "metadata": meta.values}


def inspect_checkpoint(source: str, arch: str | None = None) -> dict:
    """Everything `bot inspect` shows, as a JSON-able dict."""
    source = str(source)
    finetuned = _finetuned(source)
    if finetuned is not None:
        return finetuned
    ck = read_checkpoint(source, arch=arch)
    with torch.device("meta"):
        model = timm.create_model(ck.arch, pretrained=False, num_classes=ck.num_classes)
    expected = model.state_dict()
    missing = [k for k in expected if k not in ck.state]
    return {
        "kind": "backbone", "file": ck.source, "sha256": ck.sha256, "origin": ck.origin, "name": ck.name,
        "arch": ck.arch, "variant": ck.variant, "inferred": ck.how,
        "parameters": sum(p.numel() for p in model.parameters()),
        "num_classes": ck.num_classes, "mean": list(ck.mean), "std": list(ck.std), "recipe": ck.recipe, "top1": ck.top1,
        "metadata": ck.metadata,
        "dropped_as_backbone": [k for k in ck.state if k.startswith("fc.")],
        "missing": [k for k in missing if not k.endswith("num_batches_tracked")],
        "filled": [k for k in missing if k.endswith("num_batches_tracked")],
        "notes": ck.notes,
    }


def _short(keys: list[str], n: int = 4) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def render(info: dict) -> str:
    """The human-readable form of inspect_checkpoint's dict."""
    if info["kind"] != "backbone":
        b = info["backbone"] or {}
        return "\n".join([
            f"file        {info['file']}",
            f"sha256      {info['sha256']}",
            f"kind        finetuned {info['kind']} (not a backbone checkpoint)",
            f"parameters  {info['parameters'] / 1e6:.2f} M",
            f"backbone    {b.get('arch', '?')} {b.get('name') or b.get('source') or ''} sha256 {str(b.get('sha256') or '?')[:12]}",
        ])
    how = info["inferred"]
    mean = ", ".join(f"{x:.4f}" for x in info["mean"])
    std = ", ".join(f"{x:.4f}" for x in info["std"])
    meta = ", ".join(f"{k}={json.dumps(v)}" for k, v in info["metadata"].items()) or "none"
    lines = [
        f"file        {info['file']}",
        f"sha256      {info['sha256']}",
        f"origin      {info['origin']} (row name {info['name']})",
        f"arch        {info['arch']}  [{how.get('arch', '')}]",
        f"variant     {info['variant']}  [{how.get('variant', '')}]",
        f"parameters  {info['parameters'] / 1e6:.2f} M ({info['parameters']:,})",
        f"classes     {info['num_classes']}  [{how.get('num_classes', '')}]",
        f"mean / std  ({mean}) / ({std})  [{how.get('mean_std', '')}]",
        f"recipe      {info['recipe']}",
        f"top-1       {'-' if info['top1'] is None else format(info['top1'] * 100, '.2f') + '%'}",
        f"metadata    {meta}",
        f"as backbone drops {_short(info['dropped_as_backbone'])}; missing {_short(info['missing'])}"
        + (f"; {len(info['filled'])} BatchNorm counters filled with 0" if info["filled"] else ""),
    ]
    lines += [f"note        {n}" for n in info["notes"]]
    return "\n".join(lines)


def run_inspect(source: str, arch: str | None = None, as_json: bool = False) -> str:
    if not source:
        raise BotError("inspect: give a weights file, a run directory or timm:NAME")
    info = inspect_checkpoint(source, arch)
    return json.dumps(info, indent=2) if as_json else render(info)
