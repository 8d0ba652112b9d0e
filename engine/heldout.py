"""Held-out images for ripple effects: what else does an edit change, on images the user did not send?

A ripple effect is only meaningful on a fixed set that no request can change, so results are reproducible
and one user's uploads never leak into another's numbers:

- the toy world renders a fixed batch of scenes (a seed no trainer uses), whose ground truth gives an
  accuracy per label wherever the labels name values of one factor ("circle, square, ...");
- real models use the shipped photographs (public domain / CC0), which have no ground truth: only changes of
  the prediction count there.

>>> images, truth = heldout_for(ModelSpec.toy())(["circle", "square", "triangle", "cross"])
>>> len(images) == HELDOUT_SIZE and len(truth) == HELDOUT_SIZE
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from engine.errors import UserInputError
from engine.images import read_image
from engine.sources import AllowedDirs
from engine.specs import PHOTOS_DIR, ModelSpec
from engine.toyworld import captions, render

HELDOUT_SEED, HELDOUT_SIZE = 777_000, 96
Heldout = Callable[[list[str]], tuple[list[Image.Image], list[int | None] | None]]


@functools.cache
def toy_scenes() -> tuple[tuple[Image.Image, ...], tuple[render.Scene, ...]]:
    scenes = render.sample_scenes(HELDOUT_SIZE, HELDOUT_SEED)
    return tuple(render.render_image(s, seed) for s, seed in scenes), tuple(s for s, _ in scenes)


def toy_heldout(labels: list[str]) -> tuple[list[Image.Image], list[int | None] | None]:
    """The toy batch, with the index of the true label per image where the labels name one factor's values."""
    images, scenes = toy_scenes()
    return list(images), captions.truth_for_labels(labels, list(scenes))


@functools.cache
def photos() -> tuple[Image.Image, ...]:
    return tuple(Image.open(p).convert("RGB") for p in sorted(PHOTOS_DIR.glob("*.jpg")))


def photos_heldout(labels: list[str]) -> tuple[list[Image.Image], None]:
    """The shipped photographs: a small held-out batch without ground truth (only prediction changes count)."""
    return list(photos()), None


def heldout_for(model: ModelSpec) -> Heldout:
    """The held-out batch that fits ``model``: the toy scenes for the toy CLIP, the photographs otherwise."""
    return toy_heldout if model == ModelSpec.toy() else photos_heldout


DIFF_PROBE_SEED = 778_000
MAX_PROBE_IMAGES = 512


def toy_probe(n: int, labels: list[str]) -> tuple[list[Image.Image], list[int | None] | None, list[render.Scene]]:
    """``n`` freshly rendered toy scenes for a checkpoint diff (a seed no trainer uses), with the true label
    per image where the labels name one factor's values, and the scenes."""
    if not 2 <= n <= MAX_PROBE_IMAGES:
        raise UserInputError(f"probe set size must be within 2 .. {MAX_PROBE_IMAGES}; got {n}")
    scenes = render.sample_scenes(n, DIFF_PROBE_SEED)
    images = [render.render_image(s, seed) for s, seed in scenes]
    return images, captions.truth_for_labels(labels, [s for s, _ in scenes]), [s for s, _ in scenes]


def folder_images(
    folder: str | Path, allowed: AllowedDirs, limit: int = MAX_PROBE_IMAGES
) -> tuple[list[Image.Image], int]:
    """Up to ``limit`` images from a folder (recursively, sorted by path, any format PIL reads) inside an
    allowed directory; returns the images and how many files were skipped as unreadable."""
    if not 2 <= limit <= MAX_PROBE_IMAGES:
        raise UserInputError(f"a probe set holds 2 .. {MAX_PROBE_IMAGES} images; got {limit}")
    root = allowed.check(folder)
    if not root.is_dir():
        raise UserInputError(f"probe folder not found: {Path(folder).name}")
    images, skipped = [], 0
    # Links are resolved and kept only when they stay inside the folder: a link cannot point outside it.
    files = (p for p in root.rglob("*") if p.is_file() and p.resolve().is_relative_to(root))
    for path in sorted(files):
        if len(images) >= limit:
            break
        try:
            images.append(read_image(path))
        except UserInputError:  # not an image, broken, too large or too small: counted, not fatal
            skipped += 1
    if len(images) < 2:
        raise UserInputError(f"the probe folder {root.name} holds {len(images)} readable images; give at least two")
    return images, skipped
