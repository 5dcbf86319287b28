"""Face-image folders for MAE pretraining, and the one image decoder every stage uses.

Pretraining reads any folders of jpg/png images, searched recursively (Aff-Wild2's
``cropped_aligned`` and the output of ``mae-affect faces`` included), and FER2013's ``fer2013.csv``
(``pipeline.data.fer2013``), with MAE's augmentation: a random resized crop (area 0.2-1.0 by
default, aspect 3/4-4/3, bicubic) and a horizontal flip. Samples are uint8 (C, H, W); normalisation
happens on the device (:func:`pipeline.models.encoder.normalize`), so workers ship 4x fewer bytes.

The augmentation of sample ``i`` in epoch ``e`` draws from its own generator seeded by
``(seed, e, i)``: the pictures a run sees do not depend on the number of workers or on a resume.
"""

import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps
from torch.utils.data import Dataset

from pipeline.data.affwild2 import IMAGE_SUFFIXES
from pipeline.data.fer2013 import CsvImage, is_image_csv, read_fer2013
from pipeline.data.jpeg import decode_plain_jpeg
from pipeline.errors import InputError


class UnreadableImage(Exception):
    """An image file that PIL cannot decode (truncated, empty, not an image)."""


def find_images(folders: Iterable[Path], warn=None) -> list[Path | CsvImage]:
    """All jpg/png files under each folder, recursively, sorted (so runs are reproducible); a
    ``.csv`` file given instead of a folder is read as FER2013 (its images in file order, bad rows
    passed to ``warn``).

    Raises InputError naming the folder when one is missing or holds no image.
    """
    found: list[Path | CsvImage] = []
    for folder in map(Path, folders):
        if is_image_csv(folder):
            found += read_fer2013(folder, warn)
            continue
        if not folder.is_dir():
            raise InputError(f"image folder {folder} does not exist (or is not a folder or a "
                             "FER2013 .csv); check --images")
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                        and p.is_file())
        if not images:
            raise InputError(f"no .jpg/.jpeg/.png image under {folder}; check --images")
        found += images
    return found


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


def load_source(source: Path | CsvImage) -> Image.Image:
    """A pretraining source as an 8-bit RGB image: a file through :func:`load_rgb`, or a FER2013 CSV
    row.

    Raises UnreadableImage (naming the file) when a file cannot be decoded.
    """
    return source.rgb() if isinstance(source, CsvImage) else load_rgb(source)


def decode_source(source: Path | CsvImage, img_size: int | None = None) -> torch.Tensor:
    """:func:`decode_image` for any pretraining source: uint8 (3, H, W), square-resized if
    ``img_size``."""
    if not isinstance(source, CsvImage):
        return decode_image(source, img_size)
    img = source.rgb()
    if img_size is not None and img.size != (img_size, img_size):
        img = square_resize(img, img_size)
    return _to_tensor(img)


def _to_tensor(img: Image.Image) -> torch.Tensor:
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
    return _fit(load_rgb(path), img_size)


def _fit(img: Image.Image, img_size: int | None) -> Image.Image:
    if img_size is not None and img.size != (img_size, img_size):
        img = square_resize(img, img_size)
    return img


def decode_image(path: Path, img_size: int | None = None) -> torch.Tensor:
    """An image file as uint8 (3, H, W): :func:`decode_rgb` as a tensor.

    Raises UnreadableImage (naming the file) when PIL cannot decode it.
    """
    return _to_tensor(decode_rgb(path, img_size))


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
                plain = np.asarray(_fit(_rgb_image(plain, path), img_size))  # (S, S, C)
        except UnreadableImage:  # reported by the caller
            readable[i] = False
            continue
        batch[i] = plain.transpose(2, 0, 1)  # (S, S, C) -> (C, S, S)
    return torch.from_numpy(batch), torch.from_numpy(readable)


def random_resized_box(width: int, height: int, rng: np.random.Generator,
                       scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A crop box (left, top, right, bottom) covering a random area fraction and aspect ratio.

    Same distribution as torchvision's ``RandomResizedCrop``: ten tries at a uniform area in
    ``scale`` and a log-uniform aspect in ``ratio``; if none fits, the largest central box within
    ``ratio``.
    """
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


class PretrainImages(Dataset):
    """Augmented uint8 images for MAE pretraining.

    ``dataset[i] -> (image uint8 (3, S, S), bad)``, where ``bad`` is ``i`` when file ``i`` could not
    be read (the image is then the next readable file's, so batches keep their size) and -1
    otherwise. The training loop reports each bad file once and adds it to ``skip`` so later epochs
    do not retry it.

    Args:
        paths: image files (or images held in a CSV, ``find_images``).
        img_size: output side S.
        seed: run seed; with :meth:`set_epoch` it fixes every sample's crop and flip.
        crop_scale: area fraction range of the random resized crop (MAE's 0.2-1.0 by default).
    """

    def __init__(self, paths: Sequence[Path | CsvImage], img_size: int, seed: int = 0,
                 crop_scale: tuple[float, float] = (0.2, 1.0)):
        self.paths = list(paths)
        self.img_size = img_size
        self.seed = seed
        self.crop_scale = crop_scale
        self.epoch = 0
        self.skip: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch's DataLoader iterator is made (workers get a fresh copy per
        epoch)."""
        self.epoch = epoch

    def _augment(self, img: Image.Image, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        box = random_resized_box(img.width, img.height, rng, scale=self.crop_scale)
        img = img.resize((self.img_size, self.img_size), Image.BICUBIC, box=box)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return _to_tensor(img)  # (3, S, S)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for step in range(len(self.paths)):
            j = (index + step) % len(self.paths)
            if j in self.skip:
                continue
            try:
                img = load_source(self.paths[j])
            except UnreadableImage:
                continue
            # Moving past step 0 means file ``index`` itself could not be used.
            return self._augment(img, index), (index if step else -1)
        raise InputError(f"none of the {len(self.paths)} images could be read (first: "
                         f"{self.paths[0]})")
