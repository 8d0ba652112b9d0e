"""One adapter per model family, all with the same surface (the prefix/suffix split at named sites).

Every backend exposes: ``sites`` (names), ``block_index(site)``, ``site_module(site)`` (for hooks),
``pixels(images)`` (the model's own preprocessing), ``prefix(pixels_BCHW, site) -> acts_BTD``,
``suffix(acts_BTD, site) -> emb_BE`` (unnormalised image embedding), ``encode_image(pixels_BCHW)`` (the
model's own full forward: the reference), ``encode_text(prompts) -> emb_LE`` (normalised), ``logit_scale``,
``d_model``, ``grid`` (patch rows, columns), ``n_prefix_tokens`` (tokens before the patches: 1 for a class
token, 0 for SigLIP) and ``context_length``.
"""

from __future__ import annotations

import re

import torch

from engine.specs import ModelSpec

SITE_PATTERN = re.compile(r"^blocks\.(\d+)\.resid_post$")


class ResidualSites:
    """The site names every backend shares: ``blocks.{i}.resid_post``, the residual stream after vision block
    ``i`` (0-based); a backend sets ``n_blocks``."""

    n_blocks: int

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(f"blocks.{i}.resid_post" for i in range(self.n_blocks))

    def block_index(self, site: str) -> int:
        match = SITE_PATTERN.match(site)
        if match is None or int(match.group(1)) >= self.n_blocks:
            raise ValueError(
                f"unknown site {site!r}; valid: blocks.0.resid_post .. blocks.{self.n_blocks - 1}.resid_post"
            )
        return int(match.group(1))


class ModelUnavailableError(RuntimeError):
    """The model cannot be loaded here (not cached and not fetchable); the message says how to provide it."""


def load_backend(spec: ModelSpec, device: torch.device):
    """The backend for ``spec.family``; imports each family's library only when it is used."""
    if spec.family == "open_clip":
        from engine.backends.open_clip_backend import OpenClipBackend

        return OpenClipBackend(spec, device)
    if spec.family == "hf_clip":
        from engine.backends.hf_clip_backend import HFClipBackend

        return HFClipBackend(spec, device)
    raise ValueError(f"unknown model family {spec.family!r}")
