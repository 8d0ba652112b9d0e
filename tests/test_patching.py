"""Activation patching: exact no-ops where there is nothing to patch, exact restoration where everything is."""

import math

import pytest
import torch

from engine import patching
from engine.toyworld import captions, render

SCENE = render.Scene("circle", "red", "plain", "large", "top left", "present")


@pytest.fixture(scope="module")
def runs(workbench):
    """The clean scene and its counterfactual (the same scene, the marker removed), on the toy CLIP."""
    clean, _ = render.render(SCENE, seed=3)
    corrupt, _ = render.render(SCENE.replace(marker="absent"), seed=3)
    prompts = captions.factor_prompts(SCENE, "marker")
    text_emb_LE = workbench.text_embeddings(prompts, "{}")
    backend = workbench.backend
    clean_run = patching.run(backend, workbench.pixels([clean]), text_emb_LE, workbench.dtype)
    corrupt_run = patching.run(backend, workbench.pixels([corrupt]), text_emb_LE, workbench.dtype)
    return backend, clean_run, corrupt_run, text_emb_LE, prompts.index(captions.caption(SCENE.as_dict()))


def test_a_run_is_the_models_own_forward(workbench, runs):
    backend, clean_run, _, text_emb_LE, _ = runs
    clean, _ = render.render(SCENE, seed=3)
    prompts = captions.factor_prompts(SCENE, "marker")
    torch.testing.assert_close(clean_run.logits_L, workbench.predict([clean], prompts, "{}")[0])
    for block in range(backend.n_blocks):
        site = f"blocks.{block}.resid_post"
        torch.testing.assert_close(clean_run.resid_LTD[block + 1], backend.prefix(workbench.pixels([clean]), site)[0])


def test_patching_a_run_into_itself_changes_nothing_exactly(runs):
    backend, clean_run, _, text_emb_LE, label = runs
    grid = patching.patch_grid(backend, clean_run, clean_run, text_emb_LE, label)
    assert grid["max_change"] == 0.0
    assert grid["all_tokens"] == grid["unpatched"]
    assert all(v == grid["unpatched"][b] for b, row in enumerate(grid["per_token"]) for v in row)
    torch.testing.assert_close(torch.tensor(grid["unpatched"]), torch.full((backend.n_blocks,), grid["target_value"]))


def test_denoising_every_token_after_the_last_block_restores_the_clean_run_exactly(runs):
    backend, clean_run, corrupt_run, text_emb_LE, label = runs
    grid = patching.patch_grid(backend, clean_run, corrupt_run, text_emb_LE, label)
    assert grid["all_tokens"][-1] == pytest.approx(grid["source_value"], rel=1e-5, abs=1e-5)
    assert grid["all_tokens_recovered"][-1] == pytest.approx(1.0)
    assert grid["source_value"] > 0 > grid["target_value"]  # the runs differ: the marker is seen, then not


def test_denoising_and_noising_are_reported_apart_and_localise_the_marker(runs):
    """The marker lies in the top-right patch: patching that token alone after an early block moves the answer
    most; other tokens far from it move it little."""
    backend, clean_run, corrupt_run, text_emb_LE, label = runs
    denoise = patching.patch_grid(backend, clean_run, corrupt_run, text_emb_LE, label)
    noise = patching.patch_grid(backend, corrupt_run, clean_run, text_emb_LE, label)
    assert denoise["all_tokens"] != noise["all_tokens"]
    grid_w = backend.grid[1]
    marker_token = backend.n_prefix_tokens + (grid_w - 1)  # first row, last column
    first = denoise["per_token_recovered"][0]
    assert max(range(len(first)), key=lambda t: first[t]) == marker_token
    assert patching.first_localised_token(denoise["per_token_recovered"]) == (0, marker_token)
    # Inside one model, every token at once restores the clean run after any block: it cannot localise.
    assert denoise["all_tokens_recovered"] == pytest.approx([1.0] * backend.n_blocks, abs=1e-4)


def test_unknown_metric_names_the_valid_ones(runs):
    backend, clean_run, corrupt_run, text_emb_LE, label = runs
    with pytest.raises(ValueError, match="valid: logit_difference, probability, kl"):
        patching.patch_grid(backend, clean_run, corrupt_run, text_emb_LE, label, metric="accuracy")


def test_recovered_share_is_nan_when_the_runs_agree():
    assert math.isnan(patching.recovered_share(torch.tensor([1.0]), 2.0, 2.0)[0])
