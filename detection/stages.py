"""Which backbone stages a detector trains: shared by the FPN and C4 builders."""
from __future__ import annotations

from torch import nn

from bot.engine.errors import BotError

STAGES = ("layer4", "layer3", "layer2", "layer1", "stem")  # trainable_stages=k unfreezes the first k of these


def set_trainable(body: nn.Module, stages: int) -> None:
    if not 0 <= stages <= len(STAGES):
        raise BotError(f"model.trainable_stages {stages}: use 0..{len(STAGES)}")
    trainable = set(STAGES[:stages])
    for name, p in body.named_parameters():
        top = name.split(".")[0]
        stage = top if top.startswith("layer") else "stem"
        p.requires_grad_(stage in trainable)
