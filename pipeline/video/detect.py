"""Face detectors behind one small interface, built by name from a registry.

A detector takes a batch of frames and returns, per frame, face boxes, scores and five landmarks
(eye centres, nose tip, mouth corners, in image left-to-right order) in pixels: what the 5-point
alignment of face-recognition pipelines needs. ``mtcnn`` (facenet-pytorch, Zhang et al. 2016, "Joint
Face Detection and Alignment using Multi-task Cascaded Convolutional Networks") is registered here;
another detector (e.g. MediaPipe's) is added with ``@register_detector("name")`` and a class with
the same three members.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from pipeline.config import ConfigError
from pipeline.video import require


@dataclass(frozen=True)
class Detections:
    """Faces found in one frame, K of them.

    Args:
        boxes: (K, 4) float32 pixels, x1, y1, x2, y2.
        scores: (K,) float32 detection confidence in [0, 1].
        landmarks: (K, 5, 2) float32 pixels (x, y): left eye, right eye, nose tip, left and right
            mouth corner, left and right as seen in the image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                   np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return len(self.scores)

    def keep(self, mask: np.ndarray) -> "Detections":
        return Detections(self.boxes[mask], self.scores[mask], self.landmarks[mask])


class FaceDetector(Protocol):
    """The interface every detector implements."""

    name: str
    version: str  # the detector package and its version, for the record

    def detect(self, frames: torch.Tensor) -> list[Detections]:
        """Faces in a batch of frames: uint8 (B, H, W, 3) RGB, on the detector's device -> B
        Detections."""
        ...

    def settings(self) -> dict:
        """The settings that change its output, for the record."""
        ...


DETECTORS: dict[str, Callable[..., FaceDetector]] = {}


def register_detector(name: str):
    """Class decorator: make a detector buildable by ``name``."""

    def add(cls):
        DETECTORS[name] = cls
        return cls

    return add


def check_detector(name: str) -> None:
    """Raise ConfigError (the ``detector`` setting) for a name no detector is registered by."""
    if name not in DETECTORS:
        raise ConfigError("detector", f"{name!r} is not a registered face detector; use one of "
                                      f"{', '.join(sorted(DETECTORS))}")


def build_detector(name: str, device: torch.device, **settings) -> FaceDetector:
    """The registered detector ``name`` on ``device``; ConfigError for an unknown name."""
    check_detector(name)
    return DETECTORS[name](device=device, **settings)


@register_detector("mtcnn")
class MTCNNDetector:
    """facenet-pytorch's MTCNN (weights inside the wheel): pure PyTorch, batched on any device.

    Args:
        device: where the three cascaded networks run (frames must already be there).
        min_face: smallest face side searched, pixels (MTCNN's ``min_face_size``).
        thresholds: the P-, R- and O-net score thresholds (MTCNN's defaults).
        factor: the image pyramid's scale step.
    """

    name = "mtcnn"

    def __init__(self, device: torch.device, min_face: int = 20, thresholds=(0.6, 0.7, 0.7),
                 factor: float = 0.709):
        require("facenet_pytorch")
        from importlib.metadata import version

        from facenet_pytorch import MTCNN

        self.device = torch.device(device)
        self.min_face = int(min_face)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.version = f"facenet-pytorch {version('facenet-pytorch')}"
        self.model = MTCNN(min_face_size=self.min_face, thresholds=list(self.thresholds),
                           factor=self.factor, keep_all=True, device=self.device).eval()

    def settings(self) -> dict:
        return {"min_face": self.min_face, "thresholds": list(self.thresholds),
                "factor": self.factor}

    def detect(self, frames: torch.Tensor) -> list[Detections]:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 (B, H, W, 3), got {tuple(frames.shape)} "
                             f"{frames.dtype}")
        # MTCNN.detect returns per frame None or arrays, in object arrays (largest face first).
        boxes, probs, points = self.model.detect(frames, landmarks=True)
        out = []
        for b, p, lm in zip(boxes, probs, points):
            if b is None:
                out.append(Detections.empty())
                continue
            out.append(Detections(np.asarray(b, np.float32).reshape(-1, 4),
                                  np.asarray(p, np.float32).reshape(-1),
                                  np.asarray(lm, np.float32).reshape(-1, 5, 2)))
        return out
