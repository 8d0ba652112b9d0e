"""Writing the app's drawings as PNG, fast: heatmaps and card thumbnails of small images are pixel art.

A PNG stores each row of pixels after a *filter* that turns it into small numbers zlib packs well (the PNG
specification, section 9): "None" keeps the row, "Up" stores its difference from the row above, and three more
predict from the left neighbour or both. An encoder may pick a filter per row; PIL tries all five on every row
and keeps the one whose bytes look smallest, which costs as much as the compression itself.

The drawings here are small images (the toy's 48 px scenes) upscaled by a whole factor with NEAREST (5x for a
heatmap, 3x for a card thumbnail): most rows repeat the one above, and "Up" turns each repeat into zeros. So
:func:`png_bytes` filters every row with "Up" and compresses at zlib level 1: a toy heatmap encodes in about half
of PIL's time at level 1 (1.4 -> 0.7 ms) for 10% more bytes, a card thumbnail in half the time for 14% fewer
bytes. The file is a plain 8-bit RGB PNG that decodes to the same pixels (tested against PIL's decoder).

>>> import io
>>> image = Image.new("RGB", (3, 2), (250, 20, 20))
>>> decoded = Image.open(io.BytesIO(png_bytes(image)))
>>> decoded.size, decoded.mode, decoded.getpixel((2, 1))
((3, 2), 'RGB', (250, 20, 20))
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_UP = 2
COMPRESS_LEVEL = 1
"""zlib level: 1 encodes a toy heatmap in 56% of the default's (6) time (0.73 against 1.31 ms) for 13% more bytes."""


def png_bytes(image: Image.Image, level: int = COMPRESS_LEVEL) -> bytes:
    """``image`` (converted to RGB) as an 8-bit RGB PNG, every row filtered with "Up" (see the module docstring)."""
    rgb_HWC = np.asarray(image.convert("RGB"))
    height, width, _ = rgb_HWC.shape
    rows_HR = rgb_HWC.reshape(height, width * 3)
    filtered_HR = np.empty((height, width * 3 + 1), dtype=np.uint8)  # each row: its filter byte, then its bytes
    filtered_HR[:, 0] = FILTER_UP
    filtered_HR[0, 1:] = rows_HR[0]  # the row above the first counts as zeros
    np.subtract(rows_HR[1:], rows_HR[:-1], out=filtered_HR[1:, 1:])  # modulo 256, as the specification says
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, deflate, filters, no interlace
    return b"".join(
        (
            SIGNATURE,
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(filtered_HR.tobytes(), level)),
            chunk(b"IEND", b""),
        )
    )


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, and the CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
