"""Face-image folders for MAE pretraining, with MAE's augmentation.

Pretraining reads any folders of jpg/png images, searched recursively (Aff-Wild2's
``cropped_aligned`` and the output of ``mae-affect faces`` included), and FER2013's ``fer2013.csv``
(``pipeline.data.fer2013``), with MAE's augmentation: a random resized crop (area 0.2-1.0 by
default, aspect 3/4-4/3, bicubic) and a horizontal flip. Samples are uint8 (C, H, W), decoded by
:mod:`pipeline.data.images`; normalisation happens on the device
(:func:`pipeline.models.encoder.normalize`), so workers ship 4x fewer bytes.

The augmentation of sample ``i`` in epoch ``e`` draws from its own generator seeded by
``(seed, e, i)``: the pictures a run sees do not depend on the number of workers or on a resume.
"""

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.data.affwild2 import IMAGE_SUFFIXES
from pipeline.data.crops import random_resized_box
from pipeline.data.fer2013 import CsvImage, is_image_csv, read_fer2013
from pipeline.data.images import UnreadableImage, as_tensor, fit_square, load_rgb
from pipeline.errors import InputError


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


def load_source(source: Path | CsvImage) -> Image.Image:
    """A pretraining source as an 8-bit RGB image: a file through :func:`load_rgb`, or a FER2013 CSV
    row.

    Raises UnreadableImage (naming the file) when a file cannot be decoded.
    """
    return source.rgb() if isinstance(source, CsvImage) else load_rgb(source)


def decode_source(source: Path | CsvImage, img_size: int | None = None) -> torch.Tensor:
    """:func:`pipeline.data.images.decode_image` for any pretraining source: uint8 (3, H, W),
    square-resized if ``img_size`` (:func:`pipeline.data.images.fit_square`).

    Raises UnreadableImage (naming the file) when a file cannot be decoded.
    """
    return as_tensor(fit_square(load_source(source), img_size))


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
        return as_tensor(img)  # (3, S, S)

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
