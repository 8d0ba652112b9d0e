"""dictionary_learning: a library for training SAEs on model activations
(github.com/saprmarks/dictionary_learning, PyPI ``dictionary-learning``).

On disk: ``trainSAE`` writes ``ae.pt`` (a plain state dict) and, beside it, ``config.json`` whose ``trainer``
section names the class (``dict_class``), the sizes (``activation_dim`` = d_in and ``dict_size`` = d_sae,
checked against the tensors) and the site (``layer``, ``submodule_name``, ``lm_name``).

The classes store and encode differently:
- ``AutoEncoder``: ``nn.Linear`` layers, ``encoder [d_sae, d_in]`` and ``decoder [d_in, d_sae]`` (both
  transposed from our layout), the pre-encoder bias in ``bias``; ReLU, subtracts it first. ``from_pretrained``
  normalises the decoder columns to unit norm, and so do we (moving the norms into the encoder);
- ``AutoEncoderNew``: the same layers, ``decoder.bias`` as b_dec and no subtraction before encoding;
- ``AutoEncoderTopK``: the same ``encoder`` / ``decoder`` layers, ``b_dec`` subtracted first, and ``k`` and
  ``threshold`` stored as tensors; TopK on ReLU'd pre-activations;
- ``BatchTopKSAE`` / ``MatryoshkaBatchTopKSAE``: the same tensors, but at inference a single learned
  ``threshold`` for every latent, i.e. JumpReLU with one threshold;
- ``JumpReluAutoEncoder``: ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec`` and a per-latent ``threshold``;
  ``apply_b_dec_to_input`` is False unless set by hand.

sae-for-vlm (Pach et al. 2025, hub ``mateuszpach/sae-for-vlm``) ships ``MatryoshkaBatchTopKSAE`` checkpoints as a
bare state dict named by training step (``ae_100000.pt``) with no ``config.json``: ``W_enc [d_in, d_sae]``,
``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec`` and the buffers ``k``, ``threshold`` (a scalar) and ``group_sizes``
(the Matryoshka prefix sizes, which only training uses). ``group_sizes`` names the class; the site is not
recorded (LLaVA-1.5's SAE sits at CLIP layer 22: ``site="blocks.22.resid_post"``).

Pitfall: without ``config.json`` the class cannot always be told from the state dict (``AutoEncoderTopK``
and ``BatchTopKSAE`` hold the same tensor names and encode differently): that case is an error, not a guess.

>>> from pathlib import Path
>>> parts = read(Found(Path("tests/fixtures/sae/dictionary_learning/batch_topk/ae.pt")), Hints())
>>> parts.architecture, parts.threshold_S.unique().numel(), parts.site, parts.declared.d_in
('jumprelu', 1, 'blocks.4.resid_post', 16)
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.sae import SAEFormatError
from engine.sae_formats._common import (
    Found,
    Hints,
    Parts,
    SAEFormat,
    declared_sizes,
    layer_site,
    refuse,
    resid_site,
    tensor,
)

NAME = "dictionary_learning"
EXPECTS = "ae.pt (with config.json beside it)"
CLASSES = (
    "AutoEncoder",
    "AutoEncoderNew",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
    "JumpReluAutoEncoder",
)
LINEAR_KEYS = frozenset({"bias", "encoder.weight", "decoder.weight"})  # AutoEncoder's nn.Linear layout


MATRYOSHKA_KEYS = frozenset({"W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes"})


def recognise(found: Found) -> bool:
    if not found.is_torch:
        return False
    return (
        found.path.name == "ae.pt"
        or LINEAR_KEYS <= found.keys
        or {"k", "threshold", "encoder.weight"} <= found.keys
        or MATRYOSHKA_KEYS <= found.keys
    )


def _dictionary_class(state: dict, config: dict | None, path: Path) -> str:
    if config is not None:
        return (config.get("trainer") or {}).get("dict_class", "")
    if LINEAR_KEYS <= state.keys():
        return "AutoEncoder"
    if MATRYOSHKA_KEYS <= state.keys():  # sae-for-vlm's bare checkpoints
        return "MatryoshkaBatchTopKSAE"
    if {"W_enc", "threshold"} <= state.keys() and state["threshold"].ndim == 1:
        return "JumpReluAutoEncoder"
    raise SAEFormatError(
        f"{path}: this dictionary_learning state dict ({sorted(state)}) could be AutoEncoderTopK or BatchTopKSAE, "
        "which encode differently; config.json (written beside ae.pt by trainSAE) tells which"
    )


def read(found: Found, hints: Hints) -> Parts:
    path, state, config = found.path, found.payload, found.config_json
    if not isinstance(state, dict):
        raise SAEFormatError(f"{path}: expected a state dict; found a {type(state).__name__}")
    dict_class = _dictionary_class(state, config, path)
    if dict_class not in CLASSES:
        raise refuse(path, f"dictionary_learning {dict_class!r}", f"read: {', '.join(CLASSES)}")
    if "encoder.weight" in state:  # nn.Linear layers: encoder [d_sae, d_in], decoder [d_in, d_sae]
        W_enc_DS = tensor(state, "encoder.weight", path).T.contiguous()
        W_dec_SD = tensor(state, "decoder.weight", path).T.contiguous()
        b_enc_S = tensor(state, "encoder.bias", path)
        b_dec_name = {"AutoEncoder": "bias", "AutoEncoderNew": "decoder.bias"}.get(dict_class, "b_dec")
        b_dec_D = tensor(state, b_dec_name, path)
    else:
        W_enc_DS, W_dec_SD = tensor(state, "W_enc", path), tensor(state, "W_dec", path)
        b_enc_S, b_dec_D = tensor(state, "b_enc", path), tensor(state, "b_dec", path)
    parts = Parts(W_enc_DS, b_enc_S, W_dec_SD, b_dec_D, architecture="relu")
    # JumpReluAutoEncoder.apply_b_dec_to_input is False unless set by hand; AutoEncoderNew has no pre-bias
    parts.apply_b_dec_to_input = dict_class not in ("JumpReluAutoEncoder", "AutoEncoderNew")
    if dict_class == "AutoEncoder":  # from_pretrained(normalize_decoder=True): unit decoder columns
        norms_S = W_dec_SD.norm(dim=-1)
        if not torch.allclose(norms_S, torch.ones_like(norms_S)):
            parts.fold_decoder_norms()
    elif dict_class == "AutoEncoderTopK":
        parts.architecture, parts.k = "topk", int(tensor(state, "k", path).item())
    elif dict_class in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        # inference: relu(pre) * (relu(pre) > threshold), one learned threshold for every latent
        parts.architecture = "jumprelu"
        parts.threshold_S = torch.full_like(b_enc_S, tensor(state, "threshold", path).item())
    elif dict_class == "JumpReluAutoEncoder":
        parts.architecture, parts.threshold_S = "jumprelu", tensor(state, "threshold", path)
    trainer = (config or {}).get("trainer") or {}
    parts.model_name = str(trainer.get("lm_name") or "")
    if config is not None:
        parts.declared = declared_sizes("config.json", trainer.get("activation_dim"), trainer.get("dict_size"))
    layer, submodule = trainer.get("layer"), trainer.get("submodule_name") or ""
    parts.source_site = submodule or (f"layer {layer}" if layer is not None else "")
    if config is None:
        parts.site_unknown_because = f"{path.name} has no config.json beside it"
    elif submodule and "resid" not in submodule and resid_site(submodule) is None:
        parts.site_unknown_because = f"its submodule {submodule!r} is not the residual stream"
    else:
        parts.site, parts.site_unknown_because = layer_site(layer)
    return parts


FORMAT = SAEFormat(name=NAME, expects=EXPECTS, reads="file", recognise=recognise, read=read, weights_files=("ae.pt",))
