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

import math
from dataclasses import dataclass

import torch

from engine import zeroshot
from engine.resident import SiteState, Workbench

MODES = ("scale", "add")
MAX_ABS_STRENGTH = 1000.0


@dataclass(frozen=True)
class Edit:
    """Latents with one strength each; ``patches`` are patch indices (row-major), ``None`` for all tokens."""

    latents: tuple[int, ...]
    strengths: tuple[float, ...]
    mode: str = "scale"
    patches: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown steering mode {self.mode!r}; valid: {', '.join(MODES)}")
        if len(self.latents) != len(self.strengths):
            raise ValueError(f"one strength per latent: {len(self.latents)} latents, {len(self.strengths)} strengths")
        for s in self.strengths:
            if not isinstance(s, (int, float)) or not math.isfinite(s) or abs(s) > MAX_ABS_STRENGTH:
                raise ValueError(f"strength must be a finite number within +-{MAX_ABS_STRENGTH:g}; got {s!r}")


def token_mask(n_tokens: int, n_prefix_tokens: int, patches: tuple[int, ...] | None, mode: str) -> torch.Tensor:
    """(T,) float mask of the tokens an edit touches: every token (the class token included: after a late
    block it is all that the pooling reads), or only the chosen patches."""
    mask_T = torch.zeros(n_tokens)
    if patches is None:
        mask_T[:] = 1.0
        return mask_T
    n_patches = n_tokens - n_prefix_tokens
    bad = [p for p in patches if not 0 <= p < n_patches]
    if bad:
        raise ValueError(f"unknown patch indices {bad}; valid: 0 .. {n_patches - 1}")
    mask_T[[n_prefix_tokens + p for p in patches]] = 1.0
    return mask_T


def edit_delta(
    f_TS: torch.Tensor,
    W_dec_SD: torch.Tensor,
    edit: Edit,
    typical_S: torch.Tensor,
    n_prefix_tokens: int,
    directions_KD: torch.Tensor | None = None,
) -> torch.Tensor:
    """What the edit adds to the site activation, (T, D). Exactly zero for an empty edit or all s = 1.

    ``directions_KD`` replaces the edited latents' decoder rows (the random baseline moves another
    direction by the same coefficients)."""
    n_tokens, d_model = f_TS.shape[0], W_dec_SD.shape[1]
    if not edit.latents:
        return torch.zeros(n_tokens, d_model, dtype=W_dec_SD.dtype, device=W_dec_SD.device)
    latents = list(edit.latents)
    strengths_K = torch.tensor(edit.strengths, dtype=W_dec_SD.dtype, device=W_dec_SD.device)
    mask_T1 = token_mask(n_tokens, n_prefix_tokens, edit.patches, edit.mode).to(W_dec_SD)[:, None]
    if edit.mode == "scale":
        coeff_TK = f_TS[:, latents] * (strengths_K - 1)
    else:
        coeff_TK = (strengths_K * typical_S[latents].to(W_dec_SD)).expand(n_tokens, -1)
    return (coeff_TK * mask_T1) @ (W_dec_SD[latents] if directions_KD is None else directions_KD)


def check_edit(bench: Workbench, edit: Edit) -> None:
    for latent in edit.latents:
        bench.check_latent(latent)


def typical_activation(bench: Workbench) -> torch.Tensor:
    """(S,) the unit of the add mode (see ``Workbench.typical_activation``)."""
    return bench.typical_activation()


@torch.no_grad()
def steered_logits(
    bench: Workbench, states: list[SiteState], edits: list[Edit], text_emb_LE: torch.Tensor
) -> torch.Tensor:
    """Logits (N, B, L) of every edit on every image, in one batched pass through the suffix."""
    for edit in edits:
        check_edit(bench, edit)
    typical_S = typical_activation(bench)
    acts_BTD = torch.stack([s.acts_TD for s in states])
    f_BTS = torch.stack([s.f_TS for s in states])
    deltas = [
        torch.stack([edit_delta(f_TS, bench.sae.W_dec, e, typical_S, bench.backend.n_prefix_tokens) for f_TS in f_BTS])
        for e in edits
    ]
    acts_NBTD = acts_BTD.unsqueeze(0) + torch.stack(deltas)
    n, b = acts_NBTD.shape[:2]
    logits = bench.logits_from_acts(acts_NBTD.flatten(0, 1), text_emb_LE)
    return logits.view(n, b, -1)


def steer(bench: Workbench, image, labels: list[str], edit: Edit, template: str | None = None) -> dict:
    """Probabilities over ``labels`` before and after ``edit``."""
    with bench.lock:
        states = bench.site_states([image])
        text_emb_LE = bench.text_embeddings(labels, template)
        logits_2L = steered_logits(bench, states, [Edit((), ()), edit], text_emb_LE)[:, 0]
    probs_2L = logits_2L.softmax(-1)
    return {
        "labels": list(labels),
        "before": probs_2L[0].tolist(),
        "after": probs_2L[1].tolist(),
        "logits_before": logits_2L[0].tolist(),
        "logits_after": logits_2L[1].tolist(),
        "predicted_before": labels[int(logits_2L[0].argmax())],
        "predicted_after": labels[int(logits_2L[1].argmax())],
    }


def random_direction_like(W_dec_SD: torch.Tensor, latent: int, seed: int = 0) -> torch.Tensor:
    """A random direction with the norm of ``W_dec[latent]``, reproducible from ``seed``, (D,)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + latent)
    direction_D = torch.randn(W_dec_SD.shape[1], generator=generator).to(W_dec_SD)
    return direction_D * W_dec_SD[latent].norm() / direction_D.norm()


@torch.no_grad()
def sweep(
    bench: Workbench,
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

    Both curves come from one batched suffix pass (2 x len(strengths) rows; len(strengths) without the
    ``baseline``)."""
    bench.check_latent(latent)
    if not strengths:
        raise ValueError("give at least one strength")
    edits = [Edit((latent,), (float(s),), mode, patches) for s in strengths]
    with bench.lock:
        (state,) = bench.site_states([image])
        text_emb_LE = bench.text_embeddings(labels, template)
        typical_S = typical_activation(bench)
        n_prefix = bench.backend.n_prefix_tokens
        W_dec_SD = bench.sae.W_dec
        directions = [None]
        if baseline:
            directions.append(random_direction_like(W_dec_SD, latent, baseline_seed).unsqueeze(0))
        f_TS = state.f_TS  # densified once, not once per strength
        deltas_ND = [edit_delta(f_TS, W_dec_SD, e, typical_S, n_prefix, d) for d in directions for e in edits]
        acts_NTD = state.acts_TD.unsqueeze(0) + torch.stack(deltas_ND)
        base_logits_L = bench.logits_from_acts(state.acts_TD.unsqueeze(0), text_emb_LE)[0]
        logits_NL = bench.logits_from_acts(acts_NTD, text_emb_LE)
    target = int(base_logits_L.argmax()) if target is None else target
    n = len(strengths)
    result = {"strengths": [float(s) for s in strengths], "target": labels[target], "latent": latent, "mode": mode}
    for name, rows_NL in zip(("latent", "random"), logits_NL.split(n), strict=False):
        result[name] = {
            "logit_difference": zeroshot.logit_difference(rows_NL, target).tolist(),
            "probability": rows_NL.softmax(-1)[:, target].tolist(),
            "kl": zeroshot.kl_from(base_logits_L, rows_NL).tolist(),
            "predicted": [labels[i] for i in rows_NL.argmax(-1).tolist()],
        }
    return result


@torch.no_grad()
def ripple(
    bench: Workbench,
    images: list,
    labels: list[str],
    edit: Edit,
    truth: list[int | None] | None = None,
    template: str | None = None,
) -> list[dict]:
    """The edit applied to a held-out batch: per label, how often it is predicted and (where the truth is
    known) how accurately, before and after."""
    with bench.lock:
        states = bench.site_states(images)
        logits_2BL = steered_logits(bench, states, [Edit((), ()), edit], bench.text_embeddings(labels, template))
    pred_before, pred_after = logits_2BL.argmax(-1).tolist()
    rows = []
    for j, label in enumerate(labels):
        row = {
            "label": label,
            "predicted_before": sum(p == j for p in pred_before),
            "predicted_after": sum(p == j for p in pred_after),
        }
        if truth is not None:
            members = [i for i, t in enumerate(truth) if t == j]
            row["images"] = len(members)
            if members:
                row["accuracy_before"] = sum(pred_before[i] == j for i in members) / len(members)
                row["accuracy_after"] = sum(pred_after[i] == j for i in members) / len(members)
        rows.append(row)
    return rows
