"""Fabricated run directories in the shape docs/design.md section 3 promises (summary.json + config.yaml),
for compare's tests."""
from __future__ import annotations

import json
from pathlib import Path

import yaml


def make_run(path: Path, task: str, metrics: dict, *, sha: str = "", recipe: str = "baseline",
             arch: str = "resnet18d", top1=None, source: str | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    backbone = {"arch": arch, "variant": arch[-1].upper(), "recipe": recipe, "sha256": sha,
                "source": source if source is not None else (str(path / "model.safetensors") if sha else "random-init")}
    if top1 is not None:
        backbone["top1"] = top1
    summary = {"task": task, "metrics": metrics, "backbone": backbone,
               "dataset": {"name": "shapes", "path": "/tmp/x", "splits": {"train": 10, "val": 5}},
               "epochs": 1, "wall_seconds": 1.0, "images_per_second": 10.0,
               "versions": {"torch": "x", "torchvision": "x", "timm": "x", "bot": "x"}}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "config.yaml").write_text(yaml.safe_dump({"task": task, "recipe": recipe}))
    return path
