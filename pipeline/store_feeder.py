"""Extraction's rows on their way into the feature store.

Each batch of pooled rows is split into per-video runs (:func:`feed_batch`) and handed to a
:class:`StoreFeeder`, which finishes a video (marks it complete) once the stream has moved past it,
and writes either on a thread of its own, off the compute path, or between two forward passes
(:func:`writes_in_background` chooses).
"""

import queue
import threading

import numpy as np
import torch

import features

_ABORT = object()


def writes_in_background(device: torch.device, workers: int) -> bool:
    """Whether extraction's store writes run on a thread of their own (:class:`StoreFeeder`).

    Yes where the host has cores beside the encoder's: a CUDA device, or decode workers. No on a
    CPU where the main process decodes between forward passes (``workers`` 0: fewer than 4 cores,
    :func:`pipeline.device.cpu_budget`, or ``--workers 0``): every core runs the encoder's threads
    there, and a writer thread waking mid-pass takes a core from one of them while the others wait
    for it; writing in turn, like the decode, costs less (interleaved ratio 0.929 against 0.913 on
    2 cores, docs/results-speed.md).
    """
    return device.type == "cuda" or workers > 0


class StoreFeeder:
    """Hands batches of rows to the store, on a thread of its own or in the caller's.

    Videos arrive in ``order``; a video is finished (marked complete, with its ``num_images``) once
    the stream has moved past it, and videos without any image frame are written as all-absent.

    Args:
        writer: the open store.
        order: the videos in the order their rows arrive, each once (those without images too).
        lengths: video -> T, its rows.
        images: video -> the image files its frames are read from (0: none).
        background: write on a thread of its own (off the compute path; errors are raised at a
            later :meth:`put` or at :meth:`close`), else within each :meth:`put`
            (:func:`writes_in_background` chooses).
    """

    def __init__(self, writer: features.StoreWriter, order: list[str], lengths: dict[str, int],
                 images: dict[str, int], background: bool = True):
        self._writer = writer
        self._order = order
        self._lengths = lengths
        self._images = images
        self._next = 0  # index in order of the next video to begin
        self._current: features.VideoWriter | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue: queue.Queue = queue.Queue(maxsize=16)
            self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
            self._thread.start()

    def put(self, video: str, rows: np.ndarray, feats: np.ndarray, present: np.ndarray) -> None:
        """Rows (n,) ascending 0-based frame rows of one video, feats (n, D), present (n,).

        Raises:
            what the store's write raised (here, or at a later call when in the background).
        """
        if self._thread is None:
            self._write(video, rows, feats, present)
            return
        if self._error is not None:
            raise self._error
        self._queue.put((video, rows, feats, present))

    def _advance_to(self, video: str | None) -> None:
        """Finish the current video and every video before ``video`` in the order (None: all)."""
        while self._current is None or self._current.name != video:
            if self._current is not None:
                self._current.finish(num_images=self._images[self._current.name])
                self._current = None
            if self._next == len(self._order):
                if video is not None:
                    raise RuntimeError(f"rows for {video!r}, which is not in the extraction order")
                return
            name = self._order[self._next]
            self._next += 1
            self._current = self._writer.begin_video(name, self._lengths[name])

    def _write(self, video: str, rows: np.ndarray, feats: np.ndarray, present: np.ndarray) -> None:
        self._advance_to(video)
        lo = int(rows[0])
        block = np.zeros((int(rows[-1]) - lo + 1, feats.shape[1]), feats.dtype)  # (n_span, D)
        mask = np.zeros(len(block), bool)
        block[rows - lo] = feats
        mask[rows - lo] = present
        self._current.write(lo, block, mask)

    def _run(self) -> None:
        ended = False
        try:
            while (item := self._queue.get()) is not _ABORT:
                if item is None:  # the end of the stream: finish what is left
                    ended = True
                    self._advance_to(None)
                    return
                self._write(*item)
        except BaseException as err:  # handed to the main thread by put() / close()
            self._error = err
            # drain: the producer never blocks
            while not ended and self._queue.get() not in (None, _ABORT):
                pass

    def close(self) -> None:
        """Finish every remaining video (the stream ended normally) and wait for the writes.

        Raises:
            what a write raised (in the background: one not raised yet by :meth:`put`).
        """
        if self._thread is None:
            self._advance_to(None)
            return
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop without finishing the current video: it stays incomplete and is redone on resume."""
        if self._thread is not None:
            self._queue.put(_ABORT)
            self._thread.join()


def feed_batch(feeder: StoreFeeder, batch: list[tuple[str, int]], pooled: np.ndarray,
               readable: np.ndarray) -> None:
    """Split one batch into per-video runs of rows and hand them to the feeder.

    Args:
        feeder: the run's feeder.
        batch: (video, 1-based frame number) of each row, in stream order.
        pooled: (B, D) the rows; readable: (B,) bool, a face image was read for the row.
    """
    names = [v for v, _ in batch]
    rows = np.array([k - 1 for _, k in batch])  # row i = frame i + 1
    start = 0
    for end in [*(i for i in range(1, len(names)) if names[i] != names[i - 1]), len(names)]:
        feeder.put(names[start], rows[start:end], pooled[start:end], readable[start:end])
        start = end
