import pytest
import torch

from engine.resident import SiteState


def test_prefix_then_suffix_equals_the_models_own_forward(workbench, scene_images):
    images, _ = scene_images
    pixels = workbench.backend.pixels(images)
    with torch.no_grad():
        for site in workbench.backend.sites:
            split = workbench.backend.suffix(workbench.backend.prefix(pixels, site), site)
            torch.testing.assert_close(split, workbench.backend.encode_image(pixels), rtol=1e-5, atol=1e-5)


def test_site_activations_equal_open_clips_forward_intermediates(workbench, image):
    pixels = workbench.backend.pixels([image])
    index = workbench.backend.block_index(workbench.site)
    with torch.no_grad():
        out = workbench.backend.visual.forward_intermediates(
            pixels, indices=[index], output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
        )
        ours = workbench.backend.prefix(pixels, workbench.site)
    torch.testing.assert_close(ours[:, 1:], out["image_intermediates"][0])
    torch.testing.assert_close(ours[:, :1], out["image_intermediates_prefix"][0])


def test_hooked_site_module_output_is_the_prefix(workbench, image):
    pixels = workbench.backend.pixels([image])
    seen = []
    with (
        torch.no_grad(),
        workbench.model.hooked([(workbench.backend.site_module(workbench.site), lambda m, i, o: seen.append(o))]),
    ):
        workbench.backend.encode_image(pixels)
        prefix = workbench.backend.prefix(pixels, workbench.site)
    torch.testing.assert_close(seen[0], prefix)


def test_unknown_site_names_the_valid_ones(workbench):
    with pytest.raises(ValueError, match=r"valid: blocks.0.resid_post .. blocks.3.resid_post"):
        workbench.backend.block_index("blocks.9.resid_post")


def test_sae_error_term_makes_insertion_a_no_op(workbench, image):
    acts_1TD = workbench.backend.prefix(workbench.pixels([image]), workbench.site)
    f_1TS, error_1TD = workbench.encode(acts_1TD)
    rebuilt = workbench.sae.decode(f_1TS[0]) + error_1TD[0]
    torch.testing.assert_close(rebuilt, acts_1TD[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(f_1TS, workbench.sae.encode(acts_1TD), rtol=0, atol=0)


def test_site_states_are_cached_by_image_content(workbench, scene_images):
    images, _ = scene_images
    first = workbench.site_states([images[1]])[0]
    again = workbench.site_states([images[1].copy()])[0]
    assert first is again


def test_half_precision_workbench_agrees_with_float32(workbench, scene_images):
    from engine import attribution, steering
    from engine.resident import load_workbench
    from engine.specs import ModelSpec, SAESpec

    from .conftest import SHAPES

    half = load_workbench(ModelSpec.toy(), SAESpec.toy(), "cpu", dtype="bfloat16")
    images, _ = scene_images
    assert half.backend.model.visual.conv1.weight.dtype == torch.bfloat16
    logits_half, logits_full = half.predict(images, SHAPES), workbench.predict(images, SHAPES)
    assert logits_half.dtype == torch.float32
    assert torch.equal(logits_half.argmax(-1), logits_full.argmax(-1))
    torch.testing.assert_close(logits_half, logits_full, rtol=0.05, atol=0.5)
    result = attribution.attribute(half, images[0], SHAPES)
    assert torch.isfinite(result.scores_S).all()
    swept = steering.sweep(half, images[0], SHAPES, result.top(1)[0], [0.0, 1.0, 2.0])
    assert len(swept["latent"]["logit_difference"]) == 3
    added = steering.steer(half, images[0], SHAPES, steering.Edit((result.top(1)[0],), (2.0,), "add"))
    assert added["before"] != added["after"]
    assert half.backend.logit_scale == workbench.backend.logit_scale  # read before the cast: not rounded
    with pytest.raises(ValueError, match="valid: float32, bfloat16, float16"):
        load_workbench(ModelSpec.toy(), SAESpec.toy(), "cpu", dtype="int8")


@pytest.fixture(scope="module")
def vit_b32():
    """open_clip's ViT-B-32 with random weights: the real architecture, built offline."""
    from engine.backends import load_backend
    from engine.specs import ModelSpec

    torch.manual_seed(0)
    return load_backend(ModelSpec("open_clip", "ViT-B-32"), torch.device("cpu"))


def test_vit_b32_sites_equal_forward_intermediates_and_the_split_equals_encode_image(vit_b32, image):
    pixels = vit_b32.pixels([image])
    assert vit_b32.grid == (7, 7) and vit_b32.d_model == 768 and len(vit_b32.sites) == 12
    with torch.no_grad():
        out = vit_b32.visual.forward_intermediates(
            pixels, indices=[6, 10], output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
        )
        for n, index in enumerate([6, 10]):
            ours = vit_b32.prefix(pixels, f"blocks.{index}.resid_post")
            torch.testing.assert_close(ours[:, 1:], out["image_intermediates"][n])
            torch.testing.assert_close(ours[:, :1], out["image_intermediates_prefix"][n])
            split = vit_b32.suffix(ours, f"blocks.{index}.resid_post")
            torch.testing.assert_close(split, vit_b32.encode_image(pixels), rtol=1e-4, atol=1e-4)


def test_an_sae_for_another_width_is_refused_with_what_was_found(tmp_path):
    from engine.bench import random_sae
    from engine.errors import SAEFormatError
    from engine.resident import load_workbench
    from engine.sources import AllowedDirs
    from engine.specs import ModelSpec, SAESpec

    random_sae(768, 64, 4, "blocks.2.resid_post").save(tmp_path)
    with pytest.raises(SAEFormatError, match=r"d_in=768.*width 96 at blocks.2.resid_post"):
        load_workbench(ModelSpec.toy(), SAESpec(str(tmp_path)), "cpu", allowed=AllowedDirs.default([tmp_path]))


@pytest.mark.parametrize("which", ["toy", "vit_b32"])
def test_text_encoding_over_trimmed_tokens_equals_open_clips_own(which, workbench, request):
    backend = workbench.backend if which == "toy" else request.getfixturevalue("vit_b32")
    prompts = ["a circle", "a large red circle in the top left on a plain background", "x", "a photo of a cat."] * 70
    ours = backend.encode_text(prompts, chunk=100)
    with torch.no_grad():
        reference = torch.nn.functional.normalize(backend.model.encode_text(backend.tokenizer(prompts)), dim=-1)
    assert ours.shape == reference.shape == (280, reference.shape[1])
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_concurrent_first_requests_for_a_model_share_one_load():
    from concurrent.futures import ThreadPoolExecutor

    from engine.resident import load_workbench
    from engine.specs import ModelSpec, SAESpec

    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(lambda _: load_workbench(ModelSpec.toy(), SAESpec.toy(), "cpu", 77), range(4)))
    assert all(workbench is loaded[0] for workbench in loaded)


def test_a_cached_code_is_sparse_unless_the_dense_one_is_small():
    """Both forms give the same code and count their own bytes; the toy's 384 latents stay dense (2.4 times
    the sparse bytes), ViT-B/32's 24,576 go sparse (150 times)."""
    torch.manual_seed(0)
    for d_sae, dense in ((384, True), (24_576, False)):
        pre_TS = torch.randn(37, d_sae)
        values_TK, indices_TK = pre_TS.topk(32, dim=-1)
        f_TS = torch.zeros_like(pre_TS).scatter(-1, indices_TK, values_TK.relu())
        acts_TD = torch.randn(37, 96)
        state = SiteState.build(acts_TD, f_TS, 0.1 * acts_TD)
        assert state.code_TS.is_sparse is not dense
        assert torch.equal(state.f_TS, f_TS)
        active = f_TS.any(0).nonzero().flatten().tolist()
        latents = [active[3], active[0], (set(range(d_sae)) - set(active)).pop(), active[3]]  # a silent one, a repeat
        assert torch.equal(state.columns(latents), f_TS[:, latents])
        assert state.columns([]).shape == (37, 0)
        torch.testing.assert_close(state.activation_S, f_TS.sum(0))
        bounded = SiteState.build(acts_TD, f_TS, 0.1 * acts_TD, max_nonzero=37 * 32, copy=False)
        assert bounded.code_TS.is_sparse is not dense and torch.equal(bounded.f_TS, f_TS)
        assert bounded.acts_TD is acts_TD and state.acts_TD is not acts_TD
        code_bytes = f_TS.numel() * 4 if dense else int((f_TS != 0).sum()) * (4 + 16)
        assert state.nbytes == code_bytes + 2 * acts_TD.numel() * 4
