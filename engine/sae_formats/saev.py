"""saev: SAEs for vision transformers from OSU NLP (github.com/OSU-NLP-Group/saev, PyPI ``saev``).

On disk: one ``sae.pt`` that is not a plain torch file: a JSON header line with the config, then a
``torch.save``'d state dict in the SAELens layout (``W_enc [d_vit, d_sae]``, ``b_enc``, ``W_dec``, ``b_dec``).
Its first byte, ``{``, tells it from every torch file (a zip archive or a pickle), so it is recognised
without loading anything. The config states ``d_vit`` (our d_in) and ``exp_factor`` (d_sae / d_vit), which
are checked against the tensors.

Three header generations, which encode differently:
- none (PyPI 0.1.0): the header is the config itself; ReLU, and ``encode`` subtracts ``b_dec`` first;
- ``schema: 1``: ``{"schema", "cfg", ...}``; ReLU or TopK (the activation is the header's ``cls`` in the
  first variant, ``cfg.activation`` in the second); still subtracts ``b_dec``;
- ``schema: 2``: like the second variant of 1, but ``SparseAutoencoder.encode`` no longer subtracts ``b_dec``.

Pitfalls: saev's TopK keeps the k largest pre-activations as they are, negative ones too (``topk_relu``
off); BatchTopK is per sample at inference in schema 1b and 2, but over the whole batch in schema 1a, which
is refused. The file does not record the layer (it lives in the training run's config): pass ``site=``.

>>> from pathlib import Path
>>> parts = read(Found(Path("tests/fixtures/sae/saev/schema2/sae.pt")), Hints())
>>> parts.architecture, parts.k, parts.apply_b_dec_to_input, parts.site, parts.declared.d_sae
('topk', 4, False, None, 64)
"""

from __future__ import annotations

import io
import json

from engine.sae import SAEFormatError
from engine.sae_formats._common import (
    Found,
    Hints,
    Parts,
    SAEFormat,
    declared_sizes,
    refuse,
    saelens_tensors,
    torch_load_safely,
)

NAME = "saev"
EXPECTS = "sae.pt starting with a JSON header line"
ACTIVATIONS = ("Relu", "TopK", "BatchTopK")


def recognise(found: Found) -> bool:
    return found.head.startswith(b"{")


def read(found: Found, hints: Hints) -> Parts:
    path = found.path
    with open(path, "rb") as fd:
        try:
            header = json.loads(fd.readline())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SAEFormatError(f"{path}: the first line is not the JSON header saev writes ({error})") from error
        state = torch_load_safely(io.BytesIO(fd.read()), path)
    schema = header.get("schema")
    if schema is None:  # saev 0.1.0: the header is the config itself; ReLU, forward subtracts b_dec
        cfg, activation, params, subtract_b_dec = header, "Relu", {}, True
    elif schema in (1, 2):
        cfg = header.get("cfg") or {}
        if header.get("cls") in ACTIVATIONS:  # schema 1, first variant
            activation, params = header["cls"], {"top_k": cfg.get("top_k")}
            if activation == "BatchTopK":
                raise refuse(path, "a saev schema-1 BatchTopK SAE", "its top-k is taken over the whole batch")
        else:
            spec = cfg.get("activation") or {"cls": "Relu", "params": {}}
            activation, params = spec.get("cls"), spec.get("params") or {}
        subtract_b_dec = schema == 1  # schema 2's SparseAutoencoder.encode computes x @ W_enc + b_enc
    else:
        raise SAEFormatError(f"{path}: unknown saev header schema {schema!r}; known: none, 1, 2")
    if activation not in ACTIVATIONS:
        raise refuse(path, f"saev activation {activation!r}", f"read: {', '.join(ACTIVATIONS)}")
    topk = activation in ("TopK", "BatchTopK")  # BatchTopKActivation is per sample in schema 1b and 2
    parts = Parts(
        **saelens_tensors(state, path),
        architecture="topk" if topk else "relu",
        k=params.get("top_k") if topk else None,
        apply_b_dec_to_input=subtract_b_dec,
        topk_relu=False,  # saev's TopK keeps the k largest pre-activations as they are
        declared=declared_sizes(f"the {path.name} header", cfg.get("d_vit"), None, cfg.get("exp_factor")),
    )
    parts.site_unknown_because = "saev's sae.pt does not record the layer (it lives in the training run's config)"
    return parts


FORMAT = SAEFormat(name=NAME, expects=EXPECTS, reads="file", recognise=recognise, read=read, weights_files=("sae.pt",))
