"""Score the app's explanations against the toy world's ground truth.

    python -m engine.evaluate            # a readable report
    python -m engine.evaluate --json     # one JSON object on stdout
    python -m engine.evaluate --json --model DIR/toy_clip --sae DIR/toy_sae   # a rebuilt toy CLIP and its SAE

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
  the details add the share of pairs that flip within 3 and that never flip within the cap, and
  ``all_latents_removed_flip_rate``: the share whose answer changes when every latent active on the image is
  removed (the error term and the decoder bias stay), beside ``fixed_answer_flip_rate``, what one fixed answer
  to "no evidence" would score by chance (1 - 1/number of values, averaged): a pair whose true value is the
  model's answer to "nothing there" cannot be flipped by removing evidence, only on the way through another value;
* ``steering_flip_rate``: removing the top-attributed latent alone changes the predicted value;
* ``steering_side_effect``: share of pairs whose minimal deletion set changes another factor's prediction;
* ``heatmap_iou``: for each held-out scene and each of shape and colour, the per-patch activation of the
  scene's value's best latent (highest AUROC for that concept when scored by its patch tokens alone: a heatmap
  shows patches, and a latent that fires only on the class token has none), thresholded at half its maximum, against the
  rendered shape at patch resolution (patches at least half covered, and always the most covered one); the
  median IoU. A latent that does not fire on any patch scores 0;
* ``sae_dead_fraction`` and ``sae_l0``: latents that never fire on the labelling set, and the mean number of
  latents on per token;
* the Diff tab on the toy pair (the toy CLIP against itself fine-tuned with a planted shortcut, when its assets
  are present; engine.toyworld.train_shortcut), on a probe set of its own:
  ``diff_shift_recovered_rank`` (rank of the first marker latent, a latent whose ground-truth label is
  marker=present, in the Diff tab's ranking of concepts whose presence predicts a changed answer to the shape
  question; 1 is first; its rank in the attribution-shift ranking is in the details), ``diff_behaviour_flip_rate`` (share of marker scenes whose
  true shape is not the planted one that the intervened model answers with the planted shape),
  ``patching_self_max_abs`` (largest change from patching a run into itself: must be 0) and
  ``patching_localised_block`` (median over those marker scenes of the first block where denoising, the
  reference's residual stream written into the intervened model, restores half of the logit difference);
* the Explain tab on the toy LLaVA (when built; engine.toyworld.train_vlm), over every latent whose ground-truth
  concept AUROC is at least 0.9 (``EXPLAIN_MIN_AUROC``), with the default settings (add style, white image,
  greedy): ``explanation_accuracy`` (share whose steered explanation names the latent's concept value, as the
  caption grammar words it), ``explanation_control_false_rate`` (share of the random-direction and
  permuted-latent controls that name it; a permuted latent with the same label is not counted),
  ``vlm_caption_exact_match`` (held-out scenes whose generated caption is exactly the true one);
* ``index_top1_concept_match``: for latents with a ground-truth label (AUROC >= 0.75, as below), the share whose
  top-16 images in the feature index (engine.index; the shipped toy index, 4096 scenes of a seed of its own, or one
  built on the spot when it does not fit the SAE) all show the label's factor value; the details give the mean
  share of matching images and the match at stricter AUROC floors;
* ``vocabulary_label_accuracy``: for latents with a ground-truth label (AUROC >= 0.75), how often the naming
  used for real models (engine.vocabulary: no ground truth, only the text tower) picks the true factor value
  among all 21 values; chance is 1/21.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from engine import attribution, diff, explain, heldout, index, patching, vocabulary
from engine.edits import NO_EDIT, Edit, edited_acts, edited_logits
from engine.explain import Explainer, ExplainSettings
from engine.report import print_result
from engine.resident import SiteState, Workbench, load_workbench, resident_sae
from engine.sources import AllowedDirs
from engine.specs import TOY_CLIP_DIR, TOY_SHORTCUT_DIR, TOY_VLM_DIR, ModelSpec, SAESpec, VLMSpec
from engine.toyworld import captions, train_clip, train_sae, train_shortcut, train_vlm
from engine.toyworld.render import FACTORS, IMAGE_SIZE, Scene, render, render_batch, sample_scenes
from engine.vlm import resident_vlm

log = logging.getLogger(__name__)

LABEL_SEED, SCENE_SEED, ZERO_SHOT_SEED, RANDOM_ORDER_SEED = 90_001, 90_002, 90_003, 90_004
DELETION_CAP = 100
VOCABULARY_MIN_AUROC = 0.75
EXPLAIN_MIN_AUROC = 0.9
FAITHFULNESS_K = 20


def latent_labels(workbench: Workbench, n_images: int) -> tuple[dict, float]:
    scenes = sample_scenes(n_images, LABEL_SEED)
    acts_NTD = train_sae.site_activations(workbench.backend, workbench.site, render_batch(scenes))
    info = train_sae.label_latents(workbench.sae, acts_NTD, [s for s, _ in scenes])
    return info, train_sae.explained_variance(workbench.sae, acts_NTD.flatten(0, 1))


def shape_patches(truth, patch: int) -> np.ndarray:
    """(gh, gw) bool: patches at least half covered by the shape, and always the most covered one."""
    return train_sae.shape_patches(truth.patch_fraction(patch)["shape"])


def heatmap_iou(workbench: Workbench, state: SiteState, truth, latent: int) -> float:
    """IoU of the latent's per-patch activation (above half its maximum) with the shape's patches."""
    map_HW = attribution.patch_map(state.f_TS[:, latent], workbench.backend.grid).float().cpu().numpy()
    patch = IMAGE_SIZE // workbench.backend.grid[0]
    return train_sae.patch_iou(map_HW, truth.patch_fraction(patch)["shape"])


def vocabulary_naming(workbench: Workbench, info: dict, min_auroc: float = VOCABULARY_MIN_AUROC) -> dict:
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
    named = vocabulary.name_latents(workbench, latents, list(concepts), "{}", top=1)
    exact = [concepts[named[i][0][0]] == info["labels"][i] for i in latents]
    same_factor = [concepts[named[i][0][0]].split("=")[0] == info["labels"][i].split("=")[0] for i in latents]
    return {
        "accuracy": round(float(np.mean(exact)), 4),
        "factor_accuracy": round(float(np.mean(same_factor)), 4),
        "chance": round(1 / len(concepts), 4),
        "latents": len(latents),
    }


INDEX_TOP = 16


def index_concept_match(workbench: Workbench, info: dict, min_auroc: float = VOCABULARY_MIN_AUROC) -> dict:
    """Do a latent's top-activating images in the feature index show its ground-truth concept?"""
    found = index.find_index(workbench)
    where = "shipped"
    if found is None:
        source = index.parse_source(index.TOY_INDEX_DATASET)
        state, _ = index.build_index(workbench, source, top_n=INDEX_TOP, model_text="toy")
        top_images_SN, where = state.top_images_SN, "built"
    else:
        source, top_images_SN = found.source(), found.state.top_images_SN
    rows = []
    for latent, (label, score) in enumerate(zip(info["labels"], info["scores"])):
        if label == "inactive" or score < min_auroc:
            continue
        factor, value = label.split("=")
        images = [i for i in top_images_SN[latent, :INDEX_TOP].tolist() if i >= 0]
        shows = [getattr(source.scene(i), factor) == value for i in images]
        rows.append((score, factor, len(images) == INDEX_TOP and all(shows), float(np.mean(shows)) if shows else 0.0))
    return {
        "match": round(float(np.mean([r[2] for r in rows])), 4),
        "latents": len(rows),
        "mean_share_of_images": round(float(np.mean([r[3] for r in rows])), 4),
        "by_factor": {
            f: round(float(np.mean([r[2] for r in rows if r[1] == f])), 4) for f in sorted({r[1] for r in rows})
        },
        "by_auroc_floor": {
            floor: round(float(np.mean([r[2] for r in rows if r[0] >= floor])), 4)
            for floor in (0.85, 0.9, 0.95)
            if any(r[0] >= floor for r in rows)
        },
        "index": where,
        "dataset": source.describe(),
    }


def cumulative_deletion_logits(
    workbench: Workbench, state: SiteState, order: list[int], text_emb_LE: torch.Tensor
) -> torch.Tensor:
    """Logits after removing order[:1], order[:2], ... (one batched suffix pass), (len(order), L)."""
    edits = [Edit.removal(order[: k + 1]) for k in range(len(order))]
    return edited_logits(workbench, [state], edits, text_emb_LE)[:, 0]


def first_flip(logits_KL: torch.Tensor, original: int) -> int:
    changed = (logits_KL.argmax(-1) != original).nonzero()
    return int(changed[0]) + 1 if len(changed) else DELETION_CAP


def evaluate_pair(workbench, state: SiteState, scene: Scene, factor: str, labels_S: list[str], rng) -> dict:
    values = FACTORS[factor]
    prompts = captions.factor_prompts(scene, factor)
    text_emb_LE = workbench.text_embeddings(prompts, "{}")
    logits_L, target, _, scores_TS = attribution.attribute_state(
        workbench, state, text_emb_LE, None, "logit_difference"
    )
    scores_S = scores_TS.sum(0)
    truth = getattr(scene, factor)
    out = {"factor": factor, "correct": values[target] == truth}

    ranked = attribution.ranked_active(scores_S, state.f_TS)
    if (factor, truth) != ("marker", "absent"):
        wanted = train_sae.concept_name(factor, truth)
        out["hit1"] = labels_S[ranked[0]] == wanted
        out["hit5"] = wanted in [labels_S[i] for i in ranked[:5]]

    top = ranked[:FAITHFULNESS_K]
    actual_K = attribution.ablation_effects(workbench, state, text_emb_LE, top, target, "logit_difference")
    out["spearman"] = attribution.spearman(scores_S[top], actual_K)

    active = (state.f_TS != 0).any(0).nonzero().flatten().tolist()
    activation_S = state.f_TS.sum(0)
    orders = {
        "attribution": ranked[:DELETION_CAP],
        "random": [active[i] for i in rng.permutation(len(active))][:DELETION_CAP],
        "activation": activation_S.argsort(descending=True).tolist()[:DELETION_CAP],
    }
    emptied_L = edited_logits(workbench, [state], [Edit.removal(active)], text_emb_LE)[0, 0]
    out["all_removed_flips"] = bool(emptied_L.argmax() != target)
    flips = {}
    for name, order in orders.items():
        logits_KL = cumulative_deletion_logits(workbench, state, order, text_emb_LE)
        flips[name] = first_flip(logits_KL, target)
        if name == "attribution":
            out["flip_top1"] = bool(logits_KL[0].argmax() != target)
            if flips[name] < DELETION_CAP:
                out["side_effect"] = side_effect(workbench, state, scene, factor, order[: flips[name]])
    out["deletion"] = flips
    return out


@torch.no_grad()
def side_effect(workbench: Workbench, state: SiteState, scene: Scene, factor: str, removed: list[int]) -> bool:
    """Does removing ``removed`` change the predicted value of any other factor?"""
    acts_2TD = edited_acts(workbench, [state], [NO_EDIT, Edit.removal(removed)])[:, 0]
    for other in FACTORS:
        if other == factor:
            continue
        text_emb_LE = workbench.text_embeddings(captions.factor_prompts(scene, other), "{}")
        logits_2L = workbench.logits_from_acts(acts_2TD, text_emb_LE)
        if logits_2L[0].argmax() != logits_2L[1].argmax():
            return True
    return False


DIFF_PROBE_SCENES = 64


def evaluate_diff(workbench: Workbench, info: dict, allowed: AllowedDirs | None = None) -> dict:
    """The Diff tab's scores on the toy pair (see the module docstring)."""
    config = train_shortcut.ShortcutConfig()
    labels = list(FACTORS["shape"])
    intervened = load_workbench(ModelSpec.toy_shortcut(), workbench.sae_spec, str(workbench.device), allowed=allowed)
    pair = diff.DiffPair(workbench, intervened)
    images, truth, scenes = heldout.toy_probe(DIFF_PROBE_SCENES, labels)
    behaviour = diff.behaviour_shift(pair, images, labels, "a {}", truth)
    ranking = diff.trigger_latents(pair, images, behaviour, "a {}", top=workbench.d_sae)
    use_ranking = diff.latent_shift(pair, images, labels, "a {}", top=workbench.d_sae)
    marker_latents = {i for i, label in enumerate(info["labels"]) if label == "marker=present"}
    rank = next(row["rank"] for row in ranking if row["latent"] in marker_latents)
    use_rank = next(row["rank"] for row in use_ranking if row["latent"] in marker_latents)
    marked = [i for i, s in enumerate(scenes) if s.marker == "present" and s.shape != config.planted_shape]
    predicted = intervened.predict([images[i] for i in marked], labels, "a {}").argmax(-1).tolist()
    flip_rate = sum(labels[p] == config.planted_shape for p in predicted) / len(marked)
    text_emb_LE = workbench.text_embeddings(labels, "a {}")
    with workbench.lock:
        own = patching.run(workbench.backend, workbench.pixels(images[:1]), text_emb_LE, workbench.dtype)
        grid = patching.patch_grid(workbench.backend, own, own, text_emb_LE, int(own.logits_L.argmax()))
    self_max = grid["max_change"]
    blocks = []
    for i in marked:
        patch = diff.patch_models(pair, images[i], labels, "a {}", label=truth[i])
        first = patching.first_localised_block(patch["denoising"]["all_tokens_recovered"])
        blocks.append(workbench.backend.n_blocks if first is None else first)
    return {
        "diff_shift_recovered_rank": rank,
        "diff_behaviour_flip_rate": round(flip_rate, 4),
        "patching_self_max_abs": self_max,
        "patching_localised_block": statistics.median(blocks),
        "diff_details": {
            "probe_scenes": DIFF_PROBE_SCENES,
            "marker_scenes": len(marked),
            "marker_latents": sorted(marker_latents),
            "top_triggers": [(row["latent"], row["name"], round(row["auroc"], 4)) for row in ranking[:5]],
            "marker_rank_by_attribution_shift": use_rank,
            "top_attribution_shifts": [
                (row["latent"], row["name"], round(row["attribution_shift"], 4)) for row in use_ranking[:5]
            ],
            "localised_block_counts": {b: blocks.count(b) for b in sorted(set(blocks))},
        },
    }


def evaluate_explain(
    info: dict,
    device: str,
    settings: ExplainSettings = ExplainSettings(),
    sae_spec: SAESpec = SAESpec.toy(),
    allowed: AllowedDirs | None = None,
) -> dict:
    """The Explain tab's scores on the toy LLaVA (see the module docstring)."""
    vlm = resident_vlm(VLMSpec.toy(), device)
    explainer = Explainer(vlm, resident_sae(sae_spec, device, allowed=allowed), None)
    latents = [i for i, s in enumerate(info["scores"]) if s >= EXPLAIN_MIN_AUROC and info["labels"][i] != "inactive"]
    start = time.time()
    done = [explainer.explain(i, settings) for i in latents]
    seconds = (time.time() - start) / max(len(done), 1)
    score = explain.score_explanations(done, info["labels"])
    factors = sorted({info["labels"][i].partition("=")[0] for i in latents})
    return {
        "explanation_accuracy": round(score.accuracy, 4),
        "explanation_control_false_rate": round(score.control_false_rate, 4),
        "vlm_caption_exact_match": train_vlm.caption_exact_match(vlm.model, vlm.processor, 200),
        "explain_details": {
            "latents": len(latents),
            "settings": asdict(settings.resolved()),
            "seconds_per_explanation": round(seconds, 3),
            "accuracy_by_factor": {
                f: round(
                    float(np.mean([n for i, n in zip(latents, score.named) if info["labels"][i].startswith(f)])), 4
                )
                for f in factors
            },
            "unsteered_says_nothing": round(float(np.mean([e.unsteered == "nothing" for e in done])), 4),
            "examples": [(e.latent, info["labels"][e.latent], e.steered, e.random, e.permuted) for e in done[:8]],
        },
    }


def evaluate(
    workbench: Workbench,
    n_scenes: int = 150,
    n_label_images: int = 2000,
    n_zero_shot: int = 1000,
    allowed: AllowedDirs | None = None,
) -> dict:
    """Every score of the module docstring; ``allowed`` lets the Diff and Explain parts read the workbench's SAE
    where the operator allowed it (an SAE outside assets/)."""
    start = time.time()
    shipped_clip = workbench.model_spec == ModelSpec.toy()  # the Diff pair and the toy LLaVA are built from it
    tokens = train_clip.CaptionTokens(workbench.backend.model.context_length)
    accuracy = train_clip.zero_shot_accuracy(workbench.backend.model, tokens, n=n_zero_shot, seed=ZERO_SHOT_SEED)
    info, explained = latent_labels(workbench, n_label_images)
    labels_S, concept_auroc = info["labels"], info["concept_auroc"]
    naming = vocabulary_naming(workbench, info)
    concept_match = index_concept_match(workbench, info)
    log.info("labelled latents in %.0fs", time.time() - start)

    rng = np.random.default_rng(RANDOM_ORDER_SEED)
    pairs = []
    ious = []
    for i, (scene, seed) in enumerate(sample_scenes(n_scenes, SCENE_SEED)):
        image, truth = render(scene, seed)
        (state,) = workbench.site_states([image])
        pairs += [evaluate_pair(workbench, state, scene, factor, labels_S, rng) for factor in FACTORS]
        for factor in ("shape", "colour"):
            latent = info["concept_patch_latent"][train_sae.concept_name(factor, getattr(scene, factor))]
            ious.append({"factor": factor, "iou": heatmap_iou(workbench, state, truth, latent)})
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
        "sae_dead_fraction": info["dead_fraction"],
        "sae_l0": info["l0"],
        "heatmap_iou": round(float(np.median([r["iou"] for r in ious])), 4),
        "attribution_hit_at_1": round(float(np.mean([p["hit1"] for p in scored])), 4),
        "attribution_hit_at_5": round(float(np.mean([p["hit5"] for p in scored])), 4),
        "attribution_ablation_spearman": round(float(np.nanmedian([p["spearman"] for p in pairs])), 4),
        "deletion_to_flip_median": deletion["attribution"],
        "deletion_to_flip_median_random": deletion["random"],
        "deletion_to_flip_median_activation": deletion["activation"],
        "steering_flip_rate": round(float(np.mean([p["flip_top1"] for p in pairs])), 4),
        "steering_side_effect": round(float(np.mean([p["side_effect"] for p in flipped])), 4) if flipped else None,
        "vocabulary_label_accuracy": naming["accuracy"],
        "index_top1_concept_match": concept_match["match"],
        **(evaluate_diff(workbench, info, allowed) if shipped_clip and TOY_SHORTCUT_DIR.is_dir() else {}),
        **(
            evaluate_explain(info, str(workbench.device), sae_spec=workbench.sae_spec, allowed=allowed)
            if shipped_clip and TOY_VLM_DIR.is_dir()
            else {}
        ),
        "details": {
            "scenes": n_scenes,
            "pairs": len(pairs),
            "vocabulary_naming": naming,
            "index_concept_match": concept_match,
            "pairs_scored_for_hits": len(scored),
            "pairs_flipped_within_cap": len(flipped),
            "task_accuracy_on_pairs": round(float(np.mean([p["correct"] for p in pairs])), 4),
            "heatmap_iou_mean": round(float(np.mean([r["iou"] for r in ious])), 4),
            "heatmap_iou_by_factor": {
                f: round(float(np.median([r["iou"] for r in ious if r["factor"] == f])), 4) for f in ("shape", "colour")
            },
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
            "deletion_within_3_share": share(p["deletion"]["attribution"] <= 3 for p in pairs),
            "deletion_never_share": share(p["deletion"]["attribution"] >= DELETION_CAP for p in pairs),
            "all_latents_removed_flip_rate": share(p["all_removed_flips"] for p in pairs),
            "all_latents_removed_flip_rate_by_factor": {
                f: share(p["all_removed_flips"] for p in pairs if p["factor"] == f) for f in FACTORS
            },
            "fixed_answer_flip_rate": share(1 - 1 / len(FACTORS[p["factor"]]) for p in pairs),
            "seeds": {"labels": LABEL_SEED, "scenes": SCENE_SEED, "zero_shot": ZERO_SHOT_SEED},
            "model": workbench.model_spec.display_name,
            "site": workbench.site,
            "device": str(workbench.device),
            "seconds": round(time.time() - start),
        },
    }
    return result


def share(flags) -> float:
    """Mean of booleans (or numbers), rounded as the other figures."""
    values = [float(f) for f in flags]
    return round(float(np.mean(values)), 4) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--scenes", type=int, default=150, help="held-out scenes for the attribution metrics")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cuda when present)")
    parser.add_argument(
        "--sae", default=str(SAESpec.toy().path),
        help="an SAE of the toy CLIP to score instead of the shipped one (e.g. a rebuilt toy_sae directory); the "
        "feature index is then built on the spot unless the shipped one fits it",
    )  # fmt: skip
    parser.add_argument(
        "--model", default=str(TOY_CLIP_DIR),
        help="a toy CLIP directory to score instead of the shipped one (the toy_clip of `python -m "
        "engine.toyworld.build --out DIR`), with an SAE of it (--sae); the Diff and Explain parts are then skipped: "
        "their toy models are built from the shipped CLIP",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    allowed = AllowedDirs.default().with_paths([args.sae, args.model])  # the operator named them
    model = ModelSpec.toy()
    if Path(args.model).resolve() != TOY_CLIP_DIR.resolve():
        model = replace(model, name=f"local-dir:{Path(args.model).resolve()}")
    workbench = load_workbench(model, SAESpec(args.sae), args.device, allowed=allowed)
    result = evaluate(workbench, n_scenes=args.scenes, allowed=allowed)
    print_result(result, args.json, width=40)


if __name__ == "__main__":
    main()
