"""Segmentation metrics against hand-computed confusion matrices, and their sum over two DDP ranks."""
import math
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from bot.engine.distributed import DistContext
from bot.segmentation.metrics import ConfusionMatrix, per_class_table

IGN = 255


def test_hand_computed_matrix_with_ignore_pixels():
    target = torch.tensor([[0, 0, 1], [1, 2, IGN]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    cm = ConfusionMatrix(3, IGN)
    cm.update(pred, target)
    # rows = truth, columns = prediction; the ignore pixel (predicted 2) is nowhere
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    r = cm.compute()
    assert r["pixel_acc"] == pytest.approx(3 / 5)
    # IoU = TP / (GT + PRED - TP): class 0: 1/(2+2-1), class 1: 2/(2+3-2), class 2: 0/(1+0-0)
    assert r["iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert r["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert r["class_acc"] == pytest.approx([1 / 2, 1.0, 0.0])
    assert r["mean_class_acc"] == pytest.approx(0.5)


def test_absent_class_is_excluded_not_counted_as_one():
    # 4 classes: class 3 appears nowhere; class 2 is predicted but absent from the ground truth.
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])
    cm = ConfusionMatrix(4, IGN)
    cm.update(pred, target)
    r = cm.compute()
    assert math.isnan(r["iou"][3]) and math.isnan(r["class_acc"][3])
    assert r["iou"][2] == 0.0                       # predicted-only: present, IoU 0, counted
    assert math.isnan(r["class_acc"][2])            # but no ground truth: no class accuracy
    assert r["miou"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert r["mean_class_acc"] == pytest.approx((1 / 2 + 1) / 2)
    table = per_class_table(r, ["a", "b", "c", "d"])
    assert "| 3 | d | - | - | 0 | 0 |" in table


def test_perfect_prediction():
    target = torch.tensor([[0, 1], [1, IGN]])
    cm = ConfusionMatrix(5, IGN)
    cm.update(target.clone().masked_fill(target == IGN, 4), target)
    r = cm.compute()
    assert r["pixel_acc"] == 1.0 and r["miou"] == 1.0 and r["mean_class_acc"] == 1.0
    assert sum(not math.isnan(v) for v in r["iou"]) == 2   # classes 2..4 absent: not averaged in


def test_accumulates_over_batches_like_a_loop_reference():
    rng = np.random.default_rng(0)
    k = 6
    cm = ConfusionMatrix(k, IGN)
    ref = np.zeros((k, k), dtype=np.int64)
    for _ in range(3):
        t = rng.integers(0, k, (2, 9, 7))
        t[rng.random(t.shape) < 0.1] = IGN
        p = rng.integers(0, k, t.shape)
        cm.update(torch.from_numpy(p), torch.from_numpy(t))
        for tt, pp in zip(t.ravel(), p.ravel()):
            if tt != IGN:
                ref[tt, pp] += 1
    assert cm.matrix.numpy().tolist() == ref.tolist()
    r = cm.compute()
    iou = [ref[c, c] / (ref[c].sum() + ref[:, c].sum() - ref[c, c]) for c in range(k)]
    assert r["miou"] == pytest.approx(np.mean(iou))
    assert r["pixel_acc"] == pytest.approx(np.trace(ref) / ref.sum())


def test_rejects_labels_outside_the_classes():
    cm = ConfusionMatrix(3, IGN)
    with pytest.raises(ValueError, match="target label 3"):
        cm.update(torch.tensor([0]), torch.tensor([3]))


def _rank(rank, port, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    target = torch.tensor([[0, 0, 1], [1, 2, IGN]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    cm = ConfusionMatrix(3, IGN)
    cm.update(pred[rank], target[rank])  # each rank sees one row
    cm.reduce(DistContext(rank, 2, rank, torch.device("cpu")))
    dist.destroy_process_group()
    out.put((rank, cm.matrix.tolist()))


def test_reduce_sums_the_matrices_of_two_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # fork: no re-import of torch in the children, seconds instead of tens
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert got[0] == got[1] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def _loop_reference(pred, target, k, ignore):
    ref = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(target.ravel().tolist(), pred.ravel().tolist()):
        if t != ignore:
            ref[t, p] += 1
    return ref


@pytest.mark.parametrize("k, ignore, dtype", [
    (6, 255, np.int64),     # the usual: ignore index past the classes, bins past k*k cut off
    (6, 255, np.uint8),     # PNG masks: t * k must not overflow uint8
    (6, 0, np.int64),       # ignore index inside the classes: its pixels dropped first
    (6, -1, np.int32),      # negative ignore index
    (6, None, np.int64),    # nothing ignored
    (300, 255, np.int64),   # more classes than the ignore index
])
def test_cpu_and_device_paths_match_a_loop_reference(k, ignore, dtype):
    rng = np.random.default_rng(k)
    target = rng.integers(0, k, (3, 11, 7))
    if ignore is not None:
        target[rng.random(target.shape) < 0.2] = ignore
    pred = rng.integers(0, k, target.shape)
    ref = _loop_reference(pred, target, k, ignore)
    cpu = ConfusionMatrix(k, ignore)
    cpu.update(torch.from_numpy(pred.astype(dtype if k < 256 else np.int64)), torch.from_numpy(target.astype(dtype)))
    assert cpu.matrix.numpy().tolist() == ref.tolist()
    device = ConfusionMatrix(k, ignore)  # the CUDA path's arithmetic, run on CPU tensors
    for _ in range(2):
        device.update_on_device(torch.from_numpy(pred), torch.from_numpy(target))
    assert device.matrix.numpy().tolist() == (2 * ref).tolist()


@pytest.mark.parametrize("pred, target, message", [
    ([0, 1], [1, 4], "target label 4"),       # between k and the ignore index
    ([0, 1], [1, 300], "target label 300"),   # past the ignore index
    ([0, 1], [-2, 1], "target label -2"),
    ([0, 3], [1, 1], "predicted label 3"),
    ([-1, 0], [1, 1], "predicted label -1"),
])
def test_out_of_range_labels_are_rejected_on_both_paths(pred, target, message):
    cm = ConfusionMatrix(3, IGN)
    with pytest.raises(ValueError, match=message):
        cm.update(torch.tensor(pred), torch.tensor(target))
    device = ConfusionMatrix(3, IGN)
    device.update_on_device(torch.tensor(pred), torch.tensor(target))  # counted without a sync...
    with pytest.raises(ValueError, match="1 pixels have a target or predicted label outside"):
        device.matrix  # ...and reported when the matrix is read


def test_a_prediction_under_an_ignored_pixel_may_be_anything():
    cm = ConfusionMatrix(3, IGN)
    cm.update(torch.tensor([7, 1, -4]), torch.tensor([IGN, 1, IGN]))
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


# aten ops that read a value back to the host on CUDA (.item(), data-dependent output sizes, bincount's min/max)
HOST_READS = ("_local_scalar_dense", "bincount", "nonzero", "masked_select", "unique", "histc", "is_nonzero", "equal")


def test_device_path_runs_no_op_that_reads_back_to_the_host():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.name())
            return func(*args, **(kwargs or {}))

    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.integers(0, 5, (2, 9, 7)))
    target[0, 0] = IGN
    pred = torch.from_numpy(rng.integers(0, 5, (2, 9, 7)))
    cm = ConfusionMatrix(5, IGN)
    with Record() as record:
        for _ in range(3):
            cm.update_on_device(pred, target)
    assert record.ops, "nothing was dispatched"
    reads = [op for op in record.ops if any(name in op for name in HOST_READS)]
    assert not reads, f"host reads per batch: {reads}"
    assert cm.matrix.sum() == 3 * (target != IGN).sum()  # the counts are read once, here


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_update_does_not_synchronise():
    target = torch.randint(0, 5, (4, 64, 64), device="cuda")
    target[:, 0] = IGN
    pred = torch.randint(0, 5, (4, 64, 64), device="cuda")
    cm = ConfusionMatrix(5, IGN)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            cm.update(pred, target)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(cm.matrix.sum()) == 3 * int((target != IGN).sum())
