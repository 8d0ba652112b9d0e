import pytest
import torch

from engine import attribution, steering, zeroshot

from .conftest import SHAPES


def test_scores_are_the_derivative_of_the_metric_along_each_latent(bench, image):
    """score_i = -(d metric / d s_i) at s_i = 1, checked by a finite difference through the real suffix."""
    result = attribution.attribute(bench, image, SHAPES)
    text = bench.text_embeddings(SHAPES)
    (state,) = bench.site_states([image])
    eps = 1e-3
    for latent in result.top(3):
        logits = steering.steered_logits(bench, [state], [steering.Edit((latent,), (1 - eps,))], text)[0]
        change = float(zeroshot.logit_difference(logits, result.target)[0]) - result.metric_value
        assert change / eps == pytest.approx(-float(result.scores_S[latent]), rel=0.05, abs=2e-3)


def test_per_token_scores_sum_to_latent_scores(bench, image):
    result = attribution.attribute(bench, image, SHAPES)
    torch.testing.assert_close(result.scores_TS.sum(0), result.scores_S)
    assert result.scores_TS.shape == (1 + 36, bench.d_sae)


def test_ranking_agrees_with_actual_ablation(bench, scene_images):
    images, _ = scene_images
    correlations = []
    for image in images:
        result = attribution.attribute(bench, image, SHAPES)
        faith = attribution.faithfulness(bench, result, k=10)
        correlations.append(faith["spearman"])
        assert len(faith["actual"]) == 10
    assert sorted(correlations)[len(correlations) // 2] > 0.6, correlations


def test_target_and_metric_are_validated(bench, image):
    with pytest.raises(ValueError, match="target 'dog' is not a label; valid: circle, square, triangle, cross"):
        attribution.attribute(bench, image, SHAPES, target="dog")
    with pytest.raises(ValueError, match="valid: logit_difference, probability"):
        attribution.attribute(bench, image, SHAPES, metric="accuracy")
    result = attribution.attribute(bench, image, SHAPES, target="cross", metric="probability")
    assert result.target == 3 and 0 <= result.metric_value <= 1


def test_label_lists_are_validated():
    with pytest.raises(ValueError, match="at least two labels"):
        zeroshot.parse_labels(" , ")
    with pytest.raises(ValueError, match="distinct"):
        zeroshot.parse_labels("cat, cat")
    assert zeroshot.parse_labels("cat,\n dog") == ["cat", "dog"]


def test_sparse_latent_scores_equal_the_dense_formula(bench, image):
    (state,) = bench.site_states([image])
    grad_TD = torch.randn_like(state.acts_TD)
    dense = state.f_TS * (grad_TD @ bench.sae.W_dec.T)
    torch.testing.assert_close(attribution.latent_scores(state.f_TS, grad_TD, bench.sae.W_dec), dense)
