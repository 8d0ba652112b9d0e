"""The one edit primitive: change SAE latents at chosen tokens, keep the error term, run the suffix.

Every intervention of the app is this operation. At a site the activation is written exactly as

    x = f @ W_dec + b_dec + error          (f in activation units: see Workbench.site_states)

and an edit changes some latents' codes ``f_i -> f_i'`` at some tokens. The edited activation is the model's
own activation plus the change, never a recomputation from the reconstruction:

    x' = x + sum_i (f_i' - f_i) * W_dec[i]

so the error term (what the SAE does not explain) stays in, an edit that changes nothing is exactly no
edit, and inserting the SAE changes nothing (SAELens' ``use_error_term``). Two ways to say ``f_i'``:

    scale:  f_i' = s_i * f_i               0 removes, 1 is no edit, > 1 amplifies, < 0 inverts
    add:    f_i' = f_i + a_i * u_i         u_i is latent i's typical activation (its sign included), so
                                           a = 1 adds the concept as strongly as it usually appears

Removing latents (attribution's ablations, the deletion curves of the evaluation) is the scale mode at 0;
steering and ripple effects are either mode; a random baseline moves another direction by the same
coefficients. All of them go through :func:`edited_logits`: one batched pass through the suffix for many
edits of many images.

>>> Edit((3, 3), (0.0, 0.0))
Traceback (most recent call last):
...
engine.errors.UserInputError: each latent may appear once in an edit; repeated: 3
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.errors import UnknownChoiceError, UserInputError

if TYPE_CHECKING:
    from engine.resident import SiteState, Workbench

MODES = ("scale", "add")
MAX_ABS_STRENGTH = 1000.0


@dataclass(frozen=True)
class Edit:
    """Latents with one strength each; ``patches`` are patch indices (row-major), ``None`` for every token."""

    latents: tuple[int, ...]
    strengths: tuple[float, ...]
    mode: str = "scale"
    patches: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UnknownChoiceError("steering mode", self.mode, MODES)
        if len(self.latents) != len(self.strengths):
            raise UserInputError(
                f"one strength per latent: {len(self.latents)} latents, {len(self.strengths)} strengths"
            )
        for value in (*self.latents, *(self.patches or ())):
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserInputError(f"latent ids and patch indices must be whole numbers; got {value!r}")
        repeated = sorted(i for i, n in Counter(self.latents).items() if n > 1) if len(self.latents) > 1 else []
        if repeated:
            # "5, 5" at strength 0 would subtract f_5 * W_dec[5] twice: the latent inverted, not removed.
            raise UserInputError(f"each latent may appear once in an edit; repeated: {', '.join(map(str, repeated))}")
        for s in self.strengths:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise UserInputError(f"strength must be a finite number within +-{MAX_ABS_STRENGTH:g}; got {s!r}")
            if abs(s) > MAX_ABS_STRENGTH:
                raise UserInputError(f"strength must be a finite number within +-{MAX_ABS_STRENGTH:g}; got {s!r}")

    @property
    def is_noop(self) -> bool:
        """True when every strength is its mode's identity (1 to scale, 0 to add), or there is no latent: the
        edit adds exactly zero (see :func:`edit_delta`), so its run is the unedited run."""
        identity = 1.0 if self.mode == "scale" else 0.0
        return all(s == identity for s in self.strengths)

    @classmethod
    def removal(cls, latents: Sequence[int]) -> Edit:
        """Remove ``latents`` at every token (f_i -> 0)."""
        return cls(tuple(int(i) for i in latents), (0.0,) * len(latents))


NO_EDIT = Edit((), ())


def token_mask(n_tokens: int, n_prefix_tokens: int, patches: tuple[int, ...] | None) -> torch.Tensor:
    """(T,) float mask of the tokens an edit touches: every token (prefix tokens such as the class token
    included), or only the chosen patches."""
    mask_T = torch.zeros(n_tokens)
    if patches is None:
        mask_T[:] = 1.0
        return mask_T
    n_patches = n_tokens - n_prefix_tokens
    bad = [p for p in patches if not 0 <= p < n_patches]
    if bad:
        raise UserInputError(f"unknown patch indices {bad}; valid: 0 .. {n_patches - 1}")
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
    """What the edit adds to the site activation, (T, D): ``sum_i (f_i' - f_i) * W_dec[i]``. Exactly zero for
    an empty edit or all s = 1. ``directions_KD`` replaces the edited latents' decoder rows (the random
    baseline moves another direction by the same coefficients)."""
    strengths_1K = torch.tensor([edit.strengths], dtype=W_dec_SD.dtype, device=W_dec_SD.device)
    f_1TK = f_TS[:, list(edit.latents)].unsqueeze(0)
    return group_deltas(f_1TK, W_dec_SD, edit, strengths_1K, typical_S, n_prefix_tokens, directions_KD)[0, 0]


def group_deltas(
    f_BTK: torch.Tensor,
    W_dec_SD: torch.Tensor,
    edit: Edit,
    strengths_GK: torch.Tensor,
    typical_S: torch.Tensor | None,
    n_prefix_tokens: int,
    directions_KD: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`edit_delta` for G edits that differ from ``edit`` only in their strengths (a sweep's rows; row g
    with the strengths ``strengths_GK[g]``), on B images at once, from the edited latents' activations on them
    (``f_BTK``, (B, T, K): column k is ``edit.latents[k]``): (G, B, T, D) in one product."""
    n_tokens, d_model = f_BTK.shape[1], W_dec_SD.shape[1]
    shape = (len(strengths_GK), f_BTK.shape[0], n_tokens)
    if not edit.latents:
        return torch.zeros(*shape, d_model, dtype=W_dec_SD.dtype, device=W_dec_SD.device)
    latents = list(edit.latents)
    if edit.mode == "scale":
        coeff_GBTK = f_BTK.to(W_dec_SD)[None] * (strengths_GK[:, None, None, :] - 1)
    else:
        coeff_GBTK = (strengths_GK * typical_S[latents].to(W_dec_SD))[:, None, None, :].expand(*shape, -1)
    if edit.patches is not None:  # every token otherwise: no mask to multiply by
        coeff_GBTK = coeff_GBTK * token_mask(n_tokens, n_prefix_tokens, edit.patches).to(W_dec_SD)[None, None, :, None]
    rows_KD = W_dec_SD[latents] if directions_KD is None else directions_KD.to(W_dec_SD)
    return coeff_GBTK @ rows_KD


def check_edits(workbench: Workbench, edits: Sequence[Edit]) -> None:
    """Every latent the edits name exists (each distinct latent checked once: a sweep names one 16 times)."""
    for latent in {latent for edit in edits for latent in edit.latents}:
        workbench.check_latent(latent)


def edited_acts(
    workbench: Workbench,
    states: Sequence[SiteState],
    edits: Sequence[Edit],
    directions: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Site activations (N, B, T, D) of every edit on every image. ``directions[n]``, when given, replaces
    edit n's decoder rows (K, D)."""
    check_edits(workbench, edits)
    directions = directions or [None] * len(edits)
    if len(directions) != len(edits):
        raise ValueError(f"one direction entry per edit: {len(edits)} edits, {len(directions)} directions")
    needs_typical = any(e.mode == "add" and e.latents for e in edits)
    typical_S = workbench.typical_activation() if needs_typical else None
    W_dec_SD = workbench.sae.W_dec
    n_prefix = workbench.backend.n_prefix_tokens
    acts_BTD = torch.stack([s.acts_TD for s in states])
    # edits that differ only in their strengths (a sweep's rows) get their deltas in one product
    groups: dict[tuple, list[int]] = {}
    for n, (edit, direction) in enumerate(zip(edits, directions, strict=True)):
        key = (edit.latents, edit.mode, edit.patches, None if direction is None else id(direction))
        groups.setdefault(key, []).append(n)
    acts_NBTD = None  # each image's activations once per edit, then every group's deltas added to its rows
    for rows in groups.values():
        edit, direction = edits[rows[0]], directions[rows[0]]
        if not edit.latents:  # an empty edit adds exactly nothing
            continue
        strengths_GK = torch.tensor([edits[n].strengths for n in rows], dtype=W_dec_SD.dtype, device=W_dec_SD.device)
        f_BTK = torch.stack([s.columns(edit.latents) for s in states])  # the edited columns alone, never densified
        deltas_GBTD = group_deltas(f_BTK, W_dec_SD, edit, strengths_GK, typical_S, n_prefix, direction)
        deltas_GBTD = deltas_GBTD.to(acts_BTD.dtype)
        if len(rows) == len(edits):
            return acts_BTD.unsqueeze(0) + deltas_GBTD
        if acts_NBTD is None:
            acts_NBTD = acts_BTD.unsqueeze(0).repeat(len(edits), 1, 1, 1)
        if rows == list(range(rows[0], rows[-1] + 1)):  # a sweep's rows follow each other: a slice, no index
            acts_NBTD[rows[0] : rows[-1] + 1] += deltas_GBTD
        else:
            acts_NBTD[rows] += deltas_GBTD
    return acts_BTD.unsqueeze(0).repeat(len(edits), 1, 1, 1) if acts_NBTD is None else acts_NBTD


@torch.no_grad()
def edited_logits(
    workbench: Workbench,
    states: Sequence[SiteState],
    edits: Sequence[Edit],
    text_emb_LE: torch.Tensor,
    directions: Sequence[torch.Tensor | None] | None = None,
    unedited_in_pass: bool = False,
) -> torch.Tensor:
    """Zero-shot logits (N, B, L) of every edit on every image, in one batched pass through the suffix.

    Rows of an edit that changes nothing (:attr:`Edit.is_noop`: the "before" of a comparison, strength 1 in a
    sweep) are the unedited run, never run once per such edit: a no-op's row equals the unedited row exactly.
    By default the unedited row is read from the images' cached embeddings (Workbench.clean_image_embeddings,
    each image run alone), so that it never depends on what else was asked. With ``unedited_in_pass`` it is
    one more row of this pass instead: a request whose batch is fixed by its own arguments (a sweep's
    strengths) then pays one row, not a separate pass of the suffix, and its answer still depends on nothing
    else (the last bits may differ from the cached row's: kernels differ with the batch size)."""
    check_edits(workbench, edits)
    directions = list(directions or [None] * len(edits))
    changed = [i for i, edit in enumerate(edits) if not edit.is_noop]
    unchanged = sorted(set(range(len(edits))) - set(changed))
    in_pass = [edits[i] for i in changed]
    if unedited_in_pass and unchanged:
        in_pass.insert(0, NO_EDIT)
    if in_pass:
        rows = [None] * (len(in_pass) - len(changed)) + [directions[i] for i in changed]
        acts_NBTD = edited_acts(workbench, states, in_pass, rows)
        n, b = acts_NBTD.shape[:2]
        pass_NBL = workbench.logits_from_acts(acts_NBTD.flatten(0, 1), text_emb_LE).view(n, b, -1)
        if n == len(edits) and unchanged in ([], [0]):  # the pass's rows are the requested ones, in order
            return pass_NBL.float()
    logits_NBL = torch.empty(len(edits), len(states), text_emb_LE.shape[0], device=text_emb_LE.device)  # float32
    if in_pass:
        logits_NBL[changed] = pass_NBL[n - len(changed) :]
    if unchanged:
        if unedited_in_pass:
            clean_BL = pass_NBL[0]
        else:
            clean_BL = workbench.logits_from_embeddings(workbench.clean_image_embeddings(states), text_emb_LE)
        logits_NBL[unchanged] = clean_BL.to(logits_NBL)
    return logits_NBL
