"""The settings of the video front end: ``faces`` (raw videos to aligned crops in the Aff-Wild2
layout) and ``analyze`` (a trained encoder and heads over new footage); ``pipeline.video`` runs
them."""

from dataclasses import dataclass

from pipeline.config import ConfigError, check_choices, setting
from pipeline.configs.common import DEVICES, check_host_share

# the folder of crops under the output root, as in the Aff-Wild2 release
IMAGE_DIR = "cropped_aligned"
SUBJECTS = ("auto", "1", "2")


@dataclass(frozen=True)
class FacesConfig:
    """How faces are found, tracked and cut: crops as the released aligned crops (112 px, 5-point
    template)."""

    size: int = setting(112, "Crop side S in pixels (112 as Aff-Wild2's released crops); the "
                             "template is scaled by S / 112.")
    subjects: str = setting("auto", "People per video: 1, 2 (<video>_left and <video>_right) or "
                                    "auto (2 when a second face is tracked in at least "
                                    "second_share of the first's frames).", choices=SUBJECTS)
    detector: str = setting("mtcnn", "Registered face detector (pipeline.video.detect).")
    min_score: float = setting(0.9, "Detections below this confidence are ignored.")
    min_face: int = setting(20, "Smallest face side the detector searches, in pixels.")
    second_share: float = setting(0.25, "See subjects.")
    jpeg_quality: int = setting(95, "JPEG quality of the crops (1-95).")
    batch_size: int = setting(16, "Frames per detector call (raise it on a GPU; memory grows with "
                                  "frame size).")
    device: str = setting("auto", "auto, cpu or cuda (detection and alignment; in analyze, every "
                                  "stage).", choices=DEVICES)

    def __post_init__(self):
        check_choices(self)
        checks = [
            ("size", self.size >= 16, f"{self.size}: crops need at least 16 pixels"),
            ("min_score", 0 < self.min_score <= 1, f"{self.min_score}: use a value in (0, 1]"),
            ("min_face", self.min_face >= 12,
             f"{self.min_face}: the detector needs at least 12 pixels"),
            ("second_share", 0 <= self.second_share <= 1,
             f"{self.second_share}: use a value in [0, 1]"),
            ("jpeg_quality", 1 <= self.jpeg_quality <= 95, f"{self.jpeg_quality}: use 1..95"),
            ("batch_size", self.batch_size >= 1, f"{self.batch_size}: use 1 or more"),
        ]
        for key, ok, problem in checks:
            if not ok:
                raise ConfigError(key, problem)


# What changes the written crops and records: a video made with other values is refused, not mixed
# in.
OUTPUT_KEYS = ("size", "subjects", "detector", "min_score", "min_face", "second_share",
               "jpeg_quality")


@dataclass(frozen=True)
class AnalyzeConfig:
    """A trained encoder and head runs applied to footage: the faces stage's settings, extraction's,
    rendering."""

    encoder: str = setting("", "The encoder checkpoint the heads' feature store was extracted "
                               "with.")
    heads: tuple[str, ...] = setting((), "Head runs of `train`, one per task: "
                                         "--heads RUN [RUN ...].")
    faces: FacesConfig = setting(default_factory=FacesConfig)
    extract_batch_size: int | None = setting(None, "Frames per encoder forward pass in extraction "
                                                   "(none: 256 on CUDA, 64 on the CPU).")
    workers: int | None = setting(None, "Extraction's JPEG-decoding processes (none: chosen from "
                                        "the cores).")
    render: bool = setting(False, "Also write an MP4 per source video with the boxes and "
                                  "predictions drawn.")
    bf16: bool = setting(True, "bf16 autocast in extraction (CUDA, and CPUs with native bf16).")

    def __post_init__(self):
        if self.extract_batch_size is not None and self.extract_batch_size < 1:
            raise ConfigError("extract_batch_size", f"{self.extract_batch_size}: use 1 or more")
        check_host_share(self)
