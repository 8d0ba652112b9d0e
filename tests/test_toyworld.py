import numpy as np
import pytest

from engine.toyworld import captions, render


def test_render_is_deterministic_by_seed():
    scene = render.Scene("cross", "cyan", "dotted", "small", "bottom left", "present")
    a, truth_a = render.render(scene, seed=3)
    b, _ = render.render(scene, seed=3)
    c, _ = render.render(scene, seed=4)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert truth_a.shape_mask_HW.any() and truth_a.marker_mask_HW.any()


def test_ground_truth_masks_follow_the_scene():
    small, t_small = render.render(render.Scene("square", "red", "plain", "small", "top left", "absent"), 0)
    _, t_large = render.render(render.Scene("square", "red", "plain", "large", "top left", "absent"), 0)
    assert t_large.shape_mask_HW.sum() > 2 * t_small.shape_mask_HW.sum()
    ys, xs = np.nonzero(t_small.shape_mask_HW)
    assert ys.mean() < 24 and xs.mean() < 24  # top left
    assert not t_small.marker_mask_HW.any()
    pixels = np.asarray(small)[t_small.shape_mask_HW]
    assert pixels[:, 0].mean() > 150 and pixels[:, 1].mean() < 110  # red
    fractions = t_small.patch_fraction(8)
    assert fractions["shape"].shape == (6, 6) and fractions["shape"][1, 1] > 0.5


def test_the_image_alone_is_the_rendered_image_and_the_marker_mask_is_its_box():
    """render_image (what dataset readers use) draws the same pixels as render, with a palette too; the marker's
    mask is its box on the final pixels, and those pixels are the marker's near-white."""
    palette = {"red": (200, 60, 60)}
    for i, (scene, seed) in enumerate(render.sample_scenes(60, 5)):
        chosen = palette if i % 3 == 0 else None
        image, truth = render.render(scene, seed, chosen)
        assert np.array_equal(np.asarray(render.render_image(scene, seed, chosen)), np.asarray(image))
        x0, y0, x1, y1 = render.MARKER_BOX_PX
        box = np.zeros_like(truth.marker_mask_HW)
        box[y0:y1, x0:x1] = True
        assert np.array_equal(truth.marker_mask_HW, box if scene.marker == "present" else np.zeros_like(box))
        if scene.marker == "present":
            assert np.asarray(image)[box].mean() > 235


def test_scene_rejects_unknown_values_naming_the_valid_ones():
    with pytest.raises(ValueError, match="valid: circle, square, triangle, cross"):
        render.Scene("hexagon", "red", "plain", "small", "top left", "absent")


def test_caption_grammar_and_consistency():
    scene = render.Scene("circle", "red", "striped", "large", "top right", "present")
    full = captions.caption(scene.as_dict())
    assert full == "a large red circle in the top right on a striped background with a corner marker"
    assert captions.caption({"colour": "red"}) == "a red shape"
    assert captions.consistent({"colour": "red", "shape": "circle"}, scene)
    assert not captions.consistent({"colour": "blue"}, scene)
    prompts = captions.factor_prompts(scene, "colour")
    assert len(prompts) == 6 and full in prompts
    negative = captions.one_factor_changed(scene, np.random.default_rng(0))
    assert sum(negative[f] != v for f, v in scene.as_dict().items()) == 1


def test_truth_for_labels_maps_single_factor_label_lists():
    scenes = [render.Scene("circle", "red", "plain", "large", "top left", "absent")]
    assert captions.truth_for_labels(["square", "circle"], scenes) == [1]
    assert captions.truth_for_labels(["blue shape", "red shape"], scenes) == [1]
    assert captions.truth_for_labels(["circle", "red shape"], scenes) is None
    assert captions.truth_for_labels(["a dog", "a cat"], scenes) is None


def test_auroc_matrix_equals_the_pairwise_definition_with_ties():
    from engine.stats import auroc_matrix

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(40, 3)).astype(float)  # many ties
    positive = rng.random((40, 2)) < 0.4
    fast = auroc_matrix(scores, positive)
    for s in range(3):
        for c in range(2):
            pos, neg = scores[positive[:, c], s], scores[~positive[:, c], s]
            pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
            assert fast[s, c] == pytest.approx(pairs)


def test_vectorised_consistency_matrix_equals_the_definition():
    from engine.toyworld.train_clip import consistency_matrix

    rng = np.random.default_rng(1)
    scenes = [render.Scene.random(rng) for _ in range(12)]
    mentions = [captions.random_mention(s, rng) for s in scenes] + [captions.one_factor_changed(s, rng) for s in scenes]
    expected = [[float(captions.consistent(m, s)) for m in mentions] for s in scenes]
    assert consistency_matrix(scenes, mentions).tolist() == expected
