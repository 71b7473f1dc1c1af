"""The paper's augmentation: PCA lighting by hand, validation sizes, per-sample seeding, the batched device path
against the per-sample CPU path, data errors."""
import pytest
import torch
from PIL import Image

from bot.engine.device_pipeline import DevicePipeline
from bot.pretrain.data import (PCA_EIGVAL, PCA_EIGVEC, Lighting, SeededSplit, build_datasets, image_folder, train_transform,
                           val_resize)

CFG = dict(image_size=32, scale=[0.08, 1.0], ratio=[0.75, 4 / 3], color_jitter=0.4, pca_noise=0.1)


def test_lighting_adds_eigvec_times_alpha_eigval():
    img = torch.zeros(3, 2, 2)
    torch.manual_seed(0)
    out = Lighting(0.1)(img)
    torch.manual_seed(0)
    alpha = torch.randn(3) * 0.1
    expected = [sum(PCA_EIGVEC[c, k].item() * alpha[k].item() * PCA_EIGVAL[k].item() for k in range(3)) / 255 for c in range(3)]
    for c in range(3):
        assert torch.allclose(out[c], torch.full((2, 2), expected[c]), atol=1e-6)
    assert torch.equal(Lighting(0.0)(img), img)


def test_validation_resize_then_centre_crop(tiny_imagefolder):
    assert val_resize(224) == 256 and val_resize(64) == 73
    data = build_datasets(tiny_imagefolder, CFG, seed=0)
    x, y = data.val[0]
    assert x.shape == (3, 32, 32) and y == 0
    assert len(data.classes) == 10 and len(data.train) == 80 and len(data.val) == 40


def test_train_augmentation_is_seeded_per_sample(tiny_imagefolder):
    data = build_datasets(tiny_imagefolder, CFG, seed=0)
    a, alpha_a, _ = data.train[(1, 5)]
    torch.manual_seed(123)  # the global RNG must not matter
    b, alpha_b, _ = data.train[(1, 5)]
    c, alpha_c, _ = data.train[(2, 5)]
    assert torch.equal(a, b) and torch.equal(alpha_a, alpha_b)
    assert not torch.equal(a, c) and not torch.equal(alpha_a, alpha_c)
    # uint8 crops leave the worker; the device pipeline normalises them: centred values, not in [0, 1]
    assert a.shape == (3, 32, 32) and a.dtype == torch.uint8 and alpha_a.shape == (3,)
    assert data.device_pipeline(a[None], alpha_a[None]).min() < 0


@pytest.mark.parametrize("pca_noise, color_jitter", [(0.1, 0.4), (0.0, 0.4), (0.1, 0.0)])
def test_batched_device_path_equals_the_per_sample_cpu_path(tiny_imagefolder, pca_noise, color_jitter):
    cfg = {**CFG, "pca_noise": pca_noise, "color_jitter": color_jitter}
    folder = image_folder(tiny_imagefolder / "train")
    reference = SeededSplit(folder, train_transform(cfg), seed=7)
    data = build_datasets(tiny_imagefolder, cfg, seed=7)
    keys = [(0, 3), (1, 3), (2, 40), (5, 79)]
    expected = torch.stack([reference[k][0] for k in keys])
    crops, alphas, labels = (torch.stack([torch.as_tensor(x) for x in parts]) for parts in zip(*(data.train[k] for k in keys)))
    assert labels.tolist() == [reference[k][1] for k in keys]
    got = data.device_pipeline(crops, alphas)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
    if pca_noise == 0:
        assert not alphas.any()


def test_device_pipeline_by_hand_and_channels_last():
    crops = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2).clone()
    alphas = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    out = DevicePipeline(mean, std, channels_last=True)(crops, alphas)
    assert out.is_contiguous(memory_format=torch.channels_last)
    for n in range(2):
        rgb = [sum(PCA_EIGVEC[c, k].item() * alphas[n, k].item() * PCA_EIGVAL[k].item() for k in range(3)) / 255
               for c in range(3)]
        for c, v in enumerate([0, 51, 255]):
            assert out[n, c].flatten().tolist() == pytest.approx([(v / 255 + rgb[c] - mean[c]) / std[c]] * 4, abs=1e-6)
    with pytest.raises(ValueError, match="expected uint8 crops"):
        DevicePipeline(mean, std)(crops.float())


def test_corrupt_image_is_named(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "cat" / "ok.png")
    bad = tmp_path / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    folder = image_folder(tmp_path / "train")
    index = [p for p, _ in folder.samples].index(str(bad))
    split = SeededSplit(folder, lambda im: im, 0)
    try:
        split[(0, index)]
    except Exception as e:
        assert type(e).__name__ == "BotError" and "broken.jpg" in str(e) and "not a readable image" in str(e)
    else:
        raise AssertionError("no error for a corrupt image")
