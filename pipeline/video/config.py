"""The options of the video stages, ``faces`` and ``analyze``: each default written once, here.

Kept free of heavy imports so that the command line reads its defaults from these dataclasses.
"""

from dataclasses import dataclass, field

IMAGE_DIR = "cropped_aligned"
SUBJECTS = ("auto", "1", "2")


@dataclass(frozen=True)
class FacesConfig:
    """Options of the ``faces`` stage.

    Args:
        size: crop side S in pixels (112 as Aff-Wild2's released crops); the template is scaled by S / 112.
        subjects: "1", "2" (``_left`` / ``_right``) or "auto" (2 when a second face is tracked in at least
            ``second_share`` of the frames the first is in).
        detector: a registered detector (``pipeline.video.detect``).
        min_score: detections below this confidence are ignored.
        min_face: smallest face side the detector searches, pixels.
        second_share: see ``subjects``.
        jpeg_quality: of the crops (PIL, 1-95).
        batch_size: frames per detector call (raise it on a GPU; memory grows with frame size).
        device: auto, cpu or cuda (detection and alignment).
    """

    size: int = 112
    subjects: str = "auto"
    detector: str = "mtcnn"
    min_score: float = 0.9
    min_face: int = 20
    second_share: float = 0.25
    jpeg_quality: int = 95
    batch_size: int = 16
    device: str = "auto"


# What changes the written crops and records: a video made with other values is refused, not mixed in.
OUTPUT_KEYS = ("size", "subjects", "detector", "min_score", "min_face", "second_share", "jpeg_quality")


@dataclass(frozen=True)
class AnalyzeConfig:
    """Options of ``analyze``: the faces stage's, extraction's batch and workers, and the rendering.

    Args:
        faces: the ``faces`` stage's options (crop size, subjects, detector, ...); its device is every
            stage's.
        batch_size: frames per encoder forward pass in extraction.
        workers: extraction's JPEG-decoding processes.
        render: also write an MP4 per source video with the boxes and predictions drawn.
        bf16: bf16 autocast in extraction (CUDA, and CPUs with native bf16).
    """

    faces: FacesConfig = field(default_factory=FacesConfig)
    batch_size: int = 256
    workers: int = 2
    render: bool = False
    bf16: bool = True
