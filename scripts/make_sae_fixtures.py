"""Write tiny SAE files in every public format, with outputs computed by the original libraries.

The loaders in ``engine/sae_formats/`` claim to read SAELens, saev, ViT-Prisma, PatchSAE, sparsify,
dictionary_learning and overcomplete files exactly. This script makes that claim testable: for each
format it writes a tiny SAE (d_in=16, d_sae=64, fixed seed, random weights with non-zero biases and
thresholds) with the library's own classes and save function, then stores in ``expected.safetensors``
the inputs ``x`` (5 x 16), the library's own encoding ``f`` of them and its reconstruction ``x_hat``.
``tests/test_sae_formats.py`` checks, without the libraries, that our loader gives the same numbers.

Run it (not part of the tests; it needs the original libraries, in a venv outside the repository)::

    python3 -m venv /work/fixture-venv
    /work/fixture-venv/bin/pip install torch==2.14.1
    /work/fixture-venv/bin/pip install sae-lens saev dictionary-learning
    HF_HUB_OFFLINE=1 WANDB_MODE=disabled /work/fixture-venv/bin/python scripts/make_sae_fixtures.py \
        saelens saev dictionary_learning vit_prisma patchsae sparsify

overcomplete 0.3.0 imports ``matplotlib.cm.get_cmap``, which matplotlib 3.9 removed, while saev needs
matplotlib >= 3.9.2: the two cannot share a venv, so overcomplete gets its own::

    python3 -m venv /work/fixture-venv-overcomplete
    /work/fixture-venv-overcomplete/bin/pip install torch==2.14.1
    /work/fixture-venv-overcomplete/bin/pip install overcomplete "matplotlib<3.9" safetensors
    /work/fixture-venv-overcomplete/bin/python scripts/make_sae_fixtures.py overcomplete

With no argument the script makes every format (which needs all four libraries in one venv).

Written by the library itself (versions recorded in each ``provenance.json``):
    saelens              sae-lens (PyPI): StandardSAE / TopKSAE / JumpReLUSAE, ``save_model``
    saev                 saev 0.1.0 (PyPI): ``saev.nn.SparseAutoencoder``, ``saev.nn.dump``
    dictionary_learning  dictionary-learning (PyPI): AutoEncoder / AutoEncoderTopK / BatchTopKSAE /
                         JumpReluAutoEncoder, saved as ``training.trainSAE`` saves them (ae.pt +
                         config.json from the trainer's own ``config``), read back with
                         ``utils.load_dictionary``
    overcomplete         overcomplete (PyPI): TopKSAE / SAE / JumpSAE, ``torch.save(model.state_dict())``

Not installable from PyPI (the PyPI package named ``sparsify`` is an unrelated Neural Magic tool; ViT-Prisma
and PatchSAE are GitHub-only), so written in the exact layout of their save code, with outputs from a
faithful transcription of their forward pass (cited file by file in each ``provenance.json``):
    vit_prisma           Prisma-Multimodal/ViT-Prisma src/vit_prisma/sae/sae.py (StandardSparseAutoencoder
                         encode/decode, TopK), src/vit_prisma/sae/config.py (save_config): config.json +
                         weights.pt (a state dict)
    patchsae             hyesulim/PatchSAE src/sae_training/sparse_autoencoder.py (save_model,
                         forward_standard), src/sae_training/config.py (ViTSAERunnerConfig); read from
                         the copy StrockLee/patchsae-main
    sparsify             EleutherAI/sparsify sparsify/sparse_coder.py (save_to_disk, encode, decode),
                         sparsify/fused_encoder.py, sparsify/config.py
    saev (schema 2)      OSU-NLP-Group/saev src/saev/nn/modeling.py (dump, encode, TopKActivation): the
                         newer header format, not on PyPI
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sae"
D_IN, D_SAE, K, N = 16, 64, 4, 5


def version(package: str) -> str:
    return importlib.metadata.version(package)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights: every parameter N(0, 0.5), biases included (thresholds are set by the caller)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def inputs(seed: int) -> torch.Tensor:
    return torch.randn(N, D_IN, generator=torch.Generator().manual_seed(1000 + seed))


def write_expected(directory: Path, x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor, **extra) -> None:
    tensors = {"x": x, "f": f, "x_hat": x_hat, **extra}
    tensors = {name: t.detach().float().contiguous() for name, t in tensors.items()}
    assert (tensors["f"] != 0).any() and (tensors["f"] == 0).any(), f"{directory}: degenerate code"
    save_file(tensors, str(directory / "expected.safetensors"))


def write_provenance(directory: Path, **fields) -> None:
    (directory / "provenance.json").write_text(json.dumps(fields, indent=2) + "\n")


def fresh(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.iterdir():
        if path.is_file():
            path.unlink()
    return directory


# ---------------------------------------------------------------------------------------------- SAELens
def make_saelens() -> None:
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    variants = {
        "standard": (StandardSAE, StandardSAEConfig, {}, "blocks.3.hook_resid_post"),
        "topk_layer_norm": (
            TopKSAE,
            TopKSAEConfig,
            {"k": K, "normalize_activations": "layer_norm", "rescale_acts_by_decoder_norm": True},
            "blocks.5.hook_resid_pre",
        ),
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {"apply_b_dec_to_input": False}, "blocks.7.hook_resid_post"),
    }
    for seed, (name, (sae_cls, cfg_cls, kwargs, hook)) in enumerate(variants.items()):
        cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=SAEMetadata(hook_name=hook, model_name="tiny"), **kwargs)
        sae = sae_cls(cfg)
        randomize(sae, seed)
        if name == "jumprelu":
            with torch.no_grad():
                sae.threshold.copy_(torch.rand(D_SAE, generator=torch.Generator().manual_seed(7)) * 0.8)
        directory = fresh(ROOT / "saelens" / name)
        sae.save_model(directory)
        loaded = sae_cls.load_from_disk(directory)
        x = inputs(seed)
        with torch.no_grad():
            f = loaded.encode(x)
            x_hat = loaded.decode(f)  # layer_norm: decode uses the statistics stored by encode(x)
        write_expected(directory, x, f, x_hat)
        write_provenance(
            directory,
            format="saelens",
            written_by=f"sae-lens {version('sae-lens')}: {sae_cls.__name__}.save_model",
            expected_by=f"{sae_cls.__name__}.load_from_disk(dir).encode(x), .decode(f) right after",
            hook_name=hook,
        )


# ------------------------------------------------------------------------------------------------- saev
def make_saev() -> None:
    import saev.config
    import saev.nn

    cfg = saev.config.SparseAutoencoder(d_vit=D_IN, exp_factor=D_SAE // D_IN, seed=0)
    sae = saev.nn.SparseAutoencoder(cfg)
    randomize(sae, 10)
    directory = fresh(ROOT / "saev" / "legacy")
    saev.nn.dump(str(directory / "sae.pt"), sae)
    loaded = saev.nn.load(str(directory / "sae.pt"))
    x = inputs(10)
    with torch.no_grad():
        x_hat, f, _ = loaded(x)
        decoded = loaded.decode(f)
    assert torch.allclose(decoded, x_hat)
    write_expected(directory, x, f, x_hat)
    write_provenance(
        directory,
        format="saev",
        written_by=f"saev {version('saev')} (PyPI): saev.nn.dump (JSON header line of the config, then torch.save)",
        expected_by="saev.nn.load(path) forward(x) -> (x_hat, f_x, loss); decode(f_x) == x_hat",
        note="saev files do not record the layer; load_sae needs site=",
    )


def make_saev_schema2() -> None:
    """Transcription of OSU-NLP-Group/saev src/saev/nn/modeling.py (dump with schema 2; TopK activation)."""
    generator = torch.Generator().manual_seed(11)
    state = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=generator) * 0.5,
        "b_enc": torch.randn(D_SAE, generator=generator) * 0.5,
        "W_dec": torch.randn(D_SAE, D_IN, generator=generator) * 0.5,
        "b_dec": torch.randn(D_IN, generator=generator) * 0.5,
    }
    cfg = {
        "d_vit": D_IN,
        "exp_factor": D_SAE // D_IN,
        "n_reinit_samples": 0,
        "remove_parallel_grads": True,
        "normalize_w_dec": True,
        "seed": 0,
        "activation": {"cls": "TopK", "params": {"top_k": K}},
    }
    header = {"schema": 2, "cfg": cfg, "commit": "unknown", "lib": "transcribed"}
    directory = fresh(ROOT / "saev" / "schema2")
    with open(directory / "sae.pt", "wb") as fd:
        fd.write((json.dumps(header) + "\n").encode("utf-8"))
        torch.save(state, fd)
    x = inputs(11)
    h_pre = x @ state["W_enc"] + state["b_enc"]  # encode: no b_dec subtraction in this version
    _, indices = torch.topk(h_pre, K, dim=-1, sorted=False)
    mask = torch.zeros_like(h_pre).scatter_(-1, indices, torch.ones_like(h_pre))
    f = mask * h_pre  # TopKActivation keeps the k largest values as they are (no ReLU)
    x_hat = f @ state["W_dec"] + state["b_dec"]
    write_expected(directory, x, f, x_hat)
    write_provenance(
        directory,
        format="saev",
        written_by="transcription of saev.nn.modeling.dump (schema 2); this version of saev is not on PyPI",
        expected_by="transcription of SparseAutoencoder.encode / TopKActivation.forward / decode",
        source="OSU-NLP-Group/saev src/saev/nn/modeling.py (commit 86033456fdfd07a16acd69950b11dd2212f0d1e2)",
    )


# -------------------------------------------------------------------------------------- dictionary_learning
def make_dictionary_learning() -> None:
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer
    from dictionary_learning.trainers.jumprelu import JumpReluTrainer
    from dictionary_learning.trainers.standard import StandardTrainer
    from dictionary_learning.trainers.top_k import TopKTrainer
    from dictionary_learning.utils import load_dictionary

    common = {"steps": 10_000, "activation_dim": D_IN, "dict_size": D_SAE, "layer": 4, "lm_name": "tiny"}
    variants = {
        "standard": (StandardTrainer, {"submodule_name": "resid_post_layer_4"}),
        "topk": (TopKTrainer, {"k": K, "submodule_name": "resid_post_layer_4"}),
        "batch_topk": (BatchTopKTrainer, {"k": K, "submodule_name": "resid_post_layer_4"}),
        "jumprelu": (JumpReluTrainer, {"submodule_name": "resid_post_layer_4"}),
    }
    for seed, (name, (trainer_cls, kwargs)) in enumerate(variants.items(), start=20):
        trainer = trainer_cls(**common, **kwargs, seed=seed, device="cpu")
        ae = trainer.ae
        randomize(ae, seed)
        with torch.no_grad():
            if name in ("topk", "batch_topk"):
                ae.threshold.fill_(0.3)  # BatchTopK encodes with this threshold at inference
            if name == "jumprelu":
                ae.threshold.copy_(torch.rand(D_SAE, generator=torch.Generator().manual_seed(seed)) * 0.8)
        directory = fresh(ROOT / "dictionary_learning" / name)
        # exactly what dictionary_learning.training.trainSAE writes: config.json, then ae.pt
        (directory / "config.json").write_text(json.dumps({"trainer": trainer.config}, indent=4))
        torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, directory / "ae.pt")
        loaded, _ = load_dictionary(str(directory), device="cpu")
        x = inputs(seed)
        with torch.no_grad():
            f = loaded.encode(x)
            x_hat = loaded.decode(f)
        write_expected(directory, x, f, x_hat)
        write_provenance(
            directory,
            format="dictionary_learning",
            written_by=f"dictionary-learning {version('dictionary-learning')}: {trainer_cls.__name__}"
            f"({type(ae).__name__}); config.json and ae.pt as training.trainSAE writes them",
            expected_by="dictionary_learning.utils.load_dictionary(dir) then encode(x), decode(f)"
            + (" (AutoEncoder.from_pretrained normalises the decoder)" if name == "standard" else ""),
        )


def make_sae_for_vlm() -> None:
    """sae-for-vlm (Pach et al. 2025) ships dictionary_learning's MatryoshkaBatchTopKSAE as a bare state dict
    saved at a training step (``ae_100000.pt``), without config.json."""
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE

    seed = 30
    ae = MatryoshkaBatchTopKSAE(D_IN, D_SAE, K, group_sizes=[D_SAE // 4, D_SAE - D_SAE // 4])
    randomize(ae, seed)
    with torch.no_grad():
        ae.threshold.fill_(0.3)
    directory = fresh(ROOT / "dictionary_learning" / "matryoshka_sae_for_vlm")
    torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, directory / "ae_100000.pt")
    x = inputs(seed)
    with torch.no_grad():
        f = ae.encode(x)
        x_hat = ae.decode(f)
    write_expected(directory, x, f, x_hat)
    write_provenance(
        directory,
        format="dictionary_learning",
        written_by=f"dictionary-learning {version('dictionary-learning')}: MatryoshkaBatchTopKSAE state_dict saved "
        "as ae_100000.pt with no config.json, as the sae-for-vlm checkpoints (hub mateuszpach/sae-for-vlm) are",
        expected_by="MatryoshkaBatchTopKSAE.encode(x) (threshold at inference), decode(f)",
    )


# ------------------------------------------------------------------------------------------ overcomplete
def make_overcomplete() -> None:
    from overcomplete.sae import SAE, JumpSAE, TopKSAE

    variants = {
        "topk": lambda: TopKSAE(D_IN, nb_concepts=D_SAE, top_k=K),
        "relu": lambda: SAE(D_IN, nb_concepts=D_SAE),
        "jump": lambda: JumpSAE(D_IN, nb_concepts=D_SAE),
    }
    for seed, (name, build) in enumerate(variants.items(), start=30):
        torch.manual_seed(seed)
        model = build()
        randomize(model, seed)
        with torch.no_grad():
            model.dictionary.multiplier.fill_(0.25)  # exp(0.25) scales the dictionary
            if name == "jump":
                model.thresholds.copy_(torch.rand(D_SAE, generator=torch.Generator().manual_seed(seed)) - 2.0)
        directory = fresh(ROOT / "overcomplete" / name)
        torch.save(model.state_dict(), directory / f"{name}_sae.pt")
        loaded = build()
        loaded.load_state_dict(torch.load(directory / f"{name}_sae.pt", weights_only=True))
        loaded.eval()  # fuses the (l2-normalised) dictionary with exp(multiplier)
        x = inputs(seed)
        with torch.no_grad():
            _, f = loaded.encode(x)
            x_hat = loaded.decode(f)
        write_expected(directory, x, f, x_hat)
        write_provenance(
            directory,
            format="overcomplete",
            written_by=f"overcomplete {version('overcomplete')}: {type(model).__name__}, torch.save(state_dict)",
            expected_by="same class, load_state_dict, eval(), encode(x)[1], decode(codes)",
            note="the state dict does not record top_k nor the class: load_sae needs k= (TopKSAE) or "
            "architecture='relu' (plain SAE), and site=",
        )


# ------------------------------------------------------------------------------------------- ViT-Prisma
def make_vit_prisma() -> None:
    """config.json as VisionModelSAERunnerConfig.save_config writes it; weights.pt a plain state dict."""
    generator = torch.Generator().manual_seed(40)
    state = {
        "W_dec": torch.randn(D_SAE, D_IN, generator=generator) * 0.5,
        "W_enc": torch.randn(D_IN, D_SAE, generator=generator) * 0.5,
        "b_enc": torch.randn(D_SAE, generator=generator) * 0.5,
        "b_dec": torch.randn(D_IN, generator=generator) * 0.5,
    }
    config = {  # the fields load_from_pretrained reads, serialised as save_config does (asdict + __type__)
        "model_class_name": "HookedViT",
        "model_name": "open-clip:tiny",
        "hook_point_layer": 6,
        "layer_subtype": "hook_resid_post",
        "hook_point_head_index": None,
        "context_size": 50,
        "use_patches_only": False,
        "d_in": D_IN,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "cls_token_only": False,
        "initialization_method": "independent",
        "normalize_activations": "layer_norm",
        "architecture": "standard",
        "expansion_factor": D_SAE // D_IN,
        "d_sae": D_SAE,
        "device": {"__type__": "torch.device", "value": "cpu"},
        "dtype": {"__type__": "torch.dtype", "value": "torch.float32"},
    }
    directory = fresh(ROOT / "vit_prisma")
    (directory / "config.json").write_text(json.dumps(config, indent=4))
    torch.save(state, directory / "weights.pt")
    x = inputs(40)
    mu = x.mean(dim=-1, keepdim=True)  # run_time_activation_ln_in, eps=1e-5
    centred = x - mu
    std = centred.std(dim=-1, keepdim=True)
    sae_in = centred / (std + 1e-5) - state["b_dec"]
    hidden_pre = sae_in @ state["W_enc"] + state["b_enc"]
    top = torch.topk(hidden_pre, k=K, dim=-1)  # TopK with postact_fn ReLU
    f = torch.zeros_like(hidden_pre).scatter_(-1, top.indices, top.values.relu())
    x_hat = (f @ state["W_dec"] + state["b_dec"]) * std + mu  # decode + run_time_activation_ln_out
    write_expected(directory, x, f, x_hat)
    write_provenance(
        directory,
        format="vit_prisma",
        written_by="layout of VisionModelSAERunnerConfig.save_config (config.json) and torch.save(state_dict)",
        expected_by="transcription of StandardSparseAutoencoder.encode/decode with normalize_activations="
        "'layer_norm' and activation_fn_str='topk'",
        source="Prisma-Multimodal/ViT-Prisma src/vit_prisma/sae/sae.py, src/vit_prisma/sae/config.py "
        "(read at soniajoseph/ViT-Prisma, the same project)",
        library_not_on_pypi=True,
    )


# --------------------------------------------------------------------------------------------- PatchSAE
def make_patchsae() -> None:
    """{'cfg': ViTSAERunnerConfig, 'state_dict': ...} exactly as SparseAutoencoder.save_model pickles it."""
    module = types.ModuleType("src.sae_training.config")

    @dataclasses.dataclass
    class ViTSAERunnerConfig:  # the fields of PatchSAE's config that matter here, same class path
        class_token: bool = True
        model_name: str = "openai/clip-vit-base-patch16"
        module_name: str = "resid"
        block_layer: int = 8
        d_in: int = D_IN
        expansion_factor: int = D_SAE // D_IN
        device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
        dtype: torch.dtype = torch.float32
        gated_sae: bool = False
        b_dec_init_method: str = "geometric_median"
        l1_coefficient: float = 8e-5

        def __post_init__(self):
            self.d_sae = self.d_in * self.expansion_factor

    ViTSAERunnerConfig.__module__ = module.__name__
    ViTSAERunnerConfig.__qualname__ = "ViTSAERunnerConfig"
    module.ViTSAERunnerConfig = ViTSAERunnerConfig
    for name in ("src", "src.sae_training"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules[module.__name__] = module

    generator = torch.Generator().manual_seed(50)
    state = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=generator) * 0.5,
        "b_enc": torch.randn(D_SAE, generator=generator) * 0.5,
        "W_dec": torch.randn(D_SAE, D_IN, generator=generator) * 0.5,
        "b_dec": torch.randn(D_IN, generator=generator) * 0.5,
    }
    directory = fresh(ROOT / "patchsae")
    torch.save({"cfg": ViTSAERunnerConfig(), "state_dict": state}, directory / "sae_weights.pt")
    x = inputs(50)
    hidden_pre = (x - state["b_dec"]) @ state["W_enc"] + state["b_enc"]  # forward_standard
    f = torch.relu(hidden_pre)
    x_hat = f @ state["W_dec"] + state["b_dec"]
    write_expected(directory, x, f, x_hat)
    write_provenance(
        directory,
        format="patchsae",
        written_by="layout of SparseAutoencoder.save_model: torch.save({'cfg': ViTSAERunnerConfig, "
        "'state_dict': state_dict}) with the config pickled under src.sae_training.config",
        expected_by="transcription of SparseAutoencoder.forward_standard (x - b_dec, ReLU)",
        source="hyesulim/PatchSAE src/sae_training/sparse_autoencoder.py, src/sae_training/config.py, "
        "src/sae_training/hooked_vit.py (block_layer indexes vision_model.encoder.layers; read at the "
        "copy StrockLee/patchsae-main)",
        library_not_on_pypi=True,
    )


# --------------------------------------------------------------------------------------------- sparsify
def make_sparsify() -> None:
    """EleutherAI sparsify: <save_dir>/<hookpoint>/{cfg.json, sae.safetensors} (SparseCoder.save_to_disk)."""
    generator = torch.Generator().manual_seed(60)
    state = {
        "encoder.weight": torch.randn(D_SAE, D_IN, generator=generator) * 0.5,
        "encoder.bias": torch.randn(D_SAE, generator=generator) * 0.5,
        "W_dec": torch.randn(D_SAE, D_IN, generator=generator) * 0.5,
        "b_dec": torch.randn(D_IN, generator=generator) * 0.5,
    }
    cfg = {  # SparseCoderConfig.to_dict() plus d_in, as save_to_disk writes it
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": D_SAE,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D_IN,
    }
    directory = fresh(ROOT / "sparsify" / "vision_model.encoder.layers.2")
    save_file(state, str(directory / "sae.safetensors"))  # safetensors.torch.save_model(self, ...) keys
    (directory / "cfg.json").write_text(json.dumps(cfg))
    x = inputs(60)
    preacts = torch.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
    values, indices = torch.topk(preacts, K, dim=-1, sorted=False)  # fused_encoder, activation="topk"
    f = torch.zeros_like(preacts).scatter_(-1, indices, values)
    x_hat = f @ state["W_dec"] + state["b_dec"]  # decode: decoder_impl(top_indices, top_acts, W_dec.mT) + b_dec
    write_expected(directory, x, f, x_hat)
    write_provenance(
        directory,
        format="sparsify",
        written_by="layout of SparseCoder.save_to_disk (safetensors save_model + cfg.json with d_in)",
        expected_by="transcription of SparseCoder.encode (fused_encoder, topk) and decode, dense f",
        source="EleutherAI/sparsify sparsify/sparse_coder.py, sparsify/fused_encoder.py, sparsify/config.py",
        hookpoint="vision_model.encoder.layers.2 (the directory name, as the trainer saves it)",
        library_not_on_pypi="PyPI 'sparsify' is an unrelated Neural Magic package",
    )


MAKERS = {
    "saelens": (make_saelens,),
    "saev": (make_saev, make_saev_schema2),
    "dictionary_learning": (make_dictionary_learning, make_sae_for_vlm),
    "overcomplete": (make_overcomplete,),
    "vit_prisma": (make_vit_prisma,),
    "patchsae": (make_patchsae,),
    "sparsify": (make_sparsify,),
}


def main(formats: list[str]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_grad_enabled(False)
    unknown = set(formats) - set(MAKERS)
    if unknown:
        raise SystemExit(f"unknown formats {sorted(unknown)}; valid: {', '.join(MAKERS)}")
    for name in formats or MAKERS:
        for make in MAKERS[name]:
            make()
            print(f"{make.__name__}: done")


if __name__ == "__main__":
    main(sys.argv[1:])
