"""Resident models and per-image caches: load once, keep on the device, never recompute a prefix.

A :class:`Workbench` holds one model and one SAE at the SAE's site. For every image it computes, once, the
site activations (the prefix, without autograd), their SAE code ``f`` and the error term, and keeps them in
an LRU cache with a byte budget, keyed by the image's content hash; label embeddings are cached per label
list. Access is serialised by one lock: requests from many users run one at a time, so results equal
running them in sequence, and no request sees another's edits (edits are values, never hooks).

``load_workbench`` is cached by the frozen specs, so the app, the evaluation and the benchmark share one
resident copy per (model, SAE, device).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from engine import zeroshot
from engine.backends import load_backend
from engine.registry import PHOTOS_DIR, local_model_paths
from engine.sae import SAEFormatError
from engine.sae_formats import load_sae
from engine.sources import AllowedDirs, resolve_sae_source
from engine.specs import ModelSpec, SAESpec

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LATENT_INFO_FILE = "latent_info.json"  # beside an SAE: per-latent label, AUROC, typical activation


def pin_malloc_mmap_threshold(threshold_bytes: int = 1 << 20) -> None:
    """Keep glibc from growing the process with every request.

    Each request allocates and frees a few megabyte-sized tensors (a dense SAE code, suffix activations)
    while the cache keeps small ones. glibc raises its mmap threshold every time a mapped block is freed,
    so later large blocks land on the heap between the long-lived small ones, and freed memory can no longer
    be returned: resident memory grew by ~5 MB per image on ViT-B/32. A fixed threshold keeps large blocks in
    their own mappings, returned to the OS on free (measured: bounded by the cache budget). No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, threshold_bytes)  # M_MMAP_THRESHOLD


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class SiteState:
    """Everything about one image at the site, for a single image. The SAE code is kept sparse (a TopK
    SAE has k of d_sae latents on per token: 32 of 24,576 for ViT-B/32), so a cached image costs kilobytes
    for its code, not megabytes."""

    acts_TD: torch.Tensor
    f_sparse_TS: torch.Tensor  # sparse COO
    error_TD: torch.Tensor

    @classmethod
    def build(cls, acts_TD: torch.Tensor, f_TS: torch.Tensor, error_TD: torch.Tensor) -> SiteState:
        return cls(acts_TD.clone(), f_TS.to_sparse().coalesce(), error_TD.clone())

    @property
    def f_TS(self) -> torch.Tensor:
        """The dense SAE code (T, S), made on demand."""
        return self.f_sparse_TS.to_dense()

    @property
    def nbytes(self) -> int:
        f = self.f_sparse_TS
        sparse_bytes = f.values().numel() * f.values().element_size() + f.indices().numel() * 8
        return sparse_bytes + sum(t.numel() * t.element_size() for t in (self.acts_TD, self.error_TD))


@dataclass(frozen=True)
class LatentInfo:
    """What is known about each latent: a label (with its score) and its typical activation."""

    labels: tuple[str, ...]
    scores: tuple[float, ...]
    typical_activation: tuple[float, ...]


def image_key(image: Image.Image) -> str:
    digest = hashlib.sha1(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class Workbench:
    def __init__(
        self,
        model_spec: ModelSpec,
        sae_spec: SAESpec,
        device: torch.device | None = None,
        cache_mb: int = 512,
        dtype: str = "float32",
        allowed: AllowedDirs | None = None,
    ):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
        self.device = device or default_device()
        self.dtype = DTYPES[dtype]
        pin_malloc_mmap_threshold()
        allowed = allowed or AllowedDirs.default()
        for path in local_model_paths(model_spec):
            allowed.check(path)
        self.model_spec, self.sae_spec = model_spec, sae_spec
        sae_path = resolve_sae_source(sae_spec.path, allowed)
        self.backend = load_backend(model_spec, self.device)
        self.backend.model.to(self.dtype)
        self.sae = load_sae(sae_path, site=sae_spec.site).to(self.device, self.dtype)
        self.site = self.sae.config.hook_name
        self.backend.block_index(self.site)
        if self.sae.config.d_in != self.backend.d_model:
            raise SAEFormatError(
                f"SAE {sae_spec.display_name} reads vectors of size d_in={self.sae.config.d_in}, but "
                f"{model_spec.display_name} has width {self.backend.d_model} at {self.site}: the SAE was trained "
                "for another model"
            )
        self.latent_info = _read_latent_info(sae_path if sae_path.is_dir() else sae_path.parent, self.sae.config.d_sae)
        self.lock = threading.RLock()
        self.cache_bytes = cache_mb * 2**20
        self._states: OrderedDict[str, SiteState] = OrderedDict()
        self._texts: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._typical_S: torch.Tensor | None = None

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """The model's own preprocessing, on the device, in the workbench's dtype."""
        return self.backend.pixels(images).to(self.device, self.dtype)

    @property
    def d_sae(self) -> int:
        return self.sae.config.d_sae

    def check_latent(self, latent: int) -> int:
        if not isinstance(latent, int) or not 0 <= latent < self.d_sae:
            raise ValueError(f"unknown latent id {latent!r}; valid: 0 .. {self.d_sae - 1}")
        return latent

    @torch.no_grad()
    def site_states(self, images: list[Image.Image]) -> list[SiteState]:
        """Site activations, SAE code and error per image; computed once per distinct image."""
        with self.lock:
            keys = [image_key(im) for im in images]
            missing = [i for i, k in enumerate(keys) if k not in self._states]
            if missing:
                acts_BTD = self.backend.prefix(self.pixels([images[i] for i in missing]), self.site)
                f_BTS = self.sae.encode(acts_BTD)
                error_BTD = acts_BTD - self.sae.decode(f_BTS, acts_BTD)
                # In activation units: an SAE that normalises each token (layer_norm, constant_norm_rescale)
                # maps latent i of token t back as f[t, i] * scale[t] * W_dec[i]; folding the scale into f
                # keeps "x = f @ W_dec + bias + error" exact for every edit and attribution (scale = 1 otherwise).
                f_BTS = f_BTS * self.sae.output_scale(acts_BTD)
                for j, i in enumerate(missing):
                    self._states[keys[i]] = SiteState.build(acts_BTD[j], f_BTS[j], error_BTD[j])
            for k in keys:
                self._states.move_to_end(k)
            states = [self._states[k] for k in keys]
            self._evict()
            return states

    def _evict(self) -> None:
        total = sum(s.nbytes for s in self._states.values())
        while total > self.cache_bytes and len(self._states) > 1:
            _, state = self._states.popitem(last=False)
            total -= state.nbytes

    def text_embeddings(self, labels: list[str], template: str | None = None) -> torch.Tensor:
        template = template or self.model_spec.prompt_template
        if "{}" not in template:
            raise ValueError(f"the prompt template must contain '{{}}' where the label goes; got {template!r}")
        key = (tuple(labels), template)
        with self.lock:
            if key not in self._texts:
                self._texts[key] = self.backend.encode_text([template.format(label) for label in labels]).float()
                while len(self._texts) > 64:
                    self._texts.popitem(last=False)
            return self._texts[key]

    def logits_from_acts(self, acts_BTD: torch.Tensor, text_emb_LE: torch.Tensor) -> torch.Tensor:
        """Zero-shot logits (B, L), in float32 whatever the model's dtype (edits may arrive in float32)."""
        image_emb_BE = self.backend.suffix(acts_BTD.to(self.dtype), self.site).float()
        return zeroshot.zero_shot_logits(image_emb_BE, text_emb_LE, self.backend.logit_scale)

    @torch.no_grad()
    def typical_activation(self) -> torch.Tensor:
        """(S,) each latent's typical activation: the unit of the add mode.

        Shipped statistics when the SAE has them (the toy); otherwise the mean of each latent's non-zero
        activations over the shipped photographs (a fixed reference set, so a request's result never depends on
        what other users sent), and the median of those means for latents that never fire there.
        """
        if self.latent_info is not None:
            return torch.tensor(self.latent_info.typical_activation, device=self.device)
        with self.lock:
            if self._typical_S is None:
                photos = [Image.open(p).convert("RGB") for p in sorted(PHOTOS_DIR.glob("*.jpg"))]
                total_S = torch.zeros(self.d_sae, device=self.device)
                count_S = torch.zeros(self.d_sae, device=self.device)
                for state in self.site_states(photos):
                    latent_K = state.f_sparse_TS.indices()[1]
                    values_K = state.f_sparse_TS.values().float()
                    total_S.index_add_(0, latent_K, values_K.abs())
                    count_S.index_add_(0, latent_K, torch.ones_like(values_K))
                seen_S = count_S > 0
                typical_S = torch.where(seen_S, total_S / count_S.clamp(min=1), torch.zeros_like(total_S))
                fallback = float(typical_S[seen_S].median()) if seen_S.any() else 1.0
                self._typical_S = torch.where(seen_S, typical_S, torch.full_like(typical_S, fallback))
            return self._typical_S

    @torch.no_grad()
    def predict(self, images: list[Image.Image], labels: list[str], template: str | None = None) -> torch.Tensor:
        """Zero-shot logits (B, L) from the cached prefix."""
        with self.lock:
            acts_BTD = torch.stack([s.acts_TD for s in self.site_states(images)])
            return self.logits_from_acts(acts_BTD, self.text_embeddings(labels, template))


def _read_latent_info(directory: Path, d_sae: int) -> LatentInfo | None:
    path = directory / LATENT_INFO_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    info = LatentInfo(tuple(raw["labels"]), tuple(raw["scores"]), tuple(raw["typical_activation"]))
    if not len(info.labels) == len(info.scores) == len(info.typical_activation) == d_sae:
        raise SAEFormatError(f"{path}: expected {d_sae} entries per field")
    return info


_load_lock = threading.Lock()


def load_workbench(
    model_spec: ModelSpec,
    sae_spec: SAESpec,
    device: str | None = None,
    cache_mb: int = 512,
    dtype: str = "float32",
    allowed: AllowedDirs | None = None,
) -> Workbench:
    """The resident workbench for these specs (loaded on first use, then shared). Loads run one at a time, so
    two requests that ask for the same new model at once get one copy, not two."""
    with _load_lock:
        return _cached_workbench(model_spec, sae_spec, device, cache_mb, dtype, allowed)


@functools.cache
def _cached_workbench(model_spec, sae_spec, device, cache_mb, dtype, allowed) -> Workbench:
    return Workbench(model_spec, sae_spec, torch.device(device) if device else None, cache_mb, dtype, allowed)
