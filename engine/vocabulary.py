"""Name SAE latents without ground truth, by aligning them with a concept vocabulary in CLIP's joint space.

Discover-then-Name (Rao et al., ECCV 2024) names the latents of an SAE trained on CLIP *embeddings* by the
cosine between each decoder direction and the text embeddings of a vocabulary: in the joint space, image
and text directions are comparable. Our SAEs sit on the residual stream inside the vision tower, where
that comparison means nothing, so each direction is first carried into the joint space through the rest
of the tower (the suffix), as a finite difference at a neutral reference:

    ref_TD   = site activations of a mid-grey image (a content-free input)
    delta_i  = n(suffix(ref_TD + alpha * d_i at every token)) - n(suffix(ref_TD))
    t_c      = n(text(template(c))) - n(text(template("")))
    score_ic = cos(delta_i, t_c)

``d_i`` is latent i's unit decoder direction, added at every token (the class token included: after the
last block only the class token reaches the embedding), ``alpha`` a fixed fraction of the reference's typical token
norm (small enough to stay near the linear regime, large enough to clear numerical noise), ``n``
normalises. Subtracting the empty prompt removes what every prompt shares ("a photo of a"), which would
otherwise dominate every cosine. The top concepts are a hypothesis about the latent, not ground truth: on
the toy world, where the truth is known, ``python -m engine.evaluate`` scores how often the best concept
names the latent's true factor value (``vocabulary_label_accuracy``).
"""

from __future__ import annotations

import functools
import weakref

import torch
import torch.nn.functional as F
from PIL import Image

from engine.errors import UserInputError
from engine.resident import Workbench
from engine.specs import ASSETS

CONCEPTS_FILE = ASSETS / "labels" / "concepts.txt"

REFERENCE_GREY = (128, 128, 128)
ALPHA_FRACTION = 0.5


def reference_acts(workbench: Workbench) -> torch.Tensor:
    """(T, D) site activations of a mid-grey image: the content-free point the directions are taken at."""
    (state,) = workbench.site_states([Image.new("RGB", (224, 224), REFERENCE_GREY)])
    return state.acts_TD


_JOINT_MEMO: weakref.WeakKeyDictionary[Workbench, dict] = weakref.WeakKeyDictionary()
"""Per resident workbench: the reference point and every latent's joint direction computed so far."""


@torch.no_grad()
def joint_directions(workbench: Workbench, latents: list[int], alpha_fraction: float = ALPHA_FRACTION) -> torch.Tensor:
    """(K, E) unit directions in the joint space: where adding each latent moves the image embedding.

    Each latent's direction is computed alone (one row through the suffix, beside the reference's embedding,
    itself computed once), then kept with the workbench: a latent's name never depends on which latents were
    asked with it (kernels differ with the batch size in the last bits), and a latent named once is named
    again for free (a real model's ten top latents cost a tenth of a second through the suffix on this CPU)."""
    with workbench.lock:
        memo = _JOINT_MEMO.setdefault(workbench, {})
        if ("reference", alpha_fraction) not in memo:
            ref_TD = reference_acts(workbench).float()
            alpha = alpha_fraction * float(ref_TD.norm(dim=-1).mean())
            memo["reference", alpha_fraction] = ref_TD, alpha, suffix_embedding(workbench, ref_TD)
        ref_TD, alpha, ref_E = memo["reference", alpha_fraction]
        for latent in dict.fromkeys(latents):
            if (latent, alpha_fraction) not in memo:
                d_D = F.normalize(workbench.sae.W_dec[latent].float(), dim=-1)
                moved_E = suffix_embedding(workbench, ref_TD + alpha * d_D)
                memo[latent, alpha_fraction] = F.normalize(moved_E - ref_E, dim=-1)
        if not latents:
            return ref_E.new_zeros(0, ref_E.shape[0])
        return torch.stack([memo[latent, alpha_fraction] for latent in latents])


def suffix_embedding(workbench: Workbench, acts_TD: torch.Tensor) -> torch.Tensor:
    """(E,) the unit image embedding of one image's site activations, run alone through the suffix."""
    emb_1E = workbench.backend.suffix(acts_TD[None].to(workbench.dtype), workbench.site).float()
    return F.normalize(emb_1E, dim=-1)[0]


@torch.no_grad()
def concept_directions(workbench: Workbench, concepts: list[str], template: str) -> torch.Tensor:
    """(C, E) unit text directions of the concepts, relative to the template with nothing filled in."""
    text_CE = workbench.text_embeddings(concepts, template)
    empty_1E = workbench.text_embeddings([""], template)
    return F.normalize(text_CE - empty_1E, dim=-1)


def name_latents(
    workbench: Workbench, latents: list[int], concepts: list[str], template: str | None = None, top: int = 3
) -> dict[int, list[tuple[str, float]]]:
    """The ``top`` concepts (with cosine scores) for each latent.

    >>> from engine.resident import load_workbench
    >>> from engine.specs import ModelSpec, SAESpec
    >>> workbench = load_workbench(ModelSpec.toy(), SAESpec.toy(), "cpu")
    >>> named = name_latents(workbench, [0, 1], ["a red shape", "a circle", "a striped background"], "{}", top=2)
    >>> sorted(named), [len(best) for best in named.values()]
    ([0, 1], [2, 2])
    """
    if not concepts:
        raise UserInputError("the concept vocabulary is empty")
    for latent in latents:
        workbench.check_latent(latent)
    template = template or workbench.model_spec.prompt_template
    scores_KC = joint_directions(workbench, latents) @ concept_directions(workbench, concepts, template).T
    values_KN, index_KN = scores_KC.topk(min(top, len(concepts)), dim=-1)
    return {
        latent: [(concepts[j], round(float(v), 4)) for v, j in zip(values_KN[k].tolist(), index_KN[k].tolist())]
        for k, latent in enumerate(latents)
    }


@functools.cache
def concept_vocabulary() -> tuple[str, ...]:
    """The shipped vocabulary that names latents of real models (assets/labels/concepts.txt)."""
    return tuple(line for line in CONCEPTS_FILE.read_text(encoding="utf-8").splitlines() if line.strip())


def latent_names(
    workbench: Workbench, latents: list[int], template: str | None = None, concepts: tuple[str, ...] | None = None
) -> dict[int, tuple[str, float | None, str]]:
    """The naming policy: (name, score, source) per latent. Where the SAE ships ground-truth labels (the toy),
    the label and its AUROC ("ground truth"); otherwise the best three concepts of the vocabulary and the
    cosine of the first ("vocabulary")."""
    info = workbench.latent_info
    if info is not None:
        return {i: (info.labels[workbench.check_latent(i)], info.scores[i], "ground truth") for i in latents}
    if not latents:
        return {}
    named = name_latents(workbench, latents, list(concepts or concept_vocabulary()), template, top=3)
    return {i: ("; ".join(c for c, _ in best), best[0][1], "vocabulary") for i, best in named.items()}
