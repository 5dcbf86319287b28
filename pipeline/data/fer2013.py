"""FER2013's ``fer2013.csv`` as a source of pretraining images (one of the paper's four pretraining
sets).

FER2013 (Goodfellow et al. 2013, "Challenges in Representation Learning: A report on three machine
learning contests") ships its 35,887 faces inside one CSV: columns ``emotion,pixels,Usage``, where
``pixels`` holds 2,304 space-separated grey values (0-255) of a 48 x 48 face, row by row. FER+
(Barsoum et al. 2016) relabels the same images in a label-only file, so this CSV serves both;
Kaggle's split files (``train.csv`` with ``emotion,pixels``, ``test.csv`` with ``pixels``) read the
same way. MAE pretraining uses the images only: labels are ignored.

A row that does not hold 2,304 values in 0..255 is skipped and reported in one warning line naming
the file and its first bad line; a file without a ``pixels`` column or without one good row is an
InputError.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import InputError

SIDE = 48
PIXELS = "pixels"


@dataclass(frozen=True, eq=False)
class CsvImage:
    """One image held in a row of a CSV file; ``str()`` names the file and line (as a path names a
    file).

    Args:
        path: the CSV file.
        line: the row's 1-based line number in the file (the header is line 1).
        pixels: (48, 48) uint8 grey values.
    """

    path: Path
    line: int
    pixels: np.ndarray

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"

    def rgb(self) -> Image.Image:
        """The face as an RGB image (grey copied to the three channels), 48 x 48."""
        return Image.fromarray(self.pixels).convert("RGB")  # (48, 48) uint8 is grey ("L")


def is_image_csv(path: Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() == ".csv"


def _parse(field: str) -> np.ndarray | str:
    """The (48, 48) uint8 image of a pixels field, or why it is not one."""
    values = field.split()
    if len(values) != SIDE * SIDE:
        return f"{len(values)} pixel values, expected {SIDE * SIDE}"
    try:
        grey = np.array(values, dtype=np.int32)
    except ValueError:
        return "a pixel value is not an integer"
    if grey.min() < 0 or grey.max() > 255:
        return "a pixel value is outside 0..255"
    return grey.astype(np.uint8).reshape(SIDE, SIDE)  # (48, 48), row-major as stored


def read_fer2013(path: Path, warn=None) -> list[CsvImage]:
    """Every good image row of a FER2013-style CSV.

    Args:
        path: the CSV file.
        warn: called with one line naming the file, the first bad line and how many rows were
            skipped (default: no report).
    Raises:
        InputError naming the file when it cannot be read, has no ``pixels`` column, or no good row.
    """
    path = Path(path)
    images, bad = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if PIXELS not in header:
                raise InputError(f"{path}:1: no {PIXELS!r} column in the header "
                                 f"{','.join(header)!r}; expected FER2013's emotion,pixels,Usage")
            column = header.index(PIXELS)
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue  # a blank line
                result = (_parse(row[column]) if column < len(row)
                          else f"{len(row)} fields, no pixels field")
                if isinstance(result, str):
                    bad.append((line, result))
                else:
                    images.append(CsvImage(path, line, result))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read the CSV ({err})") from None
    if bad and warn is not None:
        line, why = bad[0]
        more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
        warn(f"{path}:{line}: {why}; row skipped{more}")
    if not images:
        raise InputError(f"{path}: no usable image row (each needs {SIDE * SIDE} grey values in "
                         "its pixels field)")
    return images
