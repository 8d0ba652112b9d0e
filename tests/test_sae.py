import json

import pytest
import torch

from engine.sae import SAE, SAEConfig, SAEFormatError
from engine.sae_formats import load_sae


def random_sae(architecture="topk", seed=0):
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=16, d_sae=64, architecture=architecture, hook_name="blocks.1.resid_post", k=4))
    for p in sae.parameters():
        p.data.normal_()
    return sae.requires_grad_(False)


@pytest.mark.parametrize("architecture", ["topk", "relu", "jumprelu"])
def test_save_load_round_trip(tmp_path, architecture):
    sae = random_sae(architecture)
    sae.save(tmp_path / "sae")
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["hook_name"] == "blocks.1.resid_post"
    loaded = load_sae(tmp_path / "sae")
    x = torch.randn(5, 16)
    assert loaded.config == sae.config
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert torch.equal(loaded(x), sae(x))
    assert loaded.W_enc.shape == (16, 64) and loaded.W_dec.shape == (64, 16)


def test_topk_keeps_k_nonnegative_latents():
    f = random_sae("topk").encode(torch.randn(100, 16))
    assert ((f > 0).sum(-1) <= 4).all() and (f >= 0).all()


@pytest.mark.parametrize("normalize", ["none", "layer_norm", "constant_norm_rescale"])
def test_topk_decode_from_the_k_active_latents_equals_the_dense_decode(normalize):
    sae = random_sae("topk")
    sae.config = SAEConfig(**{**sae.config.to_dict(), "normalize_activations": normalize})
    x_BTD = torch.randn(2, 7, 16)
    f_BTS, values_BTK, indices_BTK = sae.encode_topk(x_BTD)
    assert torch.equal(f_BTS, sae.encode(x_BTD)) and values_BTK.shape == indices_BTK.shape == (2, 7, 4)
    torch.testing.assert_close(sae.decode_topk(values_BTK, indices_BTK, x_BTD), sae.decode(f_BTS, x_BTD))
    with pytest.raises(ValueError, match="topk"):
        random_sae("relu").encode_topk(x_BTD)


def test_load_errors_say_what_was_found(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SAEFormatError, match=r"found files \['notes.txt'\].*a directory with cfg.json and sae_weights"):
        load_sae(tmp_path)
    with pytest.raises(SAEFormatError, match="unknown SAE architecture 'gated'; valid: topk, relu, jumprelu"):
        SAEConfig(d_in=4, d_sae=8, architecture="gated", hook_name="x")


def test_load_rejects_mismatched_shapes(tmp_path):
    random_sae().save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["d_sae"] = 32
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(
        SAEFormatError, match=r"cfg.json declares d_in=16, d_sae=32, but the saelens tensors have d_in=16, d_sae=64"
    ):
        load_sae(tmp_path)
