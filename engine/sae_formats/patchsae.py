"""PatchSAE: SAEs on every patch of a CLIP vision tower (github.com/hyesulim/PatchSAE; GitHub only).

On disk: one ``.pt`` holding ``{"cfg": ViTSAERunnerConfig, "state_dict": ...}`` as
``SparseAutoencoder.save_model`` pickles it; the config class is read back as a plain attribute bag (see
``_common``), its code never runs. The state dict is in the SAELens layout (``W_enc [d_in, d_sae]``,
``b_enc``, ``W_dec``, ``b_dec``); the SAE is a ReLU SAE that subtracts ``b_dec`` before encoding
(``forward_standard``). The config states ``d_in`` and ``d_sae`` (``d_in * expansion_factor``), checked
against the tensors.

Site: ``block_layer`` indexes ``vision_model.encoder.layers`` of a transformers CLIP, and with
``module_name: resid`` the SAE reads that layer's output, which is our ``blocks.{block_layer}.resid_post``.
Pitfalls: a gated PatchSAE is refused; another ``module_name`` (an MLP or attention output) is not the
residual stream, so its site must be given.

>>> from pathlib import Path
>>> parts = read(Found(Path("tests/fixtures/sae/patchsae/sae_weights.pt")), Hints())
>>> parts.architecture, parts.source_site, parts.site, parts.declared.d_sae
('relu', 'vision_model.encoder.layers[8]', 'blocks.8.resid_post', 64)
"""

from __future__ import annotations

from engine.sae_formats._common import (
    Found,
    Hints,
    Parts,
    PatchSAEConfig,
    SAEFormat,
    as_dict,
    declared_sizes,
    layer_site,
    refuse,
    saelens_tensors,
)

NAME = "patchsae"
EXPECTS = "a .pt holding {'cfg': ViTSAERunnerConfig, 'state_dict': ...}"


def recognise(found: Found) -> bool:
    if not {"cfg", "state_dict"} <= found.keys:
        return False
    cfg = found.payload["cfg"]
    return isinstance(cfg, PatchSAEConfig) or (isinstance(cfg, dict) and "block_layer" in cfg)


def read(found: Found, hints: Hints) -> Parts:
    path = found.path
    cfg, state = as_dict(found.payload["cfg"]), found.payload["state_dict"]
    if cfg.get("gated_sae"):
        raise refuse(path, "a gated PatchSAE")
    parts = Parts(
        **saelens_tensors(state, path),
        architecture="relu",
        model_name=str(cfg.get("model_name") or ""),
        declared=declared_sizes(
            f"the cfg pickled in {path.name}", cfg.get("d_in"), cfg.get("d_sae"), cfg.get("expansion_factor")
        ),
    )
    block, module = cfg.get("block_layer"), cfg.get("module_name", "resid")
    parts.source_site = f"vision_model.encoder.layers[{block}]" + ("" if module == "resid" else f".{module}")
    if module != "resid":
        parts.site_unknown_because = f"its module {module!r} is not the residual stream"
    else:
        parts.site, parts.site_unknown_because = layer_site(block)
    return parts


FORMAT = SAEFormat(name=NAME, expects=EXPECTS, reads="file", recognise=recognise, read=read)
