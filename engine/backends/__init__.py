"""One adapter per model family, all with the same surface: a vision tower cut into named pieces.

Every backend implements :class:`Backend`. The pieces are

    pixels --embed--> acts before block 0 --blocks(0, i + 1)--> acts at blocks.i.resid_post
           --blocks(i + 1, n_blocks)--> acts after the last block --head--> image embedding

so ``prefix(pixels, site)`` and ``suffix(acts, site)`` are compositions of them (a sweep or an attribution
never recomputes the prefix), and ``blocks(acts, start, stop)`` runs any span (activation patching writes a
block's activations from another run in and continues from there). ``encode_image`` is the model's own full
forward: the reference every split is tested against.

Adding a family means adding one module with a class that implements :class:`Backend` (most inherit
:class:`ResidualSites` and write ``embed``, ``blocks``, ``head`` and the text side) and one line in
``BACKENDS``; :class:`engine.specs.ModelSpec` accepts the family by that name.
"""

from __future__ import annotations

import importlib
import re
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from engine.errors import ModelUnavailableError, UnknownChoiceError
from engine.specs import MODEL_FAMILIES, ModelSpec

__all__ = ["BACKENDS", "Backend", "ModelUnavailableError", "ResidualSites", "load_backend"]

SITE_PATTERN = re.compile(r"^blocks\.(\d+)\.resid_post$")

BACKENDS: dict[str, str] = {
    "open_clip": "engine.backends.open_clip_backend:OpenClipBackend",
    "hf_clip": "engine.backends.hf_clip_backend:HFClipBackend",
}
"""family -> "module:class"; a family's library is imported only when a model of that family is loaded."""
assert set(BACKENDS) == set(MODEL_FAMILIES), "engine.specs.MODEL_FAMILIES and BACKENDS must name the same families"


@runtime_checkable
class Backend(Protocol):
    """What the engine needs of a vision model (shapes: B images, T tokens, D width, E embedding, L labels)."""

    model: torch.nn.Module
    device: torch.device
    n_blocks: int
    d_model: int
    grid: tuple[int, int]  # patch rows, columns
    n_prefix_tokens: int  # tokens before the patches: 1 for a class token, 0 for SigLIP
    context_length: int

    @property
    def sites(self) -> tuple[str, ...]: ...

    def block_index(self, site: str) -> int: ...

    def site_module(self, site: str) -> torch.nn.Module:
        """The module whose output is the site (for hooks, through engine.hooks only)."""
        ...

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """The model's own preprocessing, (B, C, H, W)."""
        ...

    def embed(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        """Tokens before block 0, (B, T, D)."""
        ...

    def blocks(self, acts_BTD: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Blocks ``start .. stop - 1`` applied to the residual stream before block ``start``."""
        ...

    def head(self, acts_BTD: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, E), unnormalised, from the residual stream after the last block."""
        ...

    def prefix(self, pixels_BCHW: torch.Tensor, site: str) -> torch.Tensor: ...

    def suffix(self, acts_BTD: torch.Tensor, site: str) -> torch.Tensor: ...

    def encode_image(self, pixels_BCHW: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Normalised text embeddings (L, E)."""
        ...

    @property
    def logit_scale(self) -> float: ...


class ResidualSites:
    """Site names every backend shares, ``blocks.{i}.resid_post`` (the residual stream after vision block ``i``,
    0-based), and the prefix / suffix split written once from a backend's ``embed``, ``blocks`` and ``head``."""

    n_blocks: int

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(f"blocks.{i}.resid_post" for i in range(self.n_blocks))

    def block_index(self, site: str) -> int:
        match = SITE_PATTERN.match(site)
        if match is None or int(match.group(1)) >= self.n_blocks:
            raise UnknownChoiceError("site", site, [f"blocks.0.resid_post .. blocks.{self.n_blocks - 1}.resid_post"])
        return int(match.group(1))

    def check_span(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.n_blocks:
            raise ValueError(f"block span must satisfy 0 <= start <= stop <= {self.n_blocks}; got {start}, {stop}")

    def prefix(self, pixels_BCHW: torch.Tensor, site: str) -> torch.Tensor:
        """Residual stream at ``site``, (B, T, D)."""
        return self.blocks(self.embed(pixels_BCHW), 0, self.block_index(site) + 1)

    def suffix(self, acts_BTD: torch.Tensor, site: str) -> torch.Tensor:
        """Image embeddings (B, E), unnormalised, from the residual stream at ``site``."""
        return self.head(self.blocks(acts_BTD, self.block_index(site) + 1, self.n_blocks))

    def is_last_block(self, site: str) -> bool:
        return self.block_index(site) == self.n_blocks - 1


def load_backend(spec: ModelSpec, device: torch.device) -> Backend:
    """The backend for ``spec.family``; imports each family's library only when it is used."""
    if spec.family not in BACKENDS:
        raise UnknownChoiceError("model family", spec.family, BACKENDS)
    module_name, _, class_name = BACKENDS[spec.family].partition(":")
    try:
        backend_class = getattr(importlib.import_module(module_name), class_name)
    except ImportError as error:
        raise ModelUnavailableError(
            f"the {spec.family} family needs a package that is not installed here ({error.name or error}); "
            "install the project's requirements.txt"
        ) from error
    return backend_class(spec, device)
