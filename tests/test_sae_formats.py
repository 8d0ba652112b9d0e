"""Each public SAE format loads to the numbers its own library computes (fixtures: scripts/make_sae_fixtures.py)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.sae import SAE, SAEConfig, SAEFormatError
from engine.sae_formats import SAE_FORMATS, detect_format, load_sae, resid_site

FIXTURES = Path(__file__).parent / "fixtures" / "sae"

# fixture directory, format, what load_sae needs beyond the path, the site it should resolve to
CASES = [
    ("saelens/standard", "saelens", {}, "blocks.3.resid_post"),
    ("saelens/topk_layer_norm", "saelens", {}, "blocks.4.resid_post"),  # blocks.5.hook_resid_pre
    ("saelens/jumprelu", "saelens", {}, "blocks.7.resid_post"),
    ("saev/legacy", "saev", {"site": "blocks.10.resid_post"}, "blocks.10.resid_post"),
    ("saev/schema2", "saev", {"site": "blocks.10.resid_post"}, "blocks.10.resid_post"),
    ("vit_prisma", "vit_prisma", {}, "blocks.6.resid_post"),
    ("patchsae", "patchsae", {}, "blocks.8.resid_post"),
    ("sparsify/vision_model.encoder.layers.2", "sparsify", {}, "blocks.2.resid_post"),
    ("dictionary_learning/standard", "dictionary_learning", {}, "blocks.4.resid_post"),
    ("dictionary_learning/topk", "dictionary_learning", {}, "blocks.4.resid_post"),
    ("dictionary_learning/batch_topk", "dictionary_learning", {}, "blocks.4.resid_post"),
    ("dictionary_learning/jumprelu", "dictionary_learning", {}, "blocks.4.resid_post"),
    ("overcomplete/topk", "overcomplete", {"k": 4, "site": "blocks.1.resid_post"}, "blocks.1.resid_post"),
    (
        "overcomplete/relu",
        "overcomplete",
        {"architecture": "relu", "site": "blocks.1.resid_post"},
        "blocks.1.resid_post",
    ),
    ("overcomplete/jump", "overcomplete", {"site": "blocks.1.resid_post"}, "blocks.1.resid_post"),
]


def test_every_format_has_a_fixture():
    assert {fmt for _, fmt, _, _ in CASES} == set(SAE_FORMATS)


@pytest.mark.parametrize(("name", "fmt", "kwargs", "site"), CASES, ids=[c[0] for c in CASES])
def test_load_matches_the_original_library(name, fmt, kwargs, site):
    directory = FIXTURES / name
    expected = load_file(str(directory / "expected.safetensors"))
    assert detect_format(directory) == fmt
    sae = load_sae(directory, **kwargs)
    assert sae.config.source_format == fmt and sae.config.hook_name == site
    x_ND, f_NS = expected["x"], expected["f"]
    assert (f_NS != 0).any() and (f_NS == 0).any()
    torch.testing.assert_close(sae.encode(x_ND), f_NS, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(f_NS, x_ND), expected["x_hat"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x_ND), expected["x_hat"], atol=1e-5, rtol=1e-5)


def test_source_site_and_normalisation_are_kept():
    sae = load_sae(FIXTURES / "saelens/topk_layer_norm")
    assert sae.config.source_site == "blocks.5.hook_resid_pre"
    assert sae.config.normalize_activations == "layer_norm" and sae.config.k == 4
    with pytest.raises(ValueError, match="needs the input x"):
        sae.decode(torch.zeros(1, 64))
    assert load_sae(FIXTURES / "patchsae").config.source_site == "vision_model.encoder.layers[8]"
    assert load_sae(FIXTURES / "saev/schema2", site="blocks.1.resid_post").config.topk_relu is False


def test_site_override_and_missing_site():
    assert load_sae(FIXTURES / "vit_prisma", site="blocks.2.resid_post").config.hook_name == "blocks.2.resid_post"
    with pytest.raises(SAEFormatError, match=r"does not record the layer.*site='blocks.N.resid_post'"):
        load_sae(FIXTURES / "saev/legacy")
    with pytest.raises(SAEFormatError, match="records no site"):
        load_sae(FIXTURES / "overcomplete/jump")


def test_resid_site_names():
    assert resid_site("blocks.0.hook_resid_post") == "blocks.0.resid_post"
    assert resid_site("blocks.0.hook_resid_pre") is None  # the embeddings, not after a block
    assert resid_site("visual.transformer.resblocks.11") == "blocks.11.resid_post"
    assert resid_site("blocks.3.hook_mlp_out") is None


def test_a_non_residual_site_needs_an_override(tmp_path):
    directory = shutil.copytree(FIXTURES / "saelens/standard", tmp_path / "mlp")
    cfg = json.loads((directory / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "blocks.3.hook_mlp_out"
    (directory / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match="'blocks.3.hook_mlp_out' is not the residual stream"):
        load_sae(directory)
    assert load_sae(directory, site="blocks.3.resid_post").config.source_site == "blocks.3.hook_mlp_out"


def test_overcomplete_needs_to_be_told_its_class():
    with pytest.raises(SAEFormatError, match="pass k=<top_k> for a TopKSAE or architecture='relu'"):
        load_sae(FIXTURES / "overcomplete/topk", site="blocks.1.resid_post")


def test_a_recorded_k_cannot_be_contradicted():
    with pytest.raises(SAEFormatError, match="records k=4; k=8"):
        load_sae(FIXTURES / "dictionary_learning/topk", k=8)


def test_gated_saelens_is_refused(tmp_path):
    directory = shutil.copytree(FIXTURES / "saelens/standard", tmp_path / "gated")
    cfg = json.loads((directory / "cfg.json").read_text())
    cfg["architecture"] = "gated"
    (directory / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match="architecture 'gated' is not supported"):
        load_sae(directory)


def test_native_files_round_trip(tmp_path):
    sae = load_sae(FIXTURES / "saev/schema2", site="blocks.1.resid_post")
    sae.save(tmp_path / "native")
    assert detect_format(tmp_path / "native") == "saelens"
    again = load_sae(tmp_path / "native")
    assert again.config == sae.config
    x = torch.randn(3, 16)
    assert torch.equal(again.encode(x), sae.encode(x))
    assert SAE.load(tmp_path / "native").config == sae.config


class _WritesAMarker:
    """Unpickling this would run open(marker, 'w'): the file must be refused before that happens."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_with_arbitrary_objects_is_refused(tmp_path):
    marker = tmp_path / "marker"
    state = {"W_enc": torch.zeros(4, 8), "payload": _WritesAMarker(marker)}
    torch.save({"cfg": {"block_layer": 1}, "state_dict": state}, tmp_path / "evil.pt")
    with pytest.raises(SAEFormatError, match=r"needs unpickling of arbitrary objects.*refused.*safetensors"):
        load_sae(tmp_path / "evil.pt")
    assert not marker.exists()


def test_unrelated_files_say_what_was_found_and_what_is_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SAEFormatError, match=r"found files \['notes.txt'\].*saelens: a directory with cfg.json"):
        detect_format(tmp_path)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "model.pt")
    with pytest.raises(SAEFormatError, match=r"holds keys \['weight'\].*overcomplete: a .pt state dict"):
        load_sae(tmp_path / "model.pt")
    with pytest.raises(SAEFormatError, match="no such file or directory"):
        load_sae(tmp_path / "missing")


def test_old_configs_still_load():
    config = SAEConfig.from_dict({"d_in": 4, "d_sae": 8, "architecture": "relu", "hook_name": "blocks.0.resid_post"})
    assert config.normalize_activations == "none" and config.topk_relu and config.source_format == ""


def test_a_vit_prisma_folder_with_its_sparsity_log_still_loads(tmp_path):
    folder = tmp_path / "prisma"
    shutil.copytree(FIXTURES / "vit_prisma", folder)
    shutil.copy(folder / "weights.pt", folder / "n_images_26_log_feature_sparsity.pt")
    assert detect_format(folder) == "vit_prisma"
