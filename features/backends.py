"""The two containers of the store: a Zarr 3 hierarchy (directory, or read-only zip) and an HDF5
file.

Both expose the same small surface, so that the reader and the writer never branch on the format.
Arrays come back as the container's own lazy objects (``zarr.Array``, ``h5py.Dataset``): both take
numpy slices, so ``features[a:b]`` reads only the chunks it needs.
"""

import os
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import zarr
import zarr.errors
import zarr.storage

from .errors import StoreError
from .format import (
    FEATURES,
    PRESENT,
    VIDEOS,
    check_root_attrs,
    h5_decode_attrs,
    h5_encode_attrs,
    h5_mirror_differences,
)

# What slicing an array raises on a damaged chunk: the zstd codec a RuntimeError ("Zstd
# decompression error") for truncated or garbled bytes, a ValueError for bytes that decode to the
# wrong size, zipfile a BadZipFile (CRC mismatch in a .zarr.zip), the file system or h5py an
# OSError.
DAMAGED_CHUNK_ERRORS = (RuntimeError, ValueError, OSError, zipfile.BadZipFile)


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class ZarrBackend:
    """A feature store in a Zarr 3 hierarchy."""

    def __init__(self, path: Path, root: zarr.Group,
                 zip_store: zarr.storage.ZipStore | None = None):
        self.path = Path(path)
        self.root = root
        self._zip = zip_store
        self.format = "zip" if zip_store is not None else "zarr"
        if VIDEOS not in root.group_keys():
            raise StoreError(f"{path} has no '{VIDEOS}' group, not a mae-affect feature store")
        self.videos = root[VIDEOS]

    @classmethod
    def open(cls, path: Path, kind: str, use_consolidated: bool = True, writable: bool = False):
        """Open an existing store; with consolidated metadata (when present) opening is one read."""
        check_consolidated = None if use_consolidated else False
        zip_store = None
        try:
            if kind == "zip":
                if not zipfile.is_zipfile(path):
                    raise StoreError(f"{path} is not a readable zip file (damaged or truncated): "
                                     "send or export it again")
                zip_store = zarr.storage.ZipStore(path, mode="r")
            root = zarr.open_group(store=zip_store or path, mode="r+" if writable else "r",
                                   use_consolidated=check_consolidated)
            check_root_attrs(dict(root.attrs), path)
        except (zarr.errors.BaseZarrError, FileNotFoundError, ValueError, zipfile.BadZipFile) as e:
            if zip_store is not None:
                zip_store.close()
            raise StoreError(f"cannot open Zarr store {path} ({e}): not a feature store, or a "
                             "damaged one; give a store made by `mae-affect extract` or `features "
                             "export`") from e
        except StoreError:
            if zip_store is not None:
                zip_store.close()
            raise
        if writable and VIDEOS not in root.group_keys():
            root.create_group(VIDEOS)  # a main rank killed right after creating the root
        return cls(path, root, zip_store)

    @classmethod
    def create(cls, path: Path, attrs: dict):
        root = zarr.open_group(path, mode="w-", attributes=attrs)
        root.create_group(VIDEOS)
        return cls(path, root)

    @property
    def attrs(self) -> dict:
        return dict(self.root.attrs)

    def video_names(self) -> list[str]:
        return sorted(self.videos.group_keys())

    def video_attrs(self, name: str) -> dict:
        return dict(self.videos[name].attrs)

    def has_arrays(self, name: str) -> bool:
        """Both arrays of a video are there (a hand edit can delete one from a complete group)."""
        g = self.videos[name]
        return FEATURES in g and PRESENT in g

    def arrays(self, name: str):
        g = self.videos[name]
        return g[FEATURES], g[PRESENT]

    def missing_chunks(self, name: str, present: np.ndarray) -> str | None:
        """None when a video's arrays hold the chunk files their writer left, else what differs.

        zarr stores no chunk that is all fill value (zeros, absent), so a writer leaves a chunk
        file in both arrays for every chunk with a face, and none for a stretch without one (or,
        with zarr's ``write_empty_chunks``, a file for every chunk written). A deleted chunk file
        reads back as fill value without any error: this count is how it is noticed.

        Args:
            name: a video.
            present: (T,) bool, its present flags as read (a deleted present chunk reads false).
        """
        features, stored_present = self.arrays(name)
        starts = np.arange(0, len(present), stored_present.chunks[0])
        with_face = int(np.count_nonzero(np.logical_or.reduceat(present, starts)))
        stored = (features.nchunks_initialized, stored_present.nchunks_initialized)
        # More files than chunks with a face are fine (chunks written whole with
        # write_empty_chunks); fewer means a file of a chunk with a face is gone. (A store written
        # with write_empty_chunks and rows never written can hide one lost file: counts, not names.)
        if min(stored) >= with_face:
            return None
        return (f"{FEATURES!r} stores {stored[0]} chunk files and {PRESENT!r} {stored[1]}, but "
                f"{with_face} of its {stored_present.nchunks} chunks hold a frame with a face")

    def begin_video(self, name: str, attrs: dict, num_frames: int, feature_dim: int,
                    dtype: str, chunk_rows: int):
        del self.videos[name]  # removes any earlier (incomplete) attempt; a no-op when absent
        g = self.videos.create_group(name, attributes=attrs)
        features = g.create_array(FEATURES, shape=(num_frames, feature_dim), dtype=dtype,
                                  chunks=(chunk_rows, feature_dim), fill_value=0,
                                  dimension_names=("frame", "feature"))
        present = g.create_array(PRESENT, shape=(num_frames,), dtype="bool", chunks=(chunk_rows,),
                                 fill_value=False, dimension_names=("frame",))
        return features, present

    def set_video_attrs(self, name: str, attrs: dict) -> None:
        # LocalStore replaces zarr.json atomically (temporary file + rename).
        self.videos[name].update_attributes(attrs)

    def flush(self) -> None:
        """Zarr writes are synchronous: every chunk is on disk when the assignment returns."""

    def drop_consolidated(self) -> None:
        # Opened with use_consolidated=False, the root's metadata has no consolidated listing, so
        # rewriting it removes the listing: while a writer appends, readers see the live groups
        # instead of a stale list; close() consolidates again.
        self.root.update_attributes({})

    def consolidate(self) -> None:
        with warnings.catch_warnings():
            # "Consolidated metadata is currently not part in the Zarr format 3 specification":
            # zarr-python reads it; other readers fall back to listing the groups.
            warnings.filterwarnings("ignore", category=zarr.errors.ZarrUserWarning)
            zarr.consolidate_metadata(self.path)

    def is_consolidated(self) -> bool:
        return self.root.metadata.consolidated_metadata is not None

    def listed_complete(self) -> set[str] | None:
        """The complete videos of the consolidated listing in the root's ``zarr.json``
        (None: no listing), read apart from the groups themselves so the two can be compared."""
        root = self.root if self.is_consolidated() else zarr.open_group(
            store=self._zip or self.path, mode="r", use_consolidated=None)
        listing = root.metadata.consolidated_metadata
        if listing is None:
            return None
        prefix = f"{VIDEOS}/"
        return {key[len(prefix):] for key, meta in listing.flattened_metadata.items()
                if key.startswith(prefix) and "/" not in key[len(prefix):]
                and meta.attributes.get("complete") is True}

    def nbytes(self) -> int:
        return _tree_bytes(self.path)

    def mirror_differences(self) -> list[str]:
        """Zarr keeps one copy of each attribute: nothing can differ."""
        return []

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


class H5Backend:
    """A feature store in one HDF5 file (one writer at a time; see merge_stores for
    several ranks)."""

    format = "hdf5"

    def __init__(self, path: Path, f: h5py.File):
        self.path = Path(path)
        self.f = f
        if VIDEOS not in f:
            f.close()
            raise StoreError(f"{path} has no '{VIDEOS}' group, not a mae-affect feature store")
        self.videos = f[VIDEOS]

    @classmethod
    def open(cls, path: Path, writable: bool = False):
        try:
            f = h5py.File(path, "r+" if writable else "r")
        except OSError as e:
            raise StoreError(
                f"cannot open HDF5 store {path} ({e}): another process may be writing it (wait for "
                "it), or it is damaged: a copy cut short (copy it again) or a run killed while "
                "writing it (extract again with --overwrite; Zarr stores survive kills)") from e
        try:
            check_root_attrs(h5_decode_attrs(f.attrs, path), path)
        except StoreError:
            f.close()
            raise
        return cls(path, f)

    @classmethod
    def create(cls, path: Path, attrs: dict):
        f = h5py.File(path, "w-")
        f.attrs.update(h5_encode_attrs(attrs))
        f.create_group(VIDEOS)
        f.flush()
        return cls(path, f)

    @property
    def attrs(self) -> dict:
        return h5_decode_attrs(self.f.attrs, self.path)

    def video_names(self) -> list[str]:
        return sorted(self.videos.keys())

    def video_attrs(self, name: str) -> dict:
        out = {}
        for k, v in self.videos[name].attrs.items():
            out[k] = v.item() if isinstance(v, np.generic) else v
        return out

    def has_arrays(self, name: str) -> bool:
        g = self.videos[name]
        return FEATURES in g and PRESENT in g

    def arrays(self, name: str):
        g = self.videos[name]
        return g[FEATURES], g[PRESENT]

    def missing_chunks(self, name: str, present: np.ndarray) -> None:
        """HDF5 keeps every chunk inside its one file: damage there shows as a file that does not
        open or a read error, never as a missing chunk."""
        return None

    def begin_video(self, name: str, attrs: dict, num_frames: int, feature_dim: int,
                    dtype: str, chunk_rows: int):
        if name in self.videos:
            del self.videos[name]  # HDF5 does not reclaim the space; `export` writes a compact copy
        g = self.videos.create_group(name)
        g.attrs.update(attrs)
        # Fletcher-32 checksums (HDF5's own filter, read by any HDF5 library): a damaged chunk
        # fails to read instead of reading as other numbers
        features = g.create_dataset(FEATURES, shape=(num_frames, feature_dim), dtype=dtype,
                                    chunks=(min(chunk_rows, num_frames), feature_dim), fillvalue=0,
                                    fletcher32=True)
        present = g.create_dataset(PRESENT, shape=(num_frames,), dtype=bool,
                                   chunks=(min(chunk_rows, num_frames),), fillvalue=False,
                                   fletcher32=True)
        return features, present

    def set_video_attrs(self, name: str, attrs: dict) -> None:
        self.videos[name].attrs.update(attrs)

    def flush(self) -> None:
        self.f.flush()

    def nbytes(self) -> int:
        return os.path.getsize(self.path)

    def mirror_differences(self) -> list[str]:
        """Root attributes whose native HDF5 copy differs from ``attrs_json``
        (:func:`h5_mirror_differences`)."""
        return h5_mirror_differences(self.f.attrs, self.attrs)

    def close(self) -> None:
        self.f.close()


def open_backend(path: Path, kind: str, use_consolidated: bool = True, writable: bool = False):
    """The container at ``path`` of ``kind`` ("hdf5", "zarr" or "zip", as ``sniff_format`` says),
    opened for reading (or appending with ``writable``). Raises StoreError: it does not open."""
    if kind == "hdf5":
        return H5Backend.open(path, writable=writable)
    return ZarrBackend.open(path, kind, use_consolidated=use_consolidated, writable=writable)
