"""Shared UI pieces: the workbench the tabs talk to, input parsing, error translation, heatmap overlays.

Engine errors are turned into ``gr.Error`` here, at the boundary, and nowhere else.
"""

from __future__ import annotations

import functools
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from engine import vocabulary, zeroshot
from engine.backends import ModelUnavailableError
from engine.registry import LABELS_DIR, Preset
from engine.resident import Workbench
from engine.sae import SAEFormatError

log = logging.getLogger(__name__)

CONCEPTS_FILE = LABELS_DIR / "concepts.txt"
MAX_UPLOAD_BYTES = 25 * 2**20
MAX_PIXELS = 40_000_000  # a 40-megapixel image is the largest we decode
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL raises DecompressionBombError beyond 2x this


@dataclass
class ModelContext:
    """What a handler needs for one model: its resident workbench, a held-out batch, and latent names."""

    bench: Workbench
    heldout: Callable[[list[str]], tuple[list[Image.Image], list[int | None] | None]] | None = None
    concepts: Callable[[], tuple[str, ...]] = field(default=lambda: concept_vocabulary())

    def latent_names(self, latents: list[int], template: str | None) -> dict[int, tuple[str, float | None]]:
        """A name and a score per latent: the ground-truth label and its AUROC where the SAE ships them (the
        toy), else the best concepts of the vocabulary and their cosine (engine.vocabulary)."""
        info = self.bench.latent_info
        if info is not None:
            return {i: (info.labels[i], info.scores[i]) for i in latents}
        if not latents:
            return {}
        named = vocabulary.name_latents(self.bench, latents, list(self.concepts()), template, top=3)
        return {i: ("; ".join(c for c, _ in best), best[0][1]) for i, best in named.items()}


@functools.cache
def concept_vocabulary() -> tuple[str, ...]:
    return tuple(line for line in CONCEPTS_FILE.read_text(encoding="utf-8").splitlines() if line.strip())


@dataclass
class AppContext:
    """The models the app offers (loaded on first use, then resident) and the example images."""

    choices: dict[str, Preset]
    load: Callable[[Preset], Workbench]
    heldout: Callable[[Preset], Callable | None]
    examples: dict[str, list[str]] = field(default_factory=dict)
    concepts: Callable[[], tuple[str, ...]] = field(default=lambda: concept_vocabulary())

    @property
    def default(self) -> str:
        return next(iter(self.choices))

    def model(self, name: str | None) -> ModelContext:
        name = name or self.default
        if name not in self.choices:
            raise ValueError(f"unknown model {name!r}; valid: {', '.join(self.choices)}")
        chosen = self.choices[name]
        return ModelContext(self.load(chosen), self.heldout(chosen), self.concepts)


def user_errors(fn: Callable) -> Callable:
    """Run a handler; a bad input becomes a clear ``gr.Error``, anything else is logged and reported briefly."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, SAEFormatError, KeyError, ModelUnavailableError, FileNotFoundError) as error:
            raise gr.Error(str(error).strip("'\"")) from error
        except Exception as error:
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error(f"internal error ({type(error).__name__}): {error}") from error

    return wrapped


def load_image(value) -> Image.Image:
    """A PIL image from what Gradio or a client sends (a path or a PIL image), with a clear message for
    anything that is not a readable, reasonably sized image."""
    if value is None or value == "":
        raise ValueError("no image: upload one or pick an example")
    if isinstance(value, Image.Image):
        image = value
    else:
        path = Path(value if isinstance(value, str) else value.get("path", ""))
        if not path.is_file():
            raise ValueError(f"image file not found: {path.name}")
        if path.stat().st_size > MAX_UPLOAD_BYTES:
            raise ValueError(f"image file too large ({path.stat().st_size / 2**20:.0f} MB); the limit is 25 MB")
        try:
            image = Image.open(path)
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(f"image too large ({image.width}x{image.height}); the limit is 40 megapixels")
            image.load()
        except (UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise ValueError(f"{path.name} is not an image that can be read (PNG, JPEG, WebP, ...): {error}") from None
        except OSError as error:
            raise ValueError(f"{path.name} is a broken or truncated image: {error}") from None
    return image.convert("RGB")


def parse_labels(text) -> list[str]:
    return zeroshot.parse_labels(text or "")


def parse_int_list(text: str | None, what: str) -> list[int]:
    if text is None or not str(text).strip():
        return []
    out = []
    for item in str(text).replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise ValueError(f"{what} must be whole numbers separated by commas; got {item!r}") from None
    return out


def parse_number(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number; got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number; got {value!r}")
    return number


def parse_float_list(text, what: str) -> list[float]:
    if isinstance(text, (int, float)):
        return [parse_number(text, what)]
    return [parse_number(item.strip(), what) for item in str(text or "").replace(";", ",").split(",") if item.strip()]


def parse_latent(value, bench: Workbench) -> int:
    if value is None or str(value).strip() == "":
        raise ValueError(f"choose a latent id (0 .. {bench.d_sae - 1}); run Attribution to see the important ones")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"latent id must be a whole number 0 .. {bench.d_sae - 1}; got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"latent id must be a whole number 0 .. {bench.d_sae - 1}; got {value!r}")
    return bench.check_latent(int(number))


def overlay(image: Image.Image, map_HW: torch.Tensor, size: int = 256, signed: bool = False) -> Image.Image:
    """The image with a per-patch map laid over it (red: high; blue: negative when ``signed``)."""
    base = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    values = map_HW.detach().float().cpu().numpy()
    scale = np.abs(values).max() or 1.0
    grid = Image.fromarray((np.clip(values / scale, -1, 1) * 127 + 128).astype(np.uint8))
    norm = np.asarray(grid.resize((size, size), Image.NEAREST), dtype=np.float32) / 127 - 128 / 127
    colour = np.zeros_like(base)
    colour[..., 0] = np.clip(norm, 0, 1)
    if signed:
        colour[..., 2] = np.clip(-norm, 0, 1)
    alpha = np.abs(norm)[..., None] * 0.65
    blended = base * (1 - alpha) + colour * alpha
    return Image.fromarray((blended * 255).round().astype(np.uint8))


def save_png(image: Image.Image, prefix: str) -> str:
    """Write an output image to a temporary file (Gradio serves it; clients download it)."""
    handle = tempfile.NamedTemporaryFile(prefix=prefix, suffix=".png", delete=False)
    image.save(handle, format="PNG")
    handle.close()
    return handle.name


class ImageInput(gr.Image):
    """``gr.Image`` whose decoding failures (a text file, a truncated PNG, a decompression bomb) reach the user
    as a clear message instead of Gradio's generic processing error."""

    def get_block_name(self) -> str:
        return "image"  # rendered by gr.Image's own frontend (a subclass has no frontend of its own)

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception as error:
            name = Path(getattr(payload, "path", "") or "the file").name
            raise gr.Error(f"{name} is not an image that can be read (PNG, JPEG, WebP, ...): {error}") from None
