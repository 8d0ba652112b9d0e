"""Reading the images strangers upload: one place that turns any file into the RGB picture a model sees, or
refuses it with a message that says why.

A public server receives everything: text files renamed .png, truncated downloads, empty files, 16-bit
scans, CMYK JPEGs from print workflows, transparent PNGs, palette GIFs, animations, phone photos whose
pixels are stored sideways with an EXIF orientation tag, and decompression bombs (a 20000x20000 PNG of a
few hundred KB that would take 1.2 GB to decode). The pitfalls this module exists for:

- **Orientation.** A phone stores a portrait photo as landscape pixels plus EXIF tag 274; ignoring it analyses
  the photo sideways. ``ImageOps.exif_transpose`` applies it.
- **Bit depth.** ``Image.convert("RGB")`` on a 16-bit greyscale image clips every value above 255 to white;
  the values are scaled to 8 bits instead.
- **Transparency.** Converting RGBA to RGB drops alpha and shows whatever colour the transparent pixels
  hold (often black); they are composited over white, as a viewer shows them.
- **Animations.** The first frame is the picture (what a viewer shows before playing).
- **Size.** The header is read before the pixels: more than :data:`MAX_PIXELS` is refused before decoding,
  a JPEG is decoded at a reduced scale when it is much larger than needed (``draft``), and anything wider than
  :data:`MAX_SIDE` is downscaled at once (every model here reads 224 to 448 pixels), so one upload cannot hold
  hundreds of MB while it waits in the queue.

>>> import io
>>> buffer = io.BytesIO()
>>> Image.new("I;16", (32, 32), 65535).save(buffer, format="PNG")
>>> read_image(buffer, "white16.png").getpixel((0, 0))
(255, 255, 255)
>>> read_image(io.BytesIO(b""), "empty.png")
Traceback (most recent call last):
...
engine.errors.UserInputError: empty.png is empty (0 bytes); upload an image file (PNG, JPEG, WebP, ...)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import UserInputError

MAX_UPLOAD_BYTES = 25 * 2**20
"""The largest file accepted (also given to Gradio's ``launch(max_file_size=...)``, so that Gradio refuses a
larger upload before it stores it)."""
MAX_PIXELS = 40_000_000
"""The most pixels decoded (a 40-megapixel image); the header says how many before any pixel is read."""
MAX_SIDE = 1024
"""Images are downscaled at once to at most this many pixels on the longer side."""
MIN_SIDE = 16
"""Smaller images carry too little for a patch grid (a 1x1 image would be upscaled into one flat colour)."""
FORMATS_HINT = "PNG, JPEG, WebP, ..."
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
"""The decoders PIL may use: the common photo and web formats. Others are refused unread (PIL's EPS reader, for
one, runs Ghostscript on the file)."""

Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL itself refuses beyond twice this, even where we are not asked
Image.init()  # every plugin registered, so that ``formats`` can name them


def read_image(source: str | Path | BinaryIO, name: str | None = None) -> Image.Image:
    """The RGB picture in an image file (a path or a binary file object), upright, 8 bits per channel, at most
    :data:`MAX_SIDE` pixels on its longer side; a :class:`UserInputError` that names the file (never the
    server's path to it) for anything else.

    >>> read_image(io.BytesIO(b"not an image"), "notes.png")
    Traceback (most recent call last):
    ...
    engine.errors.UserInputError: notes.png is not an image that can be read (PNG, JPEG, WebP, ...)
    """
    name = name or (Path(source).name if isinstance(source, (str, Path)) else "the file")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise UserInputError(f"image file not found: {name}")
        size = path.stat().st_size
    else:
        size = source.seek(0, io.SEEK_END)
        source.seek(0)
    if size == 0:
        raise UserInputError(f"{name} is empty (0 bytes); upload an image file ({FORMATS_HINT})")
    if size > MAX_UPLOAD_BYTES:
        raise UserInputError(
            f"{name} is too large ({size / 2**20:.1f} MB); the limit is {MAX_UPLOAD_BYTES // 2**20} MB"
        )
    try:
        with Image.open(source, formats=FORMATS) as image:
            check_pixels(image.width, image.height, name)
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # an animation: its first frame
            image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG only: decode at a reduced scale when much larger
            image.load()
            picture = normalise(image)
    except UserInputError:
        raise
    except Image.DecompressionBombError:
        raise UserInputError(f"{name} has too many pixels; the limit is {MAX_PIXELS // 10**6} megapixels") from None
    except UnidentifiedImageError:
        raise UserInputError(f"{name} is not an image that can be read ({FORMATS_HINT})") from None
    except (OSError, SyntaxError, ValueError):  # PIL's decoders raise all three on corrupt data
        raise UserInputError(f"{name} is a broken or truncated image; upload the whole file") from None
    return picture


def check_pixels(width: int, height: int, name: str) -> None:
    if width * height > MAX_PIXELS:
        raise UserInputError(
            f"{name} is too large ({width}x{height} pixels); the limit is {MAX_PIXELS // 10**6} megapixels"
        )
    if min(width, height) < MIN_SIDE:
        raise UserInputError(f"{name} is too small ({width}x{height} pixels); give at least {MIN_SIDE}x{MIN_SIDE}")


def normalise(image: Image.Image) -> Image.Image:
    """An opened image as an upright 8-bit RGB picture, downscaled to :data:`MAX_SIDE`.

    >>> normalise(Image.new("RGBA", (20, 20), (255, 0, 0, 0))).getpixel((0, 0))  # transparent: white
    (255, 255, 255)
    """
    image = ImageOps.exif_transpose(image) or image
    check_pixels(image.width, image.height, "the image")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode.startswith("I;16") or values.max() > 255 else 1.0
        image = Image.fromarray(np.clip(values / scale, 0, 255).round().astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        peak = 1.0 if values.max() <= 1.0 else 255.0
        image = Image.fromarray(np.clip(values / peak * 255, 0, 255).round().astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    picture = image.convert("RGB")
    if max(picture.size) > MAX_SIDE:
        picture.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return picture
