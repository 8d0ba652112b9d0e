"""Datasets of images for SAE training and the feature index: a folder of files, or the toy-world generator.

Both are *indexable*: image ``i`` is always the same picture, so a training run or an index can be split across
processes (each takes its own positions), stopped and resumed, and an index can name its top images by
number and show them later without storing them (a toy image is re-rendered from its scene seed; a folder
image is read again from its path).

- :class:`FolderImages`: every regular file under a folder, recursively, sorted by path, that PIL can read.
  Files are opened only when asked for; a file PIL cannot read (a text file, a truncated image) gives
  ``None`` and is counted by the caller as skipped. Links are followed only when they stay inside the folder.
- :class:`ToyImages`: ``n`` scenes drawn with a seed (engine.toyworld.render), with their ground truth.

``parse_source("toy:4096@777")`` or ``parse_source("/data/photos")`` builds one from the command-line syntax.

>>> toy = parse_source("toy:8@5")
>>> len(toy), toy.load(3).size, toy.describe()
(8, (48, 48), 'toy:8@5')
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from engine.errors import UserInputError
from engine.toyworld import render

TOY_PREFIX = "toy:"
DEFAULT_TOY_SEED = 41_000  # a seed no other trainer or held-out set uses


class ImageSource:
    """What training and indexing read: ``len``, ``load(i)`` (None when unreadable), a short description."""

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, i: int) -> Image.Image | None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def name(self, i: int) -> str:
        """A human-readable id of image ``i`` (a relative path, a scene)."""
        return str(i)


@functools.lru_cache(maxsize=8)
def toy_scenes(n: int, seed: int) -> tuple[tuple[render.Scene, int], ...]:
    """The scenes of a toy dataset, drawn once per process (4,096 take 0.7 s; a latent card reads 16 of them)."""
    return tuple(render.sample_scenes(n, seed))


TOY_IMAGE_CACHE = 2048
"""Rendered toy images kept (7 KB each, 14 MB in all): a latent card shows 16 of the index's images, each
rendered in milliseconds, and cards of related latents share many."""


@functools.lru_cache(maxsize=TOY_IMAGE_CACHE)
def toy_image(n: int, seed: int, i: int) -> Image.Image:
    scene, scene_seed = toy_scenes(n, seed)[i]
    return render.render_image(scene, scene_seed)


@dataclass(frozen=True)
class ToyImages(ImageSource):
    n: int
    seed: int = DEFAULT_TOY_SEED

    def __post_init__(self) -> None:
        if self.n < 1:
            raise UserInputError(f"a toy dataset needs at least one image; got {self.n}")

    def __len__(self) -> int:
        return self.n

    @property
    def scenes(self) -> tuple[tuple[render.Scene, int], ...]:
        return toy_scenes(self.n, self.seed)

    def load(self, i: int) -> Image.Image:
        return toy_image(self.n, self.seed, i).copy()  # a copy: the caller may draw on it

    def scene(self, i: int) -> render.Scene:
        return self.scenes[i][0]

    def describe(self) -> str:
        return f"{TOY_PREFIX}{self.n}@{self.seed}"

    def name(self, i: int) -> str:
        scene = self.scene(i)
        return (
            f"#{i} {scene.colour} {scene.shape}, {scene.size}, {scene.position}, {scene.texture}, marker {scene.marker}"
        )


class FolderImages(ImageSource):
    """Every file under ``root`` (recursively, sorted), read with PIL when asked for."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise UserInputError(f"image folder not found: {root}")
        # A link is kept only when it resolves inside the folder: a dataset cannot reach outside it.
        self.files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.resolve().is_relative_to(self.root))
        if not self.files:
            raise UserInputError(f"the image folder {root} holds no files")

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> Image.Image | None:
        try:
            with Image.open(self.files[i]) as image:
                return image.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return None

    def describe(self) -> str:
        return str(self.root)

    def name(self, i: int) -> str:
        return str(self.files[i].relative_to(self.root))


def parse_source(text: str) -> ImageSource:
    """``toy:N`` or ``toy:N@SEED`` (rendered scenes), or a folder path."""
    if text.startswith(TOY_PREFIX):
        count, _, seed = text[len(TOY_PREFIX) :].partition("@")
        try:
            return ToyImages(int(count), int(seed) if seed else DEFAULT_TOY_SEED)
        except ValueError:
            raise UserInputError(f"toy dataset {text!r}: expected toy:N or toy:N@SEED with whole numbers") from None
    return FolderImages(text)
