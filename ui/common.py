"""Shared UI pieces: the workbench the tabs talk to, input parsing, error translation, heatmap overlays.

Engine errors are turned into ``gr.Error`` here, at the boundary, and nowhere else.
"""

from __future__ import annotations

import functools
import html
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from engine import images, vocabulary, zeroshot
from engine.diff import DiffPair
from engine.errors import USER_ERRORS
from engine.heldout import Heldout
from engine.png import png_bytes
from engine.registry import DiffPreset, Preset
from engine.resident import Workbench
from engine.sources import AllowedDirs
from ui import readings, share
from ui.gpu import on_gpu

log = logging.getLogger(__name__)


@dataclass
class ModelContext:
    """What a handler needs for one model: its resident workbench, a held-out batch, and the concept vocabulary
    that names latents where the SAE ships no labels."""

    workbench: Workbench
    heldout: Heldout | None = None
    concepts: Callable[[], tuple[str, ...]] = field(default=vocabulary.concept_vocabulary)
    explanations: Callable[[list[int], object], dict[int, str]] = field(default=lambda latents, settings=None: {})
    """Cached explanations (Explain tab) of latents of this SAE, under an Explain settings object (None: defaults)."""

    def latent_names(self, latents: list[int], template: str | None) -> dict[int, tuple[str, float | None, str]]:
        return vocabulary.latent_names(self.workbench, latents, template, self.concepts())


@dataclass
class AppContext:
    """The models the app offers (loaded on first use, then resident) and the example images."""

    choices: dict[str, Preset]
    load: Callable[[Preset], Workbench]
    heldout: Callable[[Preset], Heldout | None]
    examples: dict[str, list[str]] = field(default_factory=dict)
    concepts: Callable[[], tuple[str, ...]] = field(default=vocabulary.concept_vocabulary)
    pairs: dict[str, DiffPreset] = field(default_factory=dict)
    load_pair: Callable[[DiffPreset], DiffPair] | None = None
    allowed: AllowedDirs | None = None
    explain: Any = None  # ui.explain_tab.ExplainContext: the Explain tab's VLMs (None: the tab says none is offered)

    @property
    def default(self) -> str:
        return next(iter(self.choices))

    def model(self, name: str | None) -> ModelContext:
        name = name or self.default
        if name not in self.choices:
            raise ValueError(f"unknown model {name!r}; valid: {', '.join(self.choices)}")
        chosen = self.choices[name]
        workbench = self.load(chosen)
        context = ModelContext(workbench, self.heldout(chosen), self.concepts)
        if self.explain is not None:
            context.explanations = lambda latents, settings=None: self.explain.explanations(
                workbench.resident_sae, latents, settings
            )
        return context

    def pair_preset(self, name: str | None) -> DiffPreset:
        """The checkpoint pair by its menu name (the first when empty), not loaded."""
        if not self.pairs or self.load_pair is None:
            raise ValueError("no checkpoint pair is offered by this server")
        name = name or next(iter(self.pairs))
        if name not in self.pairs:
            raise ValueError(f"unknown checkpoint pair {name!r}; valid: {', '.join(self.pairs)}")
        return self.pairs[name]

    def pair(self, name: str | None) -> tuple[DiffPreset, DiffPair]:
        """The checkpoint pair by its menu name (the first when empty), loaded."""
        preset = self.pair_preset(name)
        return preset, self.load_pair(preset)


def user_errors(fn: Callable, gpu: bool = True) -> Callable:
    """Run a handler. A user error (engine.errors) becomes a ``gr.Error`` with its message, escaped (Gradio
    renders the toast as HTML, and the message may quote the user's text) and logged as one line; anything
    else is a bug: logged with its traceback, reported to the user without internal text. A handler that runs a
    model (``gpu``, the default) runs on a lent GPU where the app is served on one (ui/gpu.py)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except USER_ERRORS as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            log.info("%s: refused: %s", fn.__name__, message)
            raise gr.Error(html.escape(str(message)), print_exception=False) from None
        except Exception:
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error(
                "internal error: the server could not complete this request (the details are in its log). "
                "Your inputs are unchanged; try again, or another image or setting.",
                print_exception=False,  # logged above, with its traceback, once
            ) from None

    return on_gpu(wrapped) if gpu else wrapped


def image_warnings(workbench: Workbench, picture: Image.Image) -> list[str]:
    """The engine's warnings about this image on this model (e.g. an SAE that explains little of it)."""
    return workbench.image_warnings(picture)


def warning_markdown(warnings: list[str]) -> str:
    """Warnings as one prominent block (empty when there are none)."""
    return "".join(f"⚠️ **Warning:** {w[:1].upper() + w[1:]}.\n\n" for w in warnings)


def clear_on_failure(event, outputs: list[gr.components.Component]) -> None:
    """When ``event`` fails, empty its outputs, so that no earlier result stays on screen beside the error."""
    empty = [empty_value(output) for output in outputs]
    event.failure(lambda: empty if len(empty) > 1 else None, None, outputs, api_name=False)


def empty_value(component: gr.components.Component):
    """What shows an output as empty: nothing, except for a plot, whose frontend fails on nothing (an empty
    frame with its columns instead)."""
    if isinstance(component, (gr.BarPlot, gr.LinePlot, gr.ScatterPlot)):
        return pd.DataFrame({name: [] for name in (component.x, component.y, component.color) if name})
    return None


def load_image(value) -> Image.Image:
    """A PIL image from what Gradio or a client sends (a path, a FileData dict or a PIL image), upright, RGB and
    downscaled early (engine.images), with a clear message for anything that is not a readable image."""
    if value is None or value == "":
        raise ValueError("no image: upload one or pick an example")
    if isinstance(value, Image.Image):
        return images.normalise(value)
    path = value if isinstance(value, str) else value.get("path", "")
    return images.read_image(path, Path(path).name)


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


def parse_latent(value, workbench: Workbench) -> int:
    if value is None or str(value).strip() == "":
        raise ValueError(f"choose a latent id (0 .. {workbench.d_sae - 1}); run Attribution to see the important ones")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"latent id must be a whole number 0 .. {workbench.d_sae - 1}; got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"latent id must be a whole number 0 .. {workbench.d_sae - 1}; got {value!r}")
    return workbench.check_latent(int(number))


def overlay_base(image: Image.Image, size: int = 256) -> Image.Image:
    """The picture every heatmap of ``image`` is drawn on: a small image (at most :data:`SHARP_BELOW_PX`; the
    toy's are 48 px) upscaled with NEAREST by a whole factor (to 240 px, at most ``size``), so its pixels stay
    sharp, all of one size, and the patch grid falls on pixel edges; a photograph resized to ``size`` (BICUBIC).
    Made once per request, not once per heatmap (a large photograph's resize costs more than the rest of a
    heatmap)."""
    if is_pixel_art(image):
        if image.width == image.height:
            size = image.width * (size // image.width)
        return image.convert("RGB").resize((size, size), Image.NEAREST)
    return image.convert("RGB").resize((size, size), Image.BICUBIC)


def is_pixel_art(image: Image.Image) -> bool:
    """Drawn pixel for pixel (upscaled at least twice, as PNG) rather than as a photograph (smoothly, as JPEG)."""
    return max(image.size) <= SHARP_BELOW_PX


def overlay(
    image: Image.Image, map_HW: torch.Tensor, size: int = 256, signed: bool = False, base: Image.Image | None = None
) -> Image.Image:
    """The image with a per-patch map laid over it (red: high; blue: negative when ``signed``), the patch grid
    drawn in, and a colour scale beneath that says what the strongest red means, on :func:`overlay_base` (pass
    it as ``base`` when drawing several maps of one image).

    The map is constant within a patch, so its colour and opacity are computed once per patch and laid over
    the image by PIL's compositing (a quarter of the time of blending every pixel in float)."""
    base = overlay_base(image, size) if base is None else base
    size = base.width
    values = map_HW.detach().float().cpu().numpy()
    peak = float(np.abs(values).max())
    colour_HWC, alpha_HW = overlay_colours(np.clip(values / (peak or 1.0), -1, 1), signed)
    colour = Image.fromarray(colour_HWC).resize((size, size), Image.NEAREST)
    alpha = Image.fromarray(alpha_HW).resize((size, size), Image.NEAREST)
    picture = Image.composite(colour, base, alpha)
    draw = ImageDraw.Draw(picture)
    rows, cols = values.shape
    for k in range(1, cols):
        draw.line([(k * size // cols, 0), (k * size // cols, size)], fill=(255, 255, 255), width=1)
    for k in range(1, rows):
        draw.line([(0, k * size // rows), (size, k * size // rows)], fill=(255, 255, 255), width=1)
    return with_colour_scale(picture, peak, signed)


def overlay_colours(norm_HW: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per cell of a map scaled to [-1, 1], what :func:`blend` lays over a pixel, in uint8: the colour (red as
    strong as the value, blue for negative values when ``signed``) and its opacity (0.65 at the extreme)."""
    colour_HWC = np.zeros((*norm_HW.shape, 3), np.float32)
    colour_HWC[..., 0] = np.clip(norm_HW, 0, 1)
    if signed:
        colour_HWC[..., 2] = np.clip(-norm_HW, 0, 1)
    alpha_HW = np.abs(norm_HW) * 0.65
    return (colour_HWC * 255).round().astype(np.uint8), (alpha_HW * 255).round().astype(np.uint8)


def blend(base_HWC: np.ndarray, norm_HW: np.ndarray, signed: bool) -> np.ndarray:
    """Red where the map is positive (blue where negative when ``signed``), as opaque as the value is strong
    (floats in [0, 1]; the legend's ramp, and the reference for :func:`overlay`'s compositing)."""
    colour = np.zeros_like(base_HWC)
    colour[..., 0] = np.clip(norm_HW, 0, 1)
    if signed:
        colour[..., 2] = np.clip(-norm_HW, 0, 1)
    alpha = np.abs(norm_HW)[..., None] * 0.65
    return base_HWC * (1 - alpha) + colour * alpha


@functools.lru_cache(maxsize=16)
def colour_strip(width: int, signed: bool) -> Image.Image:
    """The legend's ramp, 12 px high: the overlay's colours over a white ground, from 0 (or -1) to 1."""
    ramp = np.linspace(-1 if signed else 0, 1, width, dtype=np.float32)[None, :].repeat(12, 0)
    return Image.fromarray((blend(np.ones((12, width, 3), np.float32), ramp, signed) * 255).round().astype(np.uint8))


@functools.lru_cache(maxsize=1)
def legend_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font, loaded once (each ``draw.text`` without a font loads it again)."""
    return ImageFont.load_default()


@functools.lru_cache(maxsize=16)
def legend_template(width: int, signed: bool, height: int, peak: bool) -> Image.Image:
    """The parts of a legend strip that do not depend on the map: the ramp, its frame, the "0" of an unsigned
    scale and the caption (drawing a line of text costs milliseconds, more than the rest of a heatmap)."""
    out = Image.new("RGB", (width, height), (255, 255, 255))
    out.paste(colour_strip(width, signed), (0, 2))
    draw = ImageDraw.Draw(out)
    draw.rectangle([0, 2, width - 1, 13], outline=(120, 120, 120))
    if not signed or not peak:
        draw.text((2, 16), "0", fill=(0, 0, 0), font=legend_font())
    if peak:
        draw.text((width // 2, 16), "activation per patch", fill=(90, 90, 90), anchor="ma", font=legend_font())
    return out


def with_colour_scale(picture: Image.Image, peak: float, signed: bool, height: int = 34) -> Image.Image:
    """``picture`` with a legend strip beneath: the overlay's colours over a white ground, from 0 (or -peak) to
    the map's largest value."""
    width = picture.width
    out = Image.new("RGB", (width, picture.height + height), (255, 255, 255))
    out.paste(picture, (0, 0))
    out.paste(legend_template(width, signed, height, bool(peak)), (0, picture.height))
    draw = ImageDraw.Draw(out)
    y = picture.height + 16
    if signed and peak:
        draw.text((2, y), f"-{readings.number(peak)}", fill=(0, 0, 0), font=legend_font())
    high = readings.number(peak) if peak else "0 (fires on no patch)"
    draw.text((width - 2, y), high, fill=(0, 0, 0), anchor="ra", font=legend_font())
    return out


DRAWING_THREADS = 4
_drawing_pool = ThreadPoolExecutor(DRAWING_THREADS, thread_name_prefix="drawing")


def drawn_in_parallel(draw: Callable[[Any], str], items: list) -> list[str]:
    """``[draw(item) for item in items]`` on a few threads, in order: PIL and zlib let go of the GIL while they
    resize, composite and encode (on this project's 2 cores six heatmaps take 92 to 95% of their time one after
    the other; more where there are more cores)."""
    return list(_drawing_pool.map(draw, items))


def heatmap_files(picture: Image.Image, maps: list[tuple[torch.Tensor, str]], signed: bool = False) -> list[str]:
    """:func:`overlay` of each (map, file prefix) on ``picture``, written by :func:`save_drawing`, in order.

    Drawn after the model's work, not beside it: on two cores, drawing threads beside torch's made both wait (a
    toy attribution's faithfulness check read 24 ms beside the drawing and 5 ms alone; the whole ViT-B/32
    Attribution handler took 204 ms that way and 196 ms one after the other)."""
    base = overlay_base(picture)
    return drawn_in_parallel(
        lambda item: save_drawing(overlay(picture, item[0], signed=signed, base=base), item[1], picture), maps
    )


JPEG_QUALITY = 90
SHARP_BELOW_PX = 128
"""Source images at most this size (the toy's 48 px scenes) are upscaled pixel for pixel, by a whole factor of
at least 2, and drawn as PNG (sharp, and small: flat colours); larger ones, photographs (224 px and up), are
resized smoothly and drawn as JPEG: 15 to 20 times faster to encode than PNG and a quarter of its bytes, with no
visible loss at quality 90 (a 224 px photograph drawn as PNG took 5 to 10 ms a heatmap)."""


def save_png(image: Image.Image, prefix: str) -> str:
    """Write an output image to a fresh file in ui.share.IMAGE_DIR (served as it is; removed after an hour by the
    app's ``delete_cache`` or ui.share.output_path)."""
    path = share.output_path(prefix, ".png")
    path.write_bytes(png_bytes(image))  # rows filtered "Up": pixel art's repeated rows cost nothing (engine.png)
    return str(path)


def save_drawing(image: Image.Image, prefix: str, source: Image.Image) -> str:
    """:func:`save_png` where the drawing shows pixel art (:func:`is_pixel_art`), JPEG where it shows a
    photograph."""
    if is_pixel_art(source):
        return save_png(image, prefix)
    path = share.output_path(prefix, ".jpg")
    image.convert("RGB").save(path, format="JPEG", quality=JPEG_QUALITY)
    return str(path)


class ImageInput(gr.Image):
    """``gr.Image(type="filepath")`` whose decoding failures (a text file, a truncated PNG, a decompression
    bomb) reach the user as a clear message instead of Gradio's generic processing error, and which takes only
    uploads: Gradio accepts a file in a static path (the app's drawings, ui.share.IMAGE_DIR) as an input without
    its upload check, so a path into that folder forged into an API call is refused here, as Gradio refuses any
    other path it did not receive as an upload."""

    def get_block_name(self) -> str:
        return "image"  # rendered by gr.Image's own frontend (a subclass has no frontend of its own)

    def preprocess(self, payload):
        """The uploaded file's path, untouched: Gradio's own decoding (which converts modes through a lossy
        WebP copy and fails with a generic message) is skipped; every handler reads the file through
        ``load_image``, which says what is wrong with it."""
        if payload is None:
            return None
        if Path(str(payload.path)).resolve().is_relative_to(share.IMAGE_DIR.resolve()):
            raise gr.Error("Cannot use this file: it was not uploaded by a user.", print_exception=False)
        return str(payload.path)
