"""Video decoding with PyAV (FFmpeg's libraries): frames in presentation order, upright, with time
stamps.

- Presentation order: packets are demuxed in file order and FFmpeg's decoder returns frames in
  presentation order (B-frames reordered); frame k (1-based) is the k-th frame it returns, as every
  FFmpeg-based reader numbers them.
- Rotation: phones store portrait video as landscape frames plus a display matrix;
  ``VideoFrame.rotation`` (degrees counter-clockwise, PyAV >= 14) is honoured, so frames come out as
  a player shows them.
- Time stamps: each frame keeps ``pts * time_base`` in seconds, so variable-frame-rate video maps
  back to real time; a frame without a pts gets the previous one's plus one frame period.
- Damage: a packet the decoder rejects is skipped and counted (``DecodeReport``); frames after it
  keep their own time stamps, so the record still maps every frame to its time. Fewer frames than
  the container declares (a file cut short: its index still lists every frame) is reported too. A
  file that cannot be opened, has no video stream or yields no frame raises :class:`VideoError`.
"""

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.video import require

# Suffixes taken from a folder; a file given by name is tried whatever its suffix.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                  ".3gp", ".ts", ".mts", ".m2ts", ".ogv")


class VideoError(InputError):
    """A file that cannot be decoded as a video (not a video, empty, no video stream, no frame)."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video's first video stream.

    Args:
        path: the file.
        width, height: frame size in pixels as a player shows it (after rotation).
        rate: average frame rate (frames/s) as a fraction; 0 when the container does not say.
        frames: frame count the container declares (0 when unknown); the decoded count is
            authoritative.
        codec: decoder name.
        rotation: display rotation in degrees counter-clockwise, from the first frame (0 when none).
    """

    path: Path
    width: int
    height: int
    rate: Fraction
    frames: int
    codec: str
    rotation: int = 0

    @property
    def fps(self) -> float:
        return float(self.rate) if self.rate else 0.0


@dataclass
class FrameBatch:
    """Consecutive decoded frames: ``frames`` uint8 (B, H, W, 3) RGB, ``times`` (B,) seconds,
    ``start`` the 0-based index of the first frame in the video."""

    frames: np.ndarray
    times: np.ndarray
    start: int


@dataclass
class DecodeReport:
    """What went wrong while decoding, for a warning and the record: skipped packets and where, and
    frames decoded against the count the container declares (0: it does not say)."""

    bad_packets: int = 0
    first_bad_time: float | None = None
    stopped_early: str | None = None
    declared: int = 0
    decoded: int = 0

    def warning(self, path: Path) -> str | None:
        """One line naming the file, or None when decoding was clean."""
        parts = []
        if self.bad_packets:
            where = (f" (first near {self.first_bad_time:.2f} s)"
                     if self.first_bad_time is not None else "")
            parts.append(f"{self.bad_packets} corrupt packet(s) skipped{where}")
        if self.stopped_early:
            parts.append(f"reading stopped early: {self.stopped_early}")
        if 0 < self.decoded < self.declared:
            parts.append(f"only {self.decoded} of the {self.declared} frames the container "
                         "declares could be decoded (the file is cut short or damaged)")
        return f"{path}: {'; '.join(parts)}" if parts else None


def _open(path: Path):
    av = require("av")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise VideoError(f"{path}: not a video FFmpeg can read ({err}); check the file") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream in the file")
    return container


def probe(path: Path) -> VideoInfo:
    """The first video stream's size, rate, declared frame count and rotation, without decoding it
    all."""
    av = require("av")
    with _open(path) as container:
        stream = container.streams.video[0]
        rotation = 0
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError:
            first = None
        if first is not None:
            rotation = _quarter_turns(first.rotation) * 90
        width, height = stream.codec_context.width, stream.codec_context.height
        if rotation % 180:
            width, height = height, width
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        return VideoInfo(Path(path), width, height, Fraction(rate), int(stream.frames or 0),
                         stream.codec_context.name, rotation)


def _quarter_turns(rotation: float | None) -> int:
    """Counter-clockwise quarter turns of a display rotation in degrees (0..3)."""
    return int(round((rotation or 0) / 90)) % 4


def _upright(frame) -> np.ndarray:
    """A decoded frame as an RGB array (H, W, 3), rotated as its display matrix asks."""
    rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3)
    turns = _quarter_turns(frame.rotation)
    # rot90: counter-clockwise
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


def iter_frames(path: Path,
                report: DecodeReport | None = None) -> Iterator[tuple[np.ndarray, float | None]]:
    """Every frame of the first video stream in presentation order: (RGB (H, W, 3) uint8, seconds or
    None).

    Packets the decoder rejects are skipped and counted in ``report``; demuxing errors end the video
    early (noted in ``report``), which also counts the frames decoded against those the container
    declares. Raises VideoError when the file cannot be opened or has no video stream.
    """
    av = require("av")
    report = report if report is not None else DecodeReport()
    with _open(path) as container:
        stream = container.streams.video[0]
        report.declared = int(stream.frames or 0)
        stream.thread_type = "AUTO"  # frame threads: decoding stays ahead of the detector
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as err:
                report.stopped_early = str(err)
                return
            try:
                frames = packet.decode()  # the final empty packet flushes the decoder
            except av.FFmpegError:
                report.bad_packets += 1
                if report.first_bad_time is None and packet.pts is not None and packet.time_base:
                    report.first_bad_time = float(packet.pts * packet.time_base)
                continue
            for frame in frames:
                report.decoded += 1
                yield _upright(frame), (float(frame.time) if frame.time is not None else None)


def read_batches(path: Path, batch_size: int, report: DecodeReport | None = None,
                 prefetch: int = 2) -> Iterator[FrameBatch]:
    """Frames of a video in batches of ``batch_size`` (the last may be shorter), decoded on a
    background thread ``prefetch`` batches ahead (FFmpeg releases the GIL while it decodes).

    Times missing from the stream are filled with the previous frame's plus one frame period. Raises
    VideoError when the file cannot be opened, has no video stream, or yields no frame.
    """
    if batch_size < 1:
        raise InputError(f"batch size {batch_size}: use at least 1")
    info = probe(path)
    period = 1.0 / info.fps if info.fps > 0 else 0.0
    out: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def produce() -> None:
        try:
            frames, times, start, last = [], [], 0, None
            for image, t in iter_frames(path, report):
                if stop.is_set():
                    return
                t = t if t is not None else (last + period if last is not None else 0.0)
                last = t
                frames.append(image)
                times.append(t)
                if len(frames) == batch_size:
                    out.put(FrameBatch(np.stack(frames), np.asarray(times), start))
                    start += len(frames)
                    frames, times = [], []
            if frames:
                out.put(FrameBatch(np.stack(frames), np.asarray(times), start))
            out.put(None)
        except BaseException as err:  # handed to the consumer
            out.put(err)

    thread = threading.Thread(target=produce, name="decode", daemon=True)
    thread.start()
    count = 0
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            count += len(item.frames)
            yield item
        if count == 0:
            raise VideoError(f"{path}: no frame could be decoded; the file is empty or damaged")
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                out.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def find_videos(inputs: list[Path], exclude: Path | None = None) -> tuple[list[Path], list[Path]]:
    """The videos to process: each file given, and each folder's files with a video suffix
    (recursively, not into symlinked folders, not into ``exclude``).

    Args:
        inputs: video files and folders.
        exclude: the command's output folder (``faces``: its ``cropped_aligned``; ``analyze``: its
            ``--out``): a folder given is searched around it, not into it, so that what the command
            wrote is never taken for input. Matched as the same folder on disk (a symlink, another
            letter case on a case-insensitive disk), not by its spelling.

    Returns:
        (videos, ignored): the video files in the order given (folders sorted), and the other files
        found in folders (for one warning line).
    Raises InputError naming a path that does not exist.
    """
    videos, ignored = [], []
    skip = Path(exclude) if exclude is not None and Path(exclude).is_dir() else None
    for path in map(Path, inputs):
        if path.is_file():
            videos.append(path)
        elif path.is_dir():
            for p in _files_under(path, skip):
                (videos if p.suffix.lower() in VIDEO_SUFFIXES else ignored).append(p)
        else:
            raise InputError(f"{path}: no such file or folder; pass video files or folders of "
                             "videos")
    return videos, ignored


def _files_under(folder: Path, skip: Path | None) -> list[Path]:
    """The files under ``folder``, sorted, leaving out names starting with "." (files and folders:
    a killed ``faces`` run's ``.faces-tmp-*``) and every subfolder that is ``skip`` on disk."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not (
            skip is not None and same_file(os.path.join(dirpath, d), skip))]
        found += [p for p in (Path(dirpath) / f for f in filenames if not f.startswith("."))
                  if p.is_file()]
    return sorted(found)


def same_file(a, b) -> bool:
    """Whether two paths are one file or folder on disk (False where either is missing)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
