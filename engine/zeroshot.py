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

import collections

import torch
import torch.nn.functional as F

from engine.errors import UnknownChoiceError, UserInputError

METRICS = ("logit_difference", "probability", "centred_logit")


MAX_LABELS = 1000
MAX_LABEL_CHARS = 300
"""A text tower reads 77 tokens at most; a longer label would be cut silently, so it is refused instead."""


def parse_labels(text: str | list[str]) -> list[str]:
    """Labels from a comma- or newline-separated string (or a list); duplicates, blanks and overlong labels
    rejected with a message that names the offending ones (never the whole list back).

    >>> parse_labels("cat, dog, cat")
    Traceback (most recent call last):
    ...
    engine.errors.UserInputError: labels must be distinct: 'cat' appears 2 times
    """
    items = text if isinstance(text, list) else text.replace("\n", ",").split(",")
    labels = [str(item).strip() for item in items if str(item).strip()]
    if len(labels) < 2:
        raise UserInputError(f"give at least two labels, separated by commas; got {len(labels)}")
    if len(labels) > MAX_LABELS:
        raise UserInputError(f"at most {MAX_LABELS} labels; got {len(labels)}")
    long = next((label for label in labels if len(label) > MAX_LABEL_CHARS), None)
    if long is not None:
        raise UserInputError(f"a label may have at most {MAX_LABEL_CHARS} characters; {long[:40]!r}... has {len(long)}")
    counts = collections.Counter(labels)
    repeated = [f"{label!r} appears {n} times" for label, n in counts.items() if n > 1]
    if repeated:
        more = f" (and {len(repeated) - 3} more repeated labels)" if len(repeated) > 3 else ""
        raise UserInputError(f"labels must be distinct: {', '.join(repeated[:3])}{more}")
    return labels


def zero_shot_logits(image_emb_BE: torch.Tensor, text_emb_LE: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Scaled cosine similarities (B, L); ``text_emb_LE`` is already normalised."""
    return logit_scale * F.normalize(image_emb_BE, dim=-1) @ text_emb_LE.T


def logit_difference(logits_BL: torch.Tensor, target: int) -> torch.Tensor:
    """Target logit minus the highest other logit, (B,). The runner-up is found without autograd and then read
    from ``logits_BL``: the same value and gradient as a max over the others, with a smaller backward graph."""
    others_BL = logits_BL.detach().clone()
    others_BL[:, target] = float("-inf")
    return logits_BL[:, target] - logits_BL.gather(1, others_BL.argmax(dim=1, keepdim=True))[:, 0]


def centred_logit(logits_BL: torch.Tensor, target: int) -> torch.Tensor:
    """Target logit minus the mean logit, (B,): a fixed linear contrast, so that attributions to different
    labels add up and do not depend on which label is the runner-up (the logit difference's reference switches
    when the prediction changes, which confounds comparisons across models).

    >>> centred_logit(torch.tensor([[2.0, 1.0, 0.0]]), target=0).tolist()
    [1.0]
    """
    return logits_BL[:, target] - logits_BL.mean(dim=1)


def metric(logits_BL: torch.Tensor, target: int, kind: str = "logit_difference") -> torch.Tensor:
    if kind == "logit_difference":
        return logit_difference(logits_BL, target)
    if kind == "probability":
        return logits_BL.softmax(dim=1)[:, target]
    if kind == "centred_logit":
        return centred_logit(logits_BL, target)
    raise UnknownChoiceError("metric", kind, METRICS)


def kl_from(reference_logits_L: torch.Tensor, logits_BL: torch.Tensor) -> torch.Tensor:
    """KL(reference || edited) per row, (B,): how far each edited prediction moved from the original."""
    log_p = reference_logits_L.log_softmax(-1)
    return (log_p.exp() * (log_p - logits_BL.log_softmax(-1))).sum(-1)


def per_label_comparison(
    labels: list[str],
    predicted: dict[str, list[int]],
    truth: list[int | None] | None = None,
) -> list[dict]:
    """Per label, how often each run predicts it (``predicted_<run>``) and, where the true label is known,
    how accurate each run is on the images of that label (``images``, ``accuracy_<run>``).

    >>> per_label_comparison(["a", "b"], {"before": [0, 1], "after": [1, 1]}, [0, 1])[0]
    {'label': 'a', 'predicted_before': 1, 'predicted_after': 0, 'images': 1, 'accuracy_before': 1.0, 'accuracy_after': 0.0}
    """
    rows = []
    for j, label in enumerate(labels):
        row: dict = {"label": label}
        row.update({f"predicted_{run}": list(p).count(j) for run, p in predicted.items()})
        if truth is not None:
            members = [i for i, t in enumerate(truth) if t == j]
            row["images"] = len(members)
            if members:
                row.update(
                    {f"accuracy_{run}": sum(p[i] == j for i in members) / len(members) for run, p in predicted.items()}
                )
        rows.append(row)
    return rows
