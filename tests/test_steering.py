import math

import pytest
import torch

from engine import steering, zeroshot
from engine.hooks import attached

from .conftest import SHAPES


def full_forward_with_steering_hook(bench, image, edit, text_emb_LE):
    """The slow reference: one whole forward pass with a hook that adds the edit at the site."""
    (state,) = bench.site_states([image])
    delta_TD = steering.edit_delta(
        state.f_TS, bench.sae.W_dec, edit, steering.typical_activation(bench), bench.backend.n_prefix_tokens
    )

    def add_edit(module, inputs, output):
        sae = bench.sae
        f_TS = sae.encode(output[0])
        fresh = steering.edit_delta(f_TS, sae.W_dec, edit, steering.typical_activation(bench), 1)
        assert torch.allclose(fresh, delta_TD, atol=1e-4)
        return output + fresh

    with torch.no_grad(), attached([(bench.backend.site_module(bench.site), add_edit)]):
        emb = bench.backend.encode_image(bench.backend.pixels([image]))
    return zeroshot.zero_shot_logits(emb, text_emb_LE, bench.backend.logit_scale)[0]


def top_latent(bench, image):
    (state,) = bench.site_states([image])
    return int(state.f_TS.sum(0).argmax())


def test_strength_one_and_empty_edit_are_exact_no_ops(bench, image):
    text = bench.text_embeddings(SHAPES)
    (state,) = bench.site_states([image])
    latents = tuple(state.f_TS.sum(0).topk(5).indices.tolist())
    logits = steering.steered_logits(bench, [state], [steering.Edit((), ()), steering.Edit(latents, (1.0,) * 5)], text)
    assert torch.equal(logits[1, 0], logits[0, 0])  # same pass: bit for bit
    torch.testing.assert_close(logits[0, 0], bench.predict([image], SHAPES)[0])  # other batch size: kernels differ
    delta = steering.edit_delta(
        state.f_TS, bench.sae.W_dec, steering.Edit(latents, (1.0,) * 5), torch.ones(bench.d_sae), 1
    )
    assert torch.count_nonzero(delta) == 0
    assert torch.equal(state.acts_TD + delta, state.acts_TD)


def test_batched_sweep_equals_one_full_forward_per_strength(bench, image):
    latent = top_latent(bench, image)
    strengths = [-1.0, 0.0, 0.5, 1.0, 2.5]
    result = steering.sweep(bench, image, SHAPES, latent, strengths)
    target = SHAPES.index(result["target"])
    text = bench.text_embeddings(SHAPES)
    for s, fast in zip(strengths, result["latent"]["logit_difference"], strict=True):
        slow_logits = full_forward_with_steering_hook(bench, image, steering.Edit((latent,), (s,)), text)
        slow = float(zeroshot.logit_difference(slow_logits[None], target)[0])
        assert math.isclose(fast, slow, rel_tol=1e-4, abs_tol=1e-4)


def test_add_mode_touches_only_the_chosen_patches(bench, image):
    (state,) = bench.site_states([image])
    edit = steering.Edit((3,), (2.0,), mode="add", patches=(0, 7))
    delta = steering.edit_delta(state.f_TS, bench.sae.W_dec, edit, steering.typical_activation(bench), 1)
    touched = delta.abs().sum(-1) > 0
    assert touched.nonzero().flatten().tolist() == [1, 8]
    expected = 2.0 * steering.typical_activation(bench)[3] * bench.sae.W_dec[3]
    torch.testing.assert_close(delta[1], expected)


def test_steering_keeps_the_error_term(bench, image):
    """Suppressing a latent moves the activation by exactly f_i * W_dec[i]; the rest, error included, stays."""
    (state,) = bench.site_states([image])
    latent = top_latent(bench, image)
    delta = steering.edit_delta(state.f_TS, bench.sae.W_dec, steering.Edit((latent,), (0.0,)), torch.ones(1), 1)
    expected = -state.f_TS[:, latent : latent + 1] * bench.sae.W_dec[latent]
    torch.testing.assert_close(delta, expected)


def test_random_baseline_is_norm_matched(bench):
    direction = steering.random_direction_like(bench.sae.W_dec, 5, seed=1)
    assert math.isclose(float(direction.norm()), float(bench.sae.W_dec[5].norm()), rel_tol=1e-5)
    assert not torch.allclose(direction, bench.sae.W_dec[5])


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), 1e9])
def test_absurd_strengths_are_refused(strength):
    with pytest.raises(ValueError, match="strength must be a finite number"):
        steering.Edit((1,), (strength,))


def test_unknown_latent_and_mode_are_refused(bench, image):
    with pytest.raises(ValueError, match=f"unknown latent id {bench.d_sae}; valid: 0 .. {bench.d_sae - 1}"):
        steering.steer(bench, image, SHAPES, steering.Edit((bench.d_sae,), (0.0,)))
    with pytest.raises(ValueError, match="valid: scale, add"):
        steering.Edit((1,), (0.0,), mode="multiply")


def test_ripple_reports_accuracy_per_label(bench, scene_images):
    images, scenes = scene_images
    from engine.toyworld import captions

    truth = captions.truth_for_labels(SHAPES, scenes)
    rows = steering.ripple(bench, images, SHAPES, steering.Edit((0,), (1.0,)), truth)
    assert [r["label"] for r in rows] == SHAPES
    assert sum(r["predicted_before"] for r in rows) == len(images)
    for row in rows:  # strength 1: nothing moves
        assert row["predicted_before"] == row["predicted_after"]


def test_concurrent_requests_equal_sequential_ones(bench, scene_images):
    from concurrent.futures import ThreadPoolExecutor

    images, _ = scene_images
    edits = [steering.Edit((i,), (0.0,)) for i in range(4)]
    jobs = [(images[i % len(images)], edit) for i, edit in enumerate(edits * 2)]
    sequential = [steering.steer(bench, im, SHAPES, e)["after"] for im, e in jobs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda job: steering.steer(bench, job[0], SHAPES, job[1])["after"], jobs))
    assert parallel == sequential


def test_an_sae_that_normalises_its_input_is_steered_through_its_own_decode(tmp_path, image):
    """For a layer_norm SAE, an edit must equal decode(f', x) + error computed by the SAE itself."""
    from engine.bench import random_sae
    from engine.resident import Workbench
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
    bench = Workbench(
        ModelSpec.toy(), SAESpec(str(tmp_path)), torch.device("cpu"), allowed=AllowedDirs.default([tmp_path])
    )
    (state,) = bench.site_states([image])
    latent = int(state.f_TS.sum(0).argmax())
    text = bench.text_embeddings(SHAPES)
    edits = [steering.Edit((), ()), steering.Edit((latent,), (3.0,))]
    unchanged, fast = steering.steered_logits(bench, [state], edits, text)[:, 0]

    def through_decode(module, inputs, output):
        f_BTS = bench.sae.encode(output)
        edited_BTS = f_BTS.clone()
        edited_BTS[..., latent] *= 3.0
        return bench.sae.decode(edited_BTS, output) + (output - bench.sae.decode(f_BTS, output))

    with torch.no_grad(), attached([(bench.backend.site_module(bench.site), through_decode)]):
        emb = bench.backend.encode_image(bench.pixels([image]))
    slow = zeroshot.zero_shot_logits(emb, text, bench.backend.logit_scale)[0]
    assert (fast - unchanged).abs().max() > 0.01
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


def test_without_shipped_statistics_the_add_unit_comes_from_the_reference_photos(tmp_path, image):
    from PIL import Image

    from engine.bench import random_sae
    from engine.registry import PHOTOS_DIR
    from engine.resident import Workbench
    from engine.sources import AllowedDirs
    from engine.specs import ModelSpec, SAESpec

    random_sae(96, 384, 8, "blocks.2.resid_post", seed=4).save(tmp_path)
    bench = Workbench(
        ModelSpec.toy(), SAESpec(str(tmp_path)), torch.device("cpu"), allowed=AllowedDirs.default([tmp_path])
    )
    assert bench.latent_info is None
    typical_S = steering.typical_activation(bench)
    assert torch.equal(typical_S, steering.typical_activation(bench)) and (typical_S > 0).all()
    photos = [Image.open(p).convert("RGB") for p in sorted(PHOTOS_DIR.glob("*.jpg"))]
    f_NS = torch.cat([s.f_TS for s in bench.site_states(photos)])
    latent = int((f_NS > 0).sum(0).argmax())
    fired_N = f_NS[:, latent][f_NS[:, latent] > 0]
    assert float(typical_S[latent]) == pytest.approx(float(fired_N.mean()), rel=1e-5)
    after = steering.steer(bench, image, SHAPES, steering.Edit((latent,), (2.0,), "add"))
    assert after["before"] != after["after"]
