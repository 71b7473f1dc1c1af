"""Segmentation data: the synthetic ADE20K writer, both layouts, joint transforms, and every bad-input error."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from bot.cli import main
from bot.segmentation.data import SegDataset, list_pairs, parse_data, read_mask
from bot.segmentation.transforms import eval_transform, pad_collate, train_transform
from bot.synthetic.ade20k import SEG_CLASSES, segmentation_sample, seams, write_ade20k


def make_folder(root, n=2, size=(32, 24), num_classes=3, split="train"):
    """A tiny folder-layout set: image = class colour per pixel, mask = vertical class bands."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "masks" / split).mkdir(parents=True, exist_ok=True)
    w, h = size
    for i in range(n):
        mask = (np.arange(w)[None, :].repeat(h, 0) * num_classes // w).astype(np.uint8)
        Image.fromarray(np.stack([mask * 80] * 3, -1).astype(np.uint8)).save(root / "images" / split / f"im{i}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / split / f"im{i}.png")
    return root


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_synthetic_ade20k_layout_and_labels(tmp_path):
    write_ade20k(tmp_path, {"training": 3, "validation": 2}, size=32, seed=0)
    base = tmp_path / "ADEChallengeData2016"
    assert sorted(p.name for p in (base / "images" / "training").iterdir()) == \
        [f"ADE_train_{i:08d}.jpg" for i in (1, 2, 3)]
    assert (base / "classes.txt").read_text().split() == list(SEG_CLASSES)
    mask = np.asarray(Image.open(base / "annotations" / "validation" / "ADE_val_00000001.png"))
    assert mask.dtype == np.uint8 and mask.max() <= len(SEG_CLASSES) and 1 in mask and 0 in mask
    # the same (seed, split, index) gives the same scene; the seams are the ignore label 0
    image, label = segmentation_sample(0, "validation", 0, 32)
    assert (label == mask).all()
    a, b = label[1:, :], label[:-1, :]   # two classes never touch: a seam of 0 lies between them
    assert ((a == b) | (a == 0) | (b == 0)).all()
    assert seams(np.array([[1, 1, 2]])).tolist() == [[False, True, True]]
    src = parse_data(f"ade20k:{base}")
    assert src.num_classes == 11 and src.class_names[0] == "background" and src.ignore_index == 255
    shifted = read_mask(base / "annotations" / "validation" / "ADE_val_00000001.png", src)
    assert (shifted[torch.from_numpy(mask == 0)] == 255).all()
    assert (shifted[torch.from_numpy(mask > 0)] == torch.from_numpy(mask[mask > 0].astype(np.int64)) - 1).all()


def test_folder_layout_keeps_labels_and_ignore_index(tmp_path):
    make_folder(tmp_path, num_classes=3)
    m = np.asarray(Image.open(tmp_path / "masks" / "train" / "im0.png")).copy()
    m[0, 0] = 7
    Image.fromarray(m, mode="L").save(tmp_path / "masks" / "train" / "im0.png")
    src = parse_data(f"folder:{tmp_path}", num_classes=3, ignore_index=7)
    pairs = list_pairs(src, "train")
    assert [p[0].name for p in pairs] == ["im0.png", "im1.png"]
    mask = read_mask(pairs[0][1], src)
    assert mask[0, 0] == 7 and set(mask.unique().tolist()) == {0, 1, 2, 7}


def test_joint_train_transform_keeps_image_and_mask_aligned():
    h, w = 40, 56
    mask = torch.zeros(h, w, dtype=torch.int64)
    mask[:, 20:] = 1
    mask[25:, :] = 2
    colours = torch.tensor([[0, 0, 0], [255, 0, 0], [0, 0, 255]], dtype=torch.uint8)
    image = colours[mask].permute(2, 0, 1).contiguous()
    t = train_transform(48, 32, (0.5, 2.0), 255, (0, 0, 0), (1, 1, 1))
    padded = 0
    for seed in range(12):
        torch.manual_seed(seed)
        im, mk = t(image, mask)
        assert im.shape == (3, 32, 32) and mk.shape == (32, 32) and mk.dtype == torch.int64
        labelled = mk != 255
        padded += int((~labelled).sum())
        decoded = torch.where(im[0] > 0.5, 1, torch.where(im[2] > 0.5, 2, 0))
        agree = (decoded[labelled] == mk[labelled]).float().mean()
        assert agree > 0.9  # only the bilinear seams of the image may differ from the nearest-resized mask
        assert set(mk.unique().tolist()) <= {0, 1, 2, 255}
    assert padded > 0  # scales below 1 had to pad the crop with the ignore index


def test_eval_collate_pads_with_ignore_and_keeps_sizes():
    items = [(torch.ones(3, 20, 30), torch.zeros(20, 30, dtype=torch.int64), 0),
             (torch.ones(3, 33, 10), torch.ones(33, 10, dtype=torch.int64), 1)]
    images, masks, sizes, idx = pad_collate(items, 32, 255)
    assert images.shape == (2, 3, 64, 32) and sizes == [(20, 30), (33, 10)] and idx == [0, 1]
    assert (masks[0, 20:] == 255).all() and (masks[0, :20, :30] == 0).all() and (images[1, :, 33:] == 0).all()


def test_dataset_augmentation_is_seeded_by_epoch_and_index(tmp_path):
    make_folder(tmp_path, n=2, size=(32, 32))
    src = parse_data(f"folder:{tmp_path}", num_classes=3)
    ds = SegDataset(list_pairs(src, "train"), src, train_transform(32, 24, (0.5, 2.0), 255, (0.5,) * 3, (0.2,) * 3), seed=3)
    a, b, c = ds[(0, 1)], ds[(0, 1)], ds[(1, 1)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    e = SegDataset(ds.pairs, src, eval_transform((0.5,) * 3, (0.2,) * 3))[0]
    assert e[0].shape == (3, 32, 32)


# ---- bad input: one line naming the file, exit code 2 -----------------------------------------------------------

def finetune_folder(root, *extra):
    return cli("finetune-seg", "--backbone", "resnet18d", "--data", f"folder:{root}", "--num-classes", 3,
               "--out", root / "run", "--epochs", 1, "--batch-size", 2, "--image-size", 32, *extra)


def assert_error(result, *needles):
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    for needle in needles:
        assert str(needle) in line, line


def test_missing_split_folder(tmp_path):
    make_folder(tmp_path)  # train only: no val split
    assert_error(finetune_folder(tmp_path), tmp_path / "images" / "val", "missing split folder")


def test_image_without_mask_and_mask_without_image(tmp_path):
    make_folder(tmp_path)
    make_folder(tmp_path, split="val")
    (tmp_path / "masks" / "train" / "im1.png").rename(tmp_path / "masks" / "train" / "other.png")
    assert_error(finetune_folder(tmp_path), tmp_path / "images" / "train" / "im1.png", "has no mask")
    (tmp_path / "images" / "train" / "im1.png").unlink()
    assert_error(finetune_folder(tmp_path), tmp_path / "masks" / "train" / "other.png", "has no image")


def test_mask_size_differs_from_image(tmp_path):
    make_folder(tmp_path)
    make_folder(tmp_path, split="val")
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(tmp_path / "masks" / "val" / "im0.png")
    assert_error(finetune_folder(tmp_path), tmp_path / "masks" / "val" / "im0.png", "10x10", "differs")


def test_rgb_mask_is_refused(tmp_path):
    make_folder(tmp_path)
    make_folder(tmp_path, split="val")
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path / "masks" / "train" / "im1.png")
    assert_error(finetune_folder(tmp_path), tmp_path / "masks" / "train" / "im1.png", "RGB", "class indices")


def test_label_value_out_of_range_names_file_and_value(tmp_path):
    make_folder(tmp_path)
    make_folder(tmp_path, split="val")
    m = np.zeros((24, 32), np.uint8)
    m[3, 3] = 9
    Image.fromarray(m, mode="L").save(tmp_path / "masks" / "train" / "im1.png")
    # raised inside a DataLoader worker while training, still one line naming the file and the value
    result = finetune_folder(tmp_path, "--workers", 1)
    assert_error(result, tmp_path / "masks" / "train" / "im1.png", "label value 9")
    assert not (tmp_path / "run" / "summary.json").exists()
    # and when scoring predictions against the same masks
    assert_error(cli("evaluate-seg", "--predictions", tmp_path / "masks" / "train", "--data", f"folder:{tmp_path}",
                     "--num-classes", 3, "--split", "train"), "label value 9")


def test_folder_needs_num_classes(tmp_path):
    make_folder(tmp_path)
    assert_error(cli("finetune-seg", "--backbone", "resnet18d", "--data", f"folder:{tmp_path}"), "--num-classes")


def test_ade20k_class_names_from_object_info(tmp_path):
    (tmp_path / "objectInfo150.csv").write_text(
        "Idx,Ratio,Train,Val,Name\n1,0.1576,11664,1172,wall\n2,0.1072,6046,612,building;edifice\n")
    src = parse_data(f"ade20k:{tmp_path}", num_classes=2)
    assert src.class_names == ["wall", "building"] and src.ignore_index == 255
    assert parse_data(f"ade20k:{tmp_path}").num_classes == 2   # the names file sets the class count
    with pytest.raises(Exception, match="2 class names for 3 classes"):
        parse_data(f"ade20k:{tmp_path}", num_classes=3)


def test_train_crop_pads_right_and_bottom_and_blurs_half_the_crops():
    """GluonCV's _sync_transform: a short image is padded on the right/bottom only (so it stays at the crop's top
    left), and the crop is blurred with p = 0.5, sigma U(0, 1), the mask never."""
    import torch

    from bot.segmentation.transforms import train_transform

    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mask = torch.randint(0, 5, (16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    plain = train_transform(16, 32, (1.0, 1.0), 255, (0, 0, 0), (1, 1, 1), flip=False, blur_p=0.0)
    for seed in range(5):
        torch.manual_seed(seed)
        img, m = plain(image, mask)
        assert torch.equal(m[:16, :16], mask) and (m[16:] == 255).all() and (m[:, 16:] == 255).all()
        assert torch.allclose(img[:, :16, :16], image.float() / 255) and (img[:, 16:] == 0).all()
    blurry = train_transform(16, 16, (1.0, 1.0), 255, (0, 0, 0), (1, 1, 1), flip=False, blur_p=0.5)
    blurred = 0
    for seed in range(200):
        torch.manual_seed(seed)
        img, m = blurry(image, mask)
        assert torch.equal(m, mask)
        blurred += not torch.allclose(img, image.float() / 255, atol=1 / 255)
    assert 70 <= blurred <= 130  # about half (a sigma near 0 leaves a crop unchanged: a few count as unblurred)
