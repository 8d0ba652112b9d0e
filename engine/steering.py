"""Activation steering with SAE latents: suppress, amplify or switch on a concept and watch the prediction.

An edit changes latent codes and adds the *difference* to the model's own activation at the site:

    scale mode:  f_i' = s_i * f_i          x' = x + sum_i (s_i - 1) * f_i * W_dec[i]
    add mode:    f_i' = f_i + a_i * u_i    x' = x + sum_i a_i * u_i * W_dec[i]

at every token, or at chosen patches only (after the last block, patches cannot reach the embedding: only
the class token is pooled).

``s = 0`` removes the concept, ``s = 1`` is exactly no edit, ``s > 1`` amplifies and ``s < 0`` inverts. ``u_i`` is
the latent's typical activation, so ``a = 1`` adds the concept as strongly as it usually appears: the add mode
turns on a concept that the image lacks (Ferrando et al. 2026, arXiv 2603.22593). The activation is never
recomputed from the SAE reconstruction: that would silently drop the error term and change the prediction
even at s = 1. Only the edited latents' decoder rows are touched.

A sweep over strengths is one batched pass through the suffix from the cached site activations. Two
controls come with it: a random direction with the decoder row's norm, moved by the same coefficients (does
*this* concept matter, or would any push of that size do?), and ripple effects, the same edit on a held-out
batch of images (what else does the edit break?).
"""

from __future__ import annotations

import torch

from engine import zeroshot
from engine.edits import MAX_ABS_STRENGTH, MODES, NO_EDIT, Edit, edited_logits
from engine.errors import UserInputError
from engine.resident import Workbench

__all__ = ["MAX_ABS_STRENGTH", "MODES", "Edit", "random_direction_like", "ripple", "steer", "sweep", "warnings_for"]


def warnings_for(workbench: Workbench, edit: Edit) -> list[str]:
    """What the user should know before reading this edit's result (plain sentences, may be empty)."""
    backend = workbench.backend
    if edit.patches and backend.n_prefix_tokens and backend.is_last_block(workbench.site):
        return [
            "the SAE sits after the last block, where only the class token reaches the embedding: edits at "
            "patches cannot move the prediction here (leave the patches blank to edit every token)"
        ]
    return []


def steer(workbench: Workbench, image, labels: list[str], edit: Edit, template: str | None = None) -> dict:
    """Probabilities over ``labels`` before and after ``edit``."""
    with workbench.lock:
        states = workbench.site_states([image])
        text_emb_LE = workbench.text_embeddings(labels, template)
        logits_2L = edited_logits(workbench, states, [NO_EDIT, edit], text_emb_LE)[:, 0]
    probs_2L = logits_2L.softmax(-1)
    return {
        "labels": list(labels),
        "before": probs_2L[0].tolist(),
        "after": probs_2L[1].tolist(),
        "logits_before": logits_2L[0].tolist(),
        "logits_after": logits_2L[1].tolist(),
        "predicted_before": labels[int(logits_2L[0].argmax())],
        "predicted_after": labels[int(logits_2L[1].argmax())],
        "warnings": workbench.state_warnings(states[0]) + warnings_for(workbench, edit),
    }


def random_direction_like(W_dec_SD: torch.Tensor, latent: int, seed: int = 0) -> torch.Tensor:
    """A random direction with the norm of ``W_dec[latent]``, reproducible from ``seed``, (D,)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + latent)
    direction_D = torch.randn(W_dec_SD.shape[1], generator=generator).to(W_dec_SD)
    return direction_D * W_dec_SD[latent].norm() / direction_D.norm()


@torch.no_grad()
def sweep(
    workbench: Workbench,
    image,
    labels: list[str],
    latent: int,
    strengths: list[float],
    target: int | None = None,
    mode: str = "scale",
    patches: tuple[int, ...] | None = None,
    template: str | None = None,
    baseline_seed: int = 0,
    baseline: bool = True,
) -> dict:
    """Metrics of the prediction as one latent's strength varies, against a random norm-matched direction.

    Both curves and the unedited row they are compared with come from one batched suffix pass
    (1 + 2 x len(strengths) rows; 1 + len(strengths) without the ``baseline``)."""
    workbench.check_latent(latent)
    if not strengths:
        raise UserInputError("give at least one strength")
    edits = [Edit((latent,), (float(s),), mode, patches) for s in strengths]
    directions = [None] * len(edits)
    if baseline:
        random_1D = random_direction_like(workbench.sae.W_dec, latent, baseline_seed).unsqueeze(0)
        edits, directions = edits + edits, directions + [random_1D] * len(edits)
    with workbench.lock:
        (state,) = workbench.site_states([image])
        text_emb_LE = workbench.text_embeddings(labels, template)
        logits_NL = edited_logits(
            workbench, [state], [NO_EDIT, *edits], text_emb_LE, [None, *directions], unedited_in_pass=True
        )[:, 0]
    base_logits_L, logits_NL = logits_NL[0], logits_NL[1:]
    target = int(base_logits_L.argmax()) if target is None else target
    n = len(strengths)
    result = {"strengths": [float(s) for s in strengths], "target": labels[target], "latent": latent, "mode": mode}
    for name, rows_NL in zip(("latent", "random"), logits_NL.split(n), strict=False):
        curves_4N = torch.stack(
            [
                zeroshot.logit_difference(rows_NL, target),
                rows_NL.softmax(-1)[:, target],
                zeroshot.kl_from(base_logits_L, rows_NL),
                rows_NL.argmax(-1).to(rows_NL.dtype),
            ]
        ).tolist()  # one conversion to Python numbers, not four
        result[name] = {
            "logit_difference": curves_4N[0],
            "probability": curves_4N[1],
            "kl": curves_4N[2],
            "predicted": [labels[int(i)] for i in curves_4N[3]],
        }
    return result


@torch.no_grad()
def ripple(
    workbench: Workbench,
    images: list,
    labels: list[str],
    edit: Edit,
    truth: list[int | None] | None = None,
    template: str | None = None,
) -> list[dict]:
    """The edit applied to a held-out batch: per label, how often it is predicted and (where the truth is
    known) how accurately, before and after."""
    with workbench.lock:
        states = workbench.site_states(images)
        logits_2BL = edited_logits(workbench, states, [NO_EDIT, edit], workbench.text_embeddings(labels, template))
    pred_before, pred_after = logits_2BL.argmax(-1).tolist()
    return zeroshot.per_label_comparison(labels, {"before": pred_before, "after": pred_after}, truth)
