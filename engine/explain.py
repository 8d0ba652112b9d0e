"""Explain a latent in words: steer it into a neutral image and let a vision-language model say what it sees.

Reading a latent's top images is correlation; this is a causal test. Two published recipes:

* **add** (Ferrando et al. 2026, "Language Models Can Explain Visual Features via Steering", arXiv 2603.22593,
  code HPAI-BSC/vision-interp): feed a neutral image (plain white), add ``coefficient x decoder row`` of the
  latent at every token of a vision-tower layer during the prefill, and let the language model complete
  "The highlighted element in the image is a ...". Here the coefficient is in units of the latent's typical
  activation (as the Steering tab's add mode: 1 adds the concept as strongly as it usually appears; 32 by default), so one
  setting means the same for every latent and every SAE; the change at every token is
  ``coefficient * typical_i * W_dec[i]`` and everything else (the SAE error included) stays.
* **clamp** (Pach et al. 2025, "Sparse Autoencoders Learn Monosemantic Features in Vision-Language Models",
  arXiv 2504.02821, code ExplainableML/sae-for-vlm): replace the layer's output by the SAE's reconstruction
  with the latent clamped to a value at every token, and ask "What is shown in this image? Use exactly one
  word!". As in the paper the SAE error is dropped (the output *is* the reconstruction); the value is again
  ``coefficient * typical_i`` (the paper's alpha = 100 is an absolute value for its SAE).

An explanation is worth only what its controls show, so every one comes with the same generation

    unsteered   the neutral image as it is: what the model says anyway;
    random      a random direction of the decoder row's norm, at the same coefficient;
    permuted    another latent's decoder row (latent ``(i + n/2) mod n``, as vision-interp shifts the list)

in one batched ``generate`` (four rows; the hook gives each row its own edit). A coefficient sweep shows
where the text starts to change. Decoding is greedy unless a sampling seed is given (then reproducible).
Explanations are cached on disk, keyed by the model, the SAE (with the files' sizes and times), the latent
and every setting, so a repeated request is instant and survives a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine import heldout
from engine.errors import UnknownChoiceError, UserInputError
from engine.resident import ResidentSAE, check_latent
from engine.vlm import VisionLanguageModel, check_text, replace_hidden

log = logging.getLogger(__name__)

STYLES = ("add", "clamp")
NEUTRALS = ("white", "black", "noise")
DEFAULT_QUESTION = {
    "add": "What is the highlighted element in the image?",
    "clamp": "What is shown in this image? Use exactly one word!",
}
DEFAULT_PREFIX = {"add": "The highlighted element in the image is a", "clamp": ""}
DEFAULT_COEFFICIENT = {"add": 32.0, "clamp": 16.0}
MAX_COEFFICIENT = 1000.0
NEUTRAL_SIZE = 336  # the processor resizes; a plain image has no detail to lose
CONTROLS = ("steered", "unsteered", "random", "permuted")
CACHE_ENV = "WORKBENCH_EXPLAIN_CACHE"
MAX_BATCH_LATENTS = 64


@dataclass(frozen=True)
class ExplainSettings:
    """How to ask. ``question`` / ``answer_prefix`` default by style (``None``); ``seed`` None = greedy."""

    style: str = "add"
    coefficient: float | None = None
    question: str | None = None
    answer_prefix: str | None = None
    neutral: str = "white"
    max_new_tokens: int = 24
    seed: int | None = None
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise UnknownChoiceError("explanation style", self.style, STYLES)
        if self.neutral not in NEUTRALS:
            raise UnknownChoiceError("neutral image", self.neutral, NEUTRALS)
        c = self.coefficient
        if c is not None and (
            isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or abs(c) > MAX_COEFFICIENT
        ):
            raise UserInputError(f"the coefficient must be a finite number within +-{MAX_COEFFICIENT:g}; got {c!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise UserInputError(
                f"the sampling seed must be a whole number >= 0, or empty for greedy; got {self.seed!r}"
            )
        if self.question is not None:
            check_text("question", self.question)
        if self.answer_prefix is not None:
            check_text("answer prefix", self.answer_prefix, empty_ok=True)

    def resolved(self) -> ExplainSettings:
        """Defaults filled in (what the cache key and the report show)."""
        return replace(
            self,
            coefficient=float(DEFAULT_COEFFICIENT[self.style] if self.coefficient is None else self.coefficient),
            question=DEFAULT_QUESTION[self.style] if self.question is None else self.question,
            answer_prefix=DEFAULT_PREFIX[self.style] if self.answer_prefix is None else self.answer_prefix,
        )


@dataclass(frozen=True)
class Explanation:
    """What the model said for one latent, steered and under each control."""

    latent: int
    settings: ExplainSettings
    steered: str
    unsteered: str
    random: str
    permuted: str
    permuted_latent: int
    seconds: float
    cached: bool = False

    @property
    def changed(self) -> bool:
        """Did steering change what the model says?"""
        return self.steered != self.unsteered

    def as_dict(self) -> dict:
        return {**asdict(self), "settings": asdict(self.settings)}

    @classmethod
    def from_dict(cls, data: dict) -> Explanation:
        return cls(**{**data, "settings": ExplainSettings(**data["settings"])})


@dataclass(frozen=True)
class SweepPoint:
    coefficient: float
    text: str


def neutral_image(kind: str, seed: int = 0) -> Image.Image:
    """The neutral canvas the concept is steered into: white (the papers'), black, or uniform noise (seeded)."""
    if kind == "white":
        return Image.new("RGB", (NEUTRAL_SIZE, NEUTRAL_SIZE), (255, 255, 255))
    if kind == "black":
        return Image.new("RGB", (NEUTRAL_SIZE, NEUTRAL_SIZE), (0, 0, 0))
    if kind == "noise":
        rng = np.random.default_rng(seed)
        return Image.fromarray(rng.integers(0, 256, (NEUTRAL_SIZE, NEUTRAL_SIZE, 3), dtype=np.uint8))
    raise UnknownChoiceError("neutral image", kind, NEUTRALS)


def permuted_latent(latent: int, d_sae: int) -> int:
    """The control latent: shifted by half the dictionary (vision-interp's permutation)."""
    return (latent + d_sae // 2) % d_sae


def random_direction(latent: int, norm: float, d_in: int, seed: int = 0) -> torch.Tensor:
    """A random direction (D,) with the decoder row's ``norm``, fixed by the latent and the seed."""
    g = torch.Generator().manual_seed(1_000_003 * (seed + 1) + latent)
    r_D = torch.randn(d_in, generator=g)
    return r_D / r_D.norm() * norm


class Explainer:
    """One VLM and one SAE at a site of its vision tower: explanations with controls, sweeps, a disk cache."""

    def __init__(self, vlm: VisionLanguageModel, sae: ResidentSAE, cache_dir: Path | None = None):
        self.vlm, self.resident_sae = vlm, sae
        self.sae = sae.module
        self.site = sae.site
        self.layer = vlm.site_module(self.site)  # an SAE for a site the tower lacks fails here, with the valid ones
        d_model = _layer_width(vlm, self.site)
        if d_model is not None and d_model != self.sae.config.d_in:
            raise UserInputError(
                f"the SAE reads {self.sae.config.d_in}-wide activations but {vlm.spec.display_name}'s vision tower "
                f"is {d_model} wide at {self.site}: this SAE was made for another model"
            )
        self.cache = ExplanationCache(cache_dir) if cache_dir is not None else None
        self._typical_S: torch.Tensor | None = None
        self._lock = threading.Lock()

    @property
    def d_sae(self) -> int:
        return self.sae.config.d_sae

    def check_latent(self, latent: int) -> int:
        return check_latent(latent, self.d_sae)

    def label(self, latent: int) -> str:
        info = self.resident_sae.latent_info
        return info.labels[latent] if info is not None else ""

    @torch.no_grad()
    def typical_activation(self) -> torch.Tensor:
        """(S,) the unit of the coefficient: shipped statistics when the SAE has them, else the mean non-zero
        activation of each latent on the shipped photographs, read from this VLM's own tower (the median of
        those means for latents that never fire there)."""
        info = self.resident_sae.latent_info
        if info is not None:
            return torch.tensor(info.typical_activation)
        with self._lock:
            if self._typical_S is None:
                acts_NTD = self.vlm.site_activations(list(heldout.photos()), self.site)
                sae = self.sae
                x = acts_NTD.to(sae.W_dec.device, sae.W_dec.dtype)
                f_NS = (sae.encode(x) * sae.output_scale(x)).flatten(0, -2).float().cpu()
                count_S = (f_NS != 0).sum(0)
                mean_S = torch.where(count_S > 0, f_NS.sum(0) / count_S.clamp(min=1), torch.zeros(f_NS.shape[1]))
                seen_S = count_S > 0
                fallback = float(mean_S[seen_S].abs().median()) if seen_S.any() else 1.0
                self._typical_S = torch.where(seen_S, mean_S, torch.full_like(mean_S, fallback))
            return self._typical_S

    def _rows(self, latent: int, settings: ExplainSettings, coefficients: Sequence[float]) -> list[dict]:
        """One edit per generated row: (direction or None, amplitude). Row order: steered at each coefficient,
        then unsteered, random, permuted at the first coefficient."""
        W_dec_SD = self.sae.W_dec.detach().float().cpu()
        u = float(self.typical_activation()[latent])
        row = W_dec_SD[latent]
        other = permuted_latent(latent, self.d_sae)
        rows = [{"latent": latent, "direction": row, "amount": c * u} for c in coefficients]
        first = coefficients[0] * u
        rows.append(None)
        rows.append(
            {
                "latent": latent,
                "direction": random_direction(latent, float(row.norm()), row.numel(), settings.seed or 0),
                "amount": first,
            }
        )
        rows.append({"latent": latent, "direction": W_dec_SD[other], "amount": first})
        return rows

    def _hook(self, rows: list[dict | None], style: str):
        """A hook on the site's layer that applies row b's edit to the vision rows of prompt b."""
        sae = self.sae

        def edit(module, args, output):
            hidden_NTD = _hidden_of(output)
            n_vision, n_rows = hidden_NTD.shape[0], len(rows)
            if n_vision % n_rows:
                raise RuntimeError(f"{n_vision} vision rows for {n_rows} prompts: each prompt must bring as many crops")
            per = n_vision // n_rows  # tiling models run several sub-images per prompt (the same neutral image)
            out_NTD = hidden_NTD.clone()
            for b, spec in enumerate(rows):
                if spec is None:
                    continue
                sl = slice(b * per, (b + 1) * per)
                direction_D = spec["direction"].to(hidden_NTD.device, hidden_NTD.dtype)
                if style == "add":
                    out_NTD[sl] = hidden_NTD[sl] + spec["amount"] * direction_D
                else:  # clamp: the reconstruction with latent i removed, plus the clamped value along the direction
                    x = hidden_NTD[sl].to(sae.W_dec.dtype)
                    f = sae.encode(x)
                    f[..., spec["latent"]] = 0
                    recon = sae.decode(f, x)  # the amount is in activation units: it moves x along the row as is
                    out_NTD[sl] = (recon + spec["amount"] * direction_D.to(recon.dtype)).to(hidden_NTD.dtype)
            return replace_hidden(output, out_NTD)

        return edit

    def _generate(self, rows: list[dict | None], settings: ExplainSettings) -> list[str]:
        images = [neutral_image(settings.neutral, settings.seed or 0)] * len(rows)
        inputs = self.vlm.inputs(images, settings.question, settings.answer_prefix)
        with self.vlm.hooked([(self.layer, self._hook(rows, settings.style))]):
            return self.vlm.generate(inputs, settings.max_new_tokens, settings.seed, settings.temperature)

    def explain(self, latent: int, settings: ExplainSettings = ExplainSettings()) -> Explanation:
        """The latent's explanation with its three controls (from the disk cache when it was asked before)."""
        self.check_latent(latent)
        settings = settings.resolved()
        key = self.cache_key(latent, settings)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return replace(hit, cached=True)
        start = time.perf_counter()
        texts = self._generate(self._rows(latent, settings, [settings.coefficient]), settings)
        steered, unsteered, random_text, permuted = texts
        result = Explanation(
            latent, settings, steered, unsteered, random_text, permuted, permuted_latent(latent, self.d_sae),
            round(time.perf_counter() - start, 3),
        )  # fmt: skip
        if self.cache is not None:
            self.cache.put(key, result)
        return result

    def sweep(
        self, latent: int, coefficients: Sequence[float], settings: ExplainSettings = ExplainSettings()
    ) -> list[SweepPoint]:
        """What the model says at each coefficient (one batched generate): where does the text change?"""
        self.check_latent(latent)
        coefficients = [float(c) for c in coefficients]
        if not 1 <= len(coefficients) <= 32:
            raise UserInputError(f"give 1 to 32 coefficients; got {len(coefficients)}")
        for c in coefficients:
            replace(settings, coefficient=c)  # validates each
        settings = settings.resolved()
        rows = self._rows(latent, settings, coefficients)[: len(coefficients)]
        texts = self._generate(rows, settings)
        return [SweepPoint(c, t) for c, t in zip(coefficients, texts)]

    def explain_many(
        self,
        latents: Sequence[int],
        settings: ExplainSettings = ExplainSettings(),
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Explanation]:
        """Explanations of several latents (a batch job: the Attribution table's top latents)."""
        latents = list(dict.fromkeys(self.check_latent(int(i)) for i in latents))
        if len(latents) > MAX_BATCH_LATENTS:
            raise UserInputError(f"explain at most {MAX_BATCH_LATENTS} latents at once; got {len(latents)}")
        out = []
        for n, latent in enumerate(latents):
            out.append(self.explain(latent, settings))
            if progress is not None:
                progress(n + 1, len(latents))
        return out

    def cache_key(self, latent: int, settings: ExplainSettings) -> str:
        return explanation_key(self.vlm.spec.name, self.resident_sae, latent, settings)


def explanation_key(
    vlm_name: str, sae: ResidentSAE, latent: int, settings: ExplainSettings, identity: dict | None = None
) -> str:
    """The disk cache's key: the VLM and the SAE (with their files' sizes and times: :func:`model_identity`, which
    a caller asking for many latents passes in, read once), the latent, every setting."""
    identity = model_identity(vlm_name, sae) if identity is None else identity
    key = {**identity, "latent": latent, "settings": asdict(settings.resolved()), "version": 1}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def model_identity(vlm_name: str, sae: ResidentSAE) -> dict:
    """What names the VLM and the SAE in a cache key, their files' sizes and times included (a directory walk)."""
    return {
        "vlm": vlm_name,
        "vlm_files": _fingerprint(vlm_name),
        "sae": sae.spec.path,
        "sae_site": sae.site,
        "sae_files": _fingerprint(str(sae.path)),
    }


def cached_explanations(
    cache: ExplanationCache,
    vlm_name: str,
    sae: ResidentSAE,
    latents: Sequence[int],
    settings: ExplainSettings = ExplainSettings(),
) -> dict[int, Explanation]:
    """The explanations already in the cache for ``latents`` (no model is loaded, nothing is generated)."""
    identity = model_identity(vlm_name, sae)  # once, not once per latent
    found = {}
    for latent in latents:
        hit = cache.get(explanation_key(vlm_name, sae, int(latent), settings, identity))
        if hit is not None:
            found[int(latent)] = hit
    return found


def _hidden_of(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _layer_width(vlm: VisionLanguageModel, site: str) -> int | None:
    config = getattr(vlm.model.config, "vision_config", None)
    return getattr(config, "hidden_size", None)


def _fingerprint(path: str) -> list:
    """Sizes and modification times of a local model's or SAE's files (a rebuilt asset gets new explanations)."""
    p = Path(path).expanduser()
    if not p.exists():
        return []
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    return [
        [f.name, f.stat().st_size, int(f.stat().st_mtime)]
        for f in files
        if f.is_file() and f.suffix in (".safetensors", ".pt", ".bin", ".json", ".pth")
    ]


class ExplanationCache:
    """One JSON file per explanation under ``directory`` (named by the key's hash), written atomically."""

    def __init__(self, directory: Path):
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ValueError(f"cache keys are sha256 hex digests; got {key!r}")
        return self.directory / f"{key}.json"

    def get(self, key: str) -> Explanation | None:
        path = self._path(key)
        try:
            return Explanation.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as error:
            log.warning("ignoring an unreadable cached explanation %s: %s", path.name, error)
            return None

    def put(self, key: str, explanation: Explanation) -> None:
        data = json.dumps(explanation.as_dict(), indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
        os.replace(tmp, self._path(key))


def default_cache_dir() -> Path:
    """``$WORKBENCH_EXPLAIN_CACHE``, else ``~/.cache/concept-steering-workbench/explanations``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "concept-steering-workbench" / "explanations")


# --- scoring against the toy world's ground truth ------------------------------------------------------------

_MARKER_WORDS = {"present": "with a corner marker", "absent": "with no corner marker"}


def names_value(text: str, factor: str, value: str) -> bool:
    """Does ``text`` name ``value`` of ``factor`` as the caption grammar words it (whole words)?

    >>> names_value("large red circle in the top left", "position", "top left")
    True
    >>> names_value("a blue shape", "colour", "red")
    False
    """
    phrase = _MARKER_WORDS[value] if factor == "marker" else value
    return re.search(rf"(^|\s){re.escape(phrase)}($|\s|[.,!?])", text.lower()) is not None


@dataclass
class ExplanationScore:
    latents: list[int] = field(default_factory=list)
    named: list[bool] = field(default_factory=list)
    controls_named: list[bool] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.named)) if self.named else float("nan")

    @property
    def control_false_rate(self) -> float:
        return float(np.mean(self.controls_named)) if self.controls_named else float("nan")


def score_explanations(explanations: Sequence[Explanation], labels: Sequence[str]) -> ExplanationScore:
    """Share of explanations naming their latent's ground-truth value (labels "factor=value"), and share of the
    random and permuted controls that name it."""
    score = ExplanationScore()
    for e in explanations:
        factor, _, value = labels[e.latent].partition("=")
        score.latents.append(e.latent)
        score.named.append(names_value(e.steered, factor, value))
        score.controls_named.append(names_value(e.random, factor, value))
        if labels[e.permuted_latent] != labels[e.latent]:  # another latent of the same concept is no control
            score.controls_named.append(names_value(e.permuted, factor, value))
    return score
