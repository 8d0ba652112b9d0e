"""The transformers backend (CLIP and SigLIP) on tiny random models: the split equals the model's own forward,
loading fails fast offline, and the engine (attribution, steering) runs on it unchanged."""

import math
import os
import shutil
import time

import huggingface_hub
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from engine import attribution, sources, steering, zeroshot
from engine.backends import ModelUnavailableError
from engine.backends.hf_clip_backend import HFClipBackend
from engine.edits import NO_EDIT, Edit, edit_delta, edited_logits
from engine.hooks import attached
from engine.resident import load_workbench
from engine.sae import SAE, SAEConfig
from engine.specs import ModelSpec, SAESpec

from .references import hooked_steered_logits
from .tiny_models import SITE, VISION_WIDTH, build_tiny_clip, build_tiny_siglip

BUILDERS = {"clip": build_tiny_clip, "siglip": build_tiny_siglip}
LABELS = ["cat", "dog", "car", "tree"]
CPU = torch.device("cpu")


@pytest.fixture(scope="session", params=list(BUILDERS))
def model_dir(request, tmp_path_factory):
    return BUILDERS[request.param](tmp_path_factory.mktemp(f"tiny_{request.param}"), seed=0)


@pytest.fixture(scope="session")
def backend(model_dir):
    return HFClipBackend(ModelSpec(family="hf_clip", name=str(model_dir)), CPU)


@pytest.fixture(scope="session")
def sae_dir(tmp_path_factory):
    sae = SAE(SAEConfig(d_in=VISION_WIDTH, d_sae=64, architecture="topk", k=4, hook_name=SITE))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(VISION_WIDTH, 64, generator=generator) / math.sqrt(VISION_WIDTH))
        sae.W_dec.copy_(torch.nn.functional.normalize(sae.W_enc.T, dim=-1))
    directory = tmp_path_factory.mktemp("sae")
    sae.save(directory)
    return directory


@pytest.fixture(scope="session")
def workbench(model_dir, sae_dir):
    with pytest.MonkeyPatch.context() as patch:  # tmp directories are outside the default allowed ones
        patch.setenv(sources.ALLOWED_DIRS_ENV, os.pathsep.join([str(model_dir), str(sae_dir)]))
        return load_workbench(ModelSpec(family="hf_clip", name=str(model_dir)), SAESpec(path=str(sae_dir)), "cpu")


@pytest.fixture(scope="session")
def images():
    rng = np.random.RandomState(0)
    return [Image.fromarray(rng.randint(0, 256, (40 + 3 * i, 48, 3), dtype=np.uint8)) for i in range(3)]


def test_prefix_equals_the_models_hidden_states_at_every_site(backend, images):
    pixels = backend.pixels(images)
    with torch.no_grad():
        hidden_states = backend.vision(pixel_values=pixels, output_hidden_states=True).hidden_states
        for site in backend.sites:
            acts_BTD = backend.prefix(pixels, site)
            assert acts_BTD.shape == (3, backend.n_prefix_tokens + math.prod(backend.grid), backend.d_model)
            torch.testing.assert_close(acts_BTD, hidden_states[backend.block_index(site) + 1], rtol=0, atol=0)


def test_suffix_of_prefix_equals_get_image_features(backend, images):
    pixels = backend.pixels(images)
    with torch.no_grad():
        reference = backend.encode_image(pixels)
        for site in backend.sites:
            torch.testing.assert_close(backend.suffix(backend.prefix(pixels, site), site), reference)


def test_hooked_site_module_output_is_the_prefix(backend, images):
    pixels = backend.pixels(images[:1])
    seen = []
    with torch.no_grad(), attached([(backend.site_module(SITE), lambda m, i, o: seen.append(o))]):
        backend.encode_image(pixels)
        prefix = backend.prefix(pixels, SITE)
    torch.testing.assert_close(seen[0], prefix)
    torch.testing.assert_close(seen[1], prefix)


def test_unknown_site_names_the_valid_ones(backend):
    with pytest.raises(ValueError, match=r"valid: blocks.0.resid_post .. blocks.2.resid_post"):
        backend.block_index("blocks.3.resid_post")
    with pytest.raises(ValueError, match="unknown site 'blocks.1.attn'"):
        backend.site_module("blocks.1.attn")


def test_zero_shot_logits_equal_the_models_own_forward(backend, images):
    """Text encoding and logit scale as the model's forward uses them; SigLIP adds one bias to every logit."""
    prompts = [f"a photo of a {label}." for label in LABELS]
    pixels = backend.pixels(images)
    with torch.no_grad():
        ours = zeroshot.zero_shot_logits(
            backend.encode_image(pixels), backend.encode_text(prompts), backend.logit_scale
        )
        if backend.kind == "siglip":
            tokens = backend.tokenizer(prompts, padding="max_length", max_length=backend.context_length)
            out = backend.model(input_ids=torch.tensor(tokens["input_ids"]), pixel_values=pixels)
            ours = ours + backend.model.logit_bias
        else:
            tokens = backend.tokenizer(prompts, padding=True, return_tensors="pt")
            out = backend.model(**tokens, pixel_values=pixels)
    torch.testing.assert_close(ours, out.logits_per_image, rtol=1e-4, atol=1e-4)


def test_text_embeddings_do_not_depend_on_the_batch(backend):
    """CLIP pools at the end-of-text token under a causal mask, SigLIP pads to the full context: either way a
    prompt's embedding is the same alone or next to a longer one."""
    alone = backend.encode_text(["a cat"])
    batched = backend.encode_text(["a cat", "a long and winding description of a small dog on a red sofa"])
    torch.testing.assert_close(alone[0], batched[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched.norm(dim=-1), torch.ones(2))


def test_the_built_clip_tokenizer_equals_open_clips(backend):
    sentences = ["a photo of a cat.", "Hello, World! 123 naïve café"]
    reference = open_clip.get_tokenizer("ViT-B-32")(sentences)
    assert len(backend.tokenizer) == 49408
    for sentence, expected in zip(sentences, reference, strict=True):
        ids = backend.tokenizer(sentence)["input_ids"]
        assert ids == expected[: len(ids)].tolist() and expected[len(ids)] == 0


def test_missing_model_fails_fast_and_says_how_to_provide_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match=r"nobody/no-such-clip is not in.*hf download nobody/no-such-clip"):
        HFClipBackend(ModelSpec(family="hf_clip", name="nobody/no-such-clip"), CPU)
    assert time.monotonic() - start < 10


def test_unreachable_hub_fails_fast_without_offline_mode_set(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match=r"not reachable.*--local-dir DIR"):
        HFClipBackend(ModelSpec(family="hf_clip", name="nobody/no-such-clip"), CPU)
    assert time.monotonic() - start < 10


def test_missing_local_directory_is_named(tmp_path):
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        HFClipBackend(ModelSpec(family="hf_clip", name=str(tmp_path / "absent")), CPU)


def test_tokenizer_without_vocabulary_is_refused(model_dir, tmp_path):
    """Without its vocabulary files transformers still builds a CLIP tokenizer, with 2 tokens."""
    broken = shutil.copytree(model_dir, tmp_path / "no_vocab")
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (broken / name).unlink()
    with pytest.raises(ModelUnavailableError, match=r"has 2 tokens.*vocabulary files"):
        HFClipBackend(ModelSpec(family="hf_clip", name=str(broken)), CPU)


def test_attribution_runs_and_maps_to_the_patch_grid(workbench, images):
    result = attribution.attribute(workbench, images[0], LABELS)
    n_tokens = workbench.backend.n_prefix_tokens + math.prod(workbench.backend.grid)
    assert result.scores_TS.shape == (n_tokens, workbench.d_sae)
    torch.testing.assert_close(result.scores_TS.sum(0), result.scores_S)
    faith = attribution.faithfulness(workbench, result, k=5)
    assert len(faith["actual"]) == len(faith["predicted"]) == 5
    assert attribution.patch_map(result.scores_TS[:, result.top(1)[0]], workbench.backend.grid).shape == (4, 4)


def test_strength_one_and_empty_edit_are_exact_no_ops(workbench, images):
    text = workbench.text_embeddings(LABELS)
    (state,) = workbench.site_states(images[:1])
    latents = tuple(state.f_TS.sum(0).topk(4).indices.tolist())
    edits = [NO_EDIT, Edit(latents, (1.0,) * 4)]
    logits = edited_logits(workbench, [state], edits, text)
    assert torch.equal(logits[1, 0], logits[0, 0])
    torch.testing.assert_close(logits[0, 0], workbench.predict(images[:1], LABELS)[0])
    result = steering.steer(workbench, images[0], LABELS, edits[1])
    assert result["before"] == result["after"]


@pytest.mark.parametrize(
    ("mode", "patches", "strengths"), [("scale", None, [-1.0, 0.0, 0.5, 1.0, 2.5]), ("add", (0, 7), [2.0, 6.0])]
)
def test_batched_sweep_equals_one_hooked_full_forward_per_strength(workbench, images, mode, patches, strengths):
    """Against the reference that edits the code with the SAE's own encode and decode (tests/references.py)."""
    image = images[0]
    (state,) = workbench.site_states([image])
    latent = int(state.f_TS.sum(0).argmax())
    result = steering.sweep(workbench, image, LABELS, latent, strengths, mode=mode, patches=patches)
    target = LABELS.index(result["target"])
    typical_S = workbench.typical_activation()
    for s, fast in zip(strengths, result["latent"]["logit_difference"], strict=True):
        slow_L = hooked_steered_logits(workbench, image, [latent], [s], LABELS, mode, patches, typical_S)
        slow = float(zeroshot.logit_difference(slow_L[None], target)[0])
        assert math.isclose(fast, slow, rel_tol=1e-4, abs_tol=1e-4), (s, fast, slow)


def test_add_mode_patches_skip_the_prefix_tokens(workbench, images):
    (state,) = workbench.site_states(images[:1])
    n_prefix = workbench.backend.n_prefix_tokens
    typical_S = workbench.typical_activation()
    delta = edit_delta(state.f_TS, workbench.sae.W_dec, Edit((3,), (2.0,), "add", (0, 7)), typical_S, n_prefix)
    assert (delta.abs().sum(-1) > 0).nonzero().flatten().tolist() == [n_prefix, n_prefix + 7]
    everywhere = Edit((3,), (2.0,), mode="add")
    delta = edit_delta(state.f_TS, workbench.sae.W_dec, everywhere, torch.ones(workbench.d_sae), n_prefix)
    assert int((delta.abs().sum(-1) > 0).sum()) == n_prefix + math.prod(workbench.backend.grid)
