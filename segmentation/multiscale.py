"""Multi-scale + flip evaluation (`eval.mode: ms-flip`): GluonCV's MultiEvalModel rule, with the windows batched.

The rule, as dmlc/gluon-cv gluoncv/model_zoo/segbase.py has it from 2018-09-28 (b690322d) to 2020 (read at
428ee05d, 2019-01-03, the paper's time; used by scripts/segmentation/test.py with base_size 520, crop_size 480):
for each scale s (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, `MultiEvalModel.__init__`, line 107):
  1. the image (H, W) is resized bilinearly so that its long side is ceil(base_size x s), the short side
     int(short x long / old long + 0.5) (`__call__`, lines 135-145);
  2. a side shorter than the crop is padded on the bottom / right up to the crop with black pixels, the normalised
     value -mean/std (`_pad_image`, lines 203-219; called at lines 147 and 151-153: every scale whose long side is at
     most the crop is padded to crop x crop and predicted whole, a larger one only where its short side is short);
  3. the padded image is cut into crop x crop windows at a stride of int(crop x 2/3), ceil((side - crop) / stride) + 1
     per side, each starting at a multiple of the stride; a window that runs past the edge is cut there and padded
     to the crop again (lines 156-176);
  4. each window's score is exp(logits + flip(logits of the flipped window)), exp(logits) without flip
     (`flip_inference`, lines 186-193); overlapping windows are averaged (`count_norm`, line 178), the result is cut
     to the resized image (line 179), resized bilinearly back to (H, W) and *summed* over the scales (lines 181-182);
  5. the class is the argmax of that sum (scripts/segmentation/test.py via SegmentationMetric).
MXNet's BilinearResize2D (apache/mxnet 1.3 src/operator/contrib/bilinear_resize.cc: source step
(in - 1) / (out - 1)) aligns corners, so both resizes here use align_corners=True.

What is ours: every network input has the crop's size, so the windows of all scales and of all images of a batch
(and their flipped copies) go through the network together, `batch` inputs per forward pass; the same numbers as one
window at a time, to float rounding. The exp scores are accumulated in float64: float32 overflows once a logit sum
passes 88, which a confident network can reach; GluonCV's float32 would give inf there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

# gluoncv/model_zoo/segbase.py `_pad_image` (line 208-210): the pad value is -mean/std of these, a black pixel
GLUONCV_MEAN, GLUONCV_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def resized_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(height, width) with the long side `long_side` and the aspect kept, rounded as GluonCV does."""
    if h > w:
        return long_side, int(w * long_side / h + 0.5)
    return int(h * long_side / w + 0.5), long_side


def black(mean, std) -> list[float]:
    """The normalised value of a black pixel: what GluonCV pads test images with."""
    return [-m / s for m, s in zip(mean, std)]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """MXNet's BilinearResize2D (corners aligned), which GluonCV's test resizes images and scores with."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def pad_to_crop(x: torch.Tensor, crop: int, pad_value: list[float]) -> torch.Tensor:
    """(C, h, w) padded on the bottom / right to at least crop x crop with one value per channel (Python floats:
    filling with them copies nothing to the device)."""
    h, w = x.shape[-2:]
    if h >= crop and w >= crop:
        return x
    out = x.new_empty(x.shape[0], max(h, crop), max(w, crop))
    for channel, value in zip(out, pad_value):
        channel.fill_(value)
    out[:, :h, :w] = x
    return out


def window_grid(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of GluonCV's windows over a (height, width) image that is at least crop x crop."""
    rows = int(math.ceil((height - crop) / stride)) + 1
    cols = int(math.ceil((width - crop) / stride)) + 1
    return [(r * stride, min(r * stride + crop, height), c * stride, min(c * stride + crop, width))
            for r in range(rows) for c in range(cols)]


@dataclass
class ScaleJob:
    """One image at one scale: its resized, padded pixels and the windows still to be scored."""
    image: int                          # index in the batch
    size: tuple[int, int]               # the resized image's (height, width), before padding
    padded: torch.Tensor                # (3, ph, pw), ph and pw >= crop
    windows: list[tuple[int, int, int, int]]
    left: int = 0                       # windows not yet accumulated
    scores: torch.Tensor | None = None  # (K, ph, pw) float64 sum of window scores
    counts: torch.Tensor | None = None  # (1, ph, pw) windows covering each pixel


def plan_jobs(images: list[torch.Tensor], scales, base_size: int, crop: int, stride: int,
              pad_value: list[float]) -> list[ScaleJob]:
    """Every (image, scale) of a batch, image by image, with its windows."""
    jobs = []
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        for s in scales:
            nh, nw = resized_shape(h, w, int(math.ceil(base_size * s)))
            padded = pad_to_crop(resize(image[None], (nh, nw))[0], crop, pad_value)
            windows = window_grid(*padded.shape[-2:], crop, stride)
            jobs.append(ScaleJob(i, (nh, nw), padded, windows, left=len(windows)))
    return jobs


def combined_logits(model, crops: torch.Tensor, flip: bool) -> torch.Tensor:
    """logits + flip(logits of the flipped crops), in float32: one forward pass for a crop and its flipped copy."""
    n = crops.shape[0]
    x = torch.cat([crops, crops.flip(-1)]) if flip else crops
    logits = model(x)["out"].float()
    return logits[:n] + logits[n:].flip(-1) if flip else logits


@torch.no_grad()
def iter_ms_flip_scores(model, images: list[torch.Tensor], *, scales, flip: bool, base_size: int, window: int,
                        overlap: float = 1 / 3, pad_value=None, batch: int = 16) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, scores (K, H, W) float64) for each image (3, H, W) of `images`, in order, as soon as it is done.

    `batch`: network inputs per forward pass (a window and its flipped copy count two; at least one window).
    `overlap`: the fraction of a window its neighbour shares (GluonCV's stride is 2/3 of the crop: 1/3).
    """
    if not images:
        return
    device = images[0].device
    pad = [float(v) for v in (black(GLUONCV_MEAN, GLUONCV_STD) if pad_value is None else pad_value)]
    stride = max(1, int(window * (1 - overlap)))
    jobs = plan_jobs(images, scales, base_size, window, stride, pad)
    queue = [(job, win) for job in jobs for win in job.windows]
    per_forward = max(1, batch // 2 if flip else batch)
    total: dict[int, torch.Tensor] = {}
    jobs_left = {i: len(scales) for i in range(len(images))}
    for start in range(0, len(queue), per_forward):
        chunk = queue[start:start + per_forward]
        crops = torch.stack([pad_to_crop(job.padded[:, y0:y1, x0:x1], window, pad) for job, (y0, y1, x0, x1) in chunk])
        logits = combined_logits(model, crops, flip)
        for (job, (y0, y1, x0, x1)), out in zip(chunk, logits):
            if job.scores is None:
                job.scores = torch.zeros(out.shape[0], *job.padded.shape[-2:], dtype=torch.float64, device=device)
                job.counts = torch.zeros(1, *job.padded.shape[-2:], dtype=torch.float64, device=device)
            job.scores[:, y0:y1, x0:x1] += out[:, :y1 - y0, :x1 - x0].double().exp()
            job.counts[:, y0:y1, x0:x1] += 1
            job.left -= 1
            if job.left:
                continue
            nh, nw = job.size
            scores = (job.scores / job.counts)[:, :nh, :nw]
            job.scores = job.counts = job.padded = None  # free them as soon as the scale is done
            h, w = images[job.image].shape[-2:]
            scores = resize(scores[None], (h, w))[0]
            total[job.image] = scores if job.image not in total else total[job.image] + scores
            jobs_left[job.image] -= 1
            if not jobs_left[job.image]:
                yield job.image, total.pop(job.image)


def ms_flip_scores(model, images: torch.Tensor, **options) -> torch.Tensor:
    """Summed scores (B, K, H, W) float64 of same-sized images (B, 3, H, W); options as iter_ms_flip_scores'."""
    return torch.stack([s for _, s in iter_ms_flip_scores(model, list(images), **options)])
