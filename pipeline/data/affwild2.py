"""Reader for the Aff-Wild2 layout of the ABAW challenges (see ``shared/AFFWILD2.md``).

Images live in ``cropped_aligned*/<video>/<NNNNN>.jpg`` (1-based, gaps where no face was found);
annotations in ``<Challenge>/<Split>/<video>.txt`` whose line k after the header belongs to frame k.
The challenge folders may sit at the root or one level down (``6th ABAW Annotations/``). Invalid
markers (-5 for VA, -1 for Expr and AU) become a ``valid`` mask; rows are never dropped, so row i is
always frame i + 1.

A root written by ``mae-affect faces`` also holds ``cropped_aligned*/<video>.json`` records: they give
each video's true length (frames after its last face included) and list videos without any face.

Every malformed file raises :class:`InputError` naming the file and line and saying what is wrong.
"""

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from pipeline.data.images import IMAGE_SUFFIXES
from pipeline.errors import InputError
from pipeline.video.record import frame_counts

TASKS = ("va", "expr", "au")
SPLITS = ("Train_Set", "Validation_Set")
EXPR_CLASSES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
AU_NAMES = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
VA_NAMES = ("valence", "arousal")

# Older releases call the expression folder EXPR_Classification_Challenge.
CHALLENGE_DIRS = {
    "va": ("VA_Estimation_Challenge",),
    "expr": ("EXPR_Recognition_Challenge", "EXPR_Classification_Challenge"),
    "au": ("AU_Detection_Challenge",),
}
HEADERS = {"va": VA_NAMES, "expr": EXPR_CLASSES, "au": AU_NAMES}
# Words that pick a task's file among the test-set lists and example submissions.
_TEST_FILE_KEYS = {
    "va": ("valence", "_va_", "va_"),
    "expr": ("expr",),
    "au": ("action_unit", "_au_", "au_"),
}
_FRAME_NAME = re.compile(r"^(\d+)$")
_SIDE = re.compile(r"_(left|right)$")


@dataclass(frozen=True)
class Video:
    """One video's face crops.

    Args:
        name: the video's name (``4-30-1920x1080``, ``video10_1_left``).
        image_dir: its folder of crops.
        frames: sorted 1-based frame numbers that have an image.
        suffix: the image file suffix (``.jpg``).
    """

    name: str
    image_dir: Path
    frames: np.ndarray
    suffix: str = ".jpg"

    def image_path(self, frame: int) -> Path:
        return self.image_dir / f"{frame:05d}{self.suffix}"

    @property
    def last_frame(self) -> int:
        return int(self.frames[-1]) if len(self.frames) else 0

    @property
    def source(self) -> str:
        """The source video: ``X_left`` and ``X_right`` are two subjects of video ``X``."""
        return source_video(self.name)


def source_video(name: str) -> str:
    return _SIDE.sub("", name)


@dataclass(frozen=True)
class Annotation:
    """One annotation file. Row i is frame i + 1.

    labels: va float32 (T, 2); expr int64 (T,); au int64 (T, 12). valid: (T,) bool, false on invalid
    markers (for AU, false when any AU is -1).
    """

    video: str
    task: str
    split: str
    path: Path
    labels: np.ndarray
    valid: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.valid)


def check_task(task: str) -> str:
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return task


def parse_annotation(path: Path, task: str, split: str = "", video: str | None = None) -> Annotation:
    """Parse one annotation file, checking header, field count, numbers and ranges line by line."""
    task = check_task(task)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read annotation file ({err})") from err
    lines = text.splitlines()  # handles CRLF
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing blank line is common in the release
    if not lines:
        raise InputError(f"{path}: empty annotation file; expected a header line and one line per frame")
    expected = HEADERS[task]
    header = tuple(h.strip() for h in lines[0].split(","))
    if header != expected:
        raise InputError(
            f"{path}:1: wrong or missing header {lines[0]!r}; a {task} file starts with {','.join(expected)!r}"
        )
    if len(lines) == 1:
        raise InputError(f"{path}: header only, no frame lines")
    width = len(expected) if task != "expr" else 1
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != width:
            raise InputError(f"{path}:{lineno}: {len(fields)} fields, expected {width} for {task}: {line!r}")
        try:
            rows.append([float(f) for f in fields])
        except ValueError:
            raise InputError(f"{path}:{lineno}: non-numeric value in {line!r}") from None
    values = np.asarray(rows, dtype=np.float64)  # (T, K)
    if not np.isfinite(values).all():
        line = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0]) + 2
        raise InputError(f"{path}:{line}: non-finite value (nan or inf); use the invalid marker instead")
    labels, valid = _check_values(values, task, path)
    return Annotation(video or path.stem, task, split, path, labels, valid)


def _check_values(values: np.ndarray, task: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Turn the invalid markers into a mask and refuse values outside the label range."""
    if task == "va":
        invalid = (values == -5).any(axis=1)
        bad = ~invalid & (np.abs(values) > 1).any(axis=1)
        what = "VA values must lie in [-1, 1] (or -5 for invalid)"
        labels = values.astype(np.float32)
    else:
        invalid = (values == -1).any(axis=1)
        allowed = np.arange(len(EXPR_CLASSES)) if task == "expr" else np.array([0, 1])
        bad = ~invalid & ~np.isin(values, allowed).all(axis=1)
        what = "Expr labels are integers 0..7 (or -1)" if task == "expr" else "AU labels are 0 or 1 (or -1)"
        labels = values.astype(np.int64)
        if task == "expr":
            labels = labels[:, 0]
    if bad.any():
        line = int(np.flatnonzero(bad)[0]) + 2
        raise InputError(f"{path}:{line}: label out of range; {what}")
    return labels, ~invalid


class AffWild2:
    """An Aff-Wild2-layout dataset root: its videos, annotations, test lists and example files.

    Args:
        root: the dataset's root folder, holding ``cropped_aligned*/`` and the challenge folders
            (directly or one level down).
        image_dirs: image roots to use instead of every ``cropped_aligned*`` folder under ``root``.
    """

    def __init__(self, root: Path, image_dirs: list[Path] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: dataset folder not found; pass --data with an Aff-Wild2 root")
        if image_dirs is None:
            image_dirs = sorted(p for p in self.root.glob("cropped_aligned*") if p.is_dir())
        if not image_dirs:
            raise InputError(
                f"{self.root}: no cropped_aligned*/ image folder; point --data at the Aff-Wild2 root "
                "(or run `mae-affect synth --out DIR` for a synthetic one)"
            )
        self.image_dirs = [Path(p) for p in image_dirs]
        self._annotations: dict[tuple[str, str], dict[str, Annotation]] = {}

    @cached_property
    def videos(self) -> dict[str, Video]:
        """Every video folder of every image root, merged, and every video a ``faces`` record lists
        (a video without any face may have no folder); a video in two roots is an error."""
        videos: dict[str, Video] = {}
        for image_root in self.image_dirs:
            if not image_root.is_dir():
                raise InputError(f"{image_root}: image folder not found")
            folders = {p.name: p for p in image_root.iterdir() if p.is_dir()}
            folders.update({v: image_root / v for v in self.recorded_frames if v not in folders
                            and (image_root / f"{v}.json").is_file()})
            for name, folder in sorted(folders.items()):
                if name in videos:
                    raise InputError(
                        f"video {name!r} is in two image roots: {videos[name].image_dir} and "
                        f"{folder}; remove one copy"
                    )
                frames, suffix = _scan_frames(folder) if folder.is_dir() else (np.zeros(0, np.int64), ".jpg")
                videos[name] = Video(name, folder, frames, suffix)
        return videos

    @cached_property
    def recorded_frames(self) -> dict[str, int]:
        """Decoded frames per video from the records ``mae-affect faces`` writes (empty for a release)."""
        counts: dict[str, int] = {}
        for image_root in self.image_dirs:
            if image_root.is_dir():
                counts.update(frame_counts(image_root))
        return counts

    def annotation_dir(self, task: str, split: str) -> Path | None:
        """``<Challenge>/<Split>`` at the root or one level down; None when the release lacks it."""
        for name in CHALLENGE_DIRS[check_task(task)]:
            for candidate in (self.root / name / split, *sorted(self.root.glob(f"*/{name}/{split}"))):
                if candidate.is_dir():
                    return candidate
        return None

    def annotations(self, task: str, split: str) -> dict[str, Annotation]:
        """Every annotation of ``task`` in ``split`` (``Train_Set`` or ``Validation_Set``), by video."""
        key = (check_task(task), split)
        if key not in self._annotations:
            folder = self.annotation_dir(task, split)
            if folder is None:
                raise InputError(
                    f"{self.root}: no {CHALLENGE_DIRS[task][0]}/{split}/ folder (looked at the root and one "
                    "level down); is this an Aff-Wild2 root with its annotations?"
                )
            found = {}
            for path in sorted(folder.glob("*.txt")):
                if path.stem not in self.videos:
                    raise InputError(
                        f"{path}: annotation for video {path.stem!r}, which has no images under "
                        f"{', '.join(map(str, self.image_dirs))}"
                    )
                found[path.stem] = parse_annotation(path, task, split)
            self._annotations[key] = found
        return self._annotations[key]

    def available(self, task: str, split: str) -> bool:
        return self.annotation_dir(task, split) is not None

    def num_frames(self, video: str) -> int:
        """Frames of a video: the largest of its last image number, its longest annotation and the frame
        count of its ``faces`` record."""
        longest = max(
            (
                anns[video].num_frames
                for task in TASKS
                for split in SPLITS
                if self.available(task, split)
                for anns in [self.annotations(task, split)]
                if video in anns
            ),
            default=0,
        )
        return max(self.videos[video].last_frame, longest, self.recorded_frames.get(video, 0))

    def _find_test_file(self, task: str, pattern: str, what: str) -> Path:
        keys = _TEST_FILE_KEYS[check_task(task)]
        matches = [
            p for folder in _folders_near(self.root, depth=2)
            for p in sorted(folder.glob(pattern))
            if any(k in p.name.lower() for k in keys)
        ]
        if not matches:
            raise InputError(f"{self.root}: no {what} for {task} (looked for {pattern} under the root)")
        return matches[0]

    def test_list(self, task: str) -> Path:
        return self._find_test_file(task, "*test_set_release*.txt", "test-set video list")

    def test_videos(self, task: str) -> list[str]:
        """The test-set videos of a task, as listed in ``names_of_videos_in_each_test_set``."""
        path = self.test_list(task)
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        missing = [n for n in names if n not in self.videos]
        if missing:
            raise InputError(f"{path}: test videos without images: {', '.join(missing[:5])}")
        return names

    def example_submission(self, task: str) -> Path:
        """The organisers' example submission file of a task (one row per test frame)."""
        return self._find_test_file(task, "*test_set_example*.txt", "example submission file")


def _folders_near(root: Path, depth: int) -> list[Path]:
    """``root`` and its sub-folders down to ``depth``, skipping the image folders (millions of files)."""
    found, level = [root], [root]
    for _ in range(depth):
        level = [
            d for f in level for d in sorted(f.iterdir())
            if d.is_dir() and not d.name.startswith("cropped_aligned")
        ]
        found += level
    return found


def _scan_frames(folder: Path) -> tuple[np.ndarray, str]:
    """Frame numbers that have an image in a video folder, and the image suffix."""
    frames, suffixes = [], set()
    for path in folder.iterdir():
        if path.suffix.lower() in IMAGE_SUFFIXES and _FRAME_NAME.match(path.stem):
            frames.append(int(path.stem))
            suffixes.add(path.suffix)
    if len(suffixes) > 1:
        raise InputError(f"{folder}: mixed image suffixes {sorted(suffixes)}; use one format per video")
    return np.array(sorted(frames), dtype=np.int64), (suffixes.pop() if suffixes else ".jpg")
