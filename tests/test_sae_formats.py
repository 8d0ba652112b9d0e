"""Each public SAE format loads to the numbers its own library computes (fixtures: scripts/make_sae_fixtures.py)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.sae import SAE, SAEConfig, SAEFormatError
from engine.sae_formats import REGISTRY, SAE_FORMATS, detect_format, load_sae, resid_site

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
    (
        "dictionary_learning/matryoshka_sae_for_vlm",
        "dictionary_learning",
        {"site": "blocks.22.resid_post"},
        "blocks.22.resid_post",
    ),
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


def _set_json(path, keys, value):
    data = json.loads(path.read_text())
    node = data
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    path.write_text(json.dumps(data))


def test_a_native_config_that_contradicts_its_tensors_is_refused(tmp_path):
    SAE(SAEConfig(d_in=4, d_sae=8, architecture="relu", hook_name="blocks.0.resid_post")).save(tmp_path)
    _set_json(tmp_path / "cfg.json", ["d_in"], 8)
    with pytest.raises(SAEFormatError, match=r"cfg.json declares d_in=8, d_sae=8, but the saelens tensors have d_in=4"):
        load_sae(tmp_path)


# fixture, the config file in it, the keys of the size to misstate, the wrong size, what the message says
MISSTATED = [
    ("saelens/standard", "cfg.json", ["d_sae"], 32, "cfg.json declares d_in=16, d_sae=32, but the saelens"),
    (
        "sparsify/vision_model.encoder.layers.2",
        "cfg.json",
        ["d_in"],
        8,
        "cfg.json declares d_in=8, d_sae=64, but the sparsify",
    ),
    ("vit_prisma", "config.json", ["d_in"], 8, "config.json declares d_in=8, d_sae=64, but the vit_prisma"),
    (
        "dictionary_learning/topk",
        "config.json",
        ["trainer", "dict_size"],
        128,
        "config.json declares d_in=16, d_sae=128, but the dictionary_learning",
    ),
]


@pytest.mark.parametrize(("name", "config", "keys", "size", "message"), MISSTATED, ids=[c[0] for c in MISSTATED])
def test_declared_sizes_are_checked_against_the_tensors(tmp_path, name, config, keys, size, message):
    directory = shutil.copytree(FIXTURES / name, tmp_path / Path(name).name)
    _set_json(directory / config, keys, size)
    with pytest.raises(SAEFormatError, match=rf"{message} tensors have d_in=16, d_sae=64 \(W_enc \[16, 64\]\)"):
        load_sae(directory)


def test_sizes_in_a_saev_header_or_a_pickled_config_are_checked_too(tmp_path):
    header_line, rest = (FIXTURES / "saev/legacy/sae.pt").read_bytes().split(b"\n", 1)
    header = json.loads(header_line)
    assert (header["d_vit"], header["exp_factor"]) == (16, 4)
    header["exp_factor"] = 8
    (tmp_path / "sae.pt").write_bytes(json.dumps(header).encode() + b"\n" + rest)
    with pytest.raises(SAEFormatError, match=r"the sae.pt header declares d_in=16, d_sae=128, but the saev tensors"):
        load_sae(tmp_path / "sae.pt", site="blocks.1.resid_post")
    state = load_sae(FIXTURES / "patchsae").state_dict()
    torch.save({"cfg": {"block_layer": 8, "d_in": 16, "expansion_factor": 2}, "state_dict": state}, tmp_path / "p.pt")
    with pytest.raises(SAEFormatError, match=r"the cfg pickled in p.pt declares d_in=16, d_sae=32, but the patchsae"):
        load_sae(tmp_path / "p.pt")


def test_the_registry_order_decides_between_formats_that_could_claim_the_same_file(tmp_path):
    assert [fmt.name for fmt in REGISTRY] == list(SAE_FORMATS)
    state = load_sae(FIXTURES / "patchsae").state_dict()
    torch.save({"cfg": {"block_layer": 8, "hook_point_layer": 8}, "state_dict": state}, tmp_path / "both.pt")
    assert detect_format(tmp_path / "both.pt") == "patchsae"  # patchsae is asked before vit_prisma
    both = tmp_path / "ae_and_sae"
    both.mkdir()
    shutil.copy(FIXTURES / "dictionary_learning/standard/ae.pt", both / "ae.pt")
    shutil.copy(FIXTURES / "saev/legacy/sae.pt", both / "sae.pt")
    assert detect_format(both) == "dictionary_learning"  # ae.pt is looked for before sae.pt
    renamed = tmp_path / "saev_named_ae"
    renamed.mkdir()
    shutil.copy(FIXTURES / "saev/legacy/sae.pt", renamed / "ae.pt")
    assert detect_format(renamed) == "saev"  # the name ae.pt does not claim a file that is not a torch file
