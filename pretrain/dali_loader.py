"""`--loader dali`: pretraining's training batches decoded and augmented by NVIDIA DALI (on the GPU when the run is).

DALI applies the augmentation; it does not draw it. Each sample's crop box, flip, jitter factors and lighting
alphas are drawn in Python from the sample's own seed (seed, epoch, index), by the same torchvision transforms the
default loader runs (their `make_params`), so the training order, every random draw and a mid-epoch resume are
exactly the default loader's. DALI then decodes (nvJPEG through its "mixed" backend on a GPU, its CPU decoder on a
CPU run), crops and resizes in one step, flips and jitters, and hands over uint8 (N, 3, S, S) crops that
engine.device_pipeline lights and normalises as it does the default loader's.

The pixels differ where DALI's kernels differ from torchvision's (docs/pretrain.md, "Input pipeline"): the resize filter,
jitter applied in one fixed order (torchvision permutes it per sample) and contrast pivoting on mid-grey rather
than the image's mean grey. Validation keeps the default loader.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bot.engine.distributed import EpochSampler, seeded_sample
from bot.engine.errors import BotError, first_line
from bot.engine.images import oriented_size

from .data import SeededSplit, crop_flip_jitter

INSTALL_HINT = "pip install 'bot[dali]' (nvidia-dali-cuda130; nvidia-dali-cuda120 for a CUDA 12 build of torch)"


def require_dali() -> None:
    """One line, before any work, when `--loader dali` is asked for and DALI is not importable."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError as e:
        raise BotError(f"--loader dali needs NVIDIA DALI, which is not installed ({e.msg}): {INSTALL_HINT}") from None


@dataclass
class SampleDraws:
    """One sample's augmentation, as the default loader would draw it."""
    box: tuple[int, int, int, int]   # top, left, height, width of the random-resized crop, in oriented pixels
    flip: bool
    jitter: tuple[float, float, float]  # brightness, contrast, saturation factors (1.0 = unchanged)
    alphas: torch.Tensor             # (3,) PCA lighting coefficients


class AugmentationDraws:
    """The default loader's random draws for one sample, without touching its pixels.

    Drawn in the order TrainCrop draws them (crop, flip, jitter, then the lighting alphas), under the same
    per-sample seed, so both loaders agree on every number.
    """

    def __init__(self, cfg: dict):
        self.crop, self.flip, self.jitter, _ = crop_flip_jitter(cfg)
        self.pca_noise = cfg["pca_noise"]

    def __call__(self, width: int, height: int) -> SampleDraws:
        from bot.engine.device_pipeline import lighting_alphas
        # a view with the image's size and no memory behind it: make_params only asks for the size
        probe = torch.empty(1, 1, 1, dtype=torch.uint8).expand(3, height, width)
        box = self.crop.make_params([probe])
        flip = bool(torch.rand(1) < self.flip.p)   # RandomHorizontalFlip's draw
        jit = self.jitter.make_params([])
        factors = tuple(1.0 if jit[k] is None else float(jit[k])
                        for k in ("brightness_factor", "contrast_factor", "saturation_factor"))
        return SampleDraws((box["top"], box["left"], box["height"], box["width"]), flip, factors,
                           lighting_alphas(self.pca_noise))


def build_pipeline(batch_size: int, image_size: int, threads: int, device_id: int | None):
    """The DALI graph: encoded bytes + per-sample parameters in, uint8 CHW crops out (on the GPU when device_id)."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, prefetch_queue_depth=1,
                  exec_dynamic=True)
    def graph():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
        roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
        flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
        brightness = fn.external_source(name="brightness", dtype=types.FLOAT, ndim=0)
        contrast = fn.external_source(name="contrast", dtype=types.FLOAT, ndim=0)
        saturation = fn.external_source(name="saturation", dtype=types.FLOAT, ndim=0)
        images = fn.decoders.image(encoded, device="mixed" if device_id is not None else "cpu",
                                   output_type=types.RGB)
        # crop and resize in one pass, as RandomResizedCrop does; ROI in (y, x) like the output size
        images = fn.resize(images, size=[image_size, image_size], roi_start=roi_start, roi_end=roi_end,
                           roi_relative=False, antialias=True, interp_type=types.INTERP_LINEAR)
        images = fn.flip(images, horizontal=flip)
        images = fn.color_twist(images, brightness=brightness, contrast=contrast, saturation=saturation)
        return fn.transpose(images, perm=[2, 0, 1])

    pipe = graph()
    pipe.build()
    return pipe


class DaliTrainLoader:
    """Iterates like the default training DataLoader: (crops uint8 (N, 3, S, S), alphas (N, 3), labels (N,)) per
    batch, in the EpochSampler's order (set_epoch with a skip resumes mid-epoch), whole batches only."""

    def __init__(self, split: SeededSplit, sampler: EpochSampler, batch_size: int, cfg: dict,
                 device: torch.device, threads: int = 1):
        require_dali()
        self.split, self.sampler, self.batch_size = split, sampler, batch_size
        self.draws = AugmentationDraws(cfg)
        self.device = device
        device_id = (device.index or 0) if device.type == "cuda" else None
        self.pipe = build_pipeline(batch_size, cfg["image_size"], max(1, threads), device_id)
        self.sizes: dict[int, tuple[int, int]] = {}  # oriented (width, height) per sample, read once

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def _size(self, index: int) -> tuple[int, int]:
        if index not in self.sizes:
            self.sizes[index] = oriented_size(self.split.folder.samples[index][0])
        return self.sizes[index]

    def _feed(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded, starts, ends, flips, bright, contr, satur, alphas, labels = ([] for _ in range(9))
        for epoch, index in keys:
            path, label = self.split.folder.samples[index]
            width, height = self._size(index)
            with seeded_sample(self.split.seed, epoch, index):
                d = self.draws(width, height)
            top, left, h, w = d.box
            encoded.append(np.fromfile(path, dtype=np.uint8))
            starts.append(np.array([top, left], dtype=np.float32))
            ends.append(np.array([top + h, left + w], dtype=np.float32))
            flips.append(np.array(int(d.flip), dtype=np.int32))
            for out, value in zip((bright, contr, satur), d.jitter):
                out.append(np.array(value, dtype=np.float32))
            alphas.append(d.alphas)
            labels.append(label)
        for name, data in (("encoded", encoded), ("roi_start", starts), ("roi_end", ends), ("flip", flips),
                           ("brightness", bright), ("contrast", contr), ("saturation", satur)):
            self.pipe.feed_input(name, data)
        return torch.stack(alphas), torch.tensor(labels)

    def _crops(self) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray
        (out,) = self.pipe.run()
        batch = out.as_tensor()
        crops = torch.empty(batch.shape(), dtype=torch.uint8, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(batch, crops, cuda_stream=stream)
        return crops

    def __iter__(self):
        keys = list(self.sampler)
        for start in range(0, len(keys) - self.batch_size + 1, self.batch_size):
            try:
                alphas, labels = self._feed(keys[start:start + self.batch_size])
                crops = self._crops()
            except RuntimeError as e:  # DALI names the failing operator and sample; keep its first line
                path = self.split.folder.samples[keys[start][1]][0]
                raise BotError(f"{path} (batch starting here): DALI failed: {first_line(e)}") from None
            yield crops, alphas, labels
