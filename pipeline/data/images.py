"""The one image decoder every stage uses: an image file as 8-bit RGB, as a viewer shows it.

Pretraining (:mod:`pipeline.data.pretrain_images`), fine-tuning (:mod:`pipeline.data.frames`),
extraction (:func:`decode_batch`) and the plots all decode here, so a frame has the same pixels in
every stage. Images come out uint8 (C, H, W); normalisation happens on the device
(:func:`pipeline.models.encoder.normalize`).
"""

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps

from pipeline.data.jpeg import decode_plain_jpeg


class UnreadableImage(Exception):
    """An image file that PIL cannot decode (truncated, empty, not an image)."""


# Modes that carry 16 significant bits per sample (PNG's 16-bit grey opens as I;16, or I in older
# Pillow).
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
# What transparent pixels show: white, as a browser or an image viewer shows them on a page.
BACKGROUND = (255, 255, 255)


def load_rgb(path: Path) -> Image.Image:
    """An image file as an 8-bit RGB PIL image, as a viewer shows it.

    - EXIF orientation is applied (a phone photo stored sideways comes out upright);
    - 16-bit grey (PNG ``I;16``) is scaled to 8 bits (v / 257), not clipped at 255 (which turns it
      white);
    - transparency (an alpha channel, or a palette or colour key with a transparent entry) is
      composited onto a white background instead of dropped;
    - palette, grey, bilevel and CMYK images are converted to RGB (CMYK with its embedded ICC
      profile when it has one, through LittleCMS, else by Pillow's formula).

    Plain colour JPEGs (no EXIF or XMP, like the frames of ``cropped_aligned``) take the fast path
    of :mod:`pipeline.data.jpeg`, with the same pixels; every other file is Pillow's
    (:func:`pillow_rgb`).

    Raises UnreadableImage (naming the file) when PIL cannot decode it.
    """
    return _rgb_image(decode_plain_jpeg(path), path)


def _rgb_image(plain: np.ndarray | None, path: Path) -> Image.Image:
    """The fast path's pixels (H, W, 3) as an image, else the file through Pillow."""
    return Image.fromarray(plain) if plain is not None else pillow_rgb(path)


def pillow_rgb(path: Path) -> Image.Image:
    """:func:`load_rgb` with every file through Pillow (no fast JPEG path): the reference the fast
    path is compared with.

    Raises UnreadableImage (naming the file) when PIL cannot decode it.
    """
    try:
        with Image.open(path) as img:
            img.load()  # the full decode, inside the try
            ImageOps.exif_transpose(img, in_place=True)
            return _as_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"{path}: {err}") from err


def _as_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT:
        values = np.asarray(img, dtype=np.float64)  # (H, W), 0..65535
        grey = Image.fromarray(np.clip(np.rint(values / 257), 0, 255).astype(np.uint8), "L")
        # a 16-bit colour key: the pixels equal to it are transparent
        if "transparency" in img.info:
            alpha = np.where(values == img.info["transparency"], 0, 255).astype(np.uint8)
            grey = Image.merge("LA", (grey, Image.fromarray(alpha, "L")))
        img = grey
    if img.mode == "CMYK" and img.info.get("icc_profile"):
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
            return ImageCms.profileToProfile(img, profile, ImageCms.createProfile("sRGB"),
                                             outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # an unusable profile: Pillow's formula below
    if img.mode in _ALPHA or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def as_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as uint8 (3, H, W)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # (C, H, W)


def square_resize(img: Image.Image, img_size: int) -> Image.Image:
    """Resize so the short side is ``img_size`` pixels, then keep the centre square (bicubic, one
    resample).

    Face pipelines evaluate this way (DeiT's and MAE's evaluation transform: resize the short side,
    centre crop); stretching a non-square image to a square would distort the face the encoder has
    only seen undistorted or within the training crop's 3/4-4/3 aspect range. A square image is
    simply resized.
    """
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return img.resize((img_size, img_size), Image.BICUBIC, box=(left, top, left + side, top + side))


def decode_rgb(path: Path, img_size: int | None = None) -> Image.Image:
    """An image file as an RGB PIL image, as a viewer shows it (see :func:`load_rgb`).

    Args:
        path: a jpg/png (any mode Pillow reads).
        img_size: if given, the output is img_size x img_size pixels: the short side resized to
            ``img_size`` and the centre square kept (:func:`square_resize`); else the image at its
            own size.

    Raises UnreadableImage (naming the file) when PIL cannot decode it.
    """
    return fit_square(load_rgb(path), img_size)


def fit_square(img: Image.Image, img_size: int | None) -> Image.Image:
    """``img`` at img_size x img_size (:func:`square_resize`), or as it is when it is that size
    already or ``img_size`` is None."""
    if img_size is not None and img.size != (img_size, img_size):
        img = square_resize(img, img_size)
    return img


def decode_image(path: Path, img_size: int | None = None) -> torch.Tensor:
    """An image file as uint8 (3, H, W): :func:`decode_rgb` as a tensor.

    Raises UnreadableImage (naming the file) when PIL cannot decode it.
    """
    return as_tensor(decode_rgb(path, img_size))


def decode_batch(paths: Sequence[Path], img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image files decoded (:func:`decode_rgb`) straight into one batch: (uint8 (B, 3, S, S),
    readable (B,) bool); an unreadable file's image is zeros. One array for the whole batch, not a
    tensor per image and then a stack of them: for small frames that overhead is a noticeable share
    of the decode. A plain JPEG already at the input size goes in without a PIL image on the way."""
    batch = np.zeros((len(paths), 3, img_size, img_size), np.uint8)  # (B, C, S, S)
    readable = np.ones(len(paths), bool)
    for i, path in enumerate(paths):
        plain = decode_plain_jpeg(path)  # (H, W, C) or None
        try:
            if plain is None or plain.shape[:2] != (img_size, img_size):
                plain = np.asarray(fit_square(_rgb_image(plain, path), img_size))  # (S, S, C)
        except UnreadableImage:  # reported by the caller
            readable[i] = False
            continue
        batch[i] = plain.transpose(2, 0, 1)  # (S, S, C) -> (C, S, S)
    return torch.from_numpy(batch), torch.from_numpy(readable)
