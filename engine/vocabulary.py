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

import torch
import torch.nn.functional as F
from PIL import Image

from engine.resident import Workbench

REFERENCE_GREY = (128, 128, 128)
ALPHA_FRACTION = 0.5


def reference_acts(bench: Workbench) -> torch.Tensor:
    """(T, D) site activations of a mid-grey image: the content-free point the directions are taken at."""
    (state,) = bench.site_states([Image.new("RGB", (224, 224), REFERENCE_GREY)])
    return state.acts_TD


@torch.no_grad()
def joint_directions(bench: Workbench, latents: list[int], alpha_fraction: float = ALPHA_FRACTION) -> torch.Tensor:
    """(K, E) unit directions in the joint space: where adding each latent moves the image embedding."""
    with bench.lock:
        ref_TD = reference_acts(bench)
        ref_TD = ref_TD.float()
        alpha = alpha_fraction * float(ref_TD.norm(dim=-1).mean())
        d_KD = F.normalize(bench.sae.W_dec[latents].float(), dim=-1)
        acts_KTD = torch.cat([ref_TD[None], ref_TD[None] + alpha * d_KD[:, None, :]])
        emb_KE = F.normalize(bench.backend.suffix(acts_KTD.to(bench.dtype), bench.site).float(), dim=-1)
        return F.normalize(emb_KE[1:] - emb_KE[:1], dim=-1)


@torch.no_grad()
def concept_directions(bench: Workbench, concepts: list[str], template: str) -> torch.Tensor:
    """(C, E) unit text directions of the concepts, relative to the template with nothing filled in."""
    text_CE = bench.text_embeddings(concepts, template)
    empty_1E = bench.text_embeddings([""], template)
    return F.normalize(text_CE - empty_1E, dim=-1)


def name_latents(
    bench: Workbench, latents: list[int], concepts: list[str], template: str | None = None, top: int = 3
) -> dict[int, list[tuple[str, float]]]:
    """The ``top`` concepts (with cosine scores) for each latent.

    >>> # name_latents(bench, [12, 40], ["dog", "red", "striped"])  ->  {12: [("red", 0.41), ...], 40: [...]}
    """
    if not concepts:
        raise ValueError("the concept vocabulary is empty")
    for latent in latents:
        bench.check_latent(latent)
    template = template or bench.model_spec.prompt_template
    scores_KC = joint_directions(bench, latents) @ concept_directions(bench, concepts, template).T
    values_KN, index_KN = scores_KC.topk(min(top, len(concepts)), dim=-1)
    return {
        latent: [(concepts[j], round(float(v), 4)) for v, j in zip(values_KN[k].tolist(), index_KN[k].tolist())]
        for k, latent in enumerate(latents)
    }
