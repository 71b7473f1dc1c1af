"""`per_image.npz`: what a stage's final evaluation saw, image by image, so that `bot compare` can resample images.

One numpy .npz file (a zip of .npy arrays, compressed) in the run directory, written by rank 0 before summary.json
and read with `np.load(allow_pickle=False)`: numbers and fixed-width strings only, nothing unpickled. Every file has
`format` ("bot-per-image-1"), `task` (classify | detect | segment) and `image` (N,), the stable identity of each
validation image (a path relative to the split folder, a VOC stem, a COCO id, a mask stem), so that two runs can be
checked to have been scored on the same images. What else each task stores is in docs/design.md section 3.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .rundir import atomic_write_bytes

FILE_NAME = "per_image.npz"
FORMAT = "bot-per-image-1"
# The arrays every task's file must hold beside format, task and image.
REQUIRED = {
    "classify": ("label", "top5"),
    "detect": ("classes", "gt_count", "det_image", "det_label", "det_score", "det_voc"),
    "segment": ("tp", "fp", "fn", "labelled"),
}


@dataclass
class PerImage:
    task: str
    images: np.ndarray             # (N,) str
    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __contains__(self, key: str) -> bool:
        return key in self.arrays


def write_per_image(path: Path, task: str, images, arrays: dict) -> None:
    """Write the file atomically; `images` are converted to strings, every array must have one row per image
    unless its name says otherwise (det_*: one per detection; classes, coco_iou: one per class / threshold)."""
    if task not in REQUIRED:
        raise ValueError(f"per-image task {task!r}: expected one of {', '.join(REQUIRED)}")
    missing = [k for k in REQUIRED[task] if k not in arrays]
    if missing:
        raise ValueError(f"per-image {task} arrays lack {missing}")
    images = np.asarray([str(i) for i in images], dtype=str) if len(images) else np.zeros(0, dtype="<U1")
    buf = io.BytesIO()
    np.savez_compressed(buf, format=np.asarray(FORMAT), task=np.asarray(task), image=images,
                        **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(Path(path), buf.getvalue())


def read_per_image(path: Path) -> PerImage:
    """The file's arrays; ValueError saying what is wrong (not a per-image file, another format, a missing array)."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"not a readable .npz file ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})") from None
    fmt = str(data.pop("format", ""))
    if fmt != FORMAT:
        raise ValueError(f"format {fmt!r}, expected {FORMAT!r}")
    task, images = str(data.pop("task", "")), data.pop("image", None)
    if task not in REQUIRED or images is None:
        raise ValueError(f"task {task!r} is not one of {', '.join(REQUIRED)}, or no image array")
    missing = [k for k in REQUIRED[task] if k not in data]
    if missing:
        raise ValueError(f"{task} file lacks {', '.join(missing)}")
    if len(set(images.tolist())) != len(images):
        raise ValueError("an image id appears twice")
    return PerImage(task, images, data)
