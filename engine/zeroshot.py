"""Zero-shot classification over user-given labels, and the metrics that attribution and steering move.

CLIP scores an image against each label's prompt by the scaled cosine similarity of their embeddings
(Radford et al. 2021). The primary metric is the **logit difference**: the target's logit minus the highest
other logit. It is linear in the logits, positive exactly when the target is predicted, and not saturated
the way a probability is (Zhang & Nanda 2024 recommend it for patching for the same reasons). The target
probability and the KL divergence from an unedited run are offered as secondary metrics.

>>> logits_BL = torch.tensor([[2.0, 1.0, 0.5]])
>>> logit_difference(logits_BL, target=0).tolist()
[1.0]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

METRICS = ("logit_difference", "probability")


def parse_labels(text: str | list[str]) -> list[str]:
    """Labels from a comma- or newline-separated string (or a list); duplicates and blanks rejected."""
    items = text if isinstance(text, list) else text.replace("\n", ",").split(",")
    labels = [str(item).strip() for item in items if str(item).strip()]
    if len(labels) < 2:
        raise ValueError(f"give at least two labels, separated by commas; got {labels}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct; got {labels}")
    if len(labels) > 1000:
        raise ValueError(f"at most 1000 labels; got {len(labels)}")
    return labels


def zero_shot_logits(image_emb_BE: torch.Tensor, text_emb_LE: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Scaled cosine similarities (B, L); ``text_emb_LE`` is already normalised."""
    return logit_scale * F.normalize(image_emb_BE, dim=-1) @ text_emb_LE.T


def logit_difference(logits_BL: torch.Tensor, target: int) -> torch.Tensor:
    """Target logit minus the highest other logit, (B,)."""
    others_BL = logits_BL.clone()
    others_BL[:, target] = float("-inf")
    return logits_BL[:, target] - others_BL.max(dim=1).values


def metric(logits_BL: torch.Tensor, target: int, kind: str = "logit_difference") -> torch.Tensor:
    if kind == "logit_difference":
        return logit_difference(logits_BL, target)
    if kind == "probability":
        return logits_BL.softmax(dim=1)[:, target]
    raise ValueError(f"unknown metric {kind!r}; valid: {', '.join(METRICS)}")


def kl_from(reference_logits_L: torch.Tensor, logits_BL: torch.Tensor) -> torch.Tensor:
    """KL(reference || edited) per row, (B,): how far each edited prediction moved from the original."""
    log_p = reference_logits_L.log_softmax(-1)
    return (log_p.exp() * (log_p - logits_BL.log_softmax(-1))).sum(-1)
