"""Shared fixtures: a private synthetic cache per test session, tiny ImageFolder sets, tiny backbone files."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

torch.set_num_threads(2)
warnings.filterwarnings("ignore", message="No pretrained configuration")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    os.environ["BOT_CACHE"] = str(tmp_path_factory.mktemp("bot-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory):
    """10 classes x 8 train / 4 val images of 32 px from the shapes world."""
    from bot.synthetic.imagefolder import write_imagefolder

    root = tmp_path_factory.mktemp("shapes32")
    write_imagefolder(root, {"train": 8, "val": 4}, size=32, seed=0)
    return root
