"""Reading a feature store: one video at a time, or every video packed into one array.

Random window reads from a chunked store decode a whole chunk per window; the heads instead call
``load_all`` once and slice the in-memory array (the issue's "fast path").
"""

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import DAMAGED_CHUNK_ERRORS, open_backend
from .errors import StoreError
from .fill import check_fill, fill_absent
from .format import FEATURES, PRESENT, VIDEOS, sniff_format


@dataclass
class Packed:
    """Every selected video's rows, back to back.

    features: (sum T, D) contiguous; present: (sum T,) bool;
    offsets: video -> (start, stop) rows of that video; videos: the videos in packing order.
    """

    features: np.ndarray
    present: np.ndarray
    offsets: dict[str, tuple[int, int]]
    videos: list[str]

    def video(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Views (T, D) and (T,) of one video's rows."""
        start, stop = self.offsets[name]
        return self.features[start:stop], self.present[start:stop]


class FeatureStore:
    """A feature store opened for reading (Zarr directory, .zarr.zip or HDF5); see
    ``open_store``."""

    def __init__(self, backend):
        self._backend = backend
        self.path: Path = backend.path
        self.format: str = backend.format
        self._attrs = backend.attrs
        self._video_attrs = {v: backend.video_attrs(v) for v in backend.video_names()}
        # complete: marked so, last, by the writer, and still holding both arrays (a hand edit may
        # drop one)
        self._complete = sorted(v for v, a in self._video_attrs.items()
                                if a.get("complete") is True and backend.has_arrays(v))

    @property
    def attrs(self) -> dict:
        return dict(self._attrs)

    @property
    def feature_dim(self) -> int:
        return int(self._attrs["feature_dim"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._attrs["dtype"])

    def videos(self) -> list[str]:
        """Complete videos, sorted; incomplete ones (an interrupted run) are not listed."""
        return list(self._complete)

    def incomplete_videos(self) -> list[str]:
        """Videos whose group exists but was never marked complete (an interrupted run), sorted;
        readers skip them, the next extraction redoes them."""
        return sorted(set(self._video_attrs) - set(self._complete))

    def _check_video(self, video: str) -> None:
        if video not in self._video_attrs:
            raise StoreError(f"video {video!r} is not in store {self.path}: "
                             f"it holds {len(self._complete)} videos "
                             "(see `mae-affect features info`)")
        if video not in self._complete:
            raise StoreError(f"video {video!r} in store {self.path} is incomplete (an interrupted "
                             "run, or a group changed by hand): rerun extraction, which redoes it")

    def num_frames(self, video: str) -> int:
        """T, the video's rows (row i = frame i + 1). Raises StoreError: not a complete video."""
        self._check_video(video)
        return int(self._video_attrs[video]["num_frames"])

    def video_attrs(self, video: str) -> dict:
        """A complete video's attributes: ``complete``, ``num_frames``, ``num_present`` and any
        its writer added (``num_images`` from extract). Raises StoreError: not a complete video."""
        self._check_video(video)
        return dict(self._video_attrs[video])

    def num_present(self, video: str) -> int:
        """Rows with a face (``present`` true). Raises StoreError: not a complete video."""
        self._check_video(video)
        return int(self._video_attrs[video]["num_present"])

    @property
    def consolidated(self) -> bool:
        """True when a Zarr store carries a consolidated listing (plain zarr then opens it
        in one read)."""
        return self.format != "hdf5" and self._backend.listed_complete() is not None

    def arrays(self, video: str):
        """The stored arrays of one video, lazy (``zarr.Array`` or ``h5py.Dataset``): features
        (T, D) and present (T,); slicing reads only the chunks it touches, and a damaged chunk
        raises the container's own error (``read_rows`` turns it into a StoreError)."""
        self._check_video(video)
        return self._backend.arrays(video)

    def _redo(self, video: str) -> str:
        """What to do about a damaged complete video."""
        if self.format == "zip":
            return "export the store again from the Zarr store it was made from"
        group = (f"delete {self.path / VIDEOS / video}" if self.format == "zarr"
                 else f"delete its group (h5py: del f['{VIDEOS}/{video}'])")
        return (f"{group} and rerun `mae-affect extract`, which redoes it "
                f"(`mae-affect features verify {self.path}` lists every damaged video)")

    def _read(self, video: str, name: str, array, start: int, stop: int) -> np.ndarray:
        try:
            return np.asarray(array[start:stop])
        except DAMAGED_CHUNK_ERRORS as e:
            raise StoreError(f"{self.path}: video {video!r}, array {name!r}: rows {start}:{stop} "
                             f"cannot be read, a chunk is damaged ({e}): "
                             f"{self._redo(video)}") from e

    def read_rows(self, video: str, start: int = 0, stop: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop`` as stored (absent rows zero): features (n, D) store dtype,
        present (n,) bool.

        Reads only the chunks the rows lie in; unlike ``read`` and ``load_all`` it does not check
        that the video's chunk files are all there (``check_stored``).

        Args:
            video: a name from ``videos()``.
            start: first row, ``0 <= start <= stop``.
            stop: row after the last, at most ``num_frames(video)``; None: the end.
        Raises:
            StoreError: rows outside the video, or a chunk that cannot be read (a damaged file).
        """
        t = self.num_frames(video)
        stop = t if stop is None else stop
        if not 0 <= start <= stop <= t:
            raise StoreError(f"rows {start}:{stop} of video {video!r} in {self.path} are not a "
                             f"range within its {t} rows: give 0 <= start <= stop <= {t}")
        features, present = self._backend.arrays(video)
        return (self._read(video, FEATURES, features, start, stop),
                np.asarray(self._read(video, PRESENT, present, start, stop), dtype=bool))

    def check_stored(self, video: str, present: np.ndarray) -> None:
        """Refuse a video whose stored rows are not all there: a chunk file deleted from a Zarr
        store reads back, without any error, as zero rows of frames without a face.

        Args:
            video: a name from ``videos()``.
            present: (T,) bool, all its present flags as read.
        Raises:
            StoreError: chunk files missing, or another count of frames with a face than its
                ``num_present``.
        """
        missing = self._backend.missing_chunks(video, present)
        if missing:
            raise StoreError(f"{self.path}: video {video!r} has chunk files missing ({missing}; "
                             "a missing chunk reads as zero rows without error): "
                             f"{self._redo(video)}")
        counted = int(np.count_nonzero(present))
        if counted != self.num_present(video):
            raise StoreError(f"{self.path}: video {video!r}: num_present says "
                             f"{self.num_present(video)}, {PRESENT!r} has {counted} (part of it "
                             f"lost or changed): {self._redo(video)}")

    def read(self, video: str, fill: str = "zeros", dtype=None) -> tuple[np.ndarray, np.ndarray]:
        """One video: features (T, D) in ``dtype`` (default: the store's), present (T,) bool.

        Args:
            video: a name from ``videos()``.
            fill: rows of frames without a face: "zeros" (as stored), "nearest" or "linear".
            dtype: output dtype; None keeps the stored one.
        Raises:
            StoreError: the video is not complete, or damaged (``read_rows``, ``check_stored``).
        """
        check_fill(fill)
        features, present = self.read_rows(video)
        self.check_stored(video, present)
        if dtype is not None:
            features = features.astype(dtype, copy=False)
        return fill_absent(features, present, fill), present

    def load_all(self, videos=None, dtype=np.float32, fill: str = "zeros") -> Packed:
        """Every (or the given) complete video packed into one contiguous array: the heads' fast
        path.

        Args:
            videos: names to load, in this order; None loads ``videos()``.
            dtype: dtype of the packed features (float32 by default; float16 halves the memory).
            fill: as in ``read``, applied per video.
        Raises:
            StoreError: a video not complete, or damaged (as in ``read``), or given twice.
        """
        check_fill(fill)
        names = self.videos() if videos is None else list(videos)
        for v in names:
            self._check_video(v)
        twice = sorted(v for v, n in Counter(names).items() if n > 1)
        if twice:
            raise StoreError(f"{self.path}: video(s) {', '.join(map(repr, twice))} given twice to "
                             "load_all: give each name once")
        offsets, start = {}, 0
        for v in names:
            offsets[v] = (start, start + self.num_frames(v))
            start += self.num_frames(v)
        features = np.empty((start, self.feature_dim), dtype)  # (sum T, D)
        present = np.empty(start, bool)
        for v in names:
            a, b = offsets[v]
            stored_features, stored_present = self.read_rows(v)
            self.check_stored(v, stored_present)
            features[a:b] = stored_features
            present[a:b] = stored_present
            fill_absent(features[a:b], present[a:b], fill)
        return Packed(features, present, offsets, names)

    @property
    def listing_stale(self) -> bool:
        """True when a Zarr store's consolidated listing (what plain ``zarr.open_group`` reads)
        names other complete videos than its groups do: a video deleted, added or changed after the
        store was consolidated (by hand, or by a writer that did not finish). ``extract`` rewrites
        it; so does ``features.consolidate_store``."""
        if self.format == "hdf5":
            return False
        listed = self._backend.listed_complete()
        return listed is not None and listed != set(self._complete)

    def mirror_differences(self) -> list[str]:
        """Root attributes whose native HDF5 copy differs from the authoritative ``attrs_json``
        (changed by hand; a reader of ``f.attrs`` would get other values), sorted; none in Zarr."""
        return self._backend.mirror_differences()

    def info(self) -> dict:
        """What made the store, how many videos and frames it holds, and its size on disk."""
        complete = [self._video_attrs[v] for v in self._complete]
        return {
            "path": str(self.path),
            "format": self.format,
            "attrs": self.attrs,
            "videos": len(complete),
            "incomplete_videos": len(self.incomplete_videos()),
            "frames": sum(int(a["num_frames"]) for a in complete),
            "present_frames": sum(int(a["num_present"]) for a in complete),
            "bytes": self._backend.nbytes(),
            "listing_stale": self.listing_stale,
        }

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(path, use_consolidated: bool = False) -> FeatureStore:
    """Open a store for reading, whatever its container (Zarr directory, .zarr.zip, HDF5).

    Every video is read from its own group's metadata, so a store changed by hand with plain zarr
    (``del root['videos/<name>']``, an attribute rewritten) reads as ``verify_store`` sees it,
    whatever the consolidated listing still says (``listing_stale`` tells when they differ). On a
    local disk this costs well under a second for 600 videos.

    Args:
        path: the store.
        use_consolidated: trust a Zarr store's consolidated listing instead (one read, what plain
            ``zarr.open_group`` does); ``verify_store`` uses it to compare the two.
    """
    path = Path(path)
    return FeatureStore(open_backend(path, sniff_format(path), use_consolidated=use_consolidated))
