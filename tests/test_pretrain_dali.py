"""`--loader dali` on DALI's CPU backend: the same draws, order and resume as the default loader, close pixels."""
import json
import sys

import pytest
import torch
from click.testing import CliRunner

from bot.cli import main
from bot.engine.distributed import DistContext, EpochSampler
from bot.pretrain.data import build_datasets

CFG = {"image_size": 32, "scale": [0.35, 1.0], "ratio": [0.75, 1.3333333], "color_jitter": 0.0, "pca_noise": 0.1,
       "workers": 0}


def loaders(root, cfg, batch=8, threads=1):
    from bot.pretrain.dali_loader import DaliTrainLoader
    data = build_datasets(root, cfg, seed=3)
    sampler = EpochSampler(len(data.train), DistContext(), seed=3, batch_size=batch)
    return data, sampler, DaliTrainLoader(data.train, sampler, batch, cfg, torch.device("cpu"), threads=threads)


def default_batch(data, keys):
    crops, alphas, labels = zip(*(data.train[k] for k in keys))
    return torch.stack(crops), torch.stack(alphas), torch.tensor(labels)


@pytest.mark.parametrize("color_jitter, mean_tol, max_tol", [(0.0, 0.5, 1.0), (0.4, 10.0, 20.0)])
def test_dali_applies_the_default_loaders_draws(tiny_imagefolder, color_jitter, mean_tol, max_tol):
    pytest.importorskip("nvidia.dali")
    # the source in this process (0 workers): the parallel path is checked against it below
    data, sampler, dali = loaders(tiny_imagefolder, {**CFG, "color_jitter": color_jitter}, threads=0)
    sampler.set_epoch(2)
    keys = list(sampler)[:8]
    crops, alphas, labels = next(iter(dali))
    ref_crops, ref_alphas, ref_labels = default_batch(data, keys)
    # the random draws are the default loader's, number for number
    assert torch.equal(alphas, ref_alphas) and torch.equal(labels, ref_labels)
    assert crops.dtype == torch.uint8 and crops.shape == ref_crops.shape == (8, 3, 32, 32)
    # the pixels differ only by DALI's kernels (measured: 0.10 levels mean without jitter, 4.8 with it)
    per_image = (crops.float() - ref_crops.float()).abs().mean((1, 2, 3))
    assert per_image.mean() < mean_tol and per_image.max() < max_tol, per_image
    if color_jitter == 0:
        # a wrong box, or a flip on the wrong samples, would move whole shapes: tens of levels
        other = torch.roll(ref_crops, 1, dims=0)
        assert (crops.float() - other.float()).abs().mean() > 5 * per_image.mean()


def test_dali_resumes_mid_epoch_exactly(tiny_imagefolder):
    pytest.importorskip("nvidia.dali")
    _, sampler, dali = loaders(tiny_imagefolder, {**CFG, "color_jitter": 0.4})
    sampler.set_epoch(1)
    assert len(dali) == 10  # 80 images, batches of 8
    full = list(dali)
    sampler.set_epoch(1, skip=3 * 8)
    assert len(dali) == 7
    resumed = list(dali)
    for a, b in zip(full[3:], resumed, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    sampler.set_epoch(2)
    assert not torch.equal(next(iter(dali))[0], full[0][0])  # a new epoch draws anew


def test_dali_workers_read_and_draw_outside_the_training_process(tiny_imagefolder, monkeypatch):
    """The file reads, EXIF sizes and seeded draws run in DALI's spawned workers, which give the in-process
    source's batches bit for bit; the pipeline runs ahead of the consumer."""
    pytest.importorskip("nvidia.dali")
    import numpy as np
    from bot.engine.errors import BotError
    from bot.pretrain import dali_loader
    cfg = {**CFG, "color_jitter": 0.4}
    data, sampler, serial = loaders(tiny_imagefolder, cfg, threads=0)
    sampler.set_epoch(1)
    expected = list(serial)

    def not_here(*args, **kwargs):
        raise AssertionError("the training process read a file or drew a sample")
    _, sampler, parallel = loaders(tiny_imagefolder, cfg, threads=2)  # workers spawned here, unpatched
    for target in (np, "fromfile"), (dali_loader, "oriented_size"), (dali_loader.AugmentationDraws, "__call__"):
        monkeypatch.setattr(*target, not_here)
    sampler.set_epoch(1)
    got = list(parallel)
    assert len(got) == len(expected) == 10
    for a, b in zip(got, expected):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert parallel.pipe.prefetch_queue_depth >= 2
    # the same patches do stop an in-process source: the check above can fail
    _, sampler, serial = loaders(tiny_imagefolder, cfg, threads=0)
    with pytest.raises((AssertionError, BotError)):
        next(iter(serial))


def test_dali_epoch_left_early_then_whole(tiny_imagefolder):
    """An iteration stopped after 2 batches leaves DALI mid-epoch with batches prefetched: the next iteration
    still starts at the sampler's first key, and the one after it too."""
    pytest.importorskip("nvidia.dali")
    _, sampler, dali = loaders(tiny_imagefolder, {**CFG, "color_jitter": 0.4})
    sampler.set_epoch(1)
    it = iter(dali)
    first = [next(it), next(it)]
    del it
    whole = list(dali)
    assert len(whole) == 10
    for a, b in zip(first, whole[:2]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    again = list(dali)
    assert all(torch.equal(x, y) for a, b in zip(whole, again, strict=True) for x, y in zip(a, b))


def test_dali_crops_exif_rotated_jpegs_in_display_pixels(tmp_path):
    """The crop window is decoded in the image's displayed (EXIF-rotated) pixels, where the default loader drew
    the box: a box in stored pixels would move the crop off the shape."""
    pytest.importorskip("nvidia.dali")
    from PIL import Image
    from bot.synthetic.imagefolder import classification_image
    for label, name in enumerate(["a", "b"]):
        (tmp_path / "train" / name).mkdir(parents=True)
        (tmp_path / "val" / name).mkdir(parents=True)
        for i in range(4):
            pixels = classification_image(0, "train", label * 100 + i, label, 96)[:, 16:]  # 80 wide, 96 high
            exif = Image.Exif()
            exif[0x0112] = (6, 8, 1, 6)[i]  # stored sideways (rotate 90 / 270 to display), and one upright
            for split in ("train", "val"):
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.jpg", quality=95, exif=exif)
    cfg = {**CFG, "scale": [0.2, 0.5]}
    data, sampler, dali = loaders(tmp_path, cfg, batch=8, threads=0)
    sampler.set_epoch(1)
    keys = list(sampler)[:8]
    crops, alphas, labels = next(iter(dali))
    ref_crops, ref_alphas, ref_labels = default_batch(data, keys)
    assert torch.equal(alphas, ref_alphas) and torch.equal(labels, ref_labels)
    per_image = (crops.float() - ref_crops.float()).abs().mean((1, 2, 3))
    assert per_image.max() < 3.0, per_image  # two JPEG decoders, one resize filter apart
    other = torch.roll(ref_crops, 1, dims=0)  # the bound tells crops apart: another sample's is far
    assert (crops.float() - other.float()).abs().mean() > 5 * per_image.mean()


def test_dali_unreadable_file_is_one_line_naming_it(tmp_path, tiny_imagefolder):
    """A file gone after the folder was listed: the worker's error comes back as one line with its path."""
    pytest.importorskip("nvidia.dali")
    import shutil
    from pathlib import Path
    from bot.engine.errors import BotError
    root = tmp_path / "copy"
    shutil.copytree(tiny_imagefolder, root)
    data, sampler, dali = loaders(root, CFG, threads=1)
    sampler.set_epoch(0)
    path = data.train.folder.samples[list(sampler)[11][1]][0]  # in the second batch
    Path(path).unlink()
    with pytest.raises(BotError, match="no such image file") as err:
        list(dali)
    assert path in str(err.value) and "\n" not in str(err.value)


def test_pretrain_with_dali_loader(tmp_path, tiny_imagefolder):
    pytest.importorskip("nvidia.dali")
    out = tmp_path / "run"
    args = ["pretrain", "--data", tiny_imagefolder, "--arch", "resnet10d", "--epochs", "1", "--image-size", "32",
            "--batch-size", "16", "--workers", "0", "--device", "cpu", "--loader", "dali", "--out", out]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_per_second"] > 0 and 0 <= summary["metrics"]["top1"] <= 1
    assert "loader: dali" in (out / "config.yaml").read_text()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows if "train_loss" in r)


def test_missing_dali_is_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import fails as if not installed
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["pretrain", "--loader", "dali", "--out", str(out)])
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert "--loader dali needs NVIDIA DALI" in errors[0] and "pip install 'bot[dali]'" in errors[0]
    assert not out.exists()
