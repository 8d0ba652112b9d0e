"""overcomplete: dictionary learning for vision models from the Kempner Institute
(github.com/KempnerInstitute/overcomplete, PyPI ``overcomplete``).

On disk: whatever the user saved, usually ``torch.save(model.state_dict())`` of an ``SAE``, ``TopKSAE`` or
``JumpSAE``: ``encoder.final_block.0.weight [d_sae, d_in]`` (an ``nn.Linear``; ``encoder.weight`` for a tied
encoder, none when it is the decoder's transpose), its bias, ``dictionary._weights [d_sae, d_in]`` and
``dictionary.multiplier``; JumpSAE adds ``thresholds`` (in log space). There is no decoder bias and no
subtraction before encoding.

At inference ``DictionaryLayer`` fuses ``normalize_l2(weights) * exp(multiplier)`` into the decoder: so do we.

Pitfalls: a state dict records neither the class, nor k, nor the site, nor any sizes: pass ``k=`` for a
TopKSAE, ``architecture="relu"`` for the plain SAE, and ``site=`` always (a JumpSAE is recognised by its
``thresholds``). A BatchTopKSAE's running threshold is not in its state dict, so it cannot be read; encoders
deeper than one linear layer are refused.

>>> from pathlib import Path
>>> parts = read(Found(Path("tests/fixtures/sae/overcomplete/topk/topk_sae.pt")), Hints(k=4))
>>> parts.architecture, parts.k, parts.apply_b_dec_to_input, parts.declared
('topk', 4, False, None)
"""

from __future__ import annotations

import torch

from engine.sae import SAEFormatError
from engine.sae_formats._common import Found, Hints, Parts, SAEFormat, refuse, tensor

NAME = "overcomplete"
EXPECTS = "a .pt state dict with dictionary._weights and encoder.* tensors"
LINEAR_WEIGHTS = ("encoder.final_block.0.weight", "encoder.weight")  # MLPEncoder(nb_blocks=0), Tieable
LINEAR_BIASES = ("encoder.final_block.0.bias", "encoder.bias")


def recognise(found: Found) -> bool:
    return "dictionary._weights" in found.keys


def read(found: Found, hints: Hints) -> Parts:
    path, state = found.path, found.payload
    extra = [key for key in state if key.startswith("encoder.") and key not in (*LINEAR_WEIGHTS, *LINEAR_BIASES)]
    if extra:
        raise refuse(path, "an overcomplete encoder other than one linear layer", f"found {extra}")
    weights_SD = tensor(state, "dictionary._weights", path)
    multiplier = state.get("dictionary.multiplier", torch.tensor(0.0)).float()
    # DictionaryLayer.eval() fuses normalize_l2(weights) * exp(multiplier) (l2 is the default normalisation)
    W_dec_SD = weights_SD / (weights_SD.norm(dim=1, keepdim=True) + 1e-8) * multiplier.exp()
    weight_key = next((key for key in LINEAR_WEIGHTS if key in state), None)
    W_enc_DS = tensor(state, weight_key, path).T.contiguous() if weight_key else W_dec_SD.T.contiguous()  # tied
    bias_key = next((key for key in LINEAR_BIASES if key in state), None)
    b_enc_S = tensor(state, bias_key, path) if bias_key else torch.zeros(W_dec_SD.shape[0])
    parts = Parts(W_enc_DS, b_enc_S, W_dec_SD, torch.zeros(W_dec_SD.shape[1]), architecture=None)
    parts.apply_b_dec_to_input = False
    if "thresholds" in state:  # JumpSAE: relu(pre) kept where >= exp(thresholds)
        parts.architecture, parts.threshold_S = "jumprelu", tensor(state, "thresholds", path).exp()
    elif hints.k is not None:
        parts.architecture, parts.k = "topk", hints.k  # TopKSAE: top-k of relu(pre)
    elif hints.architecture == "relu":
        parts.architecture = "relu"
    else:
        raise SAEFormatError(
            f"{path}: an overcomplete state dict does not record its class: pass k=<top_k> for a TopKSAE or "
            "architecture='relu' for the plain SAE (a BatchTopKSAE's running threshold is not saved in its "
            "state dict, so it cannot be read)"
        )
    parts.site_unknown_because = "an overcomplete state dict records no site"
    return parts


FORMAT = SAEFormat(name=NAME, expects=EXPECTS, reads="file", recognise=recognise, read=read)
