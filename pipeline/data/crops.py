"""The random resized crop of MAE pretraining and of fine-tuning's augmentation, as a box."""

import math

import numpy as np


def random_resized_box(width: int, height: int, rng: np.random.Generator,
                       scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A crop box (left, top, right, bottom), in pixels of a width x height image, covering a random
    area fraction and aspect ratio.

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
