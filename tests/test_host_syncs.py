"""Per-batch host syncs, as far as a CPU can show them: the aten ops a batch dispatches. On CUDA `.item()`
(`_local_scalar_dense`), a tensor made from host values (`lift_fresh`, a blocking copy) and a blocking `.to()` each
wait for the device; here they are counted in the dispatched ops, or the copies' non_blocking flag is read.
What only a GPU shows (whether a copy overlaps) is benchmarks/gpu_check.py's sync audit."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

HOST_READS = ("_local_scalar_dense", "lift_fresh", "nonzero", "bincount", "is_nonzero", "equal")


class Record(TorchDispatchMode):
    """Every aten op dispatched inside, with its non_blocking flag where it has one."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append((func.name(), kwargs.get("non_blocking")))
        return func(*args, **kwargs)


def test_pretrain_top_k_counts_stay_on_the_device():
    from bot.pretrain.train import topk_hits

    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5], [0.6, 0.5, 0.4]])
    labels = torch.tensor([1, 2, 0, 1])
    with Record() as record:
        hits = topk_hits(logits.topk(2, dim=1).indices, labels)
    # top-1 right for image 0 only; the top-2 sets {1,0}, {0,2}, {2,1}, {0,1} hold the labels of images 0, 1, 3
    assert hits.tolist() == [1, 3] and hits.dtype == torch.int64
    reads = [op for op, _ in record.ops if any(name in op for name in HOST_READS)]
    assert record.ops and not reads, reads


def test_detection_targets_are_copied_without_blocking():
    from bot.detection.train import targets_to

    targets = [{"boxes": torch.rand(n, 4), "labels": torch.arange(n), "image_id": f"im{n}"} for n in (2, 3)]
    with Record() as record:
        moved = targets_to(targets, torch.device("meta"))  # a real copy to another device, on a CPU-only machine
    copies = [flag for op, flag in record.ops if op == "aten::_to_copy"]
    assert copies == [True] * 4  # boxes and labels of each image, none blocking
    assert [t["boxes"].shape for t in moved] == [(2, 4), (3, 4)] and moved[0]["labels"].device.type == "meta"
