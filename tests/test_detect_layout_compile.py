"""finetune-detect's memory layout: NCHW by default (also on CUDA), channels_last when asked."""
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

