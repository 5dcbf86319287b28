"""Checking, converting and merging stores: ``verify_store``, ``export_store``, ``merge_stores``."""

import os
import shutil
import uuid
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .backends import ZarrBackend
from .errors import StoreError
from .format import (
    CHUNK_ROWS,
    IDENTITY_KEYS,
    identity_differences,
    output_format,
    sniff_format,
)
from .reader import FeatureStore, open_store
from .writer import check_replaceable, create_store

BLOCK_ROWS = 16 * CHUNK_ROWS  # rows read at a time when scanning or copying a video


def _check_video(store: FeatureStore, video: str) -> list[str]:
    """Problems of one complete video: shapes, dtype, damaged or missing chunks, counts, NaN/Inf,
    non-zero absent rows."""
    features, present = store.arrays(video)
    t = store.num_frames(video)
    where = f"video {video}"
    problems = []
    if tuple(features.shape) != (t, store.feature_dim):
        problems.append(f"{where}: features shape {tuple(features.shape)}, expected "
                        f"({t}, {store.feature_dim}) from num_frames and feature_dim")
    if np.dtype(features.dtype) != store.dtype:
        problems.append(f"{where}: features dtype {features.dtype}, store says {store.dtype}")
    if tuple(present.shape) != (t,) or np.dtype(present.dtype) != np.bool_:
        problems.append(f"{where}: present is {present.dtype} {tuple(present.shape)}, "
                        f"expected bool ({t},)")
    if problems:
        return problems
    nonfinite = nonzero_absent = 0
    all_present = np.empty(t, bool)  # (T,)
    try:
        for a in range(0, t, BLOCK_ROWS):
            f, p = store.read_rows(video, a, min(a + BLOCK_ROWS, t))
            all_present[a:a + len(p)] = p
            nonfinite += int(np.count_nonzero(~np.isfinite(f).all(axis=1)))
            nonzero_absent += int(np.count_nonzero(f[~p].any(axis=1)))
        store.check_stored(video, all_present)
    except StoreError as e:  # a damaged or missing chunk
        problems.append(str(e))
    if nonfinite:
        problems.append(f"{where}: {nonfinite} frames hold NaN or Inf: re-extract it "
                        "(begin_video again, or delete its group and rerun extraction)")
    if nonzero_absent:
        problems.append(f"{where}: {nonzero_absent} frames without a face hold non-zero rows")
    return problems


def verify_store(path, expected: dict[str, int] | None = None, progress: bool = False) -> list[str]:
    """Every problem of a store, as sentences; an empty list means it is sound.

    Checks: root attributes complete; every video group complete, shaped
    (num_frames, feature_dim) with the store's dtype, every chunk readable and none missing
    (``FeatureStore.check_stored``), num_present right, no NaN/Inf, absent rows zero; a Zarr
    store's consolidated listing up to date; with ``expected`` (video -> frame count, e.g. from
    the dataset), no video missing, none extra, every frame count right.

    Args:
        path: the store.
        expected: video -> number of frames the store must hold; None skips the dataset checks.
        progress: show a tqdm bar over videos.
    Raises:
        StoreError: ``path`` does not open as a store (missing, not a store, a truncated HDF5
            file): bad input, as for every other reader, not a list of problems.
    """
    store = open_store(path, use_consolidated=False)
    with store:
        problems = []
        missing_attrs = [k for k in IDENTITY_KEYS if k not in store.attrs]
        if missing_attrs:
            problems.append(f"root attributes lack {', '.join(missing_attrs)}")
        mirrors = store.mirror_differences()
        if mirrors:
            problems.append(f"native HDF5 root attribute(s) {', '.join(mirrors)} differ from "
                            "attrs_json, the authoritative copy (changed by hand): a reader of the "
                            "native attributes gets other values; run `mae-affect features export` "
                            "to a new file, which writes both from attrs_json")
        problems += [f"video {v}: incomplete (an interrupted run, or a group changed by hand; "
                     "rerun extraction to redo it)" for v in store.incomplete_videos()]
        for v in tqdm(store.videos(), desc="verify", unit="video", disable=not progress):
            problems += _check_video(store, v)
        if store.listing_stale:
            with open_store(path, use_consolidated=True) as listed:
                only_listed = sorted(set(listed.videos()) - set(store.videos()))
                only_groups = sorted(set(store.videos()) - set(listed.videos()))
                differ = "; ".join(f"{what}: {', '.join(names[:5])}" for what, names in
                                   (("only in the listing", only_listed),
                                    ("only in the groups", only_groups))
                                   if names)
                problems.append(
                    f"consolidated metadata lists {len(listed.videos())} complete videos, the "
                    f"groups say {len(store.videos())} ({differ}; the store changed after it was "
                    "consolidated, by hand or by an unfinished writer): rerun extraction, or run "
                    f"`mae-affect features consolidate {path}`")
        if expected is not None:
            have = set(store.videos())
            for v in sorted(set(expected) - have):
                problems.append(
                    f"video {v}: missing (the dataset has it with {expected[v]} frames)")
            for v in sorted(have - set(expected)):
                problems.append(f"video {v}: in the store but not in the dataset")
            for v in sorted(have & set(expected)):
                if store.num_frames(v) != expected[v]:
                    problems.append(f"video {v}: {store.num_frames(v)} frames, the dataset says "
                                    f"{expected[v]}")
    return problems


def consolidate_store(path) -> None:
    """Rewrite a Zarr directory store's consolidated listing from its groups."""
    path = Path(path)
    if sniff_format(path) != "zarr":
        raise StoreError(f"{path} is not a Zarr directory store; only those carry a consolidated "
                         "listing")
    backend = ZarrBackend.open(path, "zarr", use_consolidated=False, writable=True)
    backend.consolidate()
    backend.close()


def _zip_directory(src: Path, dst: Path) -> None:
    # Stored, not deflated: Zarr chunks are already compressed, and ZipStore reads members in place.
    # The root zarr.json goes first, so a damaged zip is still recognisably ours
    # (format.damaged_store_of_ours).
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for p in sorted(src.rglob("*"), key=lambda p: (p != src / "zarr.json", p)):
            if p.is_file():
                zf.write(p, p.relative_to(src).as_posix())


def _check_disjoint(sources: list[FeatureStore]) -> None:
    owner: dict[str, Path] = {}
    for s in sources:
        for v in s.videos():
            if v in owner:
                raise StoreError(f"video {v!r} is in both {owner[v]} and {s.path}: "
                                 "each part must hold different videos")
            owner[v] = s.path


def _copy_videos(sources: list[FeatureStore], writer, skip: set[str], progress: bool) -> None:
    """Copy every complete video of ``sources`` not in ``skip`` into ``writer``, block by block;
    a damaged source video is refused (StoreError), not copied as if it were sound."""
    todo = [(s, v) for s in sources for v in s.videos() if v not in skip]
    for s, v in tqdm(todo, desc="copy", unit="video", disable=not progress):
        t = s.num_frames(v)
        vw = writer.begin_video(v, t)
        all_present = np.empty(t, bool)  # (T,)
        for a in range(0, t, BLOCK_ROWS):
            features, present = s.read_rows(v, a, min(a + BLOCK_ROWS, t))
            vw.write(a, features, present)
            all_present[a:a + len(present)] = present
        s.check_stored(v, all_present)
        # the writer's own attributes (num_images) go along; the marks are written afresh
        vw.finish(**{k: a for k, a in s.video_attrs(v).items()
                     if k not in ("complete", "num_frames", "num_present")})


def _write_new(sources: list[FeatureStore], dst: Path, fmt: str, progress: bool) -> None:
    """A new store ``dst`` ('zarr', 'zip' or 'hdf5': ``fmt``) holding the videos of ``sources``,
    written under a temporary name and renamed (an existing ``dst`` is replaced only once the copy
    is whole)."""
    check_replaceable(dst)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp_zarr = tmp.with_name(tmp.name + ".zarr") if fmt == "zip" else tmp
    try:
        with create_store(tmp_zarr, sources[0].attrs,
                          format="hdf5" if fmt == "hdf5" else "zarr") as w:
            _copy_videos(sources, w, set(), progress)
        if fmt == "zip":
            _zip_directory(tmp_zarr, tmp)
        if dst.is_dir():
            shutil.rmtree(dst)
        elif dst.exists() and tmp.is_dir():  # a file replaced by a directory store
            dst.unlink()
        os.replace(tmp, dst)
    finally:
        for p in {tmp, tmp_zarr}:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def export_store(src, dst, overwrite: bool = False, progress: bool = False) -> Path:
    """Copy a store into another container, values and attributes identical.

    The output format follows ``dst``'s suffix: ``.zarr`` a Zarr directory, ``.zip``
    (``.zarr.zip``) a single-file zip of a Zarr store (read with ``zarr.storage.ZipStore``),
    ``.h5``/``.hdf5`` HDF5; any other name is refused before anything is written. Only complete
    videos are copied. The copy is written under a temporary name and renamed.

    Args:
        src: the store to read.
        dst: the new store's path.
        overwrite: replace an existing ``dst``.
        progress: show a tqdm bar over videos.
    Raises:
        StoreError: ``dst`` with another suffix, or existing without ``overwrite``; a source that
            does not open, or a damaged video in it (nothing is left at ``dst`` then).
    """
    src, dst = Path(src), Path(dst)
    fmt = output_format(dst)
    if src.resolve() == dst.resolve():
        raise StoreError(f"export {src} onto itself: give another output path")
    if dst.exists() and not overwrite:
        raise StoreError(f"{dst} exists: choose another output path or pass overwrite=True "
                         "(--overwrite)")
    with open_store(src) as store:
        _write_new([store], dst, fmt, progress)
    return dst


def merge_stores(parts, out, overwrite: bool = False, progress: bool = False) -> Path:
    """Merge stores holding different videos (e.g. the HDF5 part files of several ranks) into one.

    If ``out`` exists (and not ``overwrite``), the parts are appended to it like a resumed run:
    its identity attributes must match, videos it already holds complete are skipped, and a merge
    killed half-way can simply be run again. Otherwise ``out`` is written under a temporary name and
    renamed. The parts are left in place.

    Args:
        parts: store paths; identity attributes must agree, and no video may be in two parts.
        out: the merged store (format from its suffix, as in ``export_store``: a new one must
            end in .zarr, .zarr.zip, .h5 or .hdf5); not one of the parts.
        overwrite: build ``out`` afresh from the parts alone.
        progress: show a tqdm bar over videos.
    """
    parts, out = [Path(p) for p in parts], Path(out)
    if not parts:
        raise StoreError("merge_stores needs at least one part")
    if out.resolve() in {p.resolve() for p in parts}:
        raise StoreError(f"merge output {out} is also one of the parts: give another output path")
    stores = []
    try:
        for p in parts:
            stores.append(open_store(p))
            differ = identity_differences(stores[0].attrs, stores[-1].attrs)
            if differ:
                raise StoreError(f"{p} was made differently from {parts[0]}: {'; '.join(differ)}")
        _check_disjoint(stores)
        if out.exists() and not overwrite:  # appended to in the container it is, whatever its name
            with create_store(out, stores[0].attrs, format=sniff_format(out)) as writer:
                _copy_videos(stores, writer, writer.completed(), progress)
        else:
            _write_new(stores, out, output_format(out), progress)
    finally:
        for s in stores:
            s.close()
    return out
