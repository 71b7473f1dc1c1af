"""Segmentation start-up at full size: masks counted from their histograms (the same numbers as the per-pixel
int64 reference), the pass shared by two gloo ranks (each file once, counts not multiplied, one error on every
rank), and its result cached in the run directory until a file changes."""
import multiprocessing as mp
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from bot.engine.distributed import DistContext
from bot.engine.errors import BotError
from bot.segmentation import data as seg
from bot.segmentation.data import check_splits, label_counts, list_pairs, parse_data, read_mask


def reference_labels(arr, source):
    """The former per-pixel path: int64 copy, np.where."""
    arr = arr.astype(np.int64)
    return np.where(arr == 0, source.ignore_index, arr - 1) if source.shift else arr


def reference_counts(masks, source):
    k = source.num_classes
    total = np.zeros(k + 1, np.int64)
    for m in masks:
        lab = reference_labels(m, source).reshape(-1)
        total += np.bincount(np.where(lab == source.ignore_index, k, lab), minlength=k + 1)
    return total


def write_set(root, masks, split="train", mode="L", masks_dir="masks"):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / masks_dir / split).mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(masks):
        Image.fromarray(np.zeros(m.shape + (3,), np.uint8)).save(root / "images" / split / f"im{i}.png")
        im = Image.fromarray(m, mode="L")
        if mode == "P":
            im = im.convert("P")
            im.putpalette([v for c in range(256) for v in (c, 255 - c, c // 2)])
        elif mode == "I;16":
            im = Image.fromarray(m.astype(np.uint16))
        im.save(root / masks_dir / split / f"im{i}.png")
    return root


@pytest.mark.parametrize("layout, ignore, mode", [("ade20k", 255, "L"), ("folder", 255, "L"), ("folder", 1, "P"),
                                                  ("folder", 255, "I;16"), ("ade20k", 2, "L")])
def test_histogram_counts_and_lookup_equal_the_per_pixel_reference(tmp_path, layout, ignore, mode):
    rng = np.random.default_rng(0)
    k = 5
    top = k + 1 if layout == "ade20k" else k   # stored values 0..k (ADE: 0 = other) / 0..k-1 plus the ignore value
    masks = [rng.integers(0, top, (9, 13)).astype(np.uint8) for _ in range(3)]
    if layout == "folder":
        masks[1][2, 3] = ignore
    split = "training" if layout == "ade20k" else "train"
    write_set(tmp_path, masks, split, mode, "annotations" if layout == "ade20k" else "masks")
    source = parse_data(f"{layout}:{tmp_path}", num_classes=k, ignore_index=ignore)
    pairs = list_pairs(source, split)
    assert label_counts(pairs, source).tolist() == reference_counts(masks, source).tolist()
    for (_, mask_path), m in zip(pairs, masks):
        got = read_mask(mask_path, source)
        assert got.dtype == torch.int64 and got.numpy().tolist() == reference_labels(m, source).tolist()
    # a value that is no class: the same one-line error, naming the file and the largest bad value
    bad = masks[2].copy()
    bad[0, 0], bad[1, 1] = k + 3, k + 2
    Image.fromarray(bad.astype(np.uint16) if mode == "I;16" else bad, **({} if mode == "I;16" else {"mode": "L"})
                    ).save(pairs[2][1])
    for call in (lambda: label_counts(pairs, source), lambda: read_mask(pairs[2][1], source)):
        with pytest.raises(BotError, match=f"{pairs[2][1]}: label value {k + 3} is not a class of {k}"):
            call()


def folder_set(root, n_train=6, n_val=2, size=(16, 12)):
    rng = np.random.default_rng(1)
    masks = {s: [rng.integers(0, 3, size[::-1]).astype(np.uint8) for _ in range(n)]
             for s, n in (("train", n_train), ("val", n_val))}
    for split, ms in masks.items():
        write_set(root, ms, split)
    return parse_data(f"folder:{root}", num_classes=3), masks


def test_a_restart_reads_the_checks_from_the_run_directory_until_a_file_changes(tmp_path, monkeypatch, capsys):
    source, masks = folder_set(tmp_path / "data")
    cache = tmp_path / "run" / "data_check.json"
    pairs = lambda s: list_pairs(source, s, headers=False)  # noqa: E731
    first = check_splits(source, pairs("train"), pairs("val"), cache=cache)
    assert first.tolist() == reference_counts(masks["train"], source).tolist() and cache.is_file()

    calls = []
    real = seg.train_pair_counts
    monkeypatch.setattr(seg, "train_pair_counts", lambda pair, src: calls.append(pair) or real(pair, src))
    again = check_splits(source, pairs("train"), pairs("val"), cache=cache)
    assert again.tolist() == first.tolist() and calls == []     # no file read: the cached result
    assert "data checks read from" in capsys.readouterr().err

    # a mask rewritten (new content, new mtime): the pass runs again and counts the new content
    changed = masks["train"][0].copy()
    changed[:] = 2
    Image.fromarray(changed, mode="L").save(tmp_path / "data" / "masks" / "train" / "im0.png")
    st = os.stat(tmp_path / "data" / "masks" / "train" / "im0.png")
    os.utime(tmp_path / "data" / "masks" / "train" / "im0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    now = check_splits(source, pairs("train"), pairs("val"), cache=cache)
    assert len(calls) == 6 and now.tolist() == reference_counts([changed] + masks["train"][1:], source).tolist()

    # a pair added, then one removed: each time the pass runs again
    calls.clear()
    write_set(tmp_path / "extra", [masks["train"][1]], "train")
    for sub in ("images", "masks"):
        os.rename(tmp_path / "extra" / sub / "train" / "im0.png", tmp_path / "data" / sub / "train" / "im9.png")
    check_splits(source, pairs("train"), pairs("val"), cache=cache)
    assert len(calls) == 7
    calls.clear()
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub / "train" / "im9.png").unlink()
    check_splits(source, pairs("train"), pairs("val"), cache=cache)
    assert len(calls) == 6
    calls.clear()
    check_splits(source, pairs("train"), pairs("val"), cache=cache)
    assert calls == []
    # another class count is another result
    other = parse_data(f"folder:{tmp_path / 'data'}", num_classes=4)
    check_splits(other, pairs("train"), pairs("val"), cache=cache)
    assert len(calls) == 6

    # a bad file is found as before and nothing is cached for it
    cache.unlink()
    Image.fromarray(np.full((12, 16), 7, np.uint8), mode="L").save(tmp_path / "data" / "masks" / "val" / "im1.png")
    with pytest.raises(BotError, match=r"val/im1.png: label value 7 is not a class of 3"):
        check_splits(source, pairs("train"), pairs("val"), cache=cache)
    assert not cache.exists()


def _rank(rank, port, root, queue):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ctx = DistContext(rank, 2, rank, torch.device("cpu"))
    source = parse_data(f"folder:{root}", num_classes=3)
    seen = []
    real = seg.train_pair_counts
    seg.train_pair_counts = lambda pair, src: seen.append(pair[1].name) or real(pair, src)
    pairs = lambda s: list_pairs(source, s, headers=False)  # noqa: E731
    counts = check_splits(source, pairs("train"), pairs("val"), ctx, root / f"cache{rank}.json").tolist()
    if rank == 0:   # im3 is in rank 1's share (every other pair, from its rank)
        Image.fromarray(np.full((12, 16), 9, np.uint8), mode="L").save(root / "masks" / "train" / "im3.png")
    dist.barrier()
    try:
        check_splits(source, pairs("train"), pairs("val"), ctx)
        error = None
    except BotError as e:
        error = str(e)
    dist.destroy_process_group()
    queue.put((rank, counts, seen, error))


def test_two_ranks_share_the_pass_and_agree(tmp_path):
    source, masks = folder_set(tmp_path, n_train=6)
    expected = reference_counts(masks["train"], source).tolist()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, tmp_path, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = {r: rest for r, *rest in (queue.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert got[0][0] == got[1][0] == expected            # summed over the ranks once, not once per rank
    assert sorted(got[0][1][:3] + got[1][1][:3]) == [f"im{i}.png" for i in range(6)]   # each pair read by one rank
    assert got[0][1][:3] == ["im0.png", "im2.png", "im4.png"] and got[1][1][:3] == ["im1.png", "im3.png", "im5.png"]
    assert (tmp_path / "cache0.json").is_file() and not (tmp_path / "cache1.json").exists()  # rank 0 writes it
    for rank in (0, 1):   # rank 1's bad mask: the same one line on both ranks
        assert got[rank][2] == f"{tmp_path / 'masks' / 'train' / 'im3.png'}: label value 9 is not a class of 3 " \
                               f"nor the ignore index 255"
