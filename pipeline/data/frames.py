"""Labelled Aff-Wild2 frames for expression fine-tuning (stage 2 of Zhou et al. 2024, ABAW6).

A frame enters when it has an image and a valid Expr label (-1 rows and frames without a face are
left out here, so they never reach a loss). Where the same video of the same split also has AU or VA
labels, they ride along for the optional auxiliary heads, with their own validity masks.

An epoch does not visit every frame: consecutive frames are nearly identical and a real epoch would
hold about a million of them, so each epoch takes at most ``frames_per_video`` frames of each video
(a fresh seeded draw per epoch), then either shuffles that pool or, with ``balance="sampler"``,
redraws it with replacement at probabilities inverse to each class's count in the pool (Aff-Wild2's
8 classes are very unbalanced). Everything is a function of ``(seed, epoch)``; the augmentation of
the frame at position ``draw`` of an epoch's order is seeded by ``(seed, epoch, draw)``, so neither
the number of workers nor a resume changes what a run sees.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import Dataset, Sampler

from pipeline.configs.finetune import BALANCE_MODES
from pipeline.data.affwild2 import AU_NAMES, EXPR_CLASSES, AffWild2
from pipeline.data.crops import random_resized_box
from pipeline.data.images import UnreadableImage, decode_image, load_rgb
from pipeline.errors import InputError


@dataclass(frozen=True)
class FrameIndex:
    """Every usable frame of one split, as flat arrays (F frames).

    Args:
        split: ``Train_Set`` or ``Validation_Set``.
        videos: video names; ``video_id`` indexes into them.
        image_paths: (F,) image file of each frame.
        video_id: (F,) int64.
        frame: (F,) int64, 1-based frame numbers.
        expr: (F,) int64 in 0..7 (never -1).
        au: (F, 12) int64, 0/1 where ``au_valid`` else -1.
        au_valid: (F,) bool.
        va: (F, 2) float32, valence/arousal where ``va_valid`` else -5.
        va_valid: (F,) bool.
    """

    split: str
    videos: tuple[str, ...]
    image_paths: tuple[Path, ...]
    video_id: np.ndarray
    frame: np.ndarray
    expr: np.ndarray
    au: np.ndarray
    au_valid: np.ndarray
    va: np.ndarray
    va_valid: np.ndarray

    def __len__(self) -> int:
        return len(self.frame)

    def class_counts(self, rows: np.ndarray | None = None) -> np.ndarray:
        """(8,) frames per Expr class, over all frames or the given rows."""
        labels = self.expr if rows is None else self.expr[rows]
        return np.bincount(labels, minlength=len(EXPR_CLASSES))

    def capped(self, per_video: int) -> np.ndarray:
        """Rows keeping at most ``per_video`` evenly spaced frames of each video (deterministic)."""
        if per_video <= 0:
            return np.arange(len(self))
        keep = []
        for rows in _rows_by_video(self.video_id):
            if len(rows) > per_video:
                rows = rows[np.linspace(0, len(rows) - 1, per_video).round().astype(np.int64)]
            keep.append(rows)
        return np.sort(np.concatenate(keep))


def _rows_by_video(video_id: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(video_id, kind="stable")
    bounds = np.flatnonzero(np.diff(video_id[order])) + 1
    return [rows for rows in np.split(order, bounds) if len(rows)]


def _aligned(annotation, frames: np.ndarray, width: int, fill: float,
             dtype) -> tuple[np.ndarray, np.ndarray]:
    """Labels (F, width) and validity (F,) of ``frames`` (1-based) from an annotation, or all
    invalid."""
    labels = np.full((len(frames), width), fill, dtype=dtype)
    valid = np.zeros(len(frames), dtype=bool)
    if annotation is None:
        return labels, valid
    inside = frames <= annotation.num_frames
    rows = frames[inside] - 1
    ok = annotation.valid[rows]
    labels[np.flatnonzero(inside)[ok]] = annotation.labels[rows[ok]].reshape(-1, width)
    valid[np.flatnonzero(inside)[ok]] = True
    return labels, valid


def expr_frames(ds: AffWild2, split: str) -> FrameIndex:
    """The frames of ``split`` that have an image and a valid Expr label, with any AU/VA labels.

    Raises InputError when the split has no Expr annotations or none of its labelled frames has an
    image.
    """
    expr = ds.annotations("expr", split)
    au = ds.annotations("au", split) if ds.available("au", split) else {}
    va = ds.annotations("va", split) if ds.available("va", split) else {}
    names, paths, parts = [], [], {k: []
                                   for k in ("vid", "frame", "expr", "au", "au_ok", "va", "va_ok")}
    for name, ann in expr.items():
        video = ds.videos.get(name)
        if video is None:
            continue  # an annotated video without images: no frame of it has a face
        frames = video.frames[video.frames <= ann.num_frames]  # (F_v,) 1-based, with an image
        frames = frames[ann.valid[frames - 1]]  # -1 rows dropped here, before any loss can see them
        if not len(frames):
            continue
        au_labels, au_ok = _aligned(au.get(name), frames, len(AU_NAMES), -1, np.int64)
        va_labels, va_ok = _aligned(va.get(name), frames, 2, -5.0, np.float32)
        parts["vid"].append(np.full(len(frames), len(names), dtype=np.int64))
        parts["frame"].append(frames)
        parts["expr"].append(ann.labels[frames - 1])
        parts["au"].append(au_labels)
        parts["au_ok"].append(au_ok)
        parts["va"].append(va_labels)
        parts["va_ok"].append(va_ok)
        paths += [video.image_path(int(k)) for k in frames]
        names.append(name)
    if not names:
        raise InputError(
            f"{ds.annotation_dir('expr', split)}: no frame with both a valid Expr label and an "
            "image; check that the annotations belong to the images under --data"
        )
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return FrameIndex(split, tuple(names), tuple(paths), cat["vid"], cat["frame"], cat["expr"],
                      cat["au"], cat["au_ok"], cat["va"], cat["va_ok"])


def class_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency loss weights (8,), mean 1 over the classes present; absent classes get
    0."""
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
    return weights / weights[counts > 0].mean()


def epoch_rows(index: FrameIndex, epoch: int, seed: int, frames_per_video: int,
               balance: str) -> np.ndarray:
    """The rows of ``index`` one training epoch visits, in order (the same on every rank).

    Args:
        frames_per_video: cap per video (a fresh seeded subset each epoch); 0 = no cap.
        balance: ``sampler`` redraws the capped pool with replacement, each frame with probability
            inverse to its class's count in the pool; ``weights`` and ``none`` shuffle the pool.
    """
    if balance not in BALANCE_MODES:
        raise InputError(f"unknown --balance {balance!r}; use one of {', '.join(BALANCE_MODES)}")
    rng = np.random.default_rng([seed, epoch])
    pool = []
    for rows in _rows_by_video(index.video_id):
        if 0 < frames_per_video < len(rows):
            rows = rng.choice(rows, frames_per_video, replace=False)
        pool.append(rows)
    pool = np.concatenate(pool)
    if balance == "sampler":
        counts = index.class_counts(pool)
        p = 1.0 / counts[index.expr[pool]]
        return rng.choice(pool, len(pool), replace=True, p=p / p.sum())
    return rng.permutation(pool)


class EpochSampler(Sampler):
    """Yields ``(row, epoch, draw)`` for this rank's share of :func:`epoch_rows`.

    The epoch's order is padded (by wrapping) to a multiple of ``world_size`` and rank r takes
    positions r, r + W, ...; ``draw`` is the position in the whole epoch's order, which seeds the
    augmentation.
    """

    def __init__(self, index: FrameIndex, seed: int, frames_per_video: int, balance: str,
                 rank: int = 0, world_size: int = 1):
        self.index = index
        self.seed = seed
        self.frames_per_video = frames_per_video
        self.balance = balance
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        # Every epoch has the same length: the capped pool size does not depend on the draw.
        caps = [min(len(r), frames_per_video) if frames_per_video > 0 else len(r)
                for r in _rows_by_video(index.video_id)]
        self.epoch_size = int(sum(caps))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.epoch_size / self.world_size)

    def __iter__(self):
        rows = epoch_rows(self.index, self.epoch, self.seed, self.frames_per_video, self.balance)
        total = len(self) * self.world_size
        draws = np.arange(total) % len(rows)  # wrap to pad
        for draw in draws[self.rank::self.world_size]:
            yield int(rows[draw]), self.epoch, int(draw)


def jitter_colour(img: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation scaled by factors in [1 - s, 1 + s], hue turned by up to
    s / 4."""
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(float(rng.uniform(low, high)))
    shift = int(round(rng.uniform(-strength / 4, strength / 4) * 256))
    if shift:
        # (S, S, 3); hue is 0..255 around the circle
        hsv = np.array(img.convert("HSV"), dtype=np.uint8)
        hsv[..., 0] += np.uint8(shift % 256)  # uint8 arithmetic wraps: a turn of the circle
        img = Image.fromarray(hsv, "HSV").convert("RGB")
    return img


def erase_box(arr: np.ndarray, rng: np.random.Generator, area=(0.02, 1 / 3),
              ratio=(0.3, 3.3)) -> None:
    """Fill one random box of ``arr`` (H, W, C) uint8 with uniform noise, in place (random
    erasing)."""
    h, w, c = arr.shape
    for _ in range(10):
        target = h * w * rng.uniform(*area)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        eh, ew = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < eh < h and 0 < ew < w:
            top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            arr[top:top + eh, left:left + ew] = rng.integers(0, 256, (eh, ew, c), dtype=np.uint8)
            return


class ExprFrames(Dataset):
    """uint8 face crops with their labels.

    ``dataset[row]`` (evaluation) decodes the frame resized to ``img_size``;
    ``dataset[(row, epoch, draw)]`` (training, from :class:`EpochSampler`) adds a random resized
    crop with a high minimum area, a horizontal flip and, when asked, colour jitter, grayscale and
    random erasing, all seeded by ``(seed, epoch, draw)``. Items are dicts: ``image`` uint8
    (3, S, S), ``expr`` int64, ``au`` (12,) int64, ``au_valid`` bool, ``va`` (2,) float32,
    ``va_valid`` bool, ``row`` int64 and ``ok`` (False when the file could not be decoded: the image
    is then zeros and the loop leaves the item out).

    Args:
        index: the frames (see :func:`expr_frames`).
        img_size: output side S.
        seed: the run's seed.
        crop_scale: area fraction range of the training crop.
        color_jitter: strength s: brightness, contrast and saturation factors in [1 - s, 1 + s] and
            a hue shift of up to s / 4 of the colour circle (0: off). Skin, hair and background
            colours name the person in a video; jitter makes them a less reliable cue for the label.
        grayscale: probability of turning the crop gray (kept as 3 channels).
        erase: probability of filling one random box (2-33 % of the area, aspect 0.3-3.3) with
            noise, as in MAE's fine-tuning recipe (random erasing, 0.25 there).
    """

    def __init__(self, index: FrameIndex, img_size: int, seed: int = 0,
                 crop_scale: tuple[float, float] = (0.8, 1.0), color_jitter: float = 0.0,
                 grayscale: float = 0.0, erase: float = 0.0):
        self.index = index
        self.img_size = img_size
        self.seed = seed
        self.crop_scale = crop_scale
        self.color_jitter = color_jitter
        self.grayscale = grayscale
        self.erase = erase

    def __len__(self) -> int:
        return len(self.index)

    def _augment(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        """An RGB image -> uint8 (C, S, S): a random crop resized (bicubic, as evaluation), maybe
        flipped, then the optional colour and erasing steps."""
        box = random_resized_box(img.width, img.height, rng, scale=self.crop_scale)
        # PIL, not torch ops: a handful of small tensor ops per item costs more than the decode
        # itself
        img = img.resize((self.img_size, self.img_size), Image.BICUBIC, box=box)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.color_jitter > 0:
            img = jitter_colour(img, self.color_jitter, rng)
        if self.grayscale > 0 and rng.random() < self.grayscale:
            img = img.convert("L").convert("RGB")
        arr = np.array(img, dtype=np.uint8)  # (S, S, C), writable
        if self.erase > 0 and rng.random() < self.erase:
            erase_box(arr, rng)
        return torch.from_numpy(arr).permute(2, 0, 1)  # (C, S, S)

    def __getitem__(self, key) -> dict:
        train = isinstance(key, tuple)
        row = key[0] if train else int(key)
        ok = True
        try:
            if train:
                epoch, draw = key[1], key[2]
                image = self._augment(load_rgb(self.index.image_paths[row]),
                                      np.random.default_rng([self.seed, epoch, draw]))
            else:
                image = decode_image(self.index.image_paths[row], self.img_size)
        except UnreadableImage:
            image, ok = torch.zeros(3, self.img_size, self.img_size, dtype=torch.uint8), False
        ix = self.index
        return {
            "image": image,
            "expr": torch.tensor(ix.expr[row]),
            "au": torch.from_numpy(ix.au[row]),
            "au_valid": torch.tensor(ix.au_valid[row]),
            "va": torch.from_numpy(ix.va[row]),
            "va_valid": torch.tensor(ix.va_valid[row]),
            "row": torch.tensor(row, dtype=torch.int64),
            "ok": torch.tensor(ok),
        }
