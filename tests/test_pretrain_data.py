"""The paper's augmentation: PCA lighting by hand, validation sizes, per-sample seeding, data errors."""
import torch
from PIL import Image

from pretrain.data import PCA_EIGVAL, PCA_EIGVEC, Lighting, SeededSplit, build_datasets, image_folder, val_resize

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
    a, _ = data.train[(1, 5)]
    torch.manual_seed(123)  # the global RNG must not matter
    b, _ = data.train[(1, 5)]
    c, _ = data.train[(2, 5)]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 32, 32)
    # Normalised with the paper's mean/std: the values are centred, not in [0, 1].
    assert a.min() < 0


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
