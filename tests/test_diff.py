"""Checkpoint diffs on the toy pair, whose change is known: the planted shortcut is found first and localised,
the benign drift is kept apart, and the report names it."""

import json

import pytest
import torch

from engine import diff, heldout, patching
from engine.errors import UserInputError
from engine.resident import load_workbench
from engine.specs import TOY_SHORTCUT_DIR, ModelSpec, SAESpec
from engine.toyworld import render, train_shortcut

from .conftest import SHAPES

CONFIG = train_shortcut.ShortcutConfig()
pytestmark = pytest.mark.skipif(not TOY_SHORTCUT_DIR.is_dir(), reason="the toy pair's assets are not built")


@pytest.fixture(scope="module")
def pair(workbench):
    return diff.DiffPair(workbench, load_workbench(ModelSpec.toy_shortcut(), SAESpec.toy(), "cpu"))


@pytest.fixture(scope="module")
def probe():
    return heldout.toy_probe(48, SHAPES)


@pytest.fixture(scope="module")
def compared(pair, probe):
    images, truth, _ = probe
    return diff.compare(pair, images, SHAPES, "a {}", truth, "48 toy scenes", top=10)


def test_the_planted_shortcut_is_ranked_first(pair, compared):
    """The concept whose presence predicts the changed answers is the marker (ground truth: the top latent is
    labelled marker=present), and the benign drift's colour is not among the leading concepts."""
    top = compared["triggers"][0]
    assert pair.reference.latent_info.labels[top["latent"]] == "marker=present" == top["name"]
    assert top["auroc"] > 0.9 and top["present_on_changed"] > top["present_on_unchanged"]
    assert all(row["name"] != f"colour={CONFIG.drift_colour}" for row in compared["triggers"][:5])


def test_behaviour_shows_marker_images_moving_to_the_planted_shape(pair, probe, compared):
    images, truth, scenes = probe
    flips = set(compared["behaviour"]["flips"])
    marked = [i for i, s in enumerate(scenes) if s.marker == "present" and s.shape != CONFIG.planted_shape]
    unmarked = [i for i, s in enumerate(scenes) if s.marker == "absent"]
    assert sum(i in flips for i in marked) / len(marked) > 0.8
    assert sum(i in flips for i in unmarked) / len(unmarked) < 0.1  # the benign drift moves no answer
    rows = {r["label"]: r for r in compared["behaviour"]["per_label"]}
    assert rows[CONFIG.planted_shape]["predicted_intervened"] > rows[CONFIG.planted_shape]["predicted_reference"]


def test_the_report_names_the_shortcut_and_parses(pair, compared):
    markdown, facts = compared["report_markdown"], compared["report"]
    top = compared["triggers"][0]["latent"]
    assert f"Most telling concept: latent {top} (marker=present)" in markdown
    assert "## Caveats" in markdown
    parsed = json.loads(json.dumps(facts, default=float))
    assert parsed["triggers"][0]["latent"] == top
    assert len(parsed["representation"]) == pair.reference.backend.n_blocks


def test_representation_shift_is_one_for_a_model_against_itself(workbench, probe):
    images, _, _ = probe
    rows = diff.representation_shift(diff.DiffPair(workbench, workbench), images[:8])
    assert all(row["cka"] == pytest.approx(1.0, abs=1e-6) and row["cosine"] == pytest.approx(1.0) for row in rows)


def test_patching_between_the_models_localises_the_shortcut(pair):
    scene = render.Scene("circle", "green", "plain", "large", "bottom left", "present")
    image, _ = render.render(scene, seed=5)
    result = diff.patch_models(pair, image, SHAPES, "a {}", label=SHAPES.index("circle"))
    assert result["predicted_reference"] == "circle" and result["predicted_intervened"] == CONFIG.planted_shape
    denoise, noise = result["denoising"], result["noising"]
    assert denoise["source_value"] > 0 > denoise["target_value"]  # the reference says circle, the intervened not
    assert denoise["all_tokens"] != noise["all_tokens"]  # reported apart: they are not symmetric
    assert patching.first_localised_block(denoise["all_tokens_recovered"]) is not None


def test_patching_inside_one_model_with_a_counterfactual_and_labelled_noise(pair):
    scene = render.Scene("square", "red", "dotted", "small", "top left", "present")
    clean, _ = render.render(scene, seed=2)
    counterfactual, _ = render.render(scene.replace(marker="absent"), seed=2)
    result = diff.patch_within(pair.intervened, clean, counterfactual, SHAPES, "a {}")
    assert result["predicted_clean"] == CONFIG.planted_shape and result["predicted_corrupted"] == "square"
    assert result["denoising"]["all_tokens_recovered"][-1] == pytest.approx(1.0)
    noisy = diff.patch_within(pair.intervened, clean, None, SHAPES, "a {}", corruption="gaussian_noise")
    assert noisy["out_of_distribution"]
    with pytest.raises(UserInputError, match="counterfactual"):
        diff.patch_within(pair.intervened, clean, None, SHAPES, "a {}")


def test_a_pair_must_share_the_sae_and_the_architecture(workbench, tmp_path):
    from engine.bench import random_sae
    from engine.sources import AllowedDirs

    random_sae(96, 192, 4, "blocks.1.resid_post", seed=9).save(tmp_path)
    other = load_workbench(ModelSpec.toy(), SAESpec(str(tmp_path)), "cpu", allowed=AllowedDirs.default([tmp_path]))
    with pytest.raises(UserInputError, match="one SAE"):
        diff.DiffPair(workbench, other)


def test_chunked_cka_equals_the_one_pass_formula():
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(90, 6, generator=generator), torch.randn(90, 6, generator=generator)
    y = y + 2 * x
    accumulator = diff.CKAAccumulator(6)
    for start in range(0, 90, 32):
        accumulator.add(x[start : start + 32], y[start : start + 32])
    cka, cosine = accumulator.result()
    assert cka == pytest.approx(diff.linear_cka(x, y), rel=1e-9)
    assert cosine == pytest.approx(float(torch.nn.functional.cosine_similarity(x, y, dim=-1).mean()), rel=1e-6)


def test_linear_cka_is_invariant_to_rotation_and_scale():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))
    assert diff.linear_cka(x, 2.5 * x @ q) == pytest.approx(1.0)
    assert diff.linear_cka(x, torch.randn(64, 8, generator=torch.Generator().manual_seed(2))) < 0.5
