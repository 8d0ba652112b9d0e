"""What every SAE format reader shares: safe reading, the parts a reader returns, sites, and building the SAE.

A format module (``saelens.py``, ``saev.py``, ...) only knows its own layout. Everything below is the same for
all of them and lives here once:

- ``torch_load_safely``: the only way a ``.pt`` file is read (``weights_only=True``, see Safety below);
- ``Found``: the file or directory being identified, with what recognisers look at (its file names, its first
  bytes, its torch payload, the ``config.json`` beside it), each read at most once and only when asked;
- ``Parts``: what a reader hands back, the tensors in our layout plus how to run them, and the sizes the
  file's own config declares;
- sites: ``resid_site`` maps a library's hook name to ours, ``layer_site`` a block index;
- ``refuse``: the one message for an SAE kind that is recognised but not supported;
- ``build_sae``: turns ``Parts`` into our frozen ``SAE``, after checking the declared sizes and the tensor
  shapes against each other.

Safety: ``.pt`` files are read only with ``torch.load(..., weights_only=True)``. Two libraries pickle their
config class into the file (PatchSAE, old ViT-Prisma); those named classes are read back as plain attribute
bags (``PickledConfig``), their code never runs. They are listed here, in one place, so that the whole
allowlist can be audited at a glance. Anything else that needs unpickling of an arbitrary object is refused
with a message that suggests converting the file to safetensors.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from pickle import UnpicklingError
from typing import Any, Literal

import torch

from engine.sae import SAE, SAEConfig, SAEFormatError

log = logging.getLogger(__name__)

SITE_HELP = "pass site='blocks.N.resid_post' (the residual stream after vision block N, 0-based) to load_sae"


# ------------------------------------------------------------------------------------------- safe loading
class PickledConfig:
    """A library's config object found inside a pickle, read back as plain attributes; none of its code runs."""

    def get(self, name: str, default: Any = None) -> Any:
        return self.__dict__.get(name, default)


class PatchSAEConfig(PickledConfig):
    """PatchSAE's ``ViTSAERunnerConfig``."""


class PrismaConfig(PickledConfig):
    """ViT-Prisma's ``VisionModelSAERunnerConfig`` (files written before it switched to config.json)."""


_PICKLED_CONFIGS = [
    (PatchSAEConfig, "src.sae_training.config.ViTSAERunnerConfig"),
    (PatchSAEConfig, "sae_training.config.ViTSAERunnerConfig"),
    (PrismaConfig, "vit_prisma.sae.config.VisionModelSAERunnerConfig"),
]


def torch_load_safely(source: str | Path | io.BytesIO, name: str | Path) -> Any:
    """torch.load with weights_only=True; a file that needs arbitrary objects is refused with SAEFormatError.

    >>> torch_load_safely("tests/fixtures/sae/patchsae/sae_weights.pt", "patchsae")["cfg"].get("block_layer")
    8
    """
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


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; anything else is an SAEFormatError that says what was there."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SAEFormatError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise SAEFormatError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def as_dict(cfg: Any) -> dict:
    """A config found in a file (a pickled config class, a dict or nothing) as a plain dict."""
    return dict(cfg.__dict__) if isinstance(cfg, PickledConfig) else dict(cfg or {})


# ---------------------------------------------------------------------------------------- what was found
@dataclass(frozen=True)
class Found:
    """A file or directory being identified. Each property is read at most once, and only when a recogniser
    asks for it: a directory is never torch-loaded, a saev file is recognised by its first byte.

    >>> found = Found(Path("tests/fixtures/sae/dictionary_learning/topk/ae.pt"))
    >>> found.is_torch, found.config_json["trainer"]["dict_class"]
    (True, 'AutoEncoderTopK')
    >>> sorted(found.keys)
    ['b_dec', 'decoder.weight', 'encoder.bias', 'encoder.weight', 'k', 'threshold']
    """

    path: Path

    @cached_property
    def names(self) -> frozenset[str]:
        """The names of the files in a directory; empty for a file."""
        return frozenset(p.name for p in self.path.iterdir()) if self.path.is_dir() else frozenset()

    @cached_property
    def head(self) -> bytes:
        """The first two bytes of a file; empty for a directory."""
        if self.path.is_dir():
            return b""
        with open(self.path, "rb") as fd:
            return fd.read(2)

    @property
    def is_torch(self) -> bool:
        """Written by torch.save: a zip archive, or a legacy raw pickle."""
        return self.head == b"PK" or self.head.startswith(b"\x80")

    @cached_property
    def payload(self) -> Any:
        """What the torch file holds (read with ``torch_load_safely``); None for anything else."""
        return torch_load_safely(self.path, self.path) if self.is_torch else None

    @cached_property
    def keys(self) -> frozenset[str]:
        """The top-level keys of a torch payload that is a dict (a state dict, or a {cfg, state_dict} pair)."""
        return frozenset(self.payload) if isinstance(self.payload, dict) else frozenset()

    @cached_property
    def config_json(self) -> dict | None:
        """The ``config.json`` beside a file (ViT-Prisma and dictionary_learning write one); None if absent."""
        config_path = self.path.parent / "config.json"
        return read_json(config_path) if self.path.is_file() and config_path.is_file() else None

    def describe(self) -> str:
        """What is there, for the message that says no format recognised it."""
        if self.path.is_dir():
            return f"found files {sorted(self.names)}"
        if not self.is_torch:
            return f"found the file {self.path.name}, which is not a torch file (it starts with {self.head!r})"
        if self.keys:
            return f"the file {self.path.name} holds keys {sorted(self.keys)}"
        return f"the file {self.path.name} holds a {type(self.payload)}"


# ----------------------------------------------------------------------------------------- the parts
@dataclass(frozen=True)
class Hints:
    """What the caller of load_sae said about the SAE (None: nothing), for files that do not record it."""

    architecture: str | None = None
    k: int | None = None


@dataclass(frozen=True)
class DeclaredSizes:
    """The sizes a file's own config states (None where it states none), checked against the tensors."""

    where: str  # where they are stated, for the message: "cfg.json", "the sae.pt header", ...
    d_in: int | None
    d_sae: int | None


def declared_sizes(where: str, d_in: Any, d_sae: Any = None, expansion: Any = None) -> DeclaredSizes:
    """The sizes a config states; ``d_sae`` may be stated as an expansion factor of ``d_in`` instead.

    >>> declared_sizes("cfg.json", 16, None, 4)
    DeclaredSizes(where='cfg.json', d_in=16, d_sae=64)
    """

    def size(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    d_in, d_sae, expansion = size(d_in), size(d_sae), size(expansion)
    if d_sae is None and d_in is not None and expansion is not None:
        d_sae = d_in * expansion
    return DeclaredSizes(where, d_in, d_sae)


@dataclass
class Parts:
    """What a reader found, before it becomes an SAE: tensors in our layout plus how to run them.

    A reader fills it in steps (folding a reparametrisation into the weights, then the site), so it is not
    frozen; ``build_sae`` turns it into the frozen ``SAEConfig`` and the SAE's parameters."""

    W_enc_DS: torch.Tensor
    b_enc_S: torch.Tensor
    W_dec_SD: torch.Tensor
    b_dec_D: torch.Tensor
    architecture: str | None  # None: the file does not say and the caller did not either
    k: int | None = None
    threshold_S: torch.Tensor | None = None
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    topk_relu: bool = True
    source_site: str = ""
    site: str | None = None
    site_unknown_because: str = ""
    model_name: str = ""
    declared: DeclaredSizes | None = None  # None: the file states no sizes (overcomplete)
    source_format: str | None = None  # None: the format that read it; our native files keep the one recorded

    def fold_decoder_norms(self) -> None:
        """Move each decoder row's norm into its latent: the encoder column and bias of latent i are multiplied by
        |W_dec_i| and its decoder row divided by it. A ReLU SAE reconstructs exactly as before (its latents are
        rescaled, which is what dictionary_learning's unit-decoder convention asks for); SAELens'
        ``rescale_acts_by_decoder_norm`` defines its SAEs this way (TopK ranks the rescaled pre-activations)."""
        norms_S = self.W_dec_SD.norm(dim=-1)
        self.W_enc_DS, self.b_enc_S = self.W_enc_DS * norms_S, self.b_enc_S * norms_S
        self.W_dec_SD = self.W_dec_SD / norms_S[:, None]


def tensor(tensors: dict, name: str, where: Path | str) -> torch.Tensor:
    """One named tensor as float32; a missing one is an SAEFormatError that lists what is there."""
    if name not in tensors:
        raise SAEFormatError(f"{where}: expected a tensor {name!r}; found {sorted(tensors)}")
    return tensors[name].detach().float()


def saelens_tensors(tensors: dict, where: Path | str) -> dict[str, torch.Tensor]:
    """``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec`` as ``Parts`` keywords: the layout
    that SAELens, saev, ViT-Prisma and PatchSAE share (all descend from the same training code)."""
    return {
        "W_enc_DS": tensor(tensors, "W_enc", where),
        "b_enc_S": tensor(tensors, "b_enc", where),
        "W_dec_SD": tensor(tensors, "W_dec", where),
        "b_dec_D": tensor(tensors, "b_dec", where),
    }


def refuse(where: Path | str, what: str, detail: str = "") -> SAEFormatError:
    """The error for an SAE kind a format can hold but this engine does not run (gated, transcoders, ...)."""
    tail = f" ({detail})" if detail else ""
    return SAEFormatError(
        f"{where}: {what} is not supported{tail}; supported: ReLU, TopK and JumpReLU SAEs "
        "that read and write the same activation"
    )


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


def site_from_hook(parts: Parts, hook: str | None, fmt: str) -> Parts:
    """Set the site of ``parts`` from a hook name the file records (or why it cannot be told)."""
    parts.source_site = hook or ""
    if not hook:
        parts.site_unknown_because = f"the {fmt} file names no hook"
    elif (site := resid_site(hook)) is not None:
        parts.site = site
    else:
        parts.site_unknown_because = f"its site {hook!r} is not the residual stream after a block"
    return parts


def layer_site(layer: Any) -> tuple[str | None, str]:
    """Site for a layer index that names the output of block ``layer``; (None, why) when it cannot.

    >>> layer_site(4), layer_site(-1)[0]
    (('blocks.4.resid_post', ''), None)
    """
    if isinstance(layer, list) and len(layer) == 1:
        layer = layer[0]
    if not isinstance(layer, int) or isinstance(layer, bool):
        return None, f"its layer {layer!r} is not a single block index"
    if layer < 0:
        return None, f"its layer index {layer} counts from the end, and the model's depth is not known here"
    return f"blocks.{layer}.resid_post", ""


# ------------------------------------------------------------------------------------------- the formats
@dataclass(frozen=True)
class SAEFormat:
    """One public SAE format: how to recognise it and how to read it. Each format module declares one.

    ``reads`` says what ``recognise`` and ``read`` are shown: ``"directory"``, the directory the caller named
    (SAELens, sparsify), or ``"file"``, the one weights file (the path itself, or the file in the directory
    that ``weights_files`` names, or the directory's only torch file other than ``side_files``)."""

    name: str
    expects: str  # what such an SAE looks like on disk, for the message when no format recognises a path
    reads: Literal["directory", "file"]
    recognise: Callable[[Found], bool]
    read: Callable[[Found, Hints], Parts]
    weights_files: tuple[str, ...] = ()  # the weights file's usual names, looked for in a directory
    side_files: tuple[str, ...] = ()  # parts of names of torch files written beside the weights, not SAEs


# ------------------------------------------------------------------------------------------ building it
def build_sae(parts: Parts, fmt: str, path: Path, site: str | None) -> SAE:
    """Our frozen SAE (eval mode, float32, CPU) from ``parts``, after checking that the sizes the file declares,
    the tensors' shapes and the site agree. ``fmt`` names the format for messages and ``source_format``."""
    d_in, d_sae = parts.W_enc_DS.shape
    _check_declared_sizes(parts.declared, d_in, d_sae, fmt, path)
    if site is None:
        if parts.site is None:
            raise SAEFormatError(
                f"{path}: cannot tell which site this {fmt} SAE reads: {parts.site_unknown_because}; {SITE_HELP}"
            )
        site = parts.site
    elif not site:
        raise SAEFormatError(f"{path}: site must be a site name such as 'blocks.9.resid_post'")
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
        source_format=fmt if parts.source_format is None else parts.source_format,
        source_site=parts.source_site,
    )
    sae = SAE(config)
    tensors = {
        "W_enc": parts.W_enc_DS,
        "b_enc": parts.b_enc_S,
        "W_dec": parts.W_dec_SD,
        "b_dec": parts.b_dec_D,
        **({"threshold": parts.threshold_S} if parts.threshold_S is not None else {}),
    }
    expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if shapes != expected:
        raise SAEFormatError(f"{path}: inconsistent {fmt} tensors: expected shapes {expected}; found {shapes}")
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(tensors[name])
    log.info("loaded %s SAE from %s at %s (%s)", fmt, path, site, parts.source_site)
    return sae.requires_grad_(False).eval()


def _check_declared_sizes(declared: DeclaredSizes | None, d_in: int, d_sae: int, fmt: str, path: Path) -> None:
    """A config that states other sizes than the tensors have belongs to other weights (or was edited by hand):
    refuse it rather than guess which of the two is right."""
    if declared is None:
        return
    stated = {"d_in": declared.d_in, "d_sae": declared.d_sae}
    actual = {"d_in": d_in, "d_sae": d_sae}
    if all(value is None or value == actual[name] for name, value in stated.items()):
        return
    says = ", ".join(f"{name}={value}" for name, value in stated.items() if value is not None)
    raise SAEFormatError(
        f"{path}: {declared.where} declares {says}, but the {fmt} tensors have d_in={d_in}, d_sae={d_sae} "
        f"(W_enc [{d_in}, {d_sae}]); the config and the weights do not belong together"
    )
