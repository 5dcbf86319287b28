"""Opening extraction's store so that a run resumes where an earlier one stopped.

Videos the store marks complete are skipped; complete videos that no longer fit the data (crops
made since, images fixed, an annotation file replaced) are taken back and done again, and those
whose faces have lost their images are kept as they are, with a warning. Under torchrun Zarr ranks
write into one store; HDF5 ranks write part files merged by rank 0 at the end, and the parts a
killed run left are checked and merged first, whatever its process count.
"""

import contextlib
import glob
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

import features
from features.format import damaged_store_of_ours, identity_differences, normalise_attrs
from pipeline import distributed
from pipeline.errors import InputError


def open_writer(path: Path, attrs: dict, fmt: str, overwrite: bool, dist,
                expected: dict[str, tuple[int, np.ndarray]], decodes: Callable[[str, int], bool],
                redo: tuple[str, ...] = (),
                ) -> tuple[features.StoreWriter, set[str], list[tuple[str, str]],
                           list[tuple[str, str]]]:
    """The store this rank writes and the videos already complete (to skip); on rank 0 the
    complete videos taken back as no longer fitting the data and those kept though some of their
    faces lost their images (:func:`_take_back_outdated`), each with why.

    Zarr: rank 0 creates (or reopens) the store, the other ranks join it as workers. HDF5 under
    torchrun: each rank writes its own part file; a part left by a killed run is resumed like the
    store itself.

    Args:
        path: the store.
        attrs: the root attributes this run writes.
        fmt: "zarr" or "hdf5".
        overwrite: start the store afresh.
        dist: the process group (:func:`pipeline.distributed.init_distributed`).
        expected, decodes: the data now, as :func:`_take_back_outdated` takes them.
        redo: videos to take back whatever the data says (``--redo``).

    Raises:
        InputError: a part file beside an HDF5 store that is not ours, or of another extraction.
        features.StoreError: the store is of another extraction (without ``overwrite``), or not a
            store.
    """
    taken: tuple[list, list] = ([], [])
    if fmt == "hdf5":
        # every rank checks the parts (reading only), so that each refuses a foreign one
        left, sound = _check_parts(path, attrs, overwrite, warn=dist.is_main)
        distributed.barrier()
        if dist.is_main:
            _fold_in_parts(path, attrs, overwrite, left, sound)
    if fmt == "hdf5" and dist.enabled:
        parts = [features.part_path(path, r) for r in range(dist.world_size)]
        if dist.is_main:
            with features.create_store(path, attrs, format=fmt, overwrite=overwrite) as store:
                taken = _take_back_outdated(store, expected, decodes, redo)
        distributed.barrier()
        # read before any part is opened to write
        done = set().union(*(_completed(p) for p in [path, *parts]))
        distributed.barrier()
        return features.create_store(parts[dist.rank], attrs, format=fmt), done, *taken
    writer = None
    try:  # a failure closes the store again (an HDF5 file is not left open)
        if dist.is_main:
            writer = features.create_store(path, attrs, format=fmt, overwrite=overwrite,
                                           role="main")
            taken = _take_back_outdated(writer, expected, decodes, redo)
        distributed.barrier()
        if not dist.is_main:
            writer = features.create_store(path, attrs, format=fmt, role="worker")
        done = writer.completed()
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):  # the first error is the one to see
                writer.abort()
        raise
    distributed.barrier()  # every rank has its list before any rank (re)writes a video
    return writer, done, *taken


def _take_back_outdated(writer: features.StoreWriter,
                        expected: dict[str, tuple[int, np.ndarray]],
                        decodes: Callable[[str, int], bool], redo: tuple[str, ...] = (),
                        ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Mark incomplete, so that they are extracted again, the complete videos whose rows no longer
    fit the data, judged frame by frame against the stored ``present`` flags:

    - *lost*: a row with a face whose image is gone now (a second image root moved away, a copy
      short of files). The video is kept as stored, with why: redoing it would turn faces into
      absent rows (``--overwrite`` redoes every video).
    - *new*: an image now for a row stored without a face: crops made since, or an image that did
      not decode then (``num_images - num_present`` of them; a store written before
      ``num_images`` was kept counts none). More new images than those, or the first of them
      decoding now (a file fixed, as a Git LFS pointer pulled), takes the video back.
    - otherwise another frame count than the data gives now (an annotation file replaced) takes
      it back.

    Args:
        writer: the store, open on rank 0.
        expected: video -> (frames the data gives now, its image frame numbers (1-based)).
        decodes: (video, frame number) -> whether that frame's image file decodes now.
        redo: videos taken back whatever the data says (asked for by name).

    Returns:
        (taken back, kept though the data has lost images), each (video, why), sorted.
    """
    outdated, kept = [], []
    for video in sorted(writer.completed() & expected.keys()):
        if video in redo:
            writer.mark_incomplete(video)
            outdated.append((video, "asked for by --redo"))
            continue
        attrs, (frames, images) = writer.video_attrs(video), expected[video]
        stored, present = int(attrs["num_frames"]), writer.present(video)  # present (T,)
        has_image = np.zeros(max(stored, int(images.max(initial=0))), bool)
        has_image[images - 1] = True
        lost = int(np.count_nonzero(present & ~has_image[:stored]))
        if lost:
            length = f"; {stored} rows stored, {frames} frames now" if stored != frames else ""
            kept.append((video, f"{lost} of its faces have no image now{length}"))
            continue
        new = images[(images > stored) | ~present[np.minimum(images, stored) - 1]]
        undecoded = (int(attrs["num_images"]) - int(attrs["num_present"])
                     if "num_images" in attrs else 0)
        if len(new) > undecoded or (len(new) and decodes(video, int(new[0]))):
            why = f"{len(new)} image(s) now for rows stored without a face"
        elif stored != frames:
            why = f"{stored} rows stored, {frames} frames now"
        else:
            continue
        writer.mark_incomplete(video)
        outdated.append((video, why))
    return outdated, kept


def _check_parts(path: Path, attrs: dict, overwrite: bool,
                 warn: bool) -> tuple[list[Path], list[Path]]:
    """The part files a killed torchrun extraction left beside the HDF5 store ``path`` (whatever
    its process count), and those of them to merge: sound and made as this run makes its store
    (``attrs``). A damaged part of ours is left out (its videos are extracted again; said when
    ``warn``).

    Raises:
        InputError: a file with a part's name that is not a store of ours, or a part of another
            extraction (without ``overwrite``).
    """
    pattern = re.compile(rf"{re.escape(path.stem)}\.part\d+{re.escape(path.suffix)}")
    left = sorted(p for p in path.parent.glob(f"{glob.escape(path.stem)}.part*"
                                              f"{glob.escape(path.suffix)}")
                  if pattern.fullmatch(p.name)) if path.parent.is_dir() else []
    given, sound = normalise_attrs(attrs), []
    for part in left:
        try:
            with features.open_store(part) as opened:
                differ = identity_differences(opened.attrs, given)
        except features.StoreError:
            if not damaged_store_of_ours(part):
                raise InputError(f"{part}: named as a part file of {path} but not a feature "
                                 "store; delete or move it") from None
            if warn:
                tqdm.write(f"warning: {part}: a damaged part file of a killed run; its videos "
                           "are extracted again", file=sys.stderr)
            continue
        if differ and not overwrite:
            raise InputError(f"{part}: a part file of another extraction ({'; '.join(differ)}); "
                             "delete it, or pass --overwrite")
        sound.append(part)
    return left, sound


def _fold_in_parts(path: Path, attrs: dict, overwrite: bool, left: list[Path],
                   sound: list[Path]) -> None:
    """Merge the ``sound`` parts of ``left`` (:func:`_check_parts`) into the HDF5 store (created
    for them where it is missing), then delete them all; with ``overwrite``, delete them
    unmerged (the writer starts the store afresh)."""
    if sound and not overwrite:
        features.create_store(path, attrs, format="hdf5").close()
        features.merge_stores(sound, path)  # their complete videos; incomplete ones are redone
    for part in left:
        part.unlink()


def _completed(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with features.open_store(path) as store:
        return set(store.videos())
