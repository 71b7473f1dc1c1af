"""Start-up checks on forked processes (engine/check_pool.py): the same results, in order, and the same first
failure in item order as the threads, for a closure (the function reaches the workers by fork); the segmentation
label pass takes that path when the process has a thread budget of 2 or more and enough masks."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from bot.engine import check_pool
from bot.engine.errors import BotError
from bot.engine.images import check_all, map_until_error
from bot.segmentation import data as seg


def test_processes_give_the_threads_results_and_first_failure():
    offset = 7  # a closure: cannot be pickled, travels by fork

    def fn(x):
        if x in (300, 301, 900):
            raise BotError(f"item{x}: bad")
        return np.array([x + offset, os.getpid()])

    items = list(range(1000))
    threads, t_fail = map_until_error(fn, items)
    procs, p_fail = map_until_error(fn, items, processes=2)
    assert t_fail[0] == p_fail[0] == 300 and str(p_fail[1]) == "item300: bad" and isinstance(p_fail[1], BotError)
    assert len(procs) == 300 and [int(r[0]) for r in procs] == [int(r[0]) for r in threads] == list(range(7, 307))
    assert os.getpid() not in {int(r[1]) for r in procs}  # computed in the workers
    good = check_all(lambda x: x * x, list(range(200)), processes=3)
    assert good == [x * x for x in range(200)]


def test_an_exception_that_does_not_pickle_still_comes_back_in_one_line():
    class Odd(Exception):
        def __init__(self, a, b):
            super().__init__(a)
            self.b = b

    def fn(x):
        if x == 5:
            raise Odd("no pickle for me", 1)
        return x

    _, failure = map_until_error(fn, list(range(50)), processes=2)
    assert failure[0] == 5 and "no pickle for me" in str(failure[1])


def test_the_label_pass_uses_the_processes_and_counts_the_same(tmp_path):
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 4, (6, 5), dtype=np.uint8) for _ in range(520)]
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "masks" / split).mkdir(parents=True)
    for i, m in enumerate(masks):
        Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(tmp_path / "images" / "train" / f"im{i}.png")
        Image.fromarray(m).save(tmp_path / "masks" / "train" / f"im{i}.png")
    source = seg.parse_data(f"folder:{tmp_path}", num_classes=4)
    pairs = seg.list_pairs(source, "train", headers=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert check_pool.wanted(len(pairs)) == 2 and check_pool.wanted(10) == 1
        counts = seg.label_counts(pairs, source)
        expected = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=5)
        assert counts.tolist() == expected.tolist()
        Image.fromarray(np.full((6, 5), 9, np.uint8)).save(tmp_path / "masks" / "train" / "im300.png")
        with pytest.raises(BotError, match=r"im300\.png: label value 9 is not a class of 4"):
            seg.label_counts(pairs, source)
    finally:
        torch.set_num_threads(before)
