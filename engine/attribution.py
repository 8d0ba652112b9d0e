"""Instance attribution: which SAE latents drive this prediction, and where in the image.

Method (Labarta et al. 2026, "From Attribution to Action"; Dreyer et al. 2025): write the site activation as
``x = f @ W_dec + b_dec + error`` and take the first-order (activation x gradient) estimate of what each latent
contributes to a metric ``m`` of the prediction:

    score_i = sum_t f[t, i] * (W_dec[i] . dm/dx[t])

One backward pass from the metric to ``x`` gives ``dm/dx`` for every token; one matrix product with ``W_dec``
then scores *all* latents at every token at once. The error term is kept, so the forward pass is the
model's own and the scores explain its real prediction, not the SAE's reconstruction. ``score_i`` estimates
how much ``m`` drops when latent i is removed (``f_i -> 0``); :func:`faithfulness` checks that estimate
against real ablations, batched through the suffix. The per-token scores and activations give the heatmaps.

Pitfalls: the estimate is linear, so it is best for small edits and for the metric's own scale (the logit
difference, not a saturated probability); scores of latents that interact are not additive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine import zeroshot
from engine.edits import NO_EDIT, Edit, edited_logits
from engine.errors import UnknownChoiceError, UserInputError
from engine.resident import SiteState, Workbench
from engine.sae import dense_is_cheaper


@dataclass(frozen=True)
class Attribution:
    labels: tuple[str, ...]
    logits_L: torch.Tensor
    target: int
    metric: str
    metric_value: float
    scores_S: torch.Tensor  # per latent, summed over tokens
    scores_TS: torch.Tensor  # per token and latent
    state: SiteState

    def top(self, k: int) -> list[int]:
        """Active latents (non-zero somewhere on the image) with the largest attribution."""
        return ranked_active(self.scores_S, self.state.code_TS)[:k]


def ranked_active(scores_S: torch.Tensor, f_TS: torch.Tensor) -> list[int]:
    """Latents that fire on the image (``f_TS`` dense or sparse), by decreasing attribution (inactive latents
    score 0 by definition); ties in latent order.

    >>> ranked_active(torch.tensor([0.5, 9.0, 0.5, -1.0]), torch.tensor([[1.0, 0.0, 2.0, 3.0]]))
    [0, 2, 3]
    """
    if f_TS.is_sparse:
        f_TS = f_TS.coalesce()
        active_A = f_TS.indices()[1][f_TS.values() != 0].unique()
    else:
        active_A = (f_TS != 0).any(0).nonzero().flatten()
    # sort the active few (at most k per token), not the whole dictionary (a sort of 24,576 scores costs ms)
    order_A = scores_S[active_A].argsort(descending=True, stable=True)
    return active_A[order_A].tolist()


def resolve_target(labels: list[str], logits_L: torch.Tensor, target: str | int | None) -> int:
    """Index of the target label: the predicted one when ``target`` is empty."""
    if target is None or target == "":
        return int(logits_L.argmax())
    if isinstance(target, int):
        if not 0 <= target < len(labels):
            raise UserInputError(f"target index {target} out of range; valid: 0 .. {len(labels) - 1}")
        return target
    if target not in labels:
        raise UnknownChoiceError("target label", target, labels)
    return labels.index(target)


def attribute_state(
    workbench: Workbench, state: SiteState, text_emb_LE: torch.Tensor, target: int | None, metric: str
) -> tuple[torch.Tensor, int, float, torch.Tensor]:
    """Core: (logits_L, target, metric value, scores_TS) from one forward and one backward of the suffix."""
    x_1TD = state.acts_TD.unsqueeze(0).detach().requires_grad_(True)  # no copy: autograd forbids writing to it
    with torch.enable_grad():
        logits_1L = workbench.logits_from_acts(x_1TD, text_emb_LE)
        target = int(logits_1L.argmax()) if target is None else target
        value = zeroshot.metric(logits_1L, target, metric).sum()
        (grad_1TD,) = torch.autograd.grad(value, x_1TD)
    return (
        logits_1L[0].detach(),
        target,
        float(value.detach()),
        latent_scores(state.code_TS, grad_1TD[0], workbench.sae.W_dec),
    )


def latent_scores(f_TS: torch.Tensor, grad_TD: torch.Tensor, W_dec_SD: torch.Tensor) -> torch.Tensor:
    """f[t, i] * (W_dec[i] . grad[t]) for every token and latent, (T, S); computed only where f is non-zero
    (k per token for a TopK SAE), which is exactly where it can be non-zero. ``f_TS`` may be sparse (a cached
    image's code), which spares densifying it and searching it for its non-zeros. A small dictionary gets the
    dense product instead (:func:`engine.sae.dense_is_cheaper`; the same numbers, tested).

    >>> f_TS = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    >>> latent_scores(f_TS, torch.ones(2, 3), torch.eye(2, 3)).tolist()
    [[0.0, 2.0], [1.0, 0.0]]
    """
    if dense_is_cheaper(grad_TD.shape[0], *W_dec_SD.shape):
        return (f_TS.to_dense() if f_TS.is_sparse else f_TS) * (grad_TD @ W_dec_SD.T)
    if f_TS.is_sparse:
        f_TS = f_TS.coalesce()
        (token_K, latent_K), f_K = f_TS.indices(), f_TS.values()
    else:
        token_K, latent_K = f_TS.nonzero(as_tuple=True)
        f_K = f_TS[token_K, latent_K]
    values_K = f_K * (grad_TD[token_K] * W_dec_SD[latent_K]).sum(-1)
    return torch.zeros(f_TS.shape, dtype=f_TS.dtype, device=f_TS.device).index_put_((token_K, latent_K), values_K)


def attribute(
    workbench: Workbench,
    image,
    labels: list[str],
    target: str | int | None = None,
    metric: str = "logit_difference",
    template: str | None = None,
) -> Attribution:
    """Attribute the zero-shot prediction for ``image`` over ``labels`` to every SAE latent."""
    if metric not in zeroshot.METRICS:
        raise UnknownChoiceError("metric", metric, zeroshot.METRICS)
    with workbench.lock:
        (state,) = workbench.site_states([image])
        text_emb_LE = workbench.text_embeddings(labels, template)
        if target not in (None, ""):
            target = resolve_target(labels, torch.zeros(len(labels)), target)
        logits_L, target, value, scores_TS = attribute_state(workbench, state, text_emb_LE, target, metric)
    return Attribution(tuple(labels), logits_L, target, metric, value, scores_TS.sum(0), scores_TS, state)


@torch.no_grad()
def ablation_effects(
    workbench: Workbench, state: SiteState, text_emb_LE: torch.Tensor, latents: list[int], target: int, metric: str
) -> torch.Tensor:
    """Actual drop of the metric when each latent alone is removed (f_i -> 0 at every token), (K,), batched."""
    return removal_effects(workbench, state, text_emb_LE, latents, target, metric)[0]


@torch.no_grad()
def removal_effects(
    workbench: Workbench, state: SiteState, text_emb_LE: torch.Tensor, latents: list[int], target: int, metric: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_K, logits_KL): the metric's drop and the logits after removing each latent alone, batched."""
    edits = [NO_EDIT, *(Edit.removal([i]) for i in latents)]
    logits_NL = edited_logits(workbench, [state], edits, text_emb_LE)[:, 0]
    values_N = zeroshot.metric(logits_NL, target, metric)
    return values_N[0] - values_N[1:], logits_NL[1:]


def faithfulness(workbench: Workbench, attribution: Attribution, k: int = 10, template: str | None = None) -> dict:
    """Predicted (attribution) against actual (ablation) metric drop for the top-k latents, with their rank
    correlation, and the probabilities after each removal (``probabilities_after``, (K, L))."""
    latents = attribution.top(k)
    with workbench.lock:
        text_emb_LE = workbench.text_embeddings(list(attribution.labels), template)
        actual_K, logits_KL = removal_effects(
            workbench, attribution.state, text_emb_LE, latents, attribution.target, attribution.metric
        )
    predicted_K = attribution.scores_S[latents]
    return {
        "latents": latents,
        "predicted": predicted_K.tolist(),
        "actual": actual_K.tolist(),
        "probabilities_after": logits_KL.softmax(-1).tolist(),
        "spearman": spearman(predicted_K, actual_K),
    }


def warnings_for(workbench: Workbench, state: SiteState) -> list[str]:
    """What the user should know before reading an attribution of this image (plain sentences, may be empty)."""
    return workbench.state_warnings(state)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation (ties broken by order; NaN when either side is constant)."""
    if a.numel() < 2:
        return float("nan")
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = ra.norm() * rb.norm()
    return float((ra @ rb) / denom) if denom > 0 else float("nan")


def patch_map(values_T: torch.Tensor, grid: tuple[int, int], n_prefix_tokens: int | None = None) -> torch.Tensor:
    """Per-patch values (gh, gw) from per-token values (prefix tokens such as CLS dropped). The patches are the
    last gh * gw tokens, so ``n_prefix_tokens`` defaults to the rest (1 for CLIP's class token, 0 for SigLIP).

    >>> patch_map(torch.arange(5.0), (2, 2)).tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    """
    if n_prefix_tokens is None:
        n_prefix_tokens = values_T.shape[0] - grid[0] * grid[1]
    return values_T[n_prefix_tokens:].reshape(grid)
