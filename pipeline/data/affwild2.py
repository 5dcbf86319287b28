"""Reader for the Aff-Wild2 layout of the ABAW challenges (Kollias et al.; README, "Using a real
Aff-Wild2 copy").

Images live in ``cropped_aligned*/<video>/<NNNNN>.jpg`` (1-based, gaps where no face was found);
annotations in ``<Challenge>/<Split>/<video>.txt`` whose line k after the header belongs to frame k.
The challenge folders may sit at the root or one level down (``6th ABAW Annotations/``). Invalid
markers (-5 for VA, -1 for Expr and AU) become a ``valid`` mask; rows are never dropped, so row i is
always frame i + 1.

A video is *listed* when the dataset names it anywhere: an image folder, an annotation file, a test
list and the organisers' example file, or the record ``mae-affect faces`` writes beside its crops
(``cropped_aligned*/<video>.json``, which gives the video's true length, frames after its last face
included). A listed video of known length without any image (no face was ever found, or its folder
is missing from the copy) is a video whose every frame has no face: the stages store it as
all-absent and fill it like any frame without a face, with one warning naming it.

Every frame keeps its real file name from discovery to decoding (``00001.jpg`` as released,
``000001.jpg`` from ffmpeg's ``%06d``, ``1.jpg``...): the frame number is the name's integer value.

Every malformed file raises :class:`InputError` naming the file and line and saying what is wrong.
"""

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.video.record import frame_counts

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # the frame and image files every reader looks for

TASKS = ("va", "expr", "au")
SPLITS = ("Train_Set", "Validation_Set")
VALIDATION = SPLITS[1]  # where best epochs, thresholds and scores are taken by default
# The challenge's test videos: the rows of the organisers' example files (no labels); an annotated
# Test_Set (the synthetic set has one) is scored like the other splits.
TEST = "test"
ANNOTATED_SPLITS = (*SPLITS, "Test_Set")  # the split folders an annotation tree may hold
EXPR_CLASSES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
AU_NAMES = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25",
            "AU26")
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
        files: the real file name of each frame, in the order of ``frames`` (``000001.jpg`` when the
            frames were written as ``%06d``); None means the release's five digits (``00001.jpg``).
    """

    name: str
    image_dir: Path
    frames: np.ndarray
    suffix: str = ".jpg"
    files: tuple[str, ...] | None = None

    def image_path(self, frame: int) -> Path:
        """The image file of a frame that has one (``frame`` in ``frames``), under its real name."""
        if self.files is None:
            return self.image_dir / f"{frame:05d}{self.suffix}"
        i = int(np.searchsorted(self.frames, frame))
        if i == len(self.frames) or self.frames[i] != frame:
            raise KeyError(f"video {self.name!r} has no image for frame {frame}")
        return self.image_dir / self.files[i]

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


def parse_annotation(path: Path, task: str, split: str = "",
                     video: str | None = None) -> Annotation:
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
        raise InputError(f"{path}: empty annotation file; expected a header line and one line per "
                         "frame")
    expected = HEADERS[task]
    header = tuple(h.strip() for h in lines[0].split(","))
    if header != expected:
        raise InputError(
            f"{path}:1: wrong or missing header {lines[0]!r}; a {task} file starts with "
            f"{','.join(expected)!r}"
        )
    if len(lines) == 1:
        raise InputError(f"{path}: header only, no frame lines")
    width = len(expected) if task != "expr" else 1
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != width:
            raise InputError(f"{path}:{lineno}: {len(fields)} fields, expected {width} for {task}: "
                             f"{line!r}")
        try:
            rows.append([float(f) for f in fields])
        except ValueError:
            raise InputError(f"{path}:{lineno}: non-numeric value in {line!r}") from None
    values = np.asarray(rows, dtype=np.float64)  # (T, K)
    if not np.isfinite(values).all():
        line = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0]) + 2
        raise InputError(f"{path}:{line}: non-finite value (nan or inf); use the invalid marker "
                         "instead")
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
        what = ("Expr labels are integers 0..7 (or -1)" if task == "expr"
                else "AU labels are 0 or 1 (or -1)")
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
            raise InputError(f"{self.root}: dataset folder not found; pass --data with an "
                             "Aff-Wild2 root")
        if image_dirs is None:
            image_dirs = sorted(p for p in self.root.glob("cropped_aligned*") if p.is_dir())
        if not image_dirs:
            raise InputError(
                f"{self.root}: no cropped_aligned*/ image folder; point --data at the Aff-Wild2 "
                "root (or run `mae-affect synth --out DIR` for a synthetic one)"
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
            for name, folder in sorted(folders.items()):
                if name in videos:
                    raise InputError(
                        f"video {name!r} is in two image roots: {videos[name].image_dir} and "
                        f"{folder}; remove one copy"
                    )
                frames, suffix, files = _scan_frames(folder)
                videos[name] = Video(name, folder, frames, suffix, files)
        return videos

    @cached_property
    def recorded_frames(self) -> dict[str, int]:
        """Decoded frames per video from the records ``mae-affect faces`` writes (empty for a
        release)."""
        counts: dict[str, int] = {}
        for image_root in self.image_dirs:
            if image_root.is_dir():
                counts.update(frame_counts(image_root))
        return counts

    def annotation_dir(self, task: str, split: str) -> Path | None:
        """``<Challenge>/<Split>`` at the root or one level down; None when the release lacks it."""
        for name in CHALLENGE_DIRS[check_task(task)]:
            for candidate in (self.root / name / split,
                              *sorted(self.root.glob(f"*/{name}/{split}"))):
                if candidate.is_dir():
                    return candidate
        return None

    def annotations(self, task: str, split: str) -> dict[str, Annotation]:
        """Every annotation of ``task`` in ``split`` (``Train_Set``, ``Validation_Set`` or an
        annotated ``Test_Set``), by video.

        A video may be annotated and have no images (see :meth:`imageless_videos`).

        Raises:
            InputError: a split name that is none of these and has no folder, a missing
                annotation folder, or annotations of videos without images here.
        """
        key = (check_task(task), split)
        if key not in self._annotations:
            folder = self.annotation_dir(task, split)
            if folder is None and split not in ANNOTATED_SPLITS:
                here = [s for s in ANNOTATED_SPLITS if self.annotation_dir(task, s)]
                what = ("has no annotations (the challenge's test videos)" if split == TEST else
                        "is not a split")
                raise InputError(f"{split!r} {what}: use an annotated split of {self.root}: "
                                 f"{', '.join(here) or 'none found'}")
            if folder is None:
                raise InputError(
                    f"{self.root}: no {CHALLENGE_DIRS[task][0]}/{split}/ folder (looked at the "
                    "root and one level down); is this an Aff-Wild2 root with its annotations?"
                )
            found = {path.stem: parse_annotation(path, task, split)
                     for path in sorted(folder.glob("*.txt"))}
            if found and not set(found) & set(self.videos):
                raise InputError(
                    f"{folder}: none of its {len(found)} annotated videos (e.g. "
                    f"{next(iter(found))!r}) has images under "
                    f"{', '.join(map(str, self.image_dirs))}; do the annotations belong to these "
                    "images?"
                )
            self._annotations[key] = found
        return self._annotations[key]

    def available(self, task: str, split: str) -> bool:
        return self.annotation_dir(task, split) is not None

    def _all_annotations(self, video: str):
        for task in TASKS:
            for split in SPLITS:
                if self.available(task, split):
                    ann = self.annotations(task, split).get(video)
                    if ann is not None:
                        yield ann

    def num_frames(self, video: str) -> int:
        """Frames of a video: the largest of its last image number, its longest annotation and the
        frame count of its ``faces`` record; a test video with none of them takes the number of rows
        the organisers' example file has for it (0 when nothing gives its length)."""
        image = self.videos[video].last_frame if video in self.videos else 0
        longest = max((ann.num_frames for ann in self._all_annotations(video)), default=0)
        return (max(image, longest, self.recorded_frames.get(video, 0))
                or self.example_lengths.get(video, 0))

    def listed_videos(self) -> list[str]:
        """Every video the dataset lists, sorted: image folders, annotation files of every task and
        split, the test videos of the example files (those of the test lists alone have no known
        length) and the videos ``faces`` recorded (a video without any face has a record and no
        crops)."""
        names = set(self.videos) | set(self.example_lengths) | set(self.recorded_frames)
        for task in TASKS:
            for split in SPLITS:
                if self.available(task, split):
                    names.update(self.annotations(task, split))
        return sorted(names)

    def imageless_videos(self) -> dict[str, int]:
        """Listed videos of known length without a single image, with their lengths: every frame of
        them is a frame without a face."""
        return {v: self.num_frames(v) for v in self.listed_videos() if v not in self.videos
                and self.num_frames(v)}

    @cached_property
    def example_lengths(self) -> dict[str, int]:
        """Video -> the last frame number the organisers' example files (any task) have a row
        for."""
        lengths: dict[str, int] = {}
        for task in TASKS:
            try:
                path = self.example_submission(task)
            except InputError:
                continue  # no example file for this task in this copy
            for video, frame in _example_rows(path):
                lengths[video] = max(lengths.get(video, 0), frame)
        return lengths

    def _find_test_file(self, task: str, pattern: str, what: str) -> Path:
        keys = _TEST_FILE_KEYS[check_task(task)]
        matches = [
            p for folder in _folders_near(self.root, depth=2)
            for p in sorted(folder.glob(pattern))
            if any(k in p.name.lower() for k in keys)
        ]
        if not matches:
            raise InputError(f"{self.root}: no {what} for {task} (looked for {pattern} under the "
                             "root)")
        return matches[0]

    def test_list(self, task: str) -> Path:
        return self._find_test_file(task, "*test_set_release*.txt", "test-set video list")

    def test_videos(self, task: str) -> list[str]:
        """The test-set videos of a task, as listed in ``names_of_videos_in_each_test_set`` (a video
        without images is a listed video like any other: see :meth:`imageless_videos`)."""
        path = self.test_list(task)
        return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()
                if line.strip()]

    def example_submission(self, task: str) -> Path:
        """The organisers' example submission file of a task (one row per test frame)."""
        return self._find_test_file(task, "*test_set_example*.txt", "example submission file")


def _example_rows(path: Path):
    """(video, frame) of every row of an example submission file (``video/00001.jpg,...``)."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        location = line.split(",", 1)[0].strip()
        video, _, image = location.rpartition("/")
        stem = image.rsplit(".", 1)[0]
        if not video or not stem.isdigit():
            raise InputError(f"{path}:{lineno}: {location!r} is not a <video>/<NNNNN>.jpg image "
                             "location")
        yield video, int(stem)


def _folders_near(root: Path, depth: int) -> list[Path]:
    """``root`` and its sub-folders down to ``depth``, skipping the image folders (millions of
    files)."""
    found, level = [root], [root]
    for _ in range(depth):
        level = [
            d for f in level for d in sorted(f.iterdir())
            if d.is_dir() and not d.name.startswith("cropped_aligned")
        ]
        found += level
    return found


def _scan_frames(folder: Path) -> tuple[np.ndarray, str, tuple[str, ...]]:
    """Frame numbers that have an image in a video folder (sorted), the image suffix, and each
    frame's real file name (the number is the name's integer value, whatever its zero padding)."""
    found: dict[int, str] = {}
    suffixes = set()
    for path in folder.iterdir():
        if path.suffix.lower() in IMAGE_SUFFIXES and _FRAME_NAME.match(path.stem):
            frame = int(path.stem)
            if frame < 1:
                raise InputError(f"{path}: frame number {frame}; frames are numbered from 1 "
                                 "(00001.jpg)")
            if frame in found:
                first, second = sorted((found[frame], path.name))
                raise InputError(
                    f"{folder}: {first} and {second} are both frame {frame}; keep one numbering "
                    "per video"
                )
            found[frame] = path.name
            suffixes.add(path.suffix)
    if len(suffixes) > 1:
        raise InputError(f"{folder}: mixed image suffixes {sorted(suffixes)}; use one format per "
                         "video")
    frames = sorted(found)
    return (np.array(frames, dtype=np.int64), (suffixes.pop() if suffixes else ".jpg"),
            tuple(found[k] for k in frames))
