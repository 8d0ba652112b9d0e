"""The toy SAE's seed selection (engine.toyworld.train_sae): its heatmap check is evaluate's heatmap_iou on the
trainer's own scenes, the rule keeps what its docstring says, and one candidate is the plain recipe."""

import json
from dataclasses import replace

import numpy as np
import torch
from safetensors.torch import load_file

from engine import evaluate
from engine.backends.open_clip_backend import OpenClipBackend
from engine.specs import TOY_CLIP_DIR, ModelSpec
from engine.toyworld import render
from engine.toyworld import train_sae as toy_sae


def test_patch_iou_equals_the_set_definition():
    rng = np.random.default_rng(0)
    for _ in range(50):
        map_HW = rng.random((6, 6)) * (rng.random((6, 6)) < 0.3)
        fraction_HW = rng.random((6, 6)) * (rng.random((6, 6)) < 0.4)
        fired = {(i, j) for i in range(6) for j in range(6) if map_HW.max() > 0 and map_HW[i, j] >= map_HW.max() / 2}
        most = fraction_HW.max()
        shape = {(i, j) for i in range(6) for j in range(6) if fraction_HW[i, j] >= 0.5 or fraction_HW[i, j] == most}
        expected = len(fired & shape) / len(fired | shape) if fired else 0.0
        assert toy_sae.patch_iou(map_HW, fraction_HW) == expected


def test_training_side_heatmap_check_is_evaluates_heatmap_iou(workbench):
    """The same number, computed the evaluate way: one image at a time through the workbench's site state and the
    Attribution tab's patch map."""
    scenes = render.sample_scenes(16, seed=7)
    patch = render.IMAGE_SIZE // workbench.backend.grid[0]
    images_NHWC, fraction_NHW, _ = render.render_batch_with_truth(scenes, patch)
    acts_NTD = toy_sae.site_activations(workbench.backend, workbench.site, images_NHWC)
    truths = [s for s, _ in scenes]
    patch_latent = toy_sae.label_latents(workbench.sae, acts_NTD, truths)["concept_patch_latent"]
    ious = toy_sae.heatmap_ious(workbench.sae, acts_NTD, truths, fraction_NHW, patch_latent)

    expected = []
    for scene, seed in scenes:
        image, truth = render.render(scene, seed)
        (state,) = workbench.site_states([image])
        for factor in ("shape", "colour"):
            latent = patch_latent[toy_sae.concept_name(factor, getattr(scene, factor))]
            expected.append(evaluate.heatmap_iou(workbench, state, truth, latent))
    assert ious == expected
    assert len(set(ious)) > 2  # not a constant


def test_selection_rule_prefers_heatmaps_on_the_object_then_the_weakest_concept():
    select = toy_sae.select_candidate

    def candidate(iou, auroc):
        return {"heatmap_iou": iou, "concept_auroc_min": auroc}

    assert select([candidate(0.1, 0.95), candidate(1.0, 0.90), candidate(0.5, 0.92)]) == 2
    assert select([candidate(1.0, 0.83), candidate(0.75, 0.91), candidate(0.49, 0.99)]) == 1
    assert select([candidate(0.2, 0.95), candidate(0.3, 0.80)]) == 1  # none eligible: the best heatmaps
    assert select([candidate(1.0, 0.9), candidate(1.0, 0.9)]) == 0  # a tie keeps the earlier seed


def test_candidates_start_with_the_plain_recipe_and_the_kept_one_is_saved(tmp_path):
    backend = OpenClipBackend(ModelSpec("open_clip", f"local-dir:{TOY_CLIP_DIR}"), torch.device("cpu"))
    config = toy_sae.ToySAEConfig(train_images=16, steps=10, batch_tokens=128, label_images=40, candidates=1)
    _, one = toy_sae.train(backend, config, tmp_path / "one")
    _, three = toy_sae.train(backend, replace(config, candidates=3), tmp_path / "three")
    manifest = json.loads((tmp_path / "three" / "manifest.json").read_text())
    candidates = manifest["selection"]["candidates"]
    assert [c["seed"] for c in candidates] == [1, 2, 3]
    assert candidates[0]["concept_auroc_min"] == one["concept_auroc_min"]  # seed 1 alone is the plain recipe
    assert candidates[0]["heatmap_iou"] == one["heatmap_iou_labelling"]
    kept = toy_sae.select_candidate(candidates)
    assert manifest["seed"] == candidates[kept]["seed"]
    assert three["concept_auroc_min"] == candidates[kept]["concept_auroc_min"]
    assert len({c["concept_auroc_min"] for c in candidates}) > 1  # the seeds gave different SAEs
    same = all(
        torch.equal(a, b)
        for a, b in zip(
            load_file(tmp_path / "one" / "sae_weights.safetensors").values(),
            load_file(tmp_path / "three" / "sae_weights.safetensors").values(),
        )
    )
    assert same == (kept == 0)
