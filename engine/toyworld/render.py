"""The toy world: procedurally rendered images whose concepts are known exactly.

Every image is drawn from a :class:`Scene`, a choice of one value per factor:

    shape     circle, square, triangle, cross
    colour    red, green, blue, yellow, magenta, cyan
    texture   plain, striped, dotted            (the background)
    size      small, large
    position  top left, top right, bottom left, bottom right
    marker    absent, present                   (a small white square in the top-right corner)

Rendering is deterministic given the scene and a seed: the seed drives only nuisance variation (jitter
of centre, radius, hue and background grey, texture phase, pixel noise), never a factor. Besides the image,
:func:`render` returns the ground truth at the pixel level (which pixels belong to the shape and to the
marker), so that per-patch heatmaps can be scored as well as image-level labels.

>>> scene = Scene("circle", "red", "plain", "large", "top left", "absent")
>>> image, truth = render(scene, seed=0)
>>> image.size, truth.shape_mask_HW.shape
((48, 48), (48, 48))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 48
SUPERSAMPLE = 4  # draw at 4x and downsample: smooth edges without a dependency

FACTORS: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "cross"),
    "colour": ("red", "green", "blue", "yellow", "magenta", "cyan"),
    "texture": ("plain", "striped", "dotted"),
    "size": ("small", "large"),
    "position": ("top left", "top right", "bottom left", "bottom right"),
    "marker": ("absent", "present"),
}

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (45, 185, 60),
    "blue": (55, 95, 235),
    "yellow": (235, 215, 45),
    "magenta": (215, 55, 205),
    "cyan": (45, 210, 215),
}
RADIUS_PX = {"small": 5.0, "large": 9.0}
CENTRE_PX = {"top left": (12, 12), "top right": (36, 12), "bottom left": (12, 36), "bottom right": (36, 36)}
MARKER_BOX_PX = (42, 1, 47, 6)  # x0, y0, x1, y1: the top-right corner


@dataclass(frozen=True)
class Scene:
    """One value per factor; the complete ground truth of an image."""

    shape: str
    colour: str
    texture: str
    size: str
    position: str
    marker: str

    def __post_init__(self) -> None:
        for factor, value in asdict(self).items():
            if value not in FACTORS[factor]:
                raise ValueError(f"unknown {factor} {value!r}; valid: {', '.join(FACTORS[factor])}")

    @classmethod
    def random(cls, rng: np.random.Generator) -> Scene:
        return cls(**{name: str(rng.choice(values)) for name, values in FACTORS.items()})

    def replace(self, **changes: str) -> Scene:
        return Scene(**{**asdict(self), **changes})

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Truth:
    """Pixel-level ground truth that comes with a render."""

    scene: Scene
    shape_mask_HW: np.ndarray  # bool
    marker_mask_HW: np.ndarray  # bool

    def patch_fraction(self, patch: int) -> dict[str, np.ndarray]:
        """Fraction of each (patch x patch) cell covered by the shape and by the marker, (gh, gw) each."""
        grid = IMAGE_SIZE // patch

        def pool(mask: np.ndarray) -> np.ndarray:
            return mask.reshape(grid, patch, grid, patch).mean(axis=(1, 3))

        return {"shape": pool(self.shape_mask_HW), "marker": pool(self.marker_mask_HW)}


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "cross":
        a, t = r, r * 0.36
        return [
            (cx - t, cy - a), (cx + t, cy - a), (cx + t, cy - t), (cx + a, cy - t), (cx + a, cy + t),
            (cx + t, cy + t), (cx + t, cy + a), (cx - t, cy + a), (cx - t, cy + t), (cx - a, cy + t),
            (cx - a, cy - t), (cx - t, cy - t),
        ]  # fmt: skip
    return None  # circle: drawn as an ellipse


def _background_HW(texture: str, rng: np.random.Generator) -> np.ndarray:
    """Grey levels in [0, 1] at the final resolution; textures differ in structure, not in hue."""
    base = rng.uniform(0.22, 0.32)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    if texture == "plain":
        return np.full((IMAGE_SIZE, IMAGE_SIZE), base, np.float32)
    if texture == "striped":
        phase = rng.uniform(0, 6)
        stripes = ((xx + yy + phase) % 6) < 3  # diagonal stripes, period 6 px
        return np.where(stripes, base + 0.14, base - 0.06).astype(np.float32)
    ox, oy = rng.integers(0, 6, size=2)
    dots = (((xx + ox) % 6) < 2) & (((yy + oy) % 6) < 2)
    return np.where(dots, base + 0.2, base - 0.04).astype(np.float32)


def render(
    scene: Scene, seed: int, palette: Mapping[str, tuple[int, int, int]] | None = None
) -> tuple[Image.Image, Truth]:
    """Draw ``scene`` as a 48x48 RGB image; ``seed`` fixes the nuisance variation. ``palette`` overrides
    the base RGB of some colours (a distribution shift that keeps every factor's name)."""
    image, shape_mask = _draw(scene, seed, palette)
    shape_HW = np.asarray(shape_mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)) >= 128
    marker_HW = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    if scene.marker == "present":  # the box lies on whole pixels of the final image: its mask is exact
        x0, y0, x1, y1 = MARKER_BOX_PX
        marker_HW[y0:y1, x0:x1] = True
    return image, Truth(scene, shape_HW, marker_HW)


def render_image(scene: Scene, seed: int, palette: Mapping[str, tuple[int, int, int]] | None = None) -> Image.Image:
    """:func:`render`'s image alone, the same pixels, without the ground truth (a fifth faster: what a dataset
    reader needs, such as a latent card's 16 scenes)."""
    return _draw(scene, seed, palette)[0]


def _draw(
    scene: Scene, seed: int, palette: Mapping[str, tuple[int, int, int]] | None
) -> tuple[Image.Image, Image.Image]:
    """The image, and the shape's mask at the supersampled size (the random draws in one fixed order)."""
    rng = np.random.default_rng(seed)
    s = SUPERSAMPLE
    grey_HW = _background_HW(scene.texture, rng)
    canvas = Image.fromarray((np.repeat(grey_HW[..., None], 3, axis=2) * 255).astype(np.uint8))
    canvas = canvas.resize((IMAGE_SIZE * s, IMAGE_SIZE * s), Image.NEAREST)

    cx, cy = (c + rng.uniform(-1.5, 1.5) for c in CENTRE_PX[scene.position])
    r = RADIUS_PX[scene.size] * rng.uniform(0.92, 1.08)
    base_rgb = (palette or {}).get(scene.colour, COLOUR_RGB[scene.colour])
    rgb = tuple(int(np.clip(c + rng.integers(-18, 19), 0, 255)) for c in base_rgb)

    mask = Image.new("L", canvas.size, 0)
    draw = ImageDraw.Draw(mask)
    polygon = _shape_polygon(scene.shape, cx * s, cy * s, r * s)
    if polygon is None:
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255)
    else:
        draw.polygon(polygon, fill=255)
    canvas.paste(rgb, (0, 0, *canvas.size), mask=mask)  # the colour itself: no full-size image of it

    if scene.marker == "present":
        x0, y0, x1, y1 = MARKER_BOX_PX
        canvas.paste((250, 250, 250), (x0 * s, y0 * s, x1 * s, y1 * s))

    image_HWC = np.asarray(canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), dtype=np.float32)
    image_HWC = image_HWC + rng.normal(0, 4.0, image_HWC.shape)
    return Image.fromarray(np.clip(image_HWC, 0, 255).round().astype(np.uint8)), mask


def render_background(texture: str, seed: int, marker: bool = False) -> Image.Image:
    """A scene without a shape: only the background ``texture``, and the corner marker when asked (the toy VLM's
    empty scenes)."""
    if texture not in FACTORS["texture"]:
        raise ValueError(f"unknown texture {texture!r}; valid: {', '.join(FACTORS['texture'])}")
    rng = np.random.default_rng(seed)
    grey_HW = _background_HW(texture, rng)
    image_HWC = np.repeat(grey_HW[..., None], 3, axis=2) * 255
    if marker:
        x0, y0, x1, y1 = MARKER_BOX_PX
        image_HWC[y0:y1, x0:x1] = 250
    image_HWC = image_HWC + rng.normal(0, 4.0, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return Image.fromarray(np.clip(image_HWC, 0, 255).round().astype(np.uint8))


def sample_scenes(n: int, seed: int) -> list[tuple[Scene, int]]:
    """``n`` random scenes with per-image render seeds, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [(Scene.random(rng), int(rng.integers(2**31))) for _ in range(n)]


def render_batch(
    scenes_and_seeds: list[tuple[Scene, int]], palette: Mapping[str, tuple[int, int, int]] | None = None
) -> np.ndarray:
    """Render many scenes into one uint8 array (N, H, W, 3)."""
    return np.stack([np.asarray(render_image(scene, seed, palette)) for scene, seed in scenes_and_seeds])


def render_batch_with_truth(
    scenes_and_seeds: list[tuple[Scene, int]], patch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8 with, per (patch x patch) cell, the fraction covered by the shape and by the
    marker, (N, gh, gw) float32 each."""
    images, shape_fraction, marker_fraction = [], [], []
    for scene, seed in scenes_and_seeds:
        image, truth = render(scene, seed)
        fraction = truth.patch_fraction(patch)
        images.append(np.asarray(image))
        shape_fraction.append(fraction["shape"])
        marker_fraction.append(fraction["marker"])
    return np.stack(images), np.stack(shape_fraction).astype(np.float32), np.stack(marker_fraction).astype(np.float32)
