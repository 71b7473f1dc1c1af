"""The optimiser of the paper: SGD with Nesterov momentum, with or without weight decay on 1-d parameters.

No bias decay uses timm's param_groups_weight_decay, which excludes every parameter with ndim <= 1 or a name
ending in ".bias": conv/FC biases and BN gamma and beta. Conv and FC weights keep the decay.
"""
from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay


def build_optimizer(model: torch.nn.Module, cfg: dict, lr: float, **options) -> torch.optim.SGD:
    if cfg["no_bias_decay"]:
        groups = param_groups_weight_decay(model, cfg["weight_decay"])
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": cfg["weight_decay"]}]
    return torch.optim.SGD(groups, lr=lr, momentum=cfg["momentum"], nesterov=cfg["nesterov"], **options)


def no_decay_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters that no-bias-decay exempts (for the docs and the tests)."""
    return [n for n, p in model.named_parameters() if p.ndim <= 1 or n.endswith(".bias")]
