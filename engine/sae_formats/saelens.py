"""SAELens: the most common layout for published SAEs, and the one our own SAEs are saved in.

Who: SAELens (github.com/jbloomAus/SAELens, PyPI ``sae-lens``), the library behind most SAEs on the Hugging
Face hub. ``SAE.save`` (engine/sae.py) writes the same layout, so this module is also our native loader.

On disk: a directory with ``cfg.json`` and ``sae_weights.safetensors`` holding ``W_enc [d_in, d_sae]``,
``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and, for JumpReLU, ``threshold [d_sae]``.
``cfg.json`` states ``d_in`` and ``d_sae`` (checked against the tensors), the ``architecture`` (``standard`` is
ReLU, ``topk``, ``jumprelu``) and the site: ``metadata.hook_name`` (v6) or ``hook_name`` / ``hook_point``
(older), TransformerLens style: ``blocks.9.hook_resid_post``.

Pitfalls, each handled below:
- SAELens < 6 wrote a TopK SAE as ``architecture: standard`` with ``activation_fn: topk`` and ``k`` in
  ``activation_fn_kwargs``;
- SAELens < 6 finetuning saved a ``scaling_factor`` by which decode multiplies the latents: folded into W_dec;
- ``rescale_acts_by_decoder_norm`` multiplies pre-activations by the decoder norms: folded into the weights;
- ``normalize_activations: expected_average_only_in`` applies nothing at run time (SAELens folds a dataset
  scale in only for its registry releases, from a separate table): the weights act on raw activations;
- gated SAEs, transcoders and attention ``hook_z`` SAEs (their input is reshaped per head) are refused.

Our native files are this layout with the whole ``SAEConfig`` in ``cfg.json``, recognised by its
``source_format`` key: ``hook_name`` is already our site, and ``source_format`` / ``source_site`` say where the
SAE first came from (``source_format`` is "" for an SAE made here).

>>> from pathlib import Path
>>> parts = read(Found(Path("tests/fixtures/sae/saelens/jumprelu")), Hints())
>>> parts.architecture, parts.site, parts.declared
('jumprelu', 'blocks.7.resid_post', DeclaredSizes(where='cfg.json', d_in=16, d_sae=64))
"""

from __future__ import annotations

from safetensors.torch import load_file

from engine.sae import CFG_FILE, WEIGHTS_FILE
from engine.sae_formats._common import (
    Found,
    Hints,
    Parts,
    SAEFormat,
    declared_sizes,
    read_json,
    refuse,
    saelens_tensors,
    site_from_hook,
    tensor,
)

NAME = "saelens"
EXPECTS = f"a directory with {CFG_FILE} and {WEIGHTS_FILE}"
ARCHITECTURES = ("standard", "relu", "topk", "jumprelu")  # "relu" is what our native files say for standard
NORMALIZATIONS = ("none", "layer_norm", "constant_norm_rescale")


def recognise(found: Found) -> bool:
    return {CFG_FILE, WEIGHTS_FILE} <= found.names


def read(found: Found, hints: Hints) -> Parts:
    directory = found.path
    cfg, tensors = read_json(directory / CFG_FILE), load_file(str(directory / WEIGHTS_FILE))
    metadata = cfg.get("metadata") or {}
    hook = cfg.get("hook_name") or cfg.get("hook_point") or metadata.get("hook_name")
    architecture = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu"
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if architecture == "standard" and activation == "topk" and k:  # SAELens < 6 spelling of a TopK SAE
        architecture = "topk"
    if architecture not in ARCHITECTURES:
        raise refuse(directory, f"SAELens architecture {architecture!r}", "gated and transcoder SAEs")
    if cfg.get("reshape_activations", "none") != "none" or (hook or "").endswith("hook_z"):
        raise refuse(directory, "an SAE on attention hook_z", "its input is reshaped per head")
    normalize = cfg.get("normalize_activations") or "none"
    if normalize is True or normalize == "expected_average_only_in":
        normalize = "none"  # nothing is applied at run time on a local load (see the module docstring)
    if normalize not in NORMALIZATIONS:
        raise refuse(directory, f"normalize_activations={normalize!r}", f"read: {', '.join(NORMALIZATIONS)}")
    parts = Parts(
        **saelens_tensors(tensors, directory),
        architecture="relu" if architecture == "standard" else architecture,
        k=k,
        threshold_S=tensor(tensors, "threshold", directory) if architecture == "jumprelu" else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_activations=normalize,
        topk_relu=bool(cfg.get("topk_relu", True)),
        model_name=cfg.get("model_name") or metadata.get("model_name") or "",
        declared=declared_sizes(CFG_FILE, cfg.get("d_in"), cfg.get("d_sae")),
    )
    if "scaling_factor" in tensors:  # SAELens < 6 finetuning scale: decode uses f * scale
        parts.W_dec_SD = parts.W_dec_SD * tensors["scaling_factor"].float()[:, None]
    if cfg.get("rescale_acts_by_decoder_norm"):
        parts.fold_decoder_norms()
    site_from_hook(parts, hook, NAME)
    if "source_format" in cfg:  # our native file: hook_name is already our site; keep where it came from
        parts.source_site = cfg.get("source_site", "")
        parts.source_format = cfg.get("source_format") or ""
    return parts


FORMAT = SAEFormat(name=NAME, expects=EXPECTS, reads="directory", recognise=recognise, read=read)
