"""Activation patching: which block, and which token, carries the difference between two runs.

Two runs of the vision tower differ in one thing: the input (a clean image and its counterfactual, e.g. the
same toy scene without the corner marker) or the weights (a reference checkpoint and a fine-tuned one). Write
the residual stream of one run into the other at one place (after block ``i``, at token ``t`` or at every
token) and let the blocks after it run from there: how much of the metric moves says how much of the
difference passes through that place.

Best practice (Zhang & Nanda, ICLR 2024, "Towards Best Practices of Activation Patching"):

- **corrupt in distribution**: the corrupted run is a counterfactual image (the vision analogue of symmetric
  token replacement), not Gaussian noise, which pushes activations off the data the model knows and can
  make any place look important. Noise is offered, labelled as out of distribution;
- **logit difference** is the primary metric (linear in the logits, not saturated), against one fixed other
  label for the whole grid (the corrupted run's answer), probability and KL on request;
- **single-layer patching** first: one block at a time; sliding windows over blocks overstate localisation
  and come only with a warning;
- **denoising and noising are reported apart** (Heimersheim & Nanda 2024): denoising writes the clean run into
  the corrupted one (is this place *sufficient* to restore the behaviour?), noising writes the corrupted run
  into the clean one (is it *necessary*?). They are not symmetric.

The recovered share is ``(m_patched - m_target) / (m_source - m_target)``: 0 when patching changes nothing,
1 when it moves the target run all the way to the source. Inside one model, patching *every* token after a
block restores the source run exactly (the rest of the tower sees only that state), so localisation comes from
single tokens there; between two models the blocks after the patch differ, so the all-token curve says in
which block the difference has been made, and what patching after the last block does not restore lives after
the vision tower (the head, or the text tower, when the fine-tune changed them). Patching a run into itself changes nothing, exactly
(the same tensors are written back), and denoising at every token after the last block restores the source
run exactly: both are tested.

Everything runs through the Backend protocol (``embed``, ``blocks(acts, start, stop)``, ``head``), so the
two runs may be two models of one architecture: the places are the residual stream after each block. The
functions here run a backend directly; callers on resident models hold the model's lock (engine.diff does).

>>> recovered_share(torch.tensor([1.0, 3.0]), source=3.0, target=1.0).tolist()
[0.0, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine import zeroshot
from engine.backends import Backend
from engine.errors import UnknownChoiceError

DIRECTIONS = ("denoising", "noising")
METRICS = ("logit_difference", "probability", "kl")


@dataclass(frozen=True)
class Run:
    """One run of a vision tower on one image: the residual stream before block 0 and after every block,
    ``resid_LTD[i + 1]`` = after block i, and its logits over the labels."""

    resid_LTD: torch.Tensor  # (n_blocks + 1, T, D)
    logits_L: torch.Tensor


@torch.no_grad()
def run(backend: Backend, pixels_1CHW: torch.Tensor, text_emb_LE: torch.Tensor, dtype: torch.dtype) -> Run:
    """Every block's output for one image (one forward pass), and the zero-shot logits."""
    x_1TD = backend.embed(pixels_1CHW.to(dtype))
    resid = [x_1TD[0]]
    for block in range(backend.n_blocks):
        x_1TD = backend.blocks(x_1TD, block, block + 1)
        resid.append(x_1TD[0])
    logits_1L = zeroshot.zero_shot_logits(backend.head(x_1TD).float(), text_emb_LE, backend.logit_scale)
    return Run(torch.stack(resid), logits_1L[0])


def recovered_share(values: torch.Tensor, source: float, target: float) -> torch.Tensor:
    """(m - m_target) / (m_source - m_target); NaN where the two runs do not differ."""
    gap = source - target
    if abs(gap) < 1e-9:
        return torch.full_like(values, float("nan"))
    return (values - target) / gap


def contrast_label(label: int, target_logits_L: torch.Tensor) -> int:
    """The fixed other side of the logit difference: the target run's answer, or its runner-up when that answer
    is ``label`` itself. Fixed for the whole grid (Zhang & Nanda compare the clean and the corrupted answers), so
    the metric stays one linear contrast across patched rows instead of following each row's runner-up."""
    order = target_logits_L.argsort(descending=True).tolist()
    return order[0] if order[0] != label else order[1]


def metric_values(
    logits_NL: torch.Tensor, target: int, metric: str, reference_L: torch.Tensor, contrast: int | None = None
) -> torch.Tensor:
    if metric == "kl":
        return zeroshot.kl_from(reference_L, logits_NL)
    if metric == "logit_difference" and contrast is not None:
        return logits_NL[:, target] - logits_NL[:, contrast]
    return zeroshot.metric(logits_NL, target, metric)


def first_localised_token(per_token_recovered: list[list[float]], threshold: float = 0.5) -> tuple[int, int] | None:
    """(block, token) of the first block where one token alone restores at least ``threshold``: inside one model
    this is what localises (patching every token after any block restores the run exactly, by construction)."""
    for block, row in enumerate(per_token_recovered):
        best = max(range(len(row)), key=lambda t: row[t] if row[t] == row[t] else float("-inf"))
        if row[best] == row[best] and row[best] >= threshold:
            return block, best
    return None


@torch.no_grad()
def patch_grid(
    backend: Backend,
    source: Run,
    target_run: Run,
    text_emb_LE: torch.Tensor,
    label: int,
    metric: str = "logit_difference",
    per_token: bool = True,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Write ``source`` into ``target_run`` after each block (every token at once, and each token alone when
    ``per_token``), run the rest of ``backend``, and score ``label`` by ``metric``. One batched pass per block.

    Returns ``all_tokens`` (n_blocks,) and ``per_token`` (n_blocks, T) metric values, ``unpatched`` (the target
    run's value computed in each block's batch), ``max_change`` (the largest change any patch made against it:
    exactly 0 when a run is patched into itself), the two runs' own values and the recovered shares. ``backend`` is the target run's model (for a checkpoint diff, source and target
    are the two models' runs on the same image)."""
    if metric not in METRICS:
        raise UnknownChoiceError("patching metric", metric, METRICS)
    n_blocks, n_tokens = backend.n_blocks, source.resid_LTD.shape[1]
    contrast = contrast_label(label, target_run.logits_L)
    baseline, all_tokens, per_token_rows = [], [], []
    for block in range(n_blocks):
        src_TD, tgt_TD = source.resid_LTD[block + 1], target_run.resid_LTD[block + 1]
        # Row 0 is the target unpatched, in the same batch as its patched versions: a patch that writes back
        # what is already there gives exactly row 0's value (the same kernels on the same numbers).
        rows = [tgt_TD, src_TD]
        if per_token:
            eye_TT1 = torch.eye(n_tokens, dtype=torch.bool, device=src_TD.device).unsqueeze(-1)
            rows.extend(torch.where(eye_TT1, src_TD.unsqueeze(0), tgt_TD.unsqueeze(0)))
        out_NTD = backend.blocks(torch.stack(rows).to(dtype), block + 1, n_blocks)
        logits_NL = zeroshot.zero_shot_logits(backend.head(out_NTD).float(), text_emb_LE, backend.logit_scale)
        values_N = metric_values(logits_NL, label, metric, target_run.logits_L, contrast)
        baseline.append(values_N[0])
        all_tokens.append(values_N[1])
        if per_token:
            per_token_rows.append(values_N[2:])
    reference = torch.stack([target_run.logits_L, source.logits_L])
    own_source, own_target = metric_values(reference, label, metric, target_run.logits_L, contrast)[[1, 0]].tolist()
    all_tokens_N, baseline_N = torch.stack(all_tokens), torch.stack(baseline)
    result = {
        "metric": metric,
        "contrast": contrast,
        "source_value": own_source,
        "target_value": own_target,
        "unpatched": baseline_N.tolist(),
        "all_tokens": all_tokens_N.tolist(),
        "all_tokens_recovered": recovered_share(all_tokens_N, own_source, own_target).tolist(),
        "max_change": float((all_tokens_N - baseline_N).abs().max()),
    }
    if per_token:
        per_token_BT = torch.stack(per_token_rows)
        result["per_token"] = per_token_BT.tolist()
        result["per_token_recovered"] = recovered_share(per_token_BT, own_source, own_target).tolist()
        result["max_change"] = max(result["max_change"], float((per_token_BT - baseline_N[:, None]).abs().max()))
    return result


def first_localised_block(recovered: list[float], threshold: float = 0.5) -> int | None:
    """The first block whose all-token patch recovers at least ``threshold`` of the difference (None if none)."""
    for block, share in enumerate(recovered):
        if share == share and share >= threshold:  # NaN never counts
            return block
    return None
