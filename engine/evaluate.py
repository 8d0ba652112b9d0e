"""Score the app's explanations against the toy world's ground truth.

    python -m engine.evaluate            # a readable report
    python -m engine.evaluate --json     # one JSON object on stdout

Everything is measured on freshly rendered held-out scenes with fixed seeds that no trainer uses; no scene
is selected or dropped. For each scene and factor, the task is the factor's zero-shot question: classify
among the factor's values, the other words of the caption fixed to the truth. Then:

* ``toy_zero_shot_accuracy``: accuracy per factor;
* ``sae_explained_variance``, ``sae_concept_auroc`` (concept -> best latent's AUROC, image score = max over
  tokens) and its minimum; latents are labelled with their best concept on a labelling set of its own;
* ``attribution_hit_at_1`` / ``_at_5``: the true value's concept is among the top-k attributed latents' labels
  (pairs whose true value has no concept, i.e. marker=absent, are not scored);
* ``attribution_ablation_spearman``: rank correlation of attribution and actual single-latent ablation over
  the top-20 latents, median over (scene, factor) pairs;
* ``deletion_to_flip_median``: latents removed cumulatively in attribution order until the predicted value
  changes (capped at 100); the same in random order among the image's active latents and in activation order;
* ``steering_flip_rate``: removing the top-attributed latent alone changes the predicted value;
* ``steering_side_effect``: share of pairs whose minimal deletion set changes another factor's prediction;
* ``vocabulary_label_accuracy``: for latents with a ground-truth label (AUROC >= 0.75), how often the naming
  used for real models (engine.vocabulary: no ground truth, only the text tower) picks the true factor value
  among all 21 values; chance is 1/21.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

import numpy as np
import torch

from engine import attribution, vocabulary, zeroshot
from engine.resident import SiteState, Workbench, load_workbench
from engine.specs import ModelSpec, SAESpec
from engine.toyworld import captions, train_clip, train_sae
from engine.toyworld.render import FACTORS, Scene, render, render_batch, sample_scenes

log = logging.getLogger(__name__)

LABEL_SEED, SCENE_SEED, ZERO_SHOT_SEED, RANDOM_ORDER_SEED = 90_001, 90_002, 90_003, 90_004
DELETION_CAP = 100
VOCABULARY_MIN_AUROC = 0.75
FAITHFULNESS_K = 20


def latent_labels(bench: Workbench, n_images: int) -> tuple[dict, float]:
    scenes = sample_scenes(n_images, LABEL_SEED)
    acts_NTD = train_sae.site_activations(bench.backend, bench.site, render_batch(scenes))
    info = train_sae.label_latents(bench.sae, acts_NTD, [s for s, _ in scenes])
    return info, train_sae.explained_variance(bench.sae, acts_NTD.flatten(0, 1))


def vocabulary_naming(bench: Workbench, info: dict, min_auroc: float = VOCABULARY_MIN_AUROC) -> dict:
    """How often engine.vocabulary's best concept names a latent's ground-truth factor value.

    The vocabulary is every factor value as a partial caption ("a red shape", "a circle"); a latent counts
    when its ground-truth label has AUROC >= ``min_auroc``. Chance is one over the vocabulary's size."""
    concepts = {
        captions.caption({factor: value}): f"{factor}={value}" for factor in FACTORS for value in FACTORS[factor]
    }
    latents = [
        i
        for i, (label, score) in enumerate(zip(info["labels"], info["scores"]))
        if label != "inactive" and score >= min_auroc
    ]
    named = vocabulary.name_latents(bench, latents, list(concepts), "{}", top=1)
    exact = [concepts[named[i][0][0]] == info["labels"][i] for i in latents]
    same_factor = [concepts[named[i][0][0]].split("=")[0] == info["labels"][i].split("=")[0] for i in latents]
    return {
        "accuracy": round(float(np.mean(exact)), 4),
        "factor_accuracy": round(float(np.mean(same_factor)), 4),
        "chance": round(1 / len(concepts), 4),
        "latents": len(latents),
    }


@torch.no_grad()
def cumulative_deletion_logits(
    bench: Workbench, state: SiteState, order: list[int], text_emb_LE: torch.Tensor
) -> torch.Tensor:
    """Logits after removing order[:1], order[:2], ... (one batched suffix pass), (len(order), L)."""
    order_K = torch.tensor(order, dtype=torch.long)
    removed_TKD = state.f_TS[:, order_K].unsqueeze(-1) * bench.sae.W_dec[order_K].unsqueeze(0)
    cumulative_KTD = removed_TKD.cumsum(1).transpose(0, 1)
    return bench.logits_from_acts(state.acts_TD.unsqueeze(0) - cumulative_KTD, text_emb_LE)


def first_flip(logits_KL: torch.Tensor, original: int) -> int:
    changed = (logits_KL.argmax(-1) != original).nonzero()
    return int(changed[0]) + 1 if len(changed) else DELETION_CAP


def evaluate_pair(bench, state: SiteState, scene: Scene, factor: str, labels_S: list[str], rng) -> dict:
    values = FACTORS[factor]
    prompts = captions.factor_prompts(scene, factor)
    text_emb_LE = bench.text_embeddings(prompts, "{}")
    logits_L, target, _, scores_TS = attribution.attribute_state(bench, state, text_emb_LE, None, "logit_difference")
    scores_S = scores_TS.sum(0)
    truth = getattr(scene, factor)
    out = {"factor": factor, "correct": values[target] == truth}

    ranked = attribution.ranked_active(scores_S, state.f_TS)
    if (factor, truth) != ("marker", "absent"):
        wanted = train_sae.concept_name(factor, truth)
        out["hit1"] = labels_S[ranked[0]] == wanted
        out["hit5"] = wanted in [labels_S[i] for i in ranked[:5]]

    top = ranked[:FAITHFULNESS_K]
    actual_K = attribution.ablation_effects(bench, state, text_emb_LE, top, target, "logit_difference")
    out["spearman"] = attribution.spearman(scores_S[top], actual_K)

    active = (state.f_TS != 0).any(0).nonzero().flatten().tolist()
    activation_S = state.f_TS.sum(0)
    orders = {
        "attribution": ranked[:DELETION_CAP],
        "random": [active[i] for i in rng.permutation(len(active))][:DELETION_CAP],
        "activation": activation_S.argsort(descending=True).tolist()[:DELETION_CAP],
    }
    flips = {}
    for name, order in orders.items():
        logits_KL = cumulative_deletion_logits(bench, state, order, text_emb_LE)
        flips[name] = first_flip(logits_KL, target)
        if name == "attribution":
            out["flip_top1"] = bool(logits_KL[0].argmax() != target)
            if flips[name] < DELETION_CAP:
                out["side_effect"] = side_effect(bench, state, scene, factor, order[: flips[name]])
    out["deletion"] = flips
    return out


@torch.no_grad()
def side_effect(bench: Workbench, state: SiteState, scene: Scene, factor: str, removed: list[int]) -> bool:
    """Does removing ``removed`` change the predicted value of any other factor?"""
    removed_TD = state.f_TS[:, removed] @ bench.sae.W_dec[removed]
    acts_2TD = torch.stack([state.acts_TD, state.acts_TD - removed_TD])
    emb_2E = bench.backend.suffix(acts_2TD, bench.site)
    for other in FACTORS:
        if other == factor:
            continue
        text_emb_LE = bench.text_embeddings(captions.factor_prompts(scene, other), "{}")
        logits_2L = zeroshot.zero_shot_logits(emb_2E, text_emb_LE, bench.backend.logit_scale)
        if logits_2L[0].argmax() != logits_2L[1].argmax():
            return True
    return False


def evaluate(bench: Workbench, n_scenes: int = 150, n_label_images: int = 2000, n_zero_shot: int = 1000) -> dict:
    start = time.time()
    tokens = train_clip.CaptionTokens(bench.backend.model.context_length)
    accuracy = train_clip.zero_shot_accuracy(bench.backend.model, tokens, n=n_zero_shot, seed=ZERO_SHOT_SEED)
    info, explained = latent_labels(bench, n_label_images)
    labels_S, concept_auroc = info["labels"], info["concept_auroc"]
    naming = vocabulary_naming(bench, info)
    log.info("labelled latents in %.0fs", time.time() - start)

    rng = np.random.default_rng(RANDOM_ORDER_SEED)
    pairs = []
    for i, (scene, seed) in enumerate(sample_scenes(n_scenes, SCENE_SEED)):
        image, _ = render(scene, seed)
        (state,) = bench.site_states([image])
        pairs += [evaluate_pair(bench, state, scene, factor, labels_S, rng) for factor in FACTORS]
        if i % 25 == 0:
            log.info("scene %d/%d (%.0fs)", i, n_scenes, time.time() - start)

    scored = [p for p in pairs if "hit1" in p]
    flipped = [p for p in pairs if "side_effect" in p]
    deletion = {k: statistics.median(p["deletion"][k] for p in pairs) for k in ("attribution", "random", "activation")}
    result = {
        "toy_zero_shot_accuracy": {k: round(v, 4) for k, v in accuracy.items()},
        "sae_explained_variance": round(explained, 4),
        "sae_concept_auroc": concept_auroc,
        "sae_concept_auroc_min": min(concept_auroc.values()),
        "attribution_hit_at_1": round(float(np.mean([p["hit1"] for p in scored])), 4),
        "attribution_hit_at_5": round(float(np.mean([p["hit5"] for p in scored])), 4),
        "attribution_ablation_spearman": round(float(np.nanmedian([p["spearman"] for p in pairs])), 4),
        "deletion_to_flip_median": deletion["attribution"],
        "deletion_to_flip_median_random": deletion["random"],
        "deletion_to_flip_median_activation": deletion["activation"],
        "steering_flip_rate": round(float(np.mean([p["flip_top1"] for p in pairs])), 4),
        "steering_side_effect": round(float(np.mean([p["side_effect"] for p in flipped])), 4) if flipped else None,
        "vocabulary_label_accuracy": naming["accuracy"],
        "details": {
            "scenes": n_scenes,
            "pairs": len(pairs),
            "vocabulary_naming": naming,
            "pairs_scored_for_hits": len(scored),
            "pairs_flipped_within_cap": len(flipped),
            "task_accuracy_on_pairs": round(float(np.mean([p["correct"] for p in pairs])), 4),
            "hit_at_1_by_factor": {
                f: round(float(np.mean([p["hit1"] for p in scored if p["factor"] == f])), 4) for f in FACTORS
            },
            "side_effect_by_factor": {
                f: round(float(np.mean([p["side_effect"] for p in flipped if p["factor"] == f])), 4)
                for f in FACTORS
                if any(p["factor"] == f for p in flipped)
            },
            "deletion_to_flip_by_factor": {
                f: statistics.median(p["deletion"]["attribution"] for p in pairs if p["factor"] == f) for f in FACTORS
            },
            "seeds": {"labels": LABEL_SEED, "scenes": SCENE_SEED, "zero_shot": ZERO_SHOT_SEED},
            "model": bench.model_spec.display_name,
            "site": bench.site,
            "seconds": round(time.time() - start),
        },
    }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--scenes", type=int, default=150, help="held-out scenes for the attribution metrics")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    result = evaluate(load_workbench(ModelSpec.toy(), SAESpec.toy()), n_scenes=args.scenes)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:40s} {json.dumps(value)}")


if __name__ == "__main__":
    main()
