"""Classification results per validation image (`per_image.npz`, task "classify"): each image's true label and
its top-5 predicted classes, as `bot pretrain`'s final evaluation and `bot evaluate-cls` saw them.

Image identity: the file's path relative to the split folder (`<class>/<file>`), stable across machines.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bot.engine.distributed import DistContext, all_gather_object, unshard
from bot.engine.per_image import write_per_image


def gather_top5(tops: list[torch.Tensor], labels: list[torch.Tensor], size: int, ctx: DistContext):
    """(labels (N,), top-k (N, k)) in dataset order from every rank's ShardSampler pass; read back once."""
    k = tops[0].shape[1] if tops else 1
    mine = (torch.cat(labels).cpu().numpy().astype(np.int32) if labels else np.zeros(0, np.int32),
            torch.cat(tops).cpu().numpy().astype(np.int32) if tops else np.zeros((0, k), np.int32))
    parts = all_gather_object(mine, ctx)
    return unshard([p[0] for p in parts], size), unshard([p[1] for p in parts], size)


def image_ids(samples: list[tuple[str, int]], split_dir: Path) -> list[str]:
    """Each sample's path relative to its split folder, with forward slashes."""
    return [Path(path).relative_to(split_dir).as_posix() for path, _ in samples]


def write_classify(path: Path, images: list[str], labels: np.ndarray, top5: np.ndarray, classes: list[str]) -> None:
    write_per_image(path, "classify", images, {"label": labels.astype(np.int32), "top5": top5.astype(np.int32),
                                               "classes": np.asarray(classes, dtype=str)})
