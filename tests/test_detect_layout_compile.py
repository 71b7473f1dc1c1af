"""finetune-detect's memory layout and torch.compile decisions: NCHW by default (also on CUDA), channels_last when
asked; --compile compiles the trunk only, with dynamic shapes, so variable image sizes do not recompile it."""
from pathlib import Path

import pytest
import torch

from bot.engine.distributed import DistContext
from bot.engine.rundir import RunDir
from bot.engine.stage import Session

CUDA = DistContext(device=torch.device("cuda"))  # only read, never used: no GPU needed


def session_for(stage, cfg, tmp_path):
    return Session(stage, cfg, Path(tmp_path), False, CUDA, RunDir(tmp_path, enabled=False))


def test_detector_is_nchw_by_default_on_cuda_and_channels_last_when_asked(tmp_path):
    from bot.detection import train as det
    from bot.segmentation import train as seg

    assert session_for(det.STAGE, det.resolve_config({"backbone": "resnet18d"}), tmp_path).channels_last is False
    asked = det.resolve_config({"backbone": "resnet18d"}, ["train.channels_last=true"])
    assert session_for(det.STAGE, asked, tmp_path).channels_last is True
    # the other stages keep auto: NHWC on CUDA
    assert session_for(seg.STAGE, seg.resolve_config({"backbone": "resnet18d"}), tmp_path).channels_last is True


def test_compile_traces_the_trunk_once_over_variable_image_sizes():
    import torch._dynamo
    from torch._dynamo.utils import counters

    from bot.detection.train import compile_trunk
    from detect_helpers import tiny_detector

    model = tiny_detector()
    keys = list(model.state_dict())
    torch._dynamo.reset()
    counters.clear()
    compile_trunk(model, "eager")  # dynamo's tracing and guards without a code generator: what recompiles shows here
    g = torch.Generator().manual_seed(0)
    for h, w in ((96, 128), (128, 96), (100, 140)):  # padded batches 96x128, 128x96, 128x160
        images = [torch.rand(3, h, w, generator=g) for _ in range(2)]
        targets = [{"boxes": torch.tensor([[5., 5., 40., 50.], [30., 20., 80., 90.]]), "labels": torch.tensor([1, 2])}
                   for _ in images]
        losses = model(images, targets)  # the training forward: sampled proposals, losses (dynamo traces forwards)
        assert set(losses) >= {"loss_classifier", "loss_objectness"}
    # the backbone + FPN and the box head: one graph each for every size and proposal count, no graph break
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
    assert list(model.state_dict()) == keys  # compiled in place: checkpoints keep their keys
    torch._dynamo.reset()
