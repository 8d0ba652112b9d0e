"""The Explain engine: the toy LLaVA is the toy CLIP, steering edits the prefill only, controls, cache, real families."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from engine.errors import UnknownChoiceError, UserInputError
from engine.explain import (
    Explainer,
    ExplainSettings,
    neutral_image,
    permuted_latent,
    random_direction,
    score_explanations,
)
from engine.registry import TOY_EXAMPLES_DIR
from engine.resident import load_workbench, resident_sae
from engine.sae import SAE, SAEConfig
from engine.sources import AllowedDirs
from engine.specs import TOY_VLM_DIR, ModelSpec, SAESpec, VLMSpec
from engine.vlm import resident_vlm
from tests.vlm_fixtures import BUILDERS, tower_sae

pytestmark = pytest.mark.skipif(not TOY_VLM_DIR.is_dir(), reason="assets/toy_vlm is not built")


@pytest.fixture(scope="module")
def vlm():
    return resident_vlm(VLMSpec.toy(), "cpu")


@pytest.fixture(scope="module")
def explainer(vlm, tmp_path_factory):
    return Explainer(vlm, resident_sae(SAESpec.toy(), "cpu"), tmp_path_factory.mktemp("explanations"))


@pytest.fixture(scope="module")
def uncached(vlm):
    return Explainer(vlm, resident_sae(SAESpec.toy(), "cpu"), None)


def toy_examples(n: int = 3) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted(TOY_EXAMPLES_DIR.glob("*.png"))[:n]]


def test_toy_llava_tower_is_the_toy_clip_at_every_block(vlm):
    """Same preprocessing, and the converted tower's hidden states equal open_clip's residual stream."""
    backend = load_workbench(ModelSpec.toy(), SAESpec.toy(), "cpu").backend
    images = toy_examples()
    pixels = backend.pixels(images)
    hf_pixels = vlm.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(hf_pixels, pixels, atol=1e-5, rtol=0)
    with torch.no_grad():
        hidden = vlm.model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        acts = backend.embed(pixels)
        torch.testing.assert_close(hidden[0], acts, atol=1e-5, rtol=1e-5)
        for i in range(backend.n_blocks):
            acts = backend.blocks(acts, i, i + 1)
            torch.testing.assert_close(hidden[i + 1], acts, atol=1e-4, rtol=1e-4)
    assert vlm.model.config.vision_feature_layer == -2 and len(hidden) - 2 == 3  # LLaVA reads blocks.2 = the SAE site


def test_toy_vlm_captions_scenes_and_says_nothing_on_neutral_images(vlm):
    inputs = vlm.inputs([neutral_image("white"), *toy_examples(2)], "What is shown in this image?")
    said = vlm.generate(inputs, 24)
    assert said[0] == "nothing"
    assert said[1].startswith("a ") and "background" in said[1]


def test_zero_coefficient_is_an_exact_no_op_and_the_edit_runs_in_the_prefill_only(explainer, uncached):
    calls = []
    with explainer.vlm.hooked([(explainer.layer, lambda m, a, o: calls.append(1))]):
        result = uncached.explain(7, ExplainSettings(coefficient=0.0))
    assert len(calls) == 1  # one batched prefill for the four rows; decoding reads the cache, not the tower
    assert result.steered == result.unsteered
    hidden = torch.randn(2, 37, 96)
    hook = uncached._hook([{"latent": 7, "direction": torch.randn(96), "amount": 0.0}, None], "add")
    assert torch.equal(hook(None, (), hidden), hidden)


def test_add_hook_moves_each_row_by_its_own_edit(uncached):
    direction = torch.randn(96)
    hidden = torch.zeros(3, 37, 96)
    rows = [
        {"latent": 1, "direction": direction, "amount": 2.0},
        None,
        {"latent": 1, "direction": -direction, "amount": 1.0},
    ]
    out = uncached._hook(rows, "add")(None, (), hidden)
    torch.testing.assert_close(out[0], (2.0 * direction).expand(37, -1))
    assert torch.equal(out[1], hidden[1])
    torch.testing.assert_close(out[2], (-direction).expand(37, -1))


def test_clamp_hook_writes_the_reconstruction_with_the_latent_clamped(uncached):
    """Pach et al.: the layer's output becomes the SAE's reconstruction with latent i at the given value (error
    dropped), i.e. decode(f with f_i = 0) + value * W_dec[i]."""
    sae = uncached.sae
    hidden = torch.randn(1, 37, 96) * 3
    row = sae.W_dec[9].detach()
    out = uncached._hook([{"latent": 9, "direction": row, "amount": 5.0}], "clamp")(None, (), hidden)
    f = sae.encode(hidden)
    f[..., 9] = 0
    torch.testing.assert_close(out, sae.decode(f, hidden) + 5.0 * row, atol=1e-5, rtol=1e-5)


def test_controls_are_the_published_ones(uncached):
    d_sae = uncached.d_sae
    assert permuted_latent(3, d_sae) == 3 + d_sae // 2 and permuted_latent(d_sae - 1, d_sae) == d_sae // 2 - 1
    row = uncached.sae.W_dec[5].float()
    r = random_direction(5, float(row.norm()), row.numel())
    assert r.norm().item() == pytest.approx(float(row.norm()), rel=1e-5)
    assert torch.equal(r, random_direction(5, float(row.norm()), row.numel()))  # fixed by latent and seed
    assert not torch.equal(r, random_direction(6, float(row.norm()), row.numel()))


def test_cache_answers_repeats_and_survives_a_restart(explainer, vlm):
    settings = ExplainSettings(coefficient=6.0)
    first = explainer.explain(11, settings)
    again = explainer.explain(11, settings)
    assert not first.cached and again.cached
    assert (again.steered, again.unsteered, again.random, again.permuted) == (
        first.steered, first.unsteered, first.random, first.permuted,
    )  # fmt: skip
    restarted = Explainer(vlm, resident_sae(SAESpec.toy(), "cpu"), explainer.cache.directory)
    assert restarted.explain(11, settings).cached
    assert not restarted.explain(11, ExplainSettings(coefficient=7.0)).cached


def test_sweep_matches_single_explanations_and_sampling_is_reproducible(uncached):
    latent = 20
    points = uncached.sweep(latent, [0.0, 8.0])
    assert points[0].text == uncached.explain(latent, ExplainSettings(coefficient=0.0)).unsteered
    assert points[1].text == uncached.explain(latent, ExplainSettings(coefficient=8.0)).steered
    sampled = ExplainSettings(coefficient=8.0, seed=3, temperature=1.5)
    assert uncached.explain(latent, sampled).steered == uncached.explain(latent, sampled).steered


def test_clamp_style_runs_with_its_own_prompt(uncached):
    result = uncached.explain(20, ExplainSettings(style="clamp", coefficient=8.0))
    assert result.settings.question.endswith("Use exactly one word!")
    assert result.settings.answer_prefix == ""
    assert isinstance(result.steered, str)


def test_bad_requests_name_the_valid_choices(uncached):
    with pytest.raises(UserInputError, match=r"valid: 0 \.\. 383"):
        uncached.explain(384)
    with pytest.raises(UnknownChoiceError, match="valid: add, clamp"):
        ExplainSettings(style="paint")
    with pytest.raises(UnknownChoiceError, match="white, black, noise"):
        ExplainSettings(neutral="grey")
    with pytest.raises(UserInputError, match="finite"):
        ExplainSettings(coefficient=float("nan"))
    with pytest.raises(UserInputError, match="at most 500"):
        ExplainSettings(question="x" * 501)
    with pytest.raises(UserInputError, match="1 to 32"):
        uncached.sweep(1, [])


def test_scoring_reads_the_caption_grammar():
    from engine.explain import Explanation

    def e(latent, steered, random_text, permuted, other):
        return Explanation(latent, ExplainSettings(), steered, "nothing", random_text, permuted, other, 0.1)

    labels = ["colour=red", "position=top left", "colour=red", "marker=present"]
    score = score_explanations(
        [
            e(0, "large red circle", "nothing", "a blue shape", 1),
            e(1, "small cyan cross in the top left", "nothing", "red shape", 3),
            e(3, "shape with no corner marker", "nothing", "nothing", 1),
            e(2, "red square", "a red shape", "large red circle", 0),  # the permuted latent is also red: skipped
        ],
        labels,
    )
    assert score.named == [True, True, False, True]
    assert score.controls_named == [False] * 6 + [True]


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def tiny_family(request, tmp_path_factory):
    """A tiny random-weight VLM of each real family with a random TopK SAE at blocks.1.resid_post of its tower."""
    root = tmp_path_factory.mktemp(request.param)
    model_dir = BUILDERS[request.param](root / "model")
    tower_sae(root / "sae", seed=1)
    allowed = AllowedDirs.default([root])
    return (
        resident_vlm(VLMSpec(str(model_dir)), "cpu", allowed=allowed),
        resident_sae(SAESpec(str(root / "sae")), "cpu", allowed=allowed),
    )


def test_real_families_explain_through_the_same_path(tiny_family):
    vlm, sae = tiny_family
    explainer = Explainer(vlm, sae, None)
    assert explainer.typical_activation().shape == (64,)  # measured once on the photographs through this tower
    calls = []
    with vlm.hooked([(explainer.layer, lambda m, a, o: calls.append(1))]):
        result = explainer.explain(3, ExplainSettings(coefficient=0.0, max_new_tokens=4))
    assert len(calls) == 1 and result.steered == result.unsteered
    steered = explainer.explain(3, ExplainSettings(coefficient=50.0, max_new_tokens=4))
    assert all(isinstance(t, str) for t in (steered.steered, steered.random, steered.permuted))


def test_an_sae_for_another_tower_is_refused(tmp_path, vlm):
    sae = SAE(SAEConfig(d_in=32, d_sae=16, architecture="topk", k=2, hook_name="blocks.1.resid_post"))
    sae.save(tmp_path / "sae")
    resident = resident_sae(SAESpec(str(tmp_path / "sae")), "cpu", allowed=AllowedDirs.default([tmp_path]))
    with pytest.raises(UserInputError, match="96 wide"):
        Explainer(vlm, resident, None)
    far = SAE(SAEConfig(d_in=96, d_sae=16, architecture="topk", k=2, hook_name="blocks.9.resid_post"))
    far.save(tmp_path / "far")
    resident = resident_sae(SAESpec(str(tmp_path / "far")), "cpu", allowed=AllowedDirs.default([tmp_path]))
    with pytest.raises(UnknownChoiceError, match=r"blocks\.3\.resid_post"):
        Explainer(vlm, resident, None)
