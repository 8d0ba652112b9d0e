import math

import pytest
import torch

from engine import attribution, edits, heldout, resident, steering, zeroshot
from engine.edits import NO_EDIT, Edit, edited_logits
from engine.resident import load_workbench

from .conftest import SHAPES, suffix_row_counts
from .references import hooked_steered_logits


def top_latent(workbench, image):
    """The latent with the largest attribution: one that moves the prediction (the most active one may fire
    only where the suffix does not read, e.g. on patches after the last block)."""
    return attribution.attribute(workbench, image, SHAPES).top(1)[0]


def test_strength_one_and_empty_edit_are_exact_no_ops(workbench, image):
    text = workbench.text_embeddings(SHAPES)
    (state,) = workbench.site_states([image])
    latents = tuple(state.f_TS.sum(0).topk(5).indices.tolist())
    logits = edited_logits(workbench, [state], [NO_EDIT, Edit(latents, (1.0,) * 5)], text)
    assert torch.equal(logits[1, 0], logits[0, 0])  # same pass: bit for bit
    torch.testing.assert_close(logits[0, 0], workbench.predict([image], SHAPES)[0])  # other batch size: kernels differ
    acts = edits.edited_acts(workbench, [state], [Edit(latents, (1.0,) * 5)])[0, 0]
    assert torch.equal(acts, state.acts_TD)  # not close: equal, bit for bit


def test_edited_acts_of_mixed_edits_equal_each_edit_alone(workbench, scene_images):
    """Edits grouped by what they change (one product per group), whatever order they come in: rows of one group
    that are not adjacent, an empty edit between them, another latent's edit, two images. Each row equals that edit
    computed alone, bit for bit."""
    states = workbench.site_states(scene_images[0][:2])
    a, b = (int(i) for i in states[0].f_TS.sum(0).topk(2).indices)
    mixed = [Edit((a,), (0.0,)), NO_EDIT, Edit((b,), (3.0,), "add"), Edit((a,), (2.5,)), Edit((a,), (-1.0,))]
    together_NBTD = edits.edited_acts(workbench, states, mixed)
    assert together_NBTD.shape[:2] == (len(mixed), len(states))
    for n, edit in enumerate(mixed):
        assert torch.equal(together_NBTD[n], edits.edited_acts(workbench, states, [edit])[0]), n
    assert torch.equal(together_NBTD[1], torch.stack([s.acts_TD for s in states]))  # the empty edit: untouched
    assert not torch.equal(together_NBTD[0], together_NBTD[1])  # and the others moved


def test_unedited_rows_come_from_each_images_cached_embedding_and_equal_a_full_forward(workbench, scene_images):
    images = scene_images[0][:3]
    """The "before" rows of a comparison run once per image, alone (whatever else the request holds), then come
    from the cache. They match a plain forward, and a later request's edited rows match a batch without the cache."""
    text = workbench.text_embeddings(SHAPES)
    workbench.clear_cache()
    states = workbench.site_states(images)
    removal = Edit.removal([int(states[0].f_TS.sum(0).argmax())])
    with suffix_row_counts(workbench) as rows_seen:
        first = edited_logits(workbench, states, [NO_EDIT, removal], text)
        assert rows_seen == [3, 1, 1, 1]  # the edited rows in one batch; each image's unedited run alone
        assert all("image_emb_E" in state.clean for state in states)
        second = edited_logits(workbench, states, [removal, Edit.removal([]), NO_EDIT], text)
        assert rows_seen == [3, 1, 1, 1, 3]  # only the edited rows ran
        for state in states:  # exactly what a request with this image alone computes
            assert torch.equal(state.clean["image_emb_E"], workbench.image_embeddings(state.acts_TD.unsqueeze(0))[0])
    assert torch.equal(second[1], second[2]) and torch.equal(second[2], first[0])
    torch.testing.assert_close(first[0], workbench.predict(images, SHAPES))
    torch.testing.assert_close(second[0], first[1])


def test_a_sweeps_unedited_row_runs_in_its_own_pass_and_never_depends_on_the_cache(workbench, scene_images):
    """A sweep needs its unedited row anyway: it is one more row of the sweep's own pass (not a separate pass),
    the strength-1 rows equal it bit for bit, and it is the same whether or not the image's clean embedding
    was cached by an earlier request."""
    image = scene_images[0][0]
    text = workbench.text_embeddings(SHAPES)
    latent = top_latent(workbench, image)
    edits_ = [NO_EDIT, Edit((latent,), (0.0,)), Edit((latent,), (1.0,)), Edit((latent,), (2.0,))]
    workbench.clear_cache()
    (state,) = workbench.site_states([image])
    with suffix_row_counts(workbench) as rows_seen:
        fresh = edited_logits(workbench, [state], edits_, text, unedited_in_pass=True)[:, 0]
        assert rows_seen == [3]  # unedited, 0 and 2 in one pass; strength 1 is not run
        assert "image_emb_E" not in state.clean
        workbench.clean_image_embeddings([state])
        cached = edited_logits(workbench, [state], edits_, text, unedited_in_pass=True)[:, 0]
    assert torch.equal(fresh, cached)
    assert torch.equal(fresh[0], fresh[2])
    torch.testing.assert_close(fresh, edited_logits(workbench, [state], edits_, text)[:, 0])
    result = steering.sweep(workbench, image, SHAPES, latent, [0.0, 1.0, 2.0], baseline=False)
    assert result["latent"]["kl"][1] == 0.0
    target = SHAPES.index(result["target"])
    torch.testing.assert_close(torch.tensor(result["latent"]["probability"]), fresh[1:].softmax(-1)[:, target])


@pytest.mark.parametrize(
    ("mode", "patches", "strengths"),
    [
        ("scale", None, [-1.0, 0.0, 0.5, 1.0, 2.5]),
        ("add", None, [-2.0, 1.0, 4.0]),
        ("add", tuple(range(0, 36, 2)), [3.0, 8.0]),
    ],
)
@pytest.mark.parametrize("code", ["dense", "sparse"])
def test_batched_sweep_equals_one_hooked_full_forward_per_strength(
    workbench, image, mode, patches, strengths, code, monkeypatch
):
    """The fast sweep (cached prefix, decoder-row arithmetic, one batched suffix) against one full forward per
    strength that edits the SAE code with the SAE's own encode and decode (tests/references.py); with the cached
    code dense (the toy's) and sparse (a large dictionary's, whose edited columns are read from its non-zeros)."""
    monkeypatch.setattr(resident, "DENSE_CODE_MAX_RATIO", 4 if code == "dense" else 0)
    workbench.clear_cache()
    try:
        assert workbench.site_states([image])[0].code_TS.is_sparse is (code == "sparse")
        compare_sweep_with_hooked_forwards(workbench, image, mode, patches, strengths)
    finally:
        workbench.clear_cache()  # the session's workbench goes back to the toy's own (dense) codes


def compare_sweep_with_hooked_forwards(workbench, image, mode, patches, strengths):
    latent = top_latent(workbench, image)
    result = steering.sweep(workbench, image, SHAPES, latent, strengths, mode=mode, patches=patches)
    target = SHAPES.index(result["target"])
    typical_S = workbench.typical_activation()
    unedited_L = workbench.predict([image], SHAPES)[0]
    others_L = unedited_L.clone()
    others_L[target] = -math.inf
    unedited = float(unedited_L[target] - others_L.max())
    moved = 0.0
    for s, fast in zip(strengths, result["latent"]["logit_difference"], strict=True):
        slow_L = hooked_steered_logits(workbench, image, [latent], [s], SHAPES, mode, patches, typical_S)
        others = slow_L.clone()
        others[target] = -math.inf
        slow = float(slow_L[target] - others.max())
        assert math.isclose(fast, slow, rel_tol=1e-4, abs_tol=1e-4), (s, fast, slow)
        moved = max(moved, abs(fast - unedited))
    assert moved > 0.01  # the comparison is not between two unchanged runs


def test_add_mode_touches_only_the_chosen_patches(workbench, image):
    (state,) = workbench.site_states([image])
    typical_S = workbench.typical_activation()
    delta = edits.edit_delta(state.f_TS, workbench.sae.W_dec, Edit((3,), (2.0,), "add", (0, 7)), typical_S, 1)
    touched = delta.abs().sum(-1) > 0
    assert touched.nonzero().flatten().tolist() == [1, 8]
    expected = 2.0 * typical_S[3] * workbench.sae.W_dec[3]
    torch.testing.assert_close(delta[1], expected)


def test_steering_keeps_the_error_term(workbench, image):
    """Removing a latent moves the activation by exactly f_i * W_dec[i]: the error term is still in."""
    (state,) = workbench.site_states([image])
    latent = top_latent(workbench, image)
    acts_TD = edits.edited_acts(workbench, [state], [Edit.removal([latent])])[0, 0]
    expected_TD = state.acts_TD - state.f_TS[:, latent : latent + 1] * workbench.sae.W_dec[latent]
    torch.testing.assert_close(acts_TD, expected_TD)
    rebuilt_TD = (
        state.f_TS
        - state.f_TS[:, latent : latent + 1] * torch.nn.functional.one_hot(torch.tensor(latent), workbench.d_sae)
    ) @ workbench.sae.W_dec + workbench.sae.b_dec  # the reconstruction alone, without the error
    assert not torch.allclose(acts_TD, rebuilt_TD, atol=1e-3)


def test_a_latent_given_twice_is_refused_not_doubled(workbench, image):
    with pytest.raises(ValueError, match="each latent may appear once in an edit; repeated: 5"):
        Edit((5, 5), (0.0, 0.0))


def test_random_baseline_is_norm_matched(workbench):
    direction = steering.random_direction_like(workbench.sae.W_dec, 5, seed=1)
    assert math.isclose(float(direction.norm()), float(workbench.sae.W_dec[5].norm()), rel_tol=1e-5)
    assert not torch.allclose(direction, workbench.sae.W_dec[5])


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), 1e9])
def test_absurd_strengths_are_refused(strength):
    with pytest.raises(ValueError, match="strength must be a finite number"):
        steering.Edit((1,), (strength,))


def test_unknown_latent_and_mode_are_refused(workbench, image):
    with pytest.raises(ValueError, match=f"unknown latent id {workbench.d_sae}; valid: 0 .. {workbench.d_sae - 1}"):
        steering.steer(workbench, image, SHAPES, steering.Edit((workbench.d_sae,), (0.0,)))
    with pytest.raises(ValueError, match="unknown latent id -1"):
        steering.steer(workbench, image, SHAPES, steering.Edit((-1,), (0.0,)))
    with pytest.raises(ValueError, match="valid: scale, add"):
        steering.Edit((1,), (0.0,), mode="multiply")


def test_ripple_reports_accuracy_per_label(workbench, scene_images):
    from engine.toyworld import captions

    images, scenes = scene_images
    truth = captions.truth_for_labels(SHAPES, scenes)
    top = sorted({i for image in images for i in attribution.attribute(workbench, image, SHAPES).top(10)})
    unchanged = steering.ripple(workbench, images, SHAPES, Edit((top[0],), (1.0,)), truth)
    removed = steering.ripple(workbench, images, SHAPES, Edit.removal(top), truth)
    for rows in (unchanged, removed):
        assert [r["label"] for r in rows] == SHAPES
        assert sum(r["predicted_before"] for r in rows) == sum(r["predicted_after"] for r in rows) == len(images)
        assert sum(r["images"] for r in rows) == len(images)
    for row in unchanged:  # strength 1: nothing moves
        assert row["predicted_before"] == row["predicted_after"]
        if row["images"]:
            assert row["accuracy_before"] == row["accuracy_after"]
    predictions = workbench.predict(images, SHAPES).argmax(-1).tolist()
    for j, row in enumerate(removed):  # "before" is the model's own accuracy per label
        members = [i for i, t in enumerate(truth) if t == j]
        if members:
            assert row["accuracy_before"] == sum(predictions[i] == j for i in members) / len(members)
    assert any(r["predicted_before"] != r["predicted_after"] for r in removed)


def test_an_sae_that_normalises_its_input_is_steered_through_its_own_decode(tmp_path, image):
    """For a layer_norm SAE, an edit must equal decode(f', x) + error computed by the SAE itself."""
    from engine.bench import random_sae
    from engine.sae import SAE, SAEConfig
    from engine.sources import AllowedDirs
    from engine.specs import ModelSpec, SAESpec

    base = random_sae(96, 384, 8, "blocks.2.resid_post", seed=3)
    config = SAEConfig(96, 384, "topk", "blocks.2.resid_post", k=8, normalize_activations="layer_norm")
    sae = SAE(config)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(getattr(base, name) + 0.01 * torch.randn_like(param))
    sae.save(tmp_path)
    workbench = load_workbench(ModelSpec.toy(), SAESpec(str(tmp_path)), "cpu", allowed=AllowedDirs.default([tmp_path]))
    (state,) = workbench.site_states([image])
    latent = int(state.f_TS.sum(0).argmax())
    text = workbench.text_embeddings(SHAPES)
    unchanged, fast = edited_logits(workbench, [state], [NO_EDIT, Edit((latent,), (3.0,))], text)[:, 0]

    def through_decode(module, inputs, output):
        f_BTS = workbench.sae.encode(output)
        edited_BTS = f_BTS.clone()
        edited_BTS[..., latent] *= 3.0
        return workbench.sae.decode(edited_BTS, output) + (output - workbench.sae.decode(f_BTS, output))

    with torch.no_grad(), workbench.model.hooked([(workbench.backend.site_module(workbench.site), through_decode)]):
        emb = workbench.backend.encode_image(workbench.pixels([image]))
    slow = zeroshot.zero_shot_logits(emb, text, workbench.backend.logit_scale)[0]
    assert (fast - unchanged).abs().max() > 0.01
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


def test_without_shipped_statistics_the_add_unit_comes_from_the_reference_photos(tmp_path, image):
    from PIL import Image

    from engine.bench import random_sae
    from engine.sources import AllowedDirs
    from engine.specs import PHOTOS_DIR, ModelSpec, SAESpec

    random_sae(96, 384, 8, "blocks.2.resid_post", seed=4).save(tmp_path)
    workbench = load_workbench(ModelSpec.toy(), SAESpec(str(tmp_path)), "cpu", allowed=AllowedDirs.default([tmp_path]))
    assert workbench.latent_info is None
    typical_S = workbench.typical_activation()
    assert (typical_S > 0).all()  # a ReLU SAE: every unit positive (fallback included)
    photos = [Image.open(p).convert("RGB") for p in sorted(PHOTOS_DIR.glob("*.jpg"))]
    f_NS = torch.cat([s.f_TS for s in workbench.site_states(photos)])
    latent = int((f_NS != 0).sum(0).argmax())
    fired_N = f_NS[:, latent][f_NS[:, latent] != 0]
    assert float(typical_S[latent]) == pytest.approx(float(fired_N.mean()), rel=1e-5)
    after = steering.steer(workbench, image, SHAPES, steering.Edit((latent,), (2.0,), "add"))
    assert after["before"] != after["after"]


def test_the_add_unit_keeps_the_sign_of_latents_that_fire_negative(tmp_path, image):
    """A TopK SAE without a ReLU (saev) can pick a latent with a negative value: adding its typical activation
    must push the way it usually points, so the unit is the signed mean, not the mean of |f|."""
    from engine.bench import random_sae
    from engine.sae import SAE, SAEConfig
    from engine.sources import AllowedDirs
    from engine.specs import ModelSpec, SAESpec

    base = random_sae(96, 384, 8, "blocks.2.resid_post", seed=5)
    sae = SAE(SAEConfig(96, 384, "topk", "blocks.2.resid_post", k=8, topk_relu=False))
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(getattr(base, name))
        sae.b_enc.fill_(-50.0)  # every pre-activation negative: the top k winners are negative values
    sae.save(tmp_path)
    workbench = load_workbench(ModelSpec.toy(), SAESpec(str(tmp_path)), "cpu", allowed=AllowedDirs.default([tmp_path]))
    typical_S = workbench.typical_activation()
    f_NS = torch.cat([s.f_TS for s in workbench.site_states(list(heldout.photos()))])
    fired = (f_NS != 0).any(0)
    assert fired.any() and (f_NS[:, fired][f_NS[:, fired] != 0] < 0).all()
    assert (typical_S[fired] < 0).all()
    after = steering.steer(workbench, image, SHAPES, Edit((int(fired.nonzero()[0]),), (1.0,), "add"))
    assert after["before"] != after["after"]


def local_latent_for(workbench, concept: str, image, truth) -> int:
    """Of the latents the toy SAE's ground truth labels ``concept``, the one that fires most on the shape's
    patches of ``image`` (a scene that has the concept), and its mean activation there."""
    from engine.evaluate import shape_patches

    info = workbench.latent_info
    candidates = [i for i, label in enumerate(info.labels) if label == concept]
    assert candidates, f"no latent is labelled {concept}"
    (state,) = workbench.site_states([image])
    on_shape_P = torch.from_numpy(shape_patches(truth, 48 // workbench.backend.grid[1]).flatten())
    patches_PS = state.f_TS[workbench.backend.n_prefix_tokens :]
    best = max(candidates, key=lambda i: float(patches_PS[on_shape_P, i].mean()))
    return best, float(patches_PS[on_shape_P, best].mean())


def test_adding_a_colour_latent_at_the_shapes_patches_changes_the_colour(workbench):
    """Patch-level steering at the mid-tower site: a blue latent added at the red shape's patches turns the answer
    to "which colour?" blue; the same edit at as many background patches far from the shape does not. (12 typical
    activations: the red latents stay in place and must be outweighed.)"""
    from engine.toyworld import captions, render

    scene = render.Scene("circle", "red", "plain", "large", "top left", "absent")
    image, truth = render.render(scene, seed=11)
    fraction_P = truth.patch_fraction(render.IMAGE_SIZE // workbench.backend.grid[1])["shape"].flatten()
    on_shape = tuple(int(p) for p in (fraction_P >= 0.5).nonzero()[0])
    far = tuple(int(p) for p in (fraction_P == 0).nonzero()[0])[-len(on_shape) :]
    prompts = captions.factor_prompts(scene, "colour")
    blue_image, blue_truth = render.render(scene.replace(colour="blue"), seed=11)
    blue, _ = local_latent_for(workbench, "colour=blue", blue_image, blue_truth)
    at_shape = steering.steer(workbench, image, prompts, Edit((blue,), (12.0,), "add", on_shape), "{}")
    elsewhere = steering.steer(workbench, image, prompts, Edit((blue,), (12.0,), "add", far), "{}")
    assert at_shape["predicted_before"] == captions.caption(scene.as_dict())
    assert at_shape["predicted_after"] == captions.caption(scene.replace(colour="blue").as_dict())
    assert elsewhere["predicted_after"] == captions.caption(scene.as_dict())
    assert not at_shape["warnings"]
