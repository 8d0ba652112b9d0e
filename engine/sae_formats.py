"""Read the SAE files that public libraries write, and turn each into our one ``SAE``.

Every public SAE is, at inference, the same small function (see ``engine/sae.py``): an optional per-input
normalisation, ``pre = (x - b_dec?) @ W_enc + b_enc``, a sparsifying activation (ReLU, TopK, JumpReLU) and
``x_hat = f @ W_dec + b_dec``. The libraries differ in how they store it: which tensors, in which layout
(``nn.Linear`` keeps ``[out, in]``, so its weights arrive transposed), whether ``b_dec`` is subtracted
before encoding, where k or the thresholds live, and how they name the site. ``load_sae`` reads each
layout, folds any reparametrisation into plain weights, and returns an ``SAE`` whose ``encode`` / ``decode``
give the same numbers as the original library (``tests/test_sae_formats.py`` checks this against files and
outputs written by the libraries themselves, see ``scripts/make_sae_fixtures.py``).

The formats (``SAE_FORMATS``):

saelens              SAELens (github.com/jbloomAus/SAELens, PyPI ``sae-lens``). A directory with
                     ``cfg.json`` + ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``, ``b_enc``,
                     ``W_dec [d_sae, d_in]``, ``b_dec``, ``threshold`` for JumpReLU). ``architecture`` is
                     ``standard`` (ReLU), ``topk`` or ``jumprelu``; the site is ``metadata.hook_name`` (v6)
                     or ``hook_name`` / ``hook_point`` (older), TransformerLens style:
                     ``blocks.9.hook_resid_post``. Our own native files use this layout too.
saev                 saev (github.com/OSU-NLP-Group/saev, PyPI ``saev``). One ``sae.pt``: a JSON header line
                     with the config, then a ``torch.save``'d state dict in the SAELens layout. Three header
                     generations: none (PyPI 0.1.0, ReLU, subtracts b_dec), ``schema`` 1 and 2 (ReLU or
                     TopK, whose winners keep their sign; schema 2's ``encode`` no longer subtracts b_dec).
                     The file does not record the layer.
vit_prisma           ViT-Prisma (github.com/Prisma-Multimodal/ViT-Prisma). ``config.json`` (a
                     ``VisionModelSAERunnerConfig``) + a ``.pt`` state dict in the SAELens layout (older
                     files: one ``.pt`` holding ``{"cfg", "state_dict"}``). ``activation_fn_str`` relu /
                     topk, ``normalize_activations`` (``layer_norm`` by default in recent versions), site
                     ``blocks.{hook_point_layer}.{layer_subtype}``.
patchsae             PatchSAE (github.com/hyesulim/PatchSAE). One ``.pt`` holding ``{"cfg":
                     ViTSAERunnerConfig, "state_dict": SAELens layout}``; ReLU, subtracts b_dec. The site is
                     the output of ``vision_model.encoder.layers[block_layer]`` of a transformers CLIP.
sparsify             EleutherAI sparsify (github.com/EleutherAI/sparsify; not the unrelated PyPI package of
                     that name). ``<hookpoint>/cfg.json`` + ``sae.safetensors`` with ``encoder.weight
                     [d_sae, d_in]`` (nn.Linear), ``encoder.bias``, ``W_dec [d_sae, d_in]``, ``b_dec``;
                     TopK on ReLU'd pre-activations; the directory name is the hookpoint (a module path such
                     as ``vision_model.encoder.layers.9``, whose output is the residual stream).
dictionary_learning  dictionary_learning (github.com/saprmarks/dictionary_learning, PyPI
                     ``dictionary-learning``). ``ae.pt`` (a state dict) + ``config.json`` whose
                     ``trainer.dict_class`` names the class: ``AutoEncoder`` (ReLU, nn.Linear weights, the
                     decoder normalised on load as ``from_pretrained`` does), ``AutoEncoderTopK``,
                     ``BatchTopKSAE`` / ``MatryoshkaBatchTopKSAE`` (at inference a single learned threshold:
                     JumpReLU with one threshold for all latents), ``JumpReluAutoEncoder``; site
                     ``trainer.layer``.
overcomplete         overcomplete (github.com/KempnerInstitute/overcomplete, PyPI ``overcomplete``). A bare
                     ``state_dict`` of ``SAE`` / ``TopKSAE`` / ``JumpSAE``: ``encoder.final_block.0``
                     (nn.Linear), ``dictionary._weights`` (l2-normalised, times ``exp(multiplier)``), no
                     decoder bias, JumpSAE ``thresholds`` in log space. Neither k nor the class nor the site is
                     recorded: pass ``k=`` (TopKSAE) or ``architecture="relu"`` (SAE), and ``site=``.

Our sites are ``blocks.{i}.resid_post``: the residual stream after vision block i, 0-based. Hook names that
mean the same are mapped to it (``blocks.i.hook_resid_post``, the output of ``...layers.i``, and
``blocks.i.hook_resid_pre`` = after block i-1); the original name is kept in ``SAEConfig.source_site``.
When the site cannot be told (not recorded, a negative layer index, an MLP or attention site),
``SAEFormatError`` says so, and ``site="blocks.N.resid_post"`` sets it.

Safety: ``.pt`` files are read only with ``torch.load(..., weights_only=True)``. Two libraries pickle their
config class into the file (PatchSAE, old ViT-Prisma); those two named classes are read back as plain
attribute bags (``_PickledConfig``), their code never runs. Anything else that needs unpickling of an
arbitrary object is refused with a message that suggests converting the file to safetensors.

>>> sae = load_sae("tests/fixtures/sae/saelens/standard")
>>> sae.config.hook_name, sae.config.source_site
('blocks.3.resid_post', 'blocks.3.hook_resid_post')
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import torch
from safetensors.torch import load_file

from engine.sae import SAE, SAEConfig, SAEFormatError

log = logging.getLogger(__name__)

SAE_FORMATS = ("saelens", "saev", "vit_prisma", "patchsae", "sparsify", "dictionary_learning", "overcomplete")
EXPECTS = {
    "saelens": "a directory with cfg.json and sae_weights.safetensors",
    "saev": "sae.pt starting with a JSON header line",
    "vit_prisma": "a directory with config.json and one .pt state dict (or a .pt holding cfg + state_dict)",
    "patchsae": "a .pt holding {'cfg': ViTSAERunnerConfig, 'state_dict': ...}",
    "sparsify": "a <hookpoint> directory with cfg.json and sae.safetensors",
    "dictionary_learning": "ae.pt (with config.json beside it)",
    "overcomplete": "a .pt state dict with dictionary._weights and encoder.* tensors",
}
SITE_HELP = "pass site='blocks.N.resid_post' (the residual stream after vision block N, 0-based) to load_sae"


# ------------------------------------------------------------------------------------------- safe loading
class _PickledConfig:
    """A library's config object found inside a pickle, read back as plain attributes; none of its code runs."""

    def get(self, name: str, default: Any = None) -> Any:
        return self.__dict__.get(name, default)


class _PatchSAEConfig(_PickledConfig):
    pass


class _PrismaConfig(_PickledConfig):
    pass


_PICKLED_CONFIGS = [
    (_PatchSAEConfig, "src.sae_training.config.ViTSAERunnerConfig"),
    (_PatchSAEConfig, "sae_training.config.ViTSAERunnerConfig"),
    (_PrismaConfig, "vit_prisma.sae.config.VisionModelSAERunnerConfig"),
]


def torch_load_safely(source: str | Path | io.BytesIO, name: str | Path) -> Any:
    """torch.load with weights_only=True; a file that needs arbitrary objects is refused with SAEFormatError."""
    try:
        with torch.serialization.safe_globals(_PICKLED_CONFIGS):
            return torch.load(source, map_location="cpu", weights_only=True)
    except UnpicklingError as error:
        match = re.search(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>", str(error))
        needs = next(g for g in match.groups() if g) if match else "objects outside the weights-only allowlist"
        raise SAEFormatError(
            f"{name}: the file needs unpickling of arbitrary objects ({needs}), which is refused: only tensors, "
            "plain containers and the known SAE config classes are read (torch.load weights_only=True). "
            "Convert it to safetensors (safetensors.torch.save_file(state_dict, ...)) and load that."
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise SAEFormatError(f"{name}: not a readable torch file ({str(error).splitlines()[0]})") from error


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SAEFormatError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise SAEFormatError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _as_dict(cfg: Any) -> dict:
    return dict(cfg.__dict__) if isinstance(cfg, _PickledConfig) else dict(cfg or {})


# ------------------------------------------------------------------------------------------------- sites
_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|resid_post|hook_resid_pre|resid_pre)$")
_MODULE_PATH = re.compile(r"(?:^|\.)(?:layers|resblocks|blocks|h|layer)[.\[](\d+)\]?$")


def resid_site(hook: str) -> str | None:
    """Our site for a hook name that means 'the residual stream after block i', else None.

    >>> resid_site("blocks.9.hook_resid_post"), resid_site("blocks.9.hook_resid_pre"), resid_site("x.mlp")
    ('blocks.9.resid_post', 'blocks.8.resid_post', None)
    >>> resid_site("vision_model.encoder.layers.4")
    'blocks.4.resid_post'
    """
    if match := _BLOCK_HOOK.match(hook):
        block = int(match[1])
        if match[2].endswith("post"):
            return f"blocks.{block}.resid_post"
        return f"blocks.{block - 1}.resid_post" if block > 0 else None
    if match := _MODULE_PATH.search(hook):
        return f"blocks.{match[1]}.resid_post"
    return None


def _layer_site(layer: Any) -> tuple[str | None, str]:
    """Site for a layer index that names the output of block ``layer``; (None, why) when it cannot."""
    if isinstance(layer, list) and len(layer) == 1:
        layer = layer[0]
    if not isinstance(layer, int) or isinstance(layer, bool):
        return None, f"its layer {layer!r} is not a single block index"
    if layer < 0:
        return None, f"its layer index {layer} counts from the end, and the model's depth is not known here"
    return f"blocks.{layer}.resid_post", ""


# ---------------------------------------------------------------------------------------------- the parts
@dataclass
class _Parts:
    """What a reader found, before it becomes an SAE: tensors in our layout plus how to run them."""

    W_enc_DS: torch.Tensor
    b_enc_S: torch.Tensor
    W_dec_SD: torch.Tensor
    b_dec_D: torch.Tensor
    architecture: str | None  # None: the file does not say (overcomplete)
    k: int | None = None
    threshold_S: torch.Tensor | None = None
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    topk_relu: bool = True
    source_site: str = ""
    site: str | None = None
    site_unknown_because: str = ""
    model_name: str = ""


def _tensor(tensors: dict, name: str, where: Path | str) -> torch.Tensor:
    if name not in tensors:
        raise SAEFormatError(f"{where}: expected a tensor {name!r}; found {sorted(tensors)}")
    return tensors[name].detach().float()


def _site_from_hook(parts: _Parts, hook: str | None, fmt: str) -> _Parts:
    parts.source_site = hook or ""
    if not hook:
        parts.site_unknown_because = f"the {fmt} file names no hook"
    elif (site := resid_site(hook)) is not None:
        parts.site = site
    else:
        parts.site_unknown_because = f"its site {hook!r} is not the residual stream after a block"
    return parts


def _refuse(where: Path | str, what: str, detail: str = "") -> SAEFormatError:
    tail = f" ({detail})" if detail else ""
    return SAEFormatError(
        f"{where}: {what} is not supported{tail}; supported: ReLU, TopK and JumpReLU SAEs "
        "that read and write the same activation"
    )


# --------------------------------------------------------------------------------------------- SAELens
def _read_saelens(directory: Path) -> tuple[_Parts, str]:
    cfg = _read_json(directory / "cfg.json")
    tensors = load_file(str(directory / "sae_weights.safetensors"))
    metadata = cfg.get("metadata") or {}
    hook = cfg.get("hook_name") or cfg.get("hook_point") or metadata.get("hook_name")
    architecture = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu"
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if architecture == "standard" and activation == "topk" and k:  # SAELens < 6 spelling of a TopK SAE
        architecture = "topk"
    if architecture not in ("standard", "relu", "topk", "jumprelu"):
        raise _refuse(directory, f"SAELens architecture {architecture!r}", "gated and transcoder SAEs")
    if cfg.get("reshape_activations", "none") != "none" or (hook or "").endswith("hook_z"):
        raise _refuse(directory, "an SAE on attention hook_z", "its input is reshaped per head")
    normalize = cfg.get("normalize_activations") or "none"
    if normalize is True or normalize == "expected_average_only_in":
        # at run time SAELens applies nothing for this (a dataset scale is folded in only for its registry
        # releases, from a separate table); on a local load the weights act on raw activations
        normalize = "none"
    if normalize not in ("none", "layer_norm", "constant_norm_rescale"):
        raise _refuse(directory, f"normalize_activations={normalize!r}")
    parts = _Parts(
        W_enc_DS=_tensor(tensors, "W_enc", directory),
        b_enc_S=_tensor(tensors, "b_enc", directory),
        W_dec_SD=_tensor(tensors, "W_dec", directory),
        b_dec_D=_tensor(tensors, "b_dec", directory),
        architecture="relu" if architecture == "standard" else architecture,
        k=k,
        threshold_S=_tensor(tensors, "threshold", directory) if architecture == "jumprelu" else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_activations=normalize,
        topk_relu=bool(cfg.get("topk_relu", True)),
        model_name=cfg.get("model_name") or metadata.get("model_name") or "",
    )
    if "scaling_factor" in tensors:  # SAELens < 6 finetuning scale: decode uses f * scale
        parts.W_dec_SD = parts.W_dec_SD * tensors["scaling_factor"].float()[:, None]
    if cfg.get("rescale_acts_by_decoder_norm"):  # pre * |W_dec_i| on the way in, W_dec_i / |W_dec_i| out
        norms_S = parts.W_dec_SD.norm(dim=-1)
        parts.W_enc_DS, parts.b_enc_S = parts.W_enc_DS * norms_S, parts.b_enc_S * norms_S
        parts.W_dec_SD = parts.W_dec_SD / norms_S[:, None]
    _site_from_hook(parts, hook, "saelens")
    if "source_format" in cfg:  # our native file: hook_name is already our site; keep where it came from
        parts.source_site = cfg.get("source_site", "")
    return parts, cfg.get("source_format") or "saelens"


# ------------------------------------------------------------------------------------------------ saev
def _read_saev(path: Path) -> _Parts:
    with open(path, "rb") as fd:
        try:
            header = json.loads(fd.readline())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SAEFormatError(f"{path}: the first line is not the JSON header saev writes ({error})") from error
        state = torch_load_safely(io.BytesIO(fd.read()), path)
    schema = header.get("schema")
    if schema is None:  # saev 0.1.0: the header is the config itself; ReLU, forward subtracts b_dec
        activation, params, subtract_b_dec = "Relu", {}, True
    elif schema in (1, 2):
        cfg = header.get("cfg") or {}
        if header.get("cls") in ("Relu", "TopK", "BatchTopK"):  # schema 1, first variant
            activation, params = header["cls"], {"top_k": cfg.get("top_k")}
            if activation == "BatchTopK":
                raise _refuse(path, "a saev schema-1 BatchTopK SAE", "its top-k is taken over the whole batch")
        else:
            spec = cfg.get("activation") or {"cls": "Relu", "params": {}}
            activation, params = spec.get("cls"), spec.get("params") or {}
        subtract_b_dec = schema == 1  # schema 2's SparseAutoencoder.encode computes x @ W_enc + b_enc
    else:
        raise SAEFormatError(f"{path}: unknown saev header schema {schema!r}; known: none, 1, 2")
    if activation not in ("Relu", "TopK", "BatchTopK"):
        raise _refuse(path, f"saev activation {activation!r}")
    topk = activation in ("TopK", "BatchTopK")  # BatchTopKActivation is per sample in schema 1b and 2
    parts = _Parts(
        W_enc_DS=_tensor(state, "W_enc", path),
        b_enc_S=_tensor(state, "b_enc", path),
        W_dec_SD=_tensor(state, "W_dec", path),
        b_dec_D=_tensor(state, "b_dec", path),
        architecture="topk" if topk else "relu",
        k=params.get("top_k") if topk else None,
        apply_b_dec_to_input=subtract_b_dec,
        topk_relu=False,  # saev's TopK keeps the k largest pre-activations as they are
    )
    parts.site_unknown_because = "saev's sae.pt does not record the layer (it lives in the training run's config)"
    return parts


# ------------------------------------------------------------------------------------------- ViT-Prisma
def _read_vit_prisma(weights_path: Path, payload: Any) -> _Parts:
    config_path = weights_path.parent / "config.json"
    legacy = isinstance(payload, dict) and {"cfg", "state_dict"} <= payload.keys()
    if legacy and not config_path.is_file():
        cfg, state = _as_dict(payload["cfg"]), payload["state_dict"]
    elif config_path.is_file():
        cfg, state = _read_json(config_path), payload["state_dict"] if legacy else payload
    else:
        raise SAEFormatError(f"{weights_path}: a ViT-Prisma state dict needs config.json beside it")
    architecture = cfg.get("architecture", "standard")
    if architecture != "standard":
        raise _refuse(weights_path, f"ViT-Prisma architecture {architecture!r}")
    if cfg.get("is_transcoder"):
        raise _refuse(weights_path, "a ViT-Prisma transcoder")
    activation = cfg.get("activation_fn_str")
    if activation not in ("relu", "topk"):
        raise _refuse(weights_path, f"ViT-Prisma activation_fn_str={activation!r}", "relu and topk are read")
    normalize = cfg.get("normalize_activations") or "none"
    if normalize not in ("layer_norm", "constant_norm_rescale"):
        normalize = "none"  # any other value runs as the identity in ViT-Prisma
    parts = _Parts(
        W_enc_DS=_tensor(state, "W_enc", weights_path),
        b_enc_S=_tensor(state, "b_enc", weights_path),
        W_dec_SD=_tensor(state, "W_dec", weights_path),
        b_dec_D=_tensor(state, "b_dec", weights_path),
        architecture=activation,
        k=(cfg.get("activation_fn_kwargs") or {}).get("k") if activation == "topk" else None,
        apply_b_dec_to_input=True,
        normalize_activations=normalize,
        model_name=str(cfg.get("model_name") or ""),
    )
    layer, subtype = cfg.get("hook_point_layer"), cfg.get("layer_subtype")
    hook = cfg.get("hook_point") or (f"blocks.{layer}.{subtype}" if layer is not None and subtype else None)
    _site_from_hook(parts, hook, "vit_prisma")
    if hook is None:
        parts.source_site = f"layer {layer}"
        parts.site_unknown_because = "its config gives no layer_subtype, so which hook is not known"
    return parts


# --------------------------------------------------------------------------------------------- PatchSAE
def _read_patchsae(path: Path, payload: dict) -> _Parts:
    cfg, state = _as_dict(payload["cfg"]), payload["state_dict"]
    if cfg.get("gated_sae"):
        raise _refuse(path, "a gated PatchSAE")
    parts = _Parts(
        W_enc_DS=_tensor(state, "W_enc", path),
        b_enc_S=_tensor(state, "b_enc", path),
        W_dec_SD=_tensor(state, "W_dec", path),
        b_dec_D=_tensor(state, "b_dec", path),
        architecture="relu",
        model_name=str(cfg.get("model_name") or ""),
    )
    block, module = cfg.get("block_layer"), cfg.get("module_name", "resid")
    parts.source_site = f"vision_model.encoder.layers[{block}]" + ("" if module == "resid" else f".{module}")
    if module != "resid":
        parts.site_unknown_because = f"its module {module!r} is not the residual stream"
    else:
        parts.site, parts.site_unknown_because = _layer_site(block)
    return parts


# --------------------------------------------------------------------------------------------- sparsify
def _read_sparsify(directory: Path) -> _Parts:
    cfg = _read_json(directory / "cfg.json")
    tensors = load_file(str(directory / "sae.safetensors"))
    for flag in ("transcode", "skip_connection", "embed_skip", "gram_lookup"):
        if cfg.get(flag):
            raise _refuse(directory, f"a sparsify coder with {flag}=true")
    if cfg.get("activation", "topk") != "topk":
        raise _refuse(directory, f"sparsify activation {cfg.get('activation')!r}", "topk is read")
    parts = _Parts(
        W_enc_DS=_tensor(tensors, "encoder.weight", directory).T.contiguous(),  # nn.Linear: [d_sae, d_in]
        b_enc_S=_tensor(tensors, "encoder.bias", directory),
        W_dec_SD=_tensor(tensors, "W_dec", directory),
        b_dec_D=_tensor(tensors, "b_dec", directory),
        architecture="topk",  # top-k of relu(pre): the same numbers as relu of the top-k of pre
        k=cfg.get("k"),
    )
    # the trainer saves each coder under its hookpoint, a module path such as vision_model.encoder.layers.9
    return _site_from_hook(parts, directory.name, "sparsify")


# ----------------------------------------------------------------------------------- dictionary_learning
_DICT_CLASSES = (
    "AutoEncoder",
    "AutoEncoderNew",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
    "JumpReluAutoEncoder",
)


def _dictionary_class(state: dict, config: dict | None, path: Path) -> str:
    if config is not None:
        return (config.get("trainer") or {}).get("dict_class", "")
    if {"bias", "encoder.weight", "decoder.weight"} <= state.keys():
        return "AutoEncoder"
    if {"W_enc", "threshold"} <= state.keys() and state["threshold"].ndim == 1:
        return "JumpReluAutoEncoder"
    raise SAEFormatError(
        f"{path}: this dictionary_learning state dict ({sorted(state)}) could be AutoEncoderTopK or BatchTopKSAE, "
        "which encode differently; config.json (written beside ae.pt by trainSAE) tells which"
    )


def _read_dictionary_learning(path: Path, state: dict) -> _Parts:
    config_path = path.parent / "config.json"
    config = _read_json(config_path) if config_path.is_file() else None
    dict_class = _dictionary_class(state, config, path)
    if dict_class not in _DICT_CLASSES:
        raise _refuse(path, f"dictionary_learning {dict_class!r}", f"read: {', '.join(_DICT_CLASSES)}")
    if "encoder.weight" in state:  # nn.Linear layers: encoder [d_sae, d_in], decoder [d_in, d_sae]
        W_enc_DS = _tensor(state, "encoder.weight", path).T.contiguous()
        W_dec_SD = _tensor(state, "decoder.weight", path).T.contiguous()
        b_enc_S = _tensor(state, "encoder.bias", path)
        b_dec_name = {"AutoEncoder": "bias", "AutoEncoderNew": "decoder.bias"}.get(dict_class, "b_dec")
        b_dec_D = _tensor(state, b_dec_name, path)
    else:
        W_enc_DS, W_dec_SD = _tensor(state, "W_enc", path), _tensor(state, "W_dec", path)
        b_enc_S, b_dec_D = _tensor(state, "b_enc", path), _tensor(state, "b_dec", path)
    parts = _Parts(W_enc_DS, b_enc_S, W_dec_SD, b_dec_D, architecture="relu")
    # JumpReluAutoEncoder.apply_b_dec_to_input is False unless set by hand; AutoEncoderNew has no pre-bias
    parts.apply_b_dec_to_input = dict_class not in ("JumpReluAutoEncoder", "AutoEncoderNew")
    if dict_class == "AutoEncoder":  # from_pretrained(normalize_decoder=True): unit decoder columns
        norms_S = W_dec_SD.norm(dim=-1)
        if not torch.allclose(norms_S, torch.ones_like(norms_S)):
            parts.W_dec_SD, parts.W_enc_DS, parts.b_enc_S = (
                W_dec_SD / norms_S[:, None],
                W_enc_DS * norms_S,
                b_enc_S * norms_S,
            )
    elif dict_class == "AutoEncoderTopK":
        parts.architecture, parts.k = "topk", int(_tensor(state, "k", path).item())
    elif dict_class in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        # inference: relu(pre) * (relu(pre) > threshold), one learned threshold for every latent
        parts.architecture = "jumprelu"
        parts.threshold_S = torch.full_like(b_enc_S, _tensor(state, "threshold", path).item())
    elif dict_class == "JumpReluAutoEncoder":
        parts.architecture, parts.threshold_S = "jumprelu", _tensor(state, "threshold", path)
    trainer = (config or {}).get("trainer") or {}
    parts.model_name = str(trainer.get("lm_name") or "")
    layer, submodule = trainer.get("layer"), trainer.get("submodule_name") or ""
    parts.source_site = submodule or (f"layer {layer}" if layer is not None else "")
    if config is None:
        parts.site_unknown_because = "ae.pt has no config.json beside it"
    elif submodule and "resid" not in submodule and resid_site(submodule) is None:
        parts.site_unknown_because = f"its submodule {submodule!r} is not the residual stream"
    else:
        parts.site, parts.site_unknown_because = _layer_site(layer)
    return parts


# ------------------------------------------------------------------------------------------ overcomplete
_OVERCOMPLETE_LINEAR = ("encoder.final_block.0.weight", "encoder.weight")  # MLPEncoder(nb_blocks=0), Tieable


def _read_overcomplete(path: Path, state: dict, architecture: str | None, k: int | None) -> _Parts:
    extra = [
        key
        for key in state
        if key.startswith("encoder.")
        and key not in (*_OVERCOMPLETE_LINEAR, "encoder.final_block.0.bias", "encoder.bias")
    ]
    if extra:
        raise _refuse(path, "an overcomplete encoder other than one linear layer", f"found {extra}")
    weights_SD = _tensor(state, "dictionary._weights", path)
    multiplier = state.get("dictionary.multiplier", torch.tensor(0.0)).float()
    # DictionaryLayer.eval() fuses normalize_l2(weights) * exp(multiplier) (l2 is the default normalisation)
    W_dec_SD = weights_SD / (weights_SD.norm(dim=1, keepdim=True) + 1e-8) * multiplier.exp()
    weight_key = next((key for key in _OVERCOMPLETE_LINEAR if key in state), None)
    W_enc_DS = _tensor(state, weight_key, path).T.contiguous() if weight_key else W_dec_SD.T.contiguous()  # tied
    bias_key = next((key for key in ("encoder.final_block.0.bias", "encoder.bias") if key in state), None)
    b_enc_S = _tensor(state, bias_key, path) if bias_key else torch.zeros(W_dec_SD.shape[0])
    parts = _Parts(W_enc_DS, b_enc_S, W_dec_SD, torch.zeros(W_dec_SD.shape[1]), architecture=None)
    parts.apply_b_dec_to_input = False
    if "thresholds" in state:  # JumpSAE: relu(pre) kept where >= exp(thresholds)
        parts.architecture, parts.threshold_S = "jumprelu", _tensor(state, "thresholds", path).exp()
    elif k is not None:
        parts.architecture, parts.k = "topk", k  # TopKSAE: top-k of relu(pre)
    elif architecture == "relu":
        parts.architecture = "relu"
    else:
        raise SAEFormatError(
            f"{path}: an overcomplete state dict does not record its class: pass k=<top_k> for a TopKSAE or "
            "architecture='relu' for the plain SAE (a BatchTopKSAE's running threshold is not saved in its "
            "state dict, so it cannot be read)"
        )
    parts.site_unknown_because = "an overcomplete state dict records no site"
    return parts


# ----------------------------------------------------------------------------------------- identification
def _describe(path: Path) -> str:
    if path.is_dir():
        return f"found files {sorted(p.name for p in path.iterdir())}"
    return f"found the file {path.name}"


def _not_recognised(path: Path, found: str) -> SAEFormatError:
    expected = "; ".join(f"{fmt}: {what}" for fmt, what in EXPECTS.items())
    return SAEFormatError(f"{path}: not an SAE in a known format; {found}. Expected one of: {expected}")


def _identify(path: Path) -> tuple[str, Path, Any]:
    """(format, the file or directory to read, the loaded .pt payload where one was read to tell)."""
    if not path.exists():
        raise SAEFormatError(f"{path}: no such file or directory")
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if {"cfg.json", "sae_weights.safetensors"} <= names:
            return "saelens", path, None
        if {"cfg.json", "sae.safetensors"} <= names:
            return "sparsify", path, None
        if "ae.pt" in names:
            return _identify_file(path / "ae.pt")
        if "sae.pt" in names:
            return _identify_file(path / "sae.pt")
        # ViT-Prisma saves its feature-sparsity log beside the weights (n_images_N_log_feature_sparsity.pt).
        torch_files = sorted(n for n in names if n.endswith((".pt", ".pth")) and "log_feature_sparsity" not in n)
        if len(torch_files) == 1:
            return _identify_file(path / torch_files[0])
        raise _not_recognised(path, _describe(path))
    if path.suffix == ".safetensors" or path.name in ("cfg.json", "config.json"):
        return _identify(path.parent)
    return _identify_file(path)


def _identify_file(path: Path) -> tuple[str, Path, Any]:
    with open(path, "rb") as fd:
        head = fd.read(2)
    if head.startswith(b"{"):
        return "saev", path, None
    if head != b"PK" and not head.startswith(b"\x80"):  # torch.save: a zip archive (or a legacy raw pickle)
        raise _not_recognised(path, f"the file {path.name} is neither a torch file nor a JSON-headed saev file")
    payload = torch_load_safely(path, path)
    keys = sorted(payload) if isinstance(payload, dict) else []
    if {"cfg", "state_dict"} <= set(keys):
        cfg = payload["cfg"]
        if isinstance(cfg, _PatchSAEConfig) or (isinstance(cfg, dict) and "block_layer" in cfg):
            return "patchsae", path, payload
        if isinstance(cfg, _PrismaConfig) or (isinstance(cfg, dict) and "hook_point_layer" in cfg):
            return "vit_prisma", path, payload
    if "dictionary._weights" in keys:
        return "overcomplete", path, payload
    if path.name == "ae.pt" or {"bias", "encoder.weight", "decoder.weight"} <= set(keys):
        return "dictionary_learning", path, payload
    config_path = path.parent / "config.json"
    if config_path.is_file() and "hook_point_layer" in _read_json(config_path):
        return "vit_prisma", path, payload
    if isinstance(payload, dict) and {"k", "threshold", "encoder.weight"} <= set(keys):
        return "dictionary_learning", path, payload
    found = f"the file {path.name} holds keys {keys}" if keys else f"the file {path.name} holds a {type(payload)}"
    raise _not_recognised(path, found)


# ------------------------------------------------------------------------------------------------ public
def detect_format(path: str | Path) -> str:
    """The name (one of SAE_FORMATS) of the format the SAE file or directory at ``path`` is in.

    >>> detect_format("tests/fixtures/sae/sparsify/vision_model.encoder.layers.2")
    'sparsify'
    """
    return _identify(Path(path))[0]


def load_sae(
    path: str | Path,
    *,
    site: str | None = None,
    architecture: str | None = None,
    k: int | None = None,
) -> SAE:
    """Load an SAE in any format of SAE_FORMATS as our ``SAE`` (frozen, eval mode, float32 on the CPU).

    ``site`` sets the site (``blocks.N.resid_post``) where the file does not tell it or tells another.
    ``architecture`` / ``k`` are for formats that do not record them (overcomplete); where a file records
    them, a different value is an error.

    >>> sae = load_sae("tests/fixtures/sae/saev/legacy", site="blocks.10.resid_post")
    >>> sae.config.source_format, sae.config.architecture, sae.config.hook_name
    ('saev', 'relu', 'blocks.10.resid_post')
    """
    path = Path(path)
    fmt, target, payload = _identify(path)
    if fmt == "saelens":
        parts, fmt = _read_saelens(target)
    elif fmt == "sparsify":
        parts = _read_sparsify(target)
    elif fmt == "saev":
        parts = _read_saev(target)
    elif fmt == "vit_prisma":
        parts = _read_vit_prisma(target, payload)
    elif fmt == "patchsae":
        parts = _read_patchsae(target, payload)
    elif fmt == "dictionary_learning":
        parts = _read_dictionary_learning(target, payload)
    else:
        parts = _read_overcomplete(target, payload, architecture, k)
    if architecture is not None and architecture != parts.architecture:
        raise SAEFormatError(f"{path}: the {fmt} file is a {parts.architecture} SAE; architecture={architecture!r}")
    if k is not None and parts.k != k:
        raise SAEFormatError(f"{path}: the {fmt} file records k={parts.k}; k={k} was passed")
    return _build(parts, fmt, path, site)


def _build(parts: _Parts, fmt: str, path: Path, site: str | None) -> SAE:
    if site is None:
        if parts.site is None:
            raise SAEFormatError(
                f"{path}: cannot tell which site this {fmt} SAE reads: {parts.site_unknown_because}; {SITE_HELP}"
            )
        site = parts.site
    elif not site:
        raise SAEFormatError(f"{path}: site must be a site name such as 'blocks.9.resid_post'")
    d_in, d_sae = parts.W_enc_DS.shape
    config = SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture=parts.architecture,
        hook_name=site,
        k=parts.k,
        apply_b_dec_to_input=parts.apply_b_dec_to_input,
        model_name=parts.model_name,
        normalize_activations=parts.normalize_activations,
        topk_relu=parts.topk_relu,
        source_format=fmt,
        source_site=parts.source_site,
    )
    sae = SAE(config)
    found = {
        "W_enc": parts.W_enc_DS,
        "b_enc": parts.b_enc_S,
        "W_dec": parts.W_dec_SD,
        "b_dec": parts.b_dec_D,
        **({"threshold": parts.threshold_S} if parts.threshold_S is not None else {}),
    }
    expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
    shapes = {name: tuple(t.shape) for name, t in found.items()}
    if shapes != expected:
        raise SAEFormatError(f"{path}: inconsistent {fmt} tensors: expected shapes {expected}; found {shapes}")
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(found[name])
    log.info("loaded %s SAE from %s at %s (%s)", fmt, path, site, parts.source_site)
    return sae.requires_grad_(False).eval()
