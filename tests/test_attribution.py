import pytest
import torch

from engine import attribution, zeroshot
from engine import sae as sae_module
from engine.edits import Edit, edited_logits

from .conftest import SHAPES


def test_scores_are_the_derivative_of_the_metric_along_each_latent(workbench, image):
    """score_i = -(d metric / d s_i) at s_i = 1, checked by a finite difference through the real suffix."""
    result = attribution.attribute(workbench, image, SHAPES)
    text = workbench.text_embeddings(SHAPES)
    (state,) = workbench.site_states([image])
    eps = 1e-3
    for latent in result.top(3):
        logits = edited_logits(workbench, [state], [Edit((latent,), (1 - eps,))], text)[0]
        change = float(zeroshot.logit_difference(logits, result.target)[0]) - result.metric_value
        assert change / eps == pytest.approx(-float(result.scores_S[latent]), rel=0.05, abs=2e-3)


def test_per_token_scores_sum_to_latent_scores(workbench, image):
    result = attribution.attribute(workbench, image, SHAPES)
    torch.testing.assert_close(result.scores_TS.sum(0), result.scores_S)
    assert result.scores_TS.shape == (1 + 36, workbench.d_sae)


def test_ranking_agrees_with_actual_ablation(workbench, scene_images):
    images, _ = scene_images
    correlations = []
    for image in images:
        result = attribution.attribute(workbench, image, SHAPES)
        faith = attribution.faithfulness(workbench, result, k=10)
        correlations.append(faith["spearman"])
        assert len(faith["actual"]) == 10
    assert sorted(correlations)[len(correlations) // 2] > 0.6, correlations


def test_target_and_metric_are_validated(workbench, image):
    with pytest.raises(ValueError, match="unknown target label 'dog'; valid: circle, square, triangle, cross"):
        attribution.attribute(workbench, image, SHAPES, target="dog")
    with pytest.raises(ValueError, match="valid: logit_difference, probability"):
        attribution.attribute(workbench, image, SHAPES, metric="accuracy")
    result = attribution.attribute(workbench, image, SHAPES, target="cross", metric="probability")
    assert result.target == 3 and 0 <= result.metric_value <= 1


def test_label_lists_are_validated():
    with pytest.raises(ValueError, match="at least two labels"):
        zeroshot.parse_labels(" , ")
    with pytest.raises(ValueError, match="distinct"):
        zeroshot.parse_labels("cat, cat")
    assert zeroshot.parse_labels("cat,\n dog") == ["cat", "dog"]


def test_logit_difference_has_the_value_and_gradient_of_a_max_over_the_other_labels():
    """The runner-up is picked outside autograd; value and gradient are those of the plain formula."""
    torch.manual_seed(0)
    logits_BL = torch.randn(5, 7, requires_grad=True)
    for target in (0, 3):
        others_BL = logits_BL.clone()
        others_BL[:, target] = float("-inf")
        reference_B = logits_BL[:, target] - others_BL.max(dim=1).values
        value_B = zeroshot.logit_difference(logits_BL, target)
        assert torch.equal(value_B, reference_B)
        weights_B = torch.arange(1.0, 6.0)
        (grad,) = torch.autograd.grad((value_B * weights_B).sum(), logits_BL)
        (reference_grad,) = torch.autograd.grad((reference_B * weights_B).sum(), logits_BL)
        assert torch.equal(grad, reference_grad) and grad[:, target].eq(weights_B).all()


@pytest.mark.parametrize("dense_max_macs", [0, sae_module.DENSE_MAX_MACS], ids=["gather", "small-dense"])
def test_sparse_latent_scores_equal_the_dense_formula(workbench, image, monkeypatch, dense_max_macs):
    monkeypatch.setattr(sae_module, "DENSE_MAX_MACS", dense_max_macs)
    (state,) = workbench.site_states([image])
    grad_TD = torch.randn_like(state.acts_TD)
    dense = state.f_TS * (grad_TD @ workbench.sae.W_dec.T)
    torch.testing.assert_close(attribution.latent_scores(state.f_TS, grad_TD, workbench.sae.W_dec), dense)
    torch.testing.assert_close(attribution.latent_scores(state.f_TS.to_sparse(), grad_TD, workbench.sae.W_dec), dense)
    scores_S = dense.sum(0)
    assert attribution.ranked_active(scores_S, state.f_TS.to_sparse()) == attribution.ranked_active(
        scores_S, state.f_TS
    )


def test_on_every_shipped_example_the_top_latents_heatmap_lands_on_the_shape(workbench):
    """The top latent for the shape question drives the prediction from the shape: its per-patch attribution peaks
    on a patch that the shape covers (at least partly: at 8x8 patches a small shape covers no patch by half).
    Its activation map need not: a latent may also fire elsewhere without effect there (on the marker example the
    top latent, labelled shape=cross, also fires on the marker square)."""
    import json

    from PIL import Image

    from engine.registry import TOY_EXAMPLES_DIR
    from engine.toyworld import render

    provenance = json.loads((TOY_EXAMPLES_DIR / "provenance.json").read_text())
    assert len(provenance) >= 6
    for name, entry in provenance.items():
        scene = render.Scene(**entry["scene"])
        image, truth = render.render(scene, entry["seed"])
        assert list(Image.open(TOY_EXAMPLES_DIR / name).convert("RGB").getdata()) == list(image.getdata())
        result = attribution.attribute(workbench, image, SHAPES)
        top = result.top(1)[0]
        map_HW = attribution.patch_map(result.scores_TS[:, top], workbench.backend.grid)
        assert float(map_HW.max()) > 0, f"{name}: latent {top} drives nothing from the patches"
        on_shape_HW = torch.from_numpy(
            truth.patch_fraction(render.IMAGE_SIZE // workbench.backend.grid[0])["shape"] > 0
        )
        assert bool(on_shape_HW.flatten()[int(map_HW.flatten().argmax())]), f"{name}: latent {top} peaks off the shape"


def test_the_benchs_bare_minimum_attribution_computes_the_engines_scores(workbench, image):
    """engine.bench's yardstick (no engine code) gives the same scores at the active latents: the ratio
    compares equal work."""
    from engine import bench

    scores_TK = bench.attribution_ideal(workbench, lambda: image)()
    result = attribution.attribute(workbench, image, bench.LABELS)
    latents_TK = result.state.f_TS.topk(workbench.sae.config.k, dim=-1).indices
    torch.testing.assert_close(result.scores_TS.gather(1, latents_TK), scores_TK, rtol=1e-4, atol=1e-5)
