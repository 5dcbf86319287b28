"""The fast path for plain colour JPEGs: simplejpeg decodes them in less than half of Pillow's time.

simplejpeg and the Pillow wheels both decode with libjpeg-turbo at its defaults (accurate integer
DCT, smooth chroma upsampling), so the pixels are the same; tests/test_jpeg.py compares them over
chroma subsamplings, progressive files and a real clip's frames, and at first use the two decode a
small JPEG made on the spot: where they differ (a Pillow built on another libjpeg), the fast path
stays off. The time saved is Pillow's per-file Python work (opening, parsing the markers, building
the image object), which for Aff-Wild2's 112 px ``cropped_aligned`` frames costs about as much as
the decoding itself, and which CPU extraction pays between forward passes (docs/results-speed.md).

Pillow keeps every other file: other formats; JPEGs with an APP1 block (EXIF or XMP, which may
carry an orientation for Pillow to apply); grey, CMYK, 12-bit, lossless and arithmetic-coded JPEGs;
any marker before the scan that a plain JPEG does not hold; images above Pillow's
decompression-bomb limit; and any file simplejpeg finds fault with, so that a damaged file is
decoded or reported exactly as before.
"""

import functools
import io
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

JPEG_SUFFIXES = (".jpg", ".jpeg")
# Frame headers of 8-bit Huffman-coded JPEGs: baseline, extended sequential, progressive.
_SOF = (0xC0, 0xC1, 0xC2)
# Other segments a plain JPEG holds before its scan: DHT, DQT, DRI, COM, and APPn but APP1.
_TABLES = (0xC4, 0xDB, 0xDD, 0xFE, 0xE0, *range(0xE2, 0xF0))


def _plain_markers(data: bytes) -> bool:
    """Whether the segments before the scan (SOS) are only those of a plain 8-bit Huffman JPEG."""
    if data[:2] != b"\xff\xd8":
        return False
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xDA:
            return True
        length = int.from_bytes(data[pos + 2: pos + 4], "big")
        if marker in _SOF:
            if pos + 4 >= len(data) or data[pos + 4] != 8:  # sample precision
                return False
        elif marker not in _TABLES:
            return False
        pos += 2 + length
    return False


@functools.cache
def _same_pixels_as_pillow() -> bool:
    """Whether simplejpeg decodes a 4:2:0 JPEG made here exactly as this Pillow does."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    return np.array_equal(simplejpeg.decode_jpeg(data, "RGB"),
                          np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def decode_plain_jpeg(path: Path | str) -> np.ndarray | None:
    """A plain colour JPEG file decoded to uint8 (H, W, 3) RGB, or None for any other file.

    Plain: a ``.jpg``/``.jpeg`` name; before the scan only baseline, extended or progressive 8-bit
    frames, Huffman and quantisation tables, restart intervals, comments and APPn blocks but APP1;
    YCbCr colour; at most ``PIL.Image.MAX_IMAGE_PIXELS`` pixels; no fault that libjpeg-turbo
    reports (a truncated or corrupt stream). Never raises: a file it cannot read is None, and
    Pillow then decodes it or says what is wrong (:func:`pipeline.data.images.load_rgb`).
    """
    path = Path(path)
    if path.suffix.lower() not in JPEG_SUFFIXES or not _same_pixels_as_pillow():
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not _plain_markers(data):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace != "YCbCr" or height * width > (Image.MAX_IMAGE_PIXELS or np.inf):
            return None
        return simplejpeg.decode_jpeg(data, "RGB")  # strict: recoverable faults raise too
    except ValueError:
        return None
