"""The paper's training refinements that no library has in exactly its form (docs/paper.md section 4).

- label smoothing with q_i = 1 - eps on the true class and eps / (K - 1) elsewhere (form "paper"), or eps / K added
  to every class as torch's CrossEntropyLoss(label_smoothing) and GluonCV do (form "uniform");
- mixup of inputs and target distributions with lam ~ Beta(alpha, alpha); written here rather than taken from
  timm.data.Mixup because timm's bakes in the uniform smoothing form and we need both forms to compose with it;
- the distillation loss CE(p, softmax(z)) + T^2 * CE(softmax(r / T), softmax(z / T)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def mixup(images: torch.Tensor, targets: torch.Tensor, alpha: float, generator: torch.Generator):
    """x = lam x_i + (1 - lam) x_j and y = lam y_i + (1 - lam) y_j over a random pairing of the batch.

    Returns the mixed batch, the mixed target distributions, and lam. Randomness comes from `generator` only,
    so a resumed run draws the same lam and pairing as an uninterrupted one.
    """
    lam = sample_beta(alpha, generator)
    perm = torch.randperm(images.shape[0], generator=generator).to(images.device)
    return lam * images + (1 - lam) * images[perm], lam * targets + (1 - lam) * targets[perm], lam


def sample_beta(alpha: float, generator: torch.Generator) -> float:
    """lam ~ Beta(alpha, alpha) as G1 / (G1 + G2), G ~ Gamma(alpha): torch.distributions.Beta takes no generator."""
    g = torch._standard_gamma(torch.full((2,), float(alpha), dtype=torch.float64), generator=generator)
    total = float(g.sum())
    return float(g[0]) / total if total > 0 else 0.5


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
