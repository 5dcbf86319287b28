"""The per-video record ``faces`` writes beside the crops: ``cropped_aligned/<video>.json``.

One record per output video (``<video>``, or ``<video>_left`` / ``<video>_right`` for two subjects).
It says where every frame came from: the source file (its path, size in bytes and sha256, so that a
moved file is recognised and a changed one is not taken for it), its frame rate, the number of
decoded frames, each frame's time stamp in seconds, and for every frame with a face its box, five
landmarks and detection score, with the detector, its version and the settings used. A video is
complete only when its record says so (``"complete": true``); the record is written atomically,
last, after its crops are in place.

This module reads and writes plain JSON and needs none of the video extra's packages, so that the
dataset reader (:class:`pipeline.data.affwild2.AffWild2`) can take frame counts from the records.
"""

import json
from pathlib import Path

from pipeline.runs import atomic_write_text, sha256_file

RECORD_FORMAT = "mae-affect-faces"
RECORD_VERSION = 1


def record_path(image_root: Path, video: str) -> Path:
    """``<image_root>/<video>.json``, beside the video's folder of crops."""
    return Path(image_root) / f"{video}.json"


def read_record(path: Path) -> dict | None:
    """A complete faces record, or None for a missing, unreadable, foreign or incomplete file."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if (not isinstance(record, dict) or record.get("format") != RECORD_FORMAT
            or record.get("complete") is not True):
        return None
    return record


def write_record(path: Path, record: dict) -> None:
    """Write a record atomically (temporary name, then rename), marked complete."""
    record = {"format": RECORD_FORMAT, "version": RECORD_VERSION, **record, "complete": True}
    atomic_write_text(Path(path), json.dumps(record, separators=(",", ":")) + "\n")


def source_identity(path: Path) -> dict:
    """What identifies a source file whatever its path: ``source_bytes`` (its size) and
    ``source_sha256`` (of its content, read in 1 MiB chunks: about a second for a few hundred
    MB)."""
    return {"source_bytes": Path(path).stat().st_size, "source_sha256": sha256_file(path)}


def frame_counts(image_root: Path) -> dict[str, int]:
    """Decoded frames per video of every complete record in an image root (empty without
    records)."""
    counts = {}
    for path in sorted(Path(image_root).glob("*.json")):
        record = read_record(path)
        if record is not None:
            counts[record["video"]] = int(record["num_frames"])
    return counts
