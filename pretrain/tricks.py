"""The paper's training refinements that no library has in exactly its form (docs/paper.md section 4).

- label smoothing with q_i = 1 - eps on the true class and eps / (K - 1) elsewhere (form "paper"), or eps / K added
  to every class as torch's CrossEntropyLoss(label_smoothing) and GluonCV do (form "uniform");
- mixup of inputs and target distributions with lam ~ Beta(alpha, alpha); written by hand rather than taken from
  timm.data.Mixup because timm's bakes in the uniform smoothing form and we need both forms to compose with it
  (it lives in engine.device_pipeline, with the rest of the batched device-side input work);
- the distillation loss CE(p, softmax(z)) + T^2 * CE(softmax(r / T), softmax(z / T)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bot.engine.device_pipeline import mixup, sample_beta

__all__ = ["smooth_targets", "soft_cross_entropy", "mixup", "sample_beta", "distillation_loss"]


def smooth_targets(labels: torch.Tensor, num_classes: int, eps: float, form: str = "paper") -> torch.Tensor:
    """Target distributions (N, K) for integer labels (N,)."""
    if form == "paper":
        off, on = eps / (num_classes - 1), 1.0 - eps
    elif form == "uniform":
        off, on = eps / num_classes, 1.0 - eps + eps / num_classes
    else:
        raise ValueError(f"smoothing form {form!r}: use paper or uniform")
    out = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return out.scatter_(1, labels.unsqueeze(1), on)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_i q_i log softmax(z)_i, computed in fp32 for stability under autocast."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                      temperature: float, hard_weight: float | None = None) -> torch.Tensor:
    """hard_weight None, the paper's loss: CE(p, softmax(z)) + T^2 * CE(softmax(r / T), softmax(z / T)); a number h,
    GluonCV's DistillationSoftmaxCrossEntropyLoss (gluoncv/loss.py): (1 - h) * T^2 * soft + h * hard."""
    teacher_soft = F.softmax(teacher_logits.float() / temperature, dim=1)
    hard = soft_cross_entropy(student_logits, target)
    soft = temperature ** 2 * soft_cross_entropy(student_logits / temperature, teacher_soft)
    if hard_weight is None:
        return hard + soft
    return (1 - hard_weight) * soft + hard_weight * hard
