"""ViT-Prisma: mechanistic interpretability for vision and video transformers
(github.com/Prisma-Multimodal/ViT-Prisma; GitHub only, not on PyPI).

On disk (current): a directory with ``config.json`` (a ``VisionModelSAERunnerConfig``, as ``save_config``
writes it) and one ``.pt`` state dict in the SAELens layout (``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec``,
``b_dec``). The trainer also saves its feature-sparsity log beside the weights
(``n_images_N_log_feature_sparsity.pt``), which is not an SAE and is passed over. Older files: one ``.pt``
holding ``{"cfg": VisionModelSAERunnerConfig, "state_dict": ...}``, the config pickled (read back as a plain
attribute bag, see ``_common``; its code never runs).

The config states ``d_in`` and ``d_sae`` (or ``expansion_factor``), checked against the tensors;
``activation_fn_str`` is ``relu`` or ``topk`` (k in ``activation_fn_kwargs``); the site is
``blocks.{hook_point_layer}.{layer_subtype}``, TransformerLens style.

Pitfall: ``normalize_activations`` defaults to ``layer_norm`` in recent versions, so ``decode`` needs the
input that was encoded; any value other than ``layer_norm`` and ``constant_norm_rescale`` runs as the
identity in ViT-Prisma, and so here.

>>> from pathlib import Path
>>> parts = read(Found(Path("tests/fixtures/sae/vit_prisma/weights.pt")), Hints())
>>> parts.architecture, parts.k, parts.normalize_activations, parts.site
('topk', 4, 'layer_norm', 'blocks.6.resid_post')
"""

from __future__ import annotations

from engine.sae import SAEFormatError
from engine.sae_formats._common import (
    Found,
    Hints,
    Parts,
    PrismaConfig,
    SAEFormat,
    as_dict,
    declared_sizes,
    refuse,
    saelens_tensors,
    site_from_hook,
)

NAME = "vit_prisma"
EXPECTS = "a directory with config.json and one .pt state dict (or a .pt holding cfg + state_dict)"
ACTIVATIONS = ("relu", "topk")


def _is_prisma_config(cfg: object) -> bool:
    return isinstance(cfg, PrismaConfig) or (isinstance(cfg, dict) and "hook_point_layer" in cfg)


def recognise(found: Found) -> bool:
    legacy = {"cfg", "state_dict"} <= found.keys
    if legacy and _is_prisma_config(found.payload["cfg"]):
        return True
    # the current layout: SAELens-layout weights (or an old pair) with a Prisma config.json beside them
    return (legacy or "W_enc" in found.keys) and _is_prisma_config(found.config_json)


def read(found: Found, hints: Hints) -> Parts:
    weights_path, payload = found.path, found.payload
    legacy = isinstance(payload, dict) and {"cfg", "state_dict"} <= payload.keys()
    if found.config_json is not None:
        cfg, state, where = found.config_json, payload["state_dict"] if legacy else payload, "config.json"
    elif legacy:
        cfg, state, where = as_dict(payload["cfg"]), payload["state_dict"], f"the cfg pickled in {weights_path.name}"
    else:
        raise SAEFormatError(f"{weights_path}: a ViT-Prisma state dict needs config.json beside it")
    architecture = cfg.get("architecture", "standard")
    if architecture != "standard":
        raise refuse(weights_path, f"ViT-Prisma architecture {architecture!r}", "standard is read")
    if cfg.get("is_transcoder"):
        raise refuse(weights_path, "a ViT-Prisma transcoder")
    activation = cfg.get("activation_fn_str")
    if activation not in ACTIVATIONS:
        raise refuse(weights_path, f"ViT-Prisma activation_fn_str={activation!r}", f"read: {', '.join(ACTIVATIONS)}")
    normalize = cfg.get("normalize_activations") or "none"
    if normalize not in ("layer_norm", "constant_norm_rescale"):
        normalize = "none"  # any other value runs as the identity in ViT-Prisma
    parts = Parts(
        **saelens_tensors(state, weights_path),
        architecture=activation,
        k=(cfg.get("activation_fn_kwargs") or {}).get("k") if activation == "topk" else None,
        apply_b_dec_to_input=True,
        normalize_activations=normalize,
        model_name=str(cfg.get("model_name") or ""),
        declared=declared_sizes(where, cfg.get("d_in"), cfg.get("d_sae"), cfg.get("expansion_factor")),
    )
    layer, subtype = cfg.get("hook_point_layer"), cfg.get("layer_subtype")
    hook = cfg.get("hook_point") or (f"blocks.{layer}.{subtype}" if layer is not None and subtype else None)
    site_from_hook(parts, hook, NAME)
    if hook is None:
        parts.source_site = f"layer {layer}"
        parts.site_unknown_because = "its config gives no layer_subtype, so which hook is not known"
    return parts


FORMAT = SAEFormat(
    name=NAME, expects=EXPECTS, reads="file", recognise=recognise, read=read, side_files=("log_feature_sparsity",)
)
