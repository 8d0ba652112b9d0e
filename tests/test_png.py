"""engine.png: the hand-filtered PNG decodes, with PIL's own decoder, to exactly the pixels it was given."""

import io

import numpy as np
import pytest
from PIL import Image

from engine.png import png_bytes


def decoded(data: bytes) -> Image.Image:
    Image.open(io.BytesIO(data)).verify()  # signature, chunk CRCs, structure
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (37, 5), (240, 274)])
def test_random_pixels_round_trip_exactly(size):
    pixels_HWC = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = decoded(png_bytes(Image.fromarray(pixels_HWC)))
    assert out.mode == "RGB" and out.size == size
    assert np.array_equal(np.asarray(out), pixels_HWC)  # every byte, the wrap-around of "Up" included


def test_other_modes_are_written_as_their_rgb_conversion():
    rng = np.random.default_rng(1)
    for image in (
        Image.fromarray(rng.integers(0, 256, (9, 7), dtype=np.uint8), "L"),
        Image.fromarray(rng.integers(0, 256, (9, 7, 4), dtype=np.uint8), "RGBA"),
        Image.new("P", (7, 9)),
    ):
        assert np.array_equal(np.asarray(decoded(png_bytes(image))), np.asarray(image.convert("RGB")))


def test_upscaled_pixel_art_is_smaller_than_its_raw_pixels_and_exact():
    scene = Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    big = scene.resize((240, 240), Image.NEAREST)
    data = png_bytes(big)
    assert np.array_equal(np.asarray(decoded(data)), np.asarray(big))
    assert len(data) < 240 * 240 * 3 / 4  # four rows in five filter to zeros
