"""Writing a feature store: resumable, streaming, and safe for several writer processes.

A video is written in three steps: ``begin_video`` (re)creates its group with ``complete=False``,
``write`` streams rows into it, ``finish`` sets ``complete=True`` last. A run killed at any point
leaves only incomplete groups behind; the next run skips ``completed()`` videos and redoes the rest
(after the habit of video_features' skip-done runs, with an explicit completion record instead of
"the output file exists").

Several processes (torchrun ranks): with Zarr, rank 0 calls ``create_store(..., role="main")``, the
others (after a barrier) ``role="worker"``; each writes only its own videos' groups, which touch no
shared file, and rank 0 closes last (after another barrier), consolidating the metadata. HDF5 has
one writer per file: each rank writes ``part_path(path, rank)`` and rank 0 calls
``merge_stores(parts, path)``.
"""

import re
import shutil
from pathlib import Path

import numpy as np

from .backends import H5Backend, ZarrBackend, open_backend
from .errors import StoreError
from .format import (
    CHUNK_ROWS,
    WRITE_FORMATS,
    check_video_name,
    damaged_store_of_ours,
    identity_differences,
    infer_format,
    normalise_attrs,
    sniff_format,
    suffix_contradiction,
)

ROLES = ("main", "worker")
PARTIAL = re.compile(r"zarr\.[0-9a-f]+\.partial")  # what a killed rewrite of zarr.json leaves


class VideoWriter:
    """Writes the rows of one video, buffering one chunk so every chunk is written whole, once.

    Rows may arrive in any order in blocks of any size; in order (the streaming case) memory holds
    one chunk. A chunk written before and touched again is read back first (read-modify-write).
    """

    def __init__(self, backend, name: str, num_frames: int, feature_dim: int, dtype: str,
                 chunk_rows: int):
        self.name = name
        self.num_frames = num_frames
        self._backend = backend
        self._dtype = np.dtype(dtype)
        self._chunk_rows = chunk_rows
        self._features, self._present = backend.begin_video(
            name, {"complete": False, "num_frames": num_frames}, num_frames, feature_dim, dtype,
            chunk_rows)
        self._buf_features = np.zeros((chunk_rows, feature_dim), self._dtype)  # (T_chunk, D)
        self._buf_present = np.zeros(chunk_rows, bool)
        self._buf_written = np.zeros(chunk_rows, bool)
        self._chunk: int | None = None  # index of the chunk held in the buffers
        self._flushed: set[int] = set()
        self._finished = False

    def _bounds(self, k: int) -> tuple[int, int]:
        lo = k * self._chunk_rows
        return lo, min(lo + self._chunk_rows, self.num_frames)

    def _load(self, k: int) -> None:
        lo, hi = self._bounds(k)
        n = hi - lo
        if k in self._flushed:
            self._buf_features[:n] = self._features[lo:hi]
            self._buf_present[:n] = self._present[lo:hi]
            self._buf_written[:n] = True
        else:
            self._buf_features[:n] = 0
            self._buf_present[:n] = False
            self._buf_written[:n] = False
        self._chunk = k

    def _flush(self) -> None:
        if self._chunk is None:
            return
        lo, hi = self._bounds(self._chunk)
        self._features[lo:hi] = self._buf_features[: hi - lo]
        self._present[lo:hi] = self._buf_present[: hi - lo]
        self._flushed.add(self._chunk)
        self._chunk = None

    def write(self, start_row: int, features, present) -> None:
        """Store rows ``start_row .. start_row + n - 1`` (frames start_row+1 .. start_row+n).

        Args:
            start_row: first row (0-based; row i is frame i+1).
            features: (n, D) array (numpy, or anything np.asarray takes); cast to the store dtype;
                rows of absent frames are stored as zeros whatever they hold.
            present: (n,) bool, true where the frame had a face image.
        """
        if self._finished:
            raise StoreError(f"video {self.name!r} is already finished: begin_video it again to "
                             "rewrite it")
        features = np.asarray(features)
        present = np.asarray(present, dtype=bool)
        n = len(present)
        if features.shape != (n, self._buf_features.shape[1]):
            raise StoreError(f"video {self.name!r}: features of shape {features.shape} for {n} "
                             f"present flags, expected ({n}, {self._buf_features.shape[1]})")
        if start_row < 0 or start_row + n > self.num_frames:
            raise StoreError(f"video {self.name!r}: rows {start_row}..{start_row + n - 1} outside "
                             f"0..{self.num_frames - 1} (num_frames={self.num_frames})")
        row, stop = start_row, start_row + n
        while row < stop:
            k = row // self._chunk_rows
            if self._chunk != k:
                self._flush()
                self._load(k)
            lo, hi = self._bounds(k)
            end = min(stop, hi)
            src = slice(row - start_row, end - start_row)
            dst = slice(row - lo, end - lo)
            self._buf_present[dst] = present[src]
            self._buf_features[dst] = features[src]
            self._buf_features[dst][~present[src]] = 0
            self._buf_written[dst] = True
            if self._buf_written[: hi - lo].all():
                self._flush()
            row = end

    def finish(self, **extra) -> None:
        """Write the buffered rows, then mark the video complete (the last write of the video).

        Args:
            extra: more video attributes (JSON values) written with the mark; extraction adds
                ``num_images``, the image files its frames were read from.
        """
        if self._finished:
            return
        self._flush()
        num_present = int(np.count_nonzero(self._present[:]))
        # complete last: HDF5 writes the keys one by one
        self._backend.set_video_attrs(self.name, {**extra, "num_frames": self.num_frames,
                                                  "num_present": num_present, "complete": True})
        self._backend.flush()
        self._finished = True


class StoreWriter:
    """An open store being written; use ``create_store`` to make one, and close it (or ``with``)."""

    def __init__(self, backend, attrs: dict, role: str, chunk_rows: int):
        self._backend = backend
        self.path = backend.path
        self.format = backend.format
        self.attrs = attrs
        self.role = role
        self._chunk_rows = chunk_rows
        self._closed = False

    def completed(self) -> set[str]:
        """Videos already complete in the store (to skip on resume)."""
        return {v for v in self._backend.video_names()
                if self._backend.video_attrs(v).get("complete") is True
                and self._backend.has_arrays(v)}

    def video_attrs(self, name: str) -> dict:
        """The attributes of a complete video, as its writer marked it: ``num_frames`` (T rows),
        ``num_present`` (rows with a face) and any extra ones (:meth:`VideoWriter.finish`).

        Raises:
            KeyError: ``name`` is not a complete video of the store (:meth:`completed`).
        """
        attrs = self._backend.video_attrs(name)
        if attrs.get("complete") is not True:
            raise KeyError(name)
        return attrs

    def present(self, name: str) -> np.ndarray:
        """(T,) bool: the stored ``present`` flags of a video (a row with a face).

        Raises:
            KeyError: no such video.
        """
        return np.asarray(self._backend.arrays(name)[1][:], bool)

    def mark_incomplete(self, name: str) -> None:
        """Take back a video's ``complete`` mark: readers skip it and the next extraction redoes it
        (for rows that no longer fit the data they came from). Raises KeyError: no such video."""
        self._backend.set_video_attrs(name, {"complete": False})
        self._backend.flush()

    def begin_video(self, name: str, num_frames: int) -> VideoWriter:
        """(Re)create the group of ``name`` with ``num_frames`` zero rows, replacing any
        earlier one."""
        check_video_name(name)
        if (isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer))
                or num_frames < 1):
            raise StoreError(f"video {name!r}: num_frames must be a positive integer, "
                             f"got {num_frames!r}")
        return VideoWriter(self._backend, name, int(num_frames), self.attrs["feature_dim"],
                           self.attrs["dtype"], self._chunk_rows)

    def close(self) -> None:
        """HDF5: flush and close. Zarr main: consolidate the metadata (after every
        worker finished)."""
        if self._closed:
            return
        self._closed = True
        if self.format == "zarr" and self.role == "main":
            self._backend.consolidate()
        self._backend.close()

    def abort(self) -> None:
        """Close after a failed or interrupted run, without finishing anything: an HDF5 file is
        flushed and closed (not left open in the process, as a notebook's traceback would keep it);
        a Zarr store stays as its last write left it, its listing consolidated at the next close.
        Its incomplete videos are redone by the next extraction."""
        if self._closed:
            return
        self._closed = True
        self._backend.close()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_replaceable(path: Path) -> None:
    """Refuse to replace ``path`` unless it is one of our stores, sound or damaged, holding nothing
    else, or an empty folder (a typo must not cost a folder).

    A damaged store is recognised by ``damaged_store_of_ours``: what could not be opened is replaced
    only when it still carries our format name where every store of ours writes it first.
    """
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    try:
        kind = sniff_format(path)
        open_backend(path, kind).close()
    except StoreError as e:
        if not damaged_store_of_ours(path):
            raise StoreError(
                f"refusing to overwrite {path}, which is not a feature store: {e}") from e
    # A Zarr store's top level holds its zarr.json and the `videos` group; a killed rewrite of
    # zarr.json may leave zarr.<hex>.partial (zarr 3.1's temporary name); hidden files
    # (.DS_Store) are no one's work.
    foreign = sorted(p.name for p in path.iterdir()
                     if not (p.name in ("zarr.json", "videos") or PARTIAL.fullmatch(p.name)
                             or (p.name.startswith(".") and p.is_file())
                             or (p / "zarr.json").is_file())) if path.is_dir() else []
    if foreign:
        raise StoreError(f"refusing to overwrite {path}: besides the store it holds "
                         f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}, not "
                         "ours; move them out, or give another store path")


def _remove_store(path: Path) -> None:
    """Delete an existing store, refusing anything that is not one."""
    check_replaceable(path)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def create_store(path, attrs: dict, format: str | None = None, overwrite: bool = False,
                 role: str = "main", chunk_rows: int = CHUNK_ROWS) -> StoreWriter:
    """Create a feature store, or open an existing one to append to it.

    Args:
        path: ``feats.zarr`` (Zarr 3 directory) or ``feats.h5``.
        attrs: root attributes; must hold encoder, encoder_config, checkpoint_sha256, input_size,
            pixel_mean, pixel_std, pooling, feature_dim, dtype ("float16" | "float32"); anything
            else JSON-serialisable is kept too.
        format: "zarr" | "hdf5"; None infers it from the suffix (.h5/.hdf5 -> hdf5, else zarr).
        overwrite: delete an existing store and start afresh; without it an existing store is
            opened for appending, refused if its identity attributes differ from ``attrs``.
        role: "main" creates the store and consolidates it on close; "worker" (Zarr only) opens a
            store the main process created and writes only its own videos.
        chunk_rows: rows per chunk of a new video.

    Raises:
        StoreError: a format that cannot be written, a ``format`` the suffix of a new store
            contradicts (``x.h5`` as zarr), a store of another kind or made differently (without
            ``overwrite``).
    """
    path = Path(path)
    fmt = format or infer_format(path)
    if fmt not in WRITE_FORMATS:
        raise StoreError(f"cannot write a {fmt!r} store at {path}: write a .zarr directory or .h5 "
                         "file (a .zarr.zip is made by `mae-affect features export`)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise StoreError(f"{path}: {parent} is a file, not a folder; give the store a "
                                 "path in a folder")
            break
    # a new store only: an existing one is appended to in the container it is, whatever its name
    contradiction = suffix_contradiction(path, format)
    if contradiction and (overwrite or not path.exists()):
        raise StoreError(contradiction)
    if role not in ROLES:
        raise StoreError(f"role={role!r}: use 'main' or 'worker'")
    if role == "worker" and fmt == "hdf5":
        raise StoreError(f"{path}: an HDF5 file has one writer; give each rank its own file "
                         "(features.part_path(path, rank)) and merge them with merge_stores")
    if role == "worker" and overwrite:
        raise StoreError(f"{path}: only the main process may overwrite a store")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise StoreError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    given = normalise_attrs(attrs)
    if overwrite and path.exists():
        _remove_store(path)
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()  # an empty directory (e.g. made by a job scheduler) is as good as nothing

    if not path.exists():
        if role == "worker":
            raise StoreError(f"no store at {path} yet: the main process creates it "
                             "(role='main') before workers open it (put a barrier in between)")
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = (H5Backend if fmt == "hdf5" else ZarrBackend).create(path, given)
        return StoreWriter(backend, given, role, chunk_rows)

    kind = sniff_format(path)
    if kind != fmt:
        raise StoreError(f"{path} is a {kind} store, not {fmt}: pick a path with the right suffix")
    backend = open_backend(path, kind, use_consolidated=False, writable=True)
    stored = backend.attrs
    differ = identity_differences(stored, given)
    if differ:
        backend.close()
        raise StoreError(f"store {path} was made differently: {'; '.join(differ)}. Pass "
                         "overwrite=True (--overwrite) to start afresh, or choose another store "
                         "path")
    if fmt == "zarr" and role == "main":
        backend.drop_consolidated()
    return StoreWriter(backend, stored, role, chunk_rows)


def part_path(path, rank: int) -> Path:
    """The part file of one rank for an HDF5 store: ``feats.h5`` -> ``feats.part0.h5``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.part{rank}{path.suffix}")
