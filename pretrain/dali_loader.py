"""`--loader dali`: pretraining's training batches decoded and augmented by NVIDIA DALI (on the GPU when the run is).

DALI applies the augmentation; it does not draw it. Each sample's crop box, flip, jitter factors and lighting
alphas are drawn in Python from the sample's own seed (seed, epoch, index), by the same torchvision transforms the
default loader runs (their `make_params`), so the training order, every random draw and a mid-epoch resume are
exactly the default loader's.

How a batch is made:
- `SampleSource`, a per-sample callable run by DALI's parallel external source in `threads` worker processes
  (spawned: the training process may already hold a CUDA context, which fork must not copy), reads the file, its
  EXIF size, and makes the sample's seeded draws. Which (epoch, index) a sample slot holds comes from `KeyTable`,
  one small memory-mapped file per epoch written by the training process (a DALI source must be stateless: it
  sees only the slot's position in the epoch, not the sampler).
- DALI decodes only the crop window (`fn.decoders.image_slice` with our box as anchor and shape: ROI decoding where
  the codec allows, on the GPU through the "mixed" backend), resizes it, flips and jitters, and hands over uint8
  (N, 3, S, S) crops that engine.device_pipeline lights and normalises as it does the default loader's. The
  pipeline runs `PREFETCH` batches ahead of the training step.

The pixels differ where DALI's kernels differ from torchvision's (docs/pretrain.md, "Input pipeline"): the resize filter,
jitter applied in one fixed order (torchvision permutes it per sample) and contrast pivoting on mid-grey rather
than the image's mean grey. Validation keeps the default loader.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bot.engine.distributed import EpochSampler, seeded_sample
from bot.engine.errors import BotError, first_line
from bot.engine.images import oriented_size

from .data import SeededSplit, crop_flip_jitter

INSTALL_HINT = "pip install 'bot[dali]' (nvidia-dali-cuda130; nvidia-dali-cuda120 for a CUDA 12 build of torch)"
PREFETCH = 2  # batches DALI prepares ahead of the one the training step is on (the pipeline's and the source's)


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


class KeyTable:
    """The (epoch, index) key of every sample slot of a DALI epoch, shared by file with the source's workers.

    One int64 file per DALI epoch: [length, epoch_0, index_0, epoch_1, index_1, ...]. The training process writes
    it before the epoch's first batch is asked for, and sets `length` to 0 to cut an epoch short (the workers then
    answer every later slot with StopIteration, as DALI wants at an epoch's end). Memory-mapped, so a worker reads
    a key without a message and sees the cut at once.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self._open: dict[int, np.ndarray] = {}  # per process: DALI epoch -> its mapped table

    def _path(self, dali_epoch: int) -> str:
        return os.path.join(self.folder, f"keys-{dali_epoch}.i64")

    def write(self, dali_epoch: int, keys: list[tuple[int, int]]) -> None:
        table = np.memmap(self._path(dali_epoch), dtype=np.int64, mode="w+", shape=(1 + 2 * len(keys),))
        table[1:] = np.asarray(keys, dtype=np.int64).reshape(-1)
        table[0] = len(keys)
        table.flush()
        self._open[dali_epoch] = table
        stale = self._path(dali_epoch - 2)  # no worker reads an epoch two behind (DALI discards its prefetch)
        if os.path.exists(stale):
            os.unlink(stale)
        self._open.pop(dali_epoch - 2, None)

    def cut(self, dali_epoch: int) -> None:
        self._open[dali_epoch][0] = 0

    def key(self, dali_epoch: int, slot: int) -> tuple[int, int]:
        """The slot's (epoch, index); StopIteration past the epoch's end (or after a cut)."""
        table = self._open.get(dali_epoch)
        if table is None:
            table = self._open[dali_epoch] = np.memmap(self._path(dali_epoch), dtype=np.int64, mode="r")
            for old in [e for e in self._open if e < dali_epoch - 1]:
                del self._open[old]
        if slot >= table[0]:
            raise StopIteration
        return int(table[1 + 2 * slot]), int(table[2 + 2 * slot])

    def __getstate__(self):
        return {"folder": self.folder, "_open": {}}  # each worker maps the files itself


class SampleList:
    """(path, label) pairs packed in three arrays: what each spawned worker receives, a few bytes of overhead per
    sample where a list of tuples costs about 150 (an ImageNet-size list is pickled once per worker)."""

    def __init__(self, samples: list[tuple[str, int]]):
        encoded = [os.fsencode(path) for path, _ in samples]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.labels = np.fromiter((label for _, label in samples), dtype=np.int64, count=len(samples))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[str, int]:
        path = os.fsdecode(self.blob[self.offsets[index]:self.offsets[index + 1]].tobytes())
        return path, int(self.labels[index])


# one float32 vector of a sample's parameters, so that DALI moves two arrays per sample, not nine (its per-array
# feeding cost lands on the training process). Every value is exact in float32: pixel coordinates and labels are
# integers under 2**24, the factors and alphas are float32 on the default loader's path too.
ANCHOR, SHAPE, FLIP, JITTER, ALPHAS, LABEL = slice(0, 2), slice(2, 4), 4, slice(5, 8), slice(8, 11), 11
PARAMS = 12


class SampleSource:
    """DALI's per-sample callable: SampleInfo -> (file bytes, float32 parameters: crop anchor (x, y), crop shape
    (w, h), flip, brightness, contrast, saturation, lighting alphas, label), from the sample's seeded draws.

    Picklable (DALI spawns its workers and sends them this object); the draws and the size cache are built in
    each worker on first use.
    """

    def __init__(self, samples: SampleList, seed: int, cfg: dict, keys: KeyTable):
        self.samples, self.seed, self.cfg, self.keys = samples, seed, cfg, keys
        self._draws: AugmentationDraws | None = None
        self._sizes: np.ndarray | None = None  # oriented (width, height) per sample, 0 until read

    def __getstate__(self):
        return {**self.__dict__, "_draws": None, "_sizes": None}

    def _size(self, index: int, path: str) -> tuple[int, int]:
        if self._sizes is None:
            self._sizes = np.zeros((len(self.samples), 2), dtype=np.int32)
        if not self._sizes[index, 0]:
            self._sizes[index] = oriented_size(path)
        return int(self._sizes[index, 0]), int(self._sizes[index, 1])

    def __call__(self, info) -> tuple[np.ndarray, np.ndarray]:
        epoch, index = self.keys.key(info.epoch_idx, info.idx_in_epoch)
        path, label = self.samples[index]
        if self._draws is None:
            self._draws = AugmentationDraws(self.cfg)
        try:
            width, height = self._size(index, path)
            encoded = np.fromfile(path, dtype=np.uint8)
        except (BotError, OSError) as e:
            # DALI passes only RuntimeError (and StopIteration) back from a worker intact
            raise RuntimeError(str(e) if isinstance(e, BotError) else f"{path}: {first_line(e)}") from None
        with seeded_sample(self.seed, epoch, index):
            d = self._draws(width, height)
        top, left, h, w = d.box
        params = np.empty(PARAMS, np.float32)
        params[ANCHOR], params[SHAPE], params[FLIP], params[JITTER] = (left, top), (w, h), d.flip, d.jitter
        params[ALPHAS], params[LABEL] = d.alphas.numpy(), label
        return encoded, params


def build_pipeline(source: SampleSource, batch_size: int, image_size: int, workers: int, device_id: int | None):
    """The DALI graph: per-sample bytes and parameters in, (uint8 CHW crops, the parameters) out; the crops on the GPU
    when device_id. With workers >= 1 the source runs in that many spawned processes, else in this one."""
    from nvidia.dali import fn, pipeline_def, types

    parallel = workers >= 1

    @pipeline_def(batch_size=batch_size, num_threads=max(1, workers), device_id=device_id,
                  prefetch_queue_depth=PREFETCH, exec_dynamic=True, py_num_workers=max(1, workers),
                  py_start_method="spawn")
    def graph():
        source_args = {"prefetch_queue_depth": PREFETCH} if parallel else {}
        encoded, params = fn.external_source(source, num_outputs=2, batch=False, parallel=parallel,
                                             dtype=[types.UINT8, types.FLOAT], ndim=[1, 1], **source_args)
        # decode the crop window only (absolute oriented pixels, x/y order); ROI decoding where the codec has it,
        # so most of a small crop's source image is never decoded
        images = fn.decoders.image_slice(encoded, params[ANCHOR], params[SHAPE], normalized_anchor=False,
                                         normalized_shape=False, output_type=types.RGB,
                                         device="mixed" if device_id is not None else "cpu")
        images = fn.resize(images, size=[image_size, image_size], antialias=True, interp_type=types.INTERP_LINEAR)
        images = fn.flip(images, horizontal=fn.cast(params[FLIP], dtype=types.INT32))
        images = fn.color_twist(images, brightness=params[JITTER.start], contrast=params[JITTER.start + 1],
                                saturation=params[JITTER.start + 2])
        return fn.transpose(images, perm=[2, 0, 1]), params

    pipe = graph()
    pipe.build()
    return pipe


def dali_failure(e: BaseException) -> str:
    """DALI's error in a line: the failing operator and what it met (its first line says only "Critical error")."""
    text = str(e)
    op = re.search(r"Error in \w+ operator `(?:nvidia\.dali\.fn\.)?([\w.]+)`", text)
    met = re.search(r"encountered:\s*\n\s*(.+)", text)
    if not (op and met):
        return f"DALI failed: {first_line(e)}"
    return f"DALI's {op.group(1)} failed ({met.group(1).strip()})"


def _shared_folder() -> str:
    """A private folder for the key tables, in RAM where the system has /dev/shm."""
    shm = Path("/dev/shm")
    return tempfile.mkdtemp(prefix="bot-dali-", dir=str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None)


class DaliTrainLoader:
    """Iterates like the default training DataLoader: (crops uint8 (N, 3, S, S), alphas (N, 3), labels (N,)) per
    batch, in the sampler's order (EpochSampler.set_epoch with a skip resumes mid-epoch), whole batches only.

    `threads`: worker processes for the per-sample source, and DALI's own CPU threads (0: the source runs in this
    process, serially, as a DataLoader with 0 workers would).
    """

    def __init__(self, split: SeededSplit, sampler: EpochSampler, batch_size: int, cfg: dict,
                 device: torch.device, threads: int = 1):
        require_dali()
        self.split, self.sampler, self.batch_size = split, sampler, batch_size
        self.device = device
        folder = _shared_folder()
        weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
        self.keys = KeyTable(folder)
        source = SampleSource(SampleList(split.folder.samples), split.seed, cfg, self.keys)
        device_id = (device.index or 0) if device.type == "cuda" else None
        self.pipe = build_pipeline(source, batch_size, cfg["image_size"], max(0, threads), device_id)
        self.dali_epoch = 0      # the pipeline's epoch counter: one per __iter__, advanced by pipe.reset()
        self.epoch_open = False  # an iteration stopped before its end leaves the pipeline mid-epoch

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def _run(self, files: list[str] | None = None):
        """The next batch's outputs (of `files`); StopIteration at the epoch's end; BotError when a file fails."""
        try:
            return self.pipe.run()
        except StopIteration:
            raise
        except Exception as e:  # noqa: BLE001 - DALI re-raises a worker's error as a bare Exception
            if isinstance(e.__cause__, RuntimeError):  # the source's own error, which names its file
                raise BotError(f"--loader dali: {first_line(e.__cause__)}") from None
            raise BotError(f"--loader dali: {dali_failure(e)} in the batch of {files[0]}"
                           f"{f' and {len(files) - 1} other files' if files and len(files) > 1 else ''}"
                           if files else f"--loader dali: {dali_failure(e)}") from None

    def _close_epoch(self, cut: bool) -> None:
        """Take the pipeline to its epoch's end (cut short: drain what is prefetched) and start the next."""
        if cut:
            self.keys.cut(self.dali_epoch)
        try:
            while True:
                self._run()
        except StopIteration:
            pass
        self.pipe.reset()
        self.dali_epoch += 1
        self.epoch_open = False

    def _tensors(self, outputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from nvidia.dali.plugin.pytorch import feed_ndarray
        crops_out, params = (o.as_tensor() for o in outputs)
        crops = torch.empty(crops_out.shape(), dtype=torch.uint8, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(crops_out, crops, cuda_stream=stream)
        params = torch.from_numpy(np.array(params))
        return crops, params[:, ALPHAS].contiguous(), params[:, LABEL].long()

    def __iter__(self):
        if self.epoch_open:
            self._close_epoch(cut=True)
        batches = len(self)
        n = self.batch_size
        keys = list(self.sampler)[:batches * n]
        self.keys.write(self.dali_epoch, keys)
        self.epoch_open = True
        for b in range(batches):
            try:
                batch = self._tensors(self._run([self.split.folder.samples[i][0] for _, i in keys[b * n:(b + 1) * n]]))
            except StopIteration:
                raise BotError(f"--loader dali: the pipeline ended after {b} of {batches} batches") from None
            if b == batches - 1:
                self._close_epoch(cut=False)  # the source's StopIteration lets DALI start the next epoch
            yield batch
        if batches == 0:
            self._close_epoch(cut=False)
