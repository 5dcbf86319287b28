"""The fast path for plain colour JPEGs: simplejpeg decodes them in about a third of Pillow's time.

Both decode with libjpeg-turbo at its defaults (accurate integer DCT, smooth chroma upsampling), so
the pixels are the same; tests/test_images.py compares them over chroma subsamplings, progressive
files and a real clip's frames. The difference is Pillow's per-file Python work (opening, parsing
the markers, building the image object), which for Aff-Wild2's 112 px ``cropped_aligned`` frames
costs more than the decoding itself, and which CPU extraction pays between forward passes
(docs/results-speed.md).

Pillow keeps every other file: other formats, JPEGs with an EXIF block (their orientation is
Pillow's to apply), grey and CMYK JPEGs, images above Pillow's decompression-bomb limit, and any
file simplejpeg finds fault with, so that a damaged file is decoded or reported exactly as before.
"""

from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

JPEG_SUFFIXES = (".jpg", ".jpeg")


def decode_plain_jpeg(path: Path | str) -> np.ndarray | None:
    """A plain colour JPEG file decoded to uint8 (H, W, 3) RGB, or None for any other file.

    Plain: a ``.jpg``/``.jpeg`` name, YCbCr colour, no EXIF block, at most
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels, and no fault that libjpeg-turbo reports (a truncated or
    corrupt stream). Never raises: a file it cannot read is None, and Pillow then decodes it or says
    what is wrong (:func:`pipeline.data.images.load_rgb`).
    """
    path = Path(path)
    if path.suffix.lower() not in JPEG_SUFFIXES:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    # EXIF's APP1 block starts with this; a chance match in the compressed data only costs speed
    if b"Exif\x00\x00" in data:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace != "YCbCr" or height * width > (Image.MAX_IMAGE_PIXELS or np.inf):
            return None
        return simplejpeg.decode_jpeg(data, "RGB")  # strict: recoverable faults raise too
    except ValueError:
        return None
