"""Opening extraction's store so that a run resumes where an earlier one stopped.

Videos the store marks complete are skipped; complete videos that no longer fit the data (crops
made since, an annotation file replaced) are taken back and done again. Under torchrun Zarr ranks
write into one store; HDF5 ranks write part files merged by rank 0 at the end, and the parts a
killed run left are checked and merged first, whatever its process count.
"""

import glob
import re
import sys
from pathlib import Path

from tqdm import tqdm

import features
from features.format import damaged_store_of_ours, identity_differences, normalise_attrs
from pipeline import distributed
from pipeline.errors import InputError


def open_writer(path: Path, attrs: dict, fmt: str, overwrite: bool, dist,
                 expected: dict[str, tuple[int, bool]],
                 ) -> tuple[features.StoreWriter, set[str], list[tuple[str, str]]]:
    """The store this rank writes, the videos already complete (to skip), and on rank 0 the
    complete videos taken back as no longer fitting the data (:func:`_take_back_outdated`, with
    ``expected``: video -> (frames, has images)), with why.

    Args:
        path: the store; attrs: the root attributes this run writes; fmt: "zarr" or "hdf5";
        overwrite: start afresh; dist: the process group (``pipeline.distributed``).

    Zarr: rank 0 creates (or reopens) the store, the other ranks join it as workers. HDF5 under
    torchrun: each rank writes its own part file; a part left by a killed run is resumed like the
    store itself.
    """
    outdated: list[tuple[str, str]] = []
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
                outdated = _take_back_outdated(store, expected)
        distributed.barrier()
        # read before any part is opened to write
        done = set().union(*(_completed(p) for p in [path, *parts]))
        distributed.barrier()
        return features.create_store(parts[dist.rank], attrs, format=fmt), done, outdated
    if dist.is_main:
        writer = features.create_store(path, attrs, format=fmt, overwrite=overwrite, role="main")
        outdated = _take_back_outdated(writer, expected)
    distributed.barrier()
    if not dist.is_main:
        writer = features.create_store(path, attrs, format=fmt, role="worker")
    done = writer.completed()
    distributed.barrier()  # every rank has its list before any rank (re)writes a video
    return writer, done, outdated


def _take_back_outdated(writer: features.StoreWriter,
                        expected: dict[str, tuple[int, bool]]) -> list[tuple[str, str]]:
    """Mark incomplete, so that they are extracted again, the complete videos whose rows no longer
    fit the data: stored without a face while the video has images now, as when its crops were made
    after a first extraction; or another frame count than ``expected`` (video -> (frames, has
    images)) says, as when an annotation file was replaced by a longer one. Returns (video, why),
    sorted."""
    outdated = []
    for video in sorted(writer.completed() & expected.keys()):
        (stored, faces), (frames, has_images) = writer.counts(video), expected[video]
        if faces == 0 and has_images:
            why = "stored without a face, it has images now"
        elif stored != frames:
            why = f"{stored} rows stored, {frames} frames now"
        else:
            continue
        writer.mark_incomplete(video)
        outdated.append((video, why))
    return outdated


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
