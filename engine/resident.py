"""Resident parts: models by ModelSpec, SAEs by SAESpec, and one activation cache per (model, SAE, site, dtype).

Loading a model takes seconds (a hub download, minutes), so the engine loads each part once and keeps it:

- :class:`ResidentModel`: a backend on its device in its dtype, its label-embedding cache, and the model's
  lock. Every forward pass on the model and every hook on it run under that lock (:meth:`ResidentModel.hooked`):
  hooks are global state on a module, and a forward that runs while another request's hook is attached would
  see that request's edit.
- :class:`ResidentSAE`: an SAE module with what is known about its latents (shipped labels, typical
  activations), on a device in a dtype.
- :class:`Workbench`: one model with one SAE at the SAE's site. For every image it computes once the site
  activations (the prefix, without autograd), their SAE code ``f`` and the error term, and keeps them in an
  LRU cache with a byte budget keyed by the image's content. Two SAEs on one model (two sites, or two SAEs
  at one site) are two workbenches over the same resident model; two models sharing one SAE are two
  workbenches over the same resident SAE.

Each part is cached by its key, with a load lock per key: a request for a part that is already resident never
waits for another part's load (one user choosing a preset that downloads for a minute does not freeze the
others), and two requests for the same new part get one copy. A failed load is not cached.

Requests on one model run one at a time under its lock, so concurrent results equal sequential ones; edits
are values added between the prefix and the suffix, never hooks, so no request sees another's.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import string
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import torch
from PIL import Image

from engine import heldout, zeroshot
from engine.backends import Backend, load_backend
from engine.errors import SAEFormatError, UnknownChoiceError, UserInputError
from engine.hooks import ForwardHook, attached
from engine.sae import SAE
from engine.sae_formats import load_sae
from engine.sources import AllowedDirs, local_model_paths, resolve_sae_source
from engine.specs import ModelSpec, SAESpec

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LATENT_INFO_FILE = "latent_info.json"  # beside an SAE: per-latent label, AUROC, typical activation
TEXT_CACHE_SIZE = 64
LOW_EXPLAINED_VARIANCE = 0.7
"""The trust floor for an SAE that ships no calibration: below this share of an image's activations explained,
the SAE does not know such images, and its latents (so every attribution or edit over them) describe a
reconstruction far from what the model computed. An SAE that ships ``explained_variance_floor`` (the 1st
percentile of per-image explained variance on held-out data of its own kind, as the toy SAE does: 0.97
there, against 0.82 to 0.90 on the shipped photographs) is held to that instead."""


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


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise UnknownChoiceError("dtype", dtype, DTYPES)
    return DTYPES[dtype]


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class KeyedCache(Generic[K, V]):
    """Values loaded once per key, with a lock per key: a look-up of a loaded key never waits for another key's
    load, and concurrent first look-ups of one key load it once. A load that raises is not remembered."""

    def __init__(self) -> None:
        self._guard = threading.Lock()  # held only to read or write the two dicts, never during a load
        self._values: dict[K, V] = {}
        self._loading: dict[K, threading.Lock] = {}

    def get(self, key: K, load: Callable[[], V]) -> V:
        with self._guard:
            if key in self._values:
                return self._values[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._guard:
                if key in self._values:
                    return self._values[key]
            value = load()
            with self._guard:
                self._values[key] = value
                self._loading.pop(key, None)
            return value

    def __contains__(self, key: K) -> bool:
        with self._guard:
            return key in self._values

    def clear(self) -> None:
        with self._guard:
            self._values.clear()


class ResidentModel:
    """A model's backend on ``device`` in ``dtype``, its label embeddings, and the lock its forwards take."""

    def __init__(self, spec: ModelSpec, device: torch.device, dtype: str = "float32"):
        self.spec, self.device, self.dtype = spec, device, resolve_dtype(dtype)
        pin_malloc_mmap_threshold()
        self.backend: Backend = load_backend(spec, device)
        self.backend.model.to(self.dtype)
        self.lock = threading.RLock()
        self._texts: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @contextlib.contextmanager
    def hooked(self, hooks: Iterable[tuple[torch.nn.Module, ForwardHook]]) -> Iterator[None]:
        """Attach ``hooks`` for the block, holding the model's lock: no other request runs this model meanwhile."""
        with self.lock, attached(hooks):
            yield

    def text_embeddings(self, labels: list[str], template: str | None = None) -> torch.Tensor:
        """Normalised label embeddings (L, E) in float32, cached per (labels, template)."""
        template = template or self.spec.prompt_template
        check_template(template)
        key = (tuple(labels), template)
        with self.lock:
            if key not in self._texts:
                self._texts[key] = self.backend.encode_text([template.format(label) for label in labels]).float()
                while len(self._texts) > TEXT_CACHE_SIZE:
                    self._texts.popitem(last=False)
            self._texts.move_to_end(key)
            return self._texts[key]


def check_latent(latent: int, d_sae: int) -> int:
    """``latent`` when it is a latent id of an SAE with ``d_sae`` latents; otherwise a message with the range."""
    if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < d_sae:
        raise UserInputError(f"unknown latent id {latent!r}; valid: 0 .. {d_sae - 1}")
    return latent


def check_template(template: str) -> str:
    """A prompt template holds exactly one ``{}`` (where the label goes) and no other braces.

    >>> check_template("a {} and {}")
    Traceback (most recent call last):
    ...
    engine.errors.UserInputError: the prompt template must contain '{}' exactly once, where the label goes, and no other braces; got 'a {} and {}'
    """
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:  # an unmatched brace
        fields = None
    if fields != [""]:
        raise UserInputError(
            "the prompt template must contain '{}' exactly once, where the label goes, and no other braces; "
            f"got {template!r}"
        )
    return template


@dataclass(frozen=True)
class LatentInfo:
    """What is known about each latent: a label (with its score) and its typical activation; and about the SAE,
    the explained variance below which an image is unlike its training data (None when not calibrated)."""

    labels: tuple[str, ...]
    scores: tuple[float, ...]
    typical_activation: tuple[float, ...]
    explained_variance_floor: float | None = None


class ResidentSAE:
    """An SAE read from an allowed file or the hub, on ``device`` in ``dtype``, with its shipped latent info."""

    def __init__(self, spec: SAESpec, device: torch.device, dtype: str, allowed: AllowedDirs):
        self.spec = spec
        self.path = resolve_sae_source(spec.path, allowed)
        self.module: SAE = load_sae(self.path, site=spec.site).to(device, resolve_dtype(dtype))
        self.site = self.module.config.hook_name
        directory = self.path if self.path.is_dir() else self.path.parent
        self.latent_info = read_latent_info(directory, self.module.config.d_sae)


def read_latent_info(directory: Path, d_sae: int) -> LatentInfo | None:
    path = directory / LATENT_INFO_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    info = LatentInfo(
        tuple(raw["labels"]),
        tuple(raw["scores"]),
        tuple(raw["typical_activation"]),
        raw.get("explained_variance_floor"),
    )
    if not len(info.labels) == len(info.scores) == len(info.typical_activation) == d_sae:
        raise SAEFormatError(f"{path}: expected {d_sae} entries per field")
    return info


DENSE_CODE_MAX_RATIO = 4
"""A cached code is kept dense when that costs at most this many times the bytes of its sparse form (a small
dictionary: the toy's 384 latents, k = 32, cost 2.4 times): no conversion when it is stored or read."""


@dataclass(frozen=True)
class SiteState:
    """Everything about one image at the site. The SAE code is kept sparse (a TopK SAE has k of d_sae
    latents on per token: 32 of 24,576 for ViT-B/32), so a cached image costs kilobytes for its code; a small
    dictionary's code is kept dense (:data:`DENSE_CODE_MAX_RATIO`)."""

    acts_TD: torch.Tensor
    code_TS: torch.Tensor
    """The SAE code (T, S): sparse COO (coalesced), or dense when small. Read it as :attr:`f_TS` (dense), or
    pass it as it is to what accepts either (attribution.latent_scores, attribution.ranked_active)."""
    error_TD: torch.Tensor
    clean: dict = field(default_factory=dict, compare=False, repr=False)
    """Results of the unedited run, filled on first use: ``"image_emb_E"`` (Workbench.clean_image_embeddings)."""

    @classmethod
    def build(
        cls,
        acts_TD: torch.Tensor,
        f_TS: torch.Tensor,
        error_TD: torch.Tensor,
        max_nonzero: int | None = None,
        copy: bool = True,
    ) -> SiteState:
        """The state of one image. ``max_nonzero`` bounds the code's non-zeros when that is known without
        counting them (a TopK SAE: k per token), for the choice between dense and sparse; ``copy=False`` when the
        tensors are the image's own, not views into a batch that the state should not keep alive."""
        nonzero = int(torch.count_nonzero(f_TS)) if max_nonzero is None else max_nonzero
        sparse_bytes = nonzero * (f_TS.element_size() + 8 * f_TS.dim())
        own = (lambda t: t.clone()) if copy else (lambda t: t)
        if f_TS.numel() * f_TS.element_size() <= DENSE_CODE_MAX_RATIO * sparse_bytes:
            return cls(own(acts_TD), own(f_TS), own(error_TD))
        return cls(own(acts_TD), f_TS.to_sparse().coalesce(), own(error_TD))

    @property
    def f_TS(self) -> torch.Tensor:
        """The dense SAE code (T, S), made on demand from a sparse one (read only)."""
        return self.code_TS.to_dense() if self.code_TS.is_sparse else self.code_TS

    def columns(self, latents: Sequence[int]) -> torch.Tensor:
        """The code's columns for ``latents``, dense (T, K), in that order: read from a sparse code's non-zeros
        without densifying the other latents (a 50 x 24,576 dense copy costs milliseconds; this, microseconds)."""
        code = self.code_TS
        index_K = torch.as_tensor(list(latents), dtype=torch.long, device=code.device)
        if not code.is_sparse:
            return code[:, index_K]
        (token_N, latent_N), value_N = code.indices(), code.values()
        out_TK = torch.zeros(code.shape[0], len(index_K), dtype=value_N.dtype, device=value_N.device)
        entry_M, column_M = (latent_N[:, None] == index_K[None, :]).nonzero(as_tuple=True)
        out_TK[token_N[entry_M], column_M] = value_N[entry_M]
        return out_TK

    @property
    def activation_S(self) -> torch.Tensor:
        """Each latent's activation summed over the tokens, (S,)."""
        code = self.code_TS
        return torch.sparse.sum(code, 0).to_dense() if code.is_sparse else code.sum(0)

    @property
    def nbytes(self) -> int:
        f = self.code_TS
        if f.is_sparse:
            code_bytes = f.values().numel() * f.values().element_size() + f.indices().numel() * 8
        else:
            code_bytes = f.numel() * f.element_size()
        return code_bytes + sum(t.numel() * t.element_size() for t in (self.acts_TD, self.error_TD))

    @property
    def explained_variance(self) -> float:
        """How much of this image's activations the SAE reconstructs (see :func:`explained_variance`)."""
        return explained_variance(self.acts_TD, self.error_TD)


def explained_variance(acts_ND: torch.Tensor, error_ND: torch.Tensor) -> float:
    """``1 - |error|^2 / |acts - mean(acts)|^2`` over the rows: 1 when the SAE reconstructs everything, 0 when it
    does no better than the mean. A low value on an image says the SAE does not know such inputs.

    >>> acts = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    >>> round(explained_variance(acts, 0.1 * acts), 6)
    0.99
    """
    acts_ND, error_ND = acts_ND.float(), error_ND.float()
    total = float((acts_ND - acts_ND.mean(0)).pow(2).sum())
    return 1.0 - float(error_ND.pow(2).sum()) / total if total > 0 else float("nan")


def image_key(image: Image.Image) -> str:
    """Content hash of an image: mode, size, pixels, and the palette of a palette image (two images with the
    same indices and different palettes are different pictures)."""
    digest = hashlib.sha1(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    if image.mode in ("P", "PA") and image.palette is not None:
        digest.update(bytes(image.getpalette() or ()))
    return digest.hexdigest()


class Workbench:
    """One resident model with one resident SAE at the SAE's site, and the per-image cache of that pair."""

    def __init__(self, model: ResidentModel, sae: ResidentSAE, cache_mb: int = 512):
        self.model, self.resident_sae = model, sae
        self.site = sae.site
        self.backend.block_index(self.site)
        if sae.module.config.d_in != self.backend.d_model:
            raise SAEFormatError(
                f"SAE {sae.spec.display_name} reads vectors of size d_in={sae.module.config.d_in}, but "
                f"{model.spec.display_name} has width {self.backend.d_model} at {self.site}: the SAE was trained "
                "for another model"
            )
        self.cache_bytes = cache_mb * 2**20
        self._states: OrderedDict[str, SiteState] = OrderedDict()
        self._states_bytes = 0  # sum of the cached states' nbytes, kept as they come and go
        self._typical_S: torch.Tensor | None = None

    # The parts, by the names every technique uses.
    @property
    def backend(self) -> Backend:
        return self.model.backend

    @property
    def sae(self) -> SAE:
        return self.resident_sae.module

    @property
    def lock(self) -> threading.RLock:
        return self.model.lock

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def model_spec(self) -> ModelSpec:
        return self.model.spec

    @property
    def sae_spec(self) -> SAESpec:
        return self.resident_sae.spec

    @property
    def latent_info(self) -> LatentInfo | None:
        return self.resident_sae.latent_info

    @property
    def d_sae(self) -> int:
        return self.sae.config.d_sae

    def check_latent(self, latent: int) -> int:
        return check_latent(latent, self.d_sae)

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """The model's own preprocessing, on the device, in the model's dtype."""
        return self.backend.pixels(images).to(self.device, self.dtype)

    @torch.no_grad()
    def encode(self, acts_BTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_BTS, error_BTD) of site activations. ``f`` is in activation units: an SAE that normalises each
        token (layer_norm, constant_norm_rescale) maps latent i of token t back as f[t, i] * scale[t] * W_dec[i];
        folding the scale into f keeps ``x = f @ W_dec + bias + error`` exact for every edit and attribution."""
        if self.sae.config.architecture == "topk":  # decode from the k active latents alone
            f_BTS, values_BTK, indices_BTK = self.sae.encode_topk(acts_BTD)
            error_BTD = acts_BTD - self.sae.decode_topk(values_BTK, indices_BTK, acts_BTD)
        else:
            f_BTS = self.sae.encode(acts_BTD)
            error_BTD = acts_BTD - self.sae.decode(f_BTS, acts_BTD)
        if self.sae.config.normalize_activations == "none":  # the scale is 1: spare a pass over f
            return f_BTS, error_BTD
        return f_BTS * self.sae.output_scale(acts_BTD), error_BTD

    @torch.no_grad()
    def site_states(self, images: list[Image.Image]) -> list[SiteState]:
        """Site activations, SAE code and error per image; computed once per distinct image."""
        with self.lock:
            keys = [image_key(im) for im in images]
            first_index = {k: i for i, k in reversed(list(enumerate(keys)))}  # an image twice is computed once
            missing = [i for k, i in first_index.items() if k not in self._states]
            if missing:
                acts_BTD = self.backend.prefix(self.pixels([images[i] for i in missing]), self.site)
                f_BTS, error_BTD = self.encode(acts_BTD)
                config = self.sae.config
                max_nonzero = acts_BTD.shape[1] * config.k if config.architecture == "topk" else None
                for j, i in enumerate(missing):
                    state = SiteState.build(
                        acts_BTD[j], f_BTS[j], error_BTD[j], max_nonzero, copy=len(missing) > 1
                    )  # fmt: skip
                    self._states[keys[i]] = state
                    self._states_bytes += state.nbytes
            for k in keys:
                self._states.move_to_end(k)
            states = [self._states[k] for k in keys]
            self._evict()
            return states

    @torch.no_grad()
    def stream_codes(self, pixels: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(acts_BTD, f_BTS, error_BTD) for each batch of pixels, computed and never cached: a dataset streams
        through the site without touching the users' per-image cache."""
        for pixels_BCHW in pixels:
            with self.lock:
                acts_BTD = self.backend.prefix(pixels_BCHW.to(self.device, self.dtype), self.site)
                f_BTS, error_BTD = self.encode(acts_BTD)
            yield acts_BTD, f_BTS, error_BTD

    @property
    def explained_variance_floor(self) -> float:
        """Below this explained variance an image is unlike what the SAE knows (see LOW_EXPLAINED_VARIANCE)."""
        info = self.latent_info
        if info is not None and info.explained_variance_floor is not None:
            return info.explained_variance_floor
        return LOW_EXPLAINED_VARIANCE

    def state_warnings(self, state: SiteState) -> list[str]:
        """Plain sentences about how far the SAE's latents can be trusted on this image (may be empty)."""
        explained, floor = state.explained_variance, self.explained_variance_floor
        # A negative share ("-113%") reads as nonsense: the reconstruction is further off than the mean would be.
        share = f"only {explained:.0%} of" if explained >= 0 else "none of"
        if explained < floor:
            return [
                f"the SAE reconstructs {share} this image's activations, less than on any but the "
                f"rarest of the images it was made for (below {floor:.0%}): the image is unlike what the SAE knows, "
                "so its concepts may explain the prediction poorly; read the latents below with caution"
                if self.latent_info is not None and self.latent_info.explained_variance_floor is not None
                else f"the SAE reconstructs {share} this image's activations (below {floor:.0%}): "
                "the image is unlike what the SAE was trained on, so its concepts explain little of the "
                "prediction; read the latents below with caution"
            ]
        return []

    def image_warnings(self, image: Image.Image) -> list[str]:
        """What the user should know about this image on this model and SAE before reading any result."""
        (state,) = self.site_states([image])
        return self.state_warnings(state)

    def clear_cache(self) -> None:
        with self.lock:
            self._states.clear()
            self._states_bytes = 0

    def _evict(self) -> None:
        while self._states_bytes > self.cache_bytes and len(self._states) > 1:
            _, state = self._states.popitem(last=False)
            self._states_bytes -= state.nbytes

    def text_embeddings(self, labels: list[str], template: str | None = None) -> torch.Tensor:
        return self.model.text_embeddings(labels, template)

    @torch.no_grad()
    def clean_image_embeddings(self, states: Sequence[SiteState]) -> torch.Tensor:
        """(B, E) float32 image embeddings of the unedited images. The suffix runs once per cached image, then an
        edit's "before" row, or a held-out batch's, costs a matrix product. Each image runs alone (a batch of
        one), never beside whatever else a request holds: kernels differ with the batch size in the last bits,
        and a user's result must not depend on what other requests came first."""
        with self.lock:
            for state in {id(s): s for s in states if "image_emb_E" not in s.clean}.values():
                state.clean["image_emb_E"] = self.image_embeddings(state.acts_TD.unsqueeze(0))[0]
            return torch.stack([s.clean["image_emb_E"] for s in states])

    def image_embeddings(self, acts_BTD: torch.Tensor) -> torch.Tensor:
        """The suffix from the site: image embeddings (B, E) in float32."""
        with self.lock:
            return self.backend.suffix(acts_BTD.to(self.dtype), self.site).float()

    def logits_from_embeddings(self, image_emb_BE: torch.Tensor, text_emb_LE: torch.Tensor) -> torch.Tensor:
        return zeroshot.zero_shot_logits(image_emb_BE, text_emb_LE, self.backend.logit_scale)

    def logits_from_acts(self, acts_BTD: torch.Tensor, text_emb_LE: torch.Tensor) -> torch.Tensor:
        """Zero-shot logits (B, L), in float32 whatever the model's dtype (edits may arrive in float32)."""
        return self.logits_from_embeddings(self.image_embeddings(acts_BTD), text_emb_LE)

    @torch.no_grad()
    def typical_activation(self) -> torch.Tensor:
        """(S,) each latent's typical activation, sign included: the unit of the add mode.

        Shipped statistics when the SAE has them (the toy); otherwise the mean of each latent's non-zero
        activations over the shipped photographs (a fixed reference set, so a request's result never depends on
        what other users sent), and the median of those means for latents that never fire there. The sign is
        kept: a TopK SAE without a ReLU (saev) can pick a latent with a negative value, and adding its typical
        activation must push the way the latent usually points.
        """
        if self.latent_info is not None:
            return torch.tensor(self.latent_info.typical_activation, device=self.device)
        with self.lock:
            if self._typical_S is None:
                photos = list(heldout.photos())
                total_S = torch.zeros(self.d_sae, device=self.device)
                count_S = torch.zeros(self.d_sae, device=self.device)
                for _, f_BTS, _ in self.stream_codes([self.pixels(photos)]):
                    f_NS = f_BTS.flatten(0, 1).float()
                    total_S += f_NS.sum(0)
                    count_S += (f_NS != 0).sum(0)
                seen_S = count_S > 0
                typical_S = torch.where(seen_S, total_S / count_S.clamp(min=1), torch.zeros_like(total_S))
                fallback = float(typical_S[seen_S].abs().median()) if seen_S.any() else 1.0
                self._typical_S = torch.where(seen_S, typical_S, torch.full_like(typical_S, fallback))
            return self._typical_S

    @torch.no_grad()
    def predict(self, images: list[Image.Image], labels: list[str], template: str | None = None) -> torch.Tensor:
        """Zero-shot logits (B, L) from the cached prefix."""
        with self.lock:
            acts_BTD = torch.stack([s.acts_TD for s in self.site_states(images)])
            return self.logits_from_acts(acts_BTD, self.text_embeddings(labels, template))


_models: KeyedCache[tuple, ResidentModel] = KeyedCache()
_saes: KeyedCache[tuple, ResidentSAE] = KeyedCache()
_workbenches: KeyedCache[tuple, Workbench] = KeyedCache()


def resident_model(
    spec: ModelSpec,
    device: str | torch.device | None = None,
    dtype: str = "float32",
    allowed: AllowedDirs | None = None,
) -> ResidentModel:
    """The resident model for (spec, device, dtype); its local files must lie in allowed directories."""
    allowed = allowed or AllowedDirs.default()
    for path in local_model_paths(spec):
        allowed.check(path)
    device = torch.device(device) if device else default_device()
    resolve_dtype(dtype)
    return _models.get((spec, str(device), dtype), lambda: ResidentModel(spec, device, dtype))


def resident_sae(
    spec: SAESpec, device: str | torch.device | None = None, dtype: str = "float32", allowed: AllowedDirs | None = None
) -> ResidentSAE:
    """The resident SAE for (spec, device, dtype), read only from allowed directories or the hub."""
    allowed = allowed or AllowedDirs.default()
    device = torch.device(device) if device else default_device()
    resolve_dtype(dtype)
    if not spec.path.startswith("hf:"):
        allowed.check(spec.path)  # checked on every look-up, not only the first
    return _saes.get((spec, str(device), dtype), lambda: ResidentSAE(spec, device, dtype, allowed))


def load_workbench(
    model_spec: ModelSpec,
    sae_spec: SAESpec,
    device: str | None = None,
    cache_mb: int = 512,
    dtype: str = "float32",
    allowed: AllowedDirs | None = None,
) -> Workbench:
    """The resident workbench for these specs: its model and SAE loaded on first use (each under its own
    lock), then shared by every request, evaluation and benchmark in the process."""
    sae = resident_sae(sae_spec, device, dtype, allowed)  # first: a missing SAE fails before a slow model load
    model = resident_model(model_spec, device, dtype, allowed)
    key = (model_spec, sae_spec, str(model.device), dtype, cache_mb)
    return _workbenches.get(key, lambda: Workbench(model, sae, cache_mb))
