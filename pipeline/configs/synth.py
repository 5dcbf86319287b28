"""The settings of the synthetic mini-Aff-Wild2 (``pipeline.data.synth`` generates it)."""

from dataclasses import dataclass
from typing import ClassVar

from pipeline.config import ConfigError, setting

MIN_VIDEOS = {"Train_Set": 2, "Validation_Set": 1, "Test_Set": 1}  # per task


@dataclass(frozen=True)
class SynthConfig:
    """A synthetic dataset; ``PRESETS`` are the named ones (tiny for the tests, demo, bench).

    Everything generated is a function of the config and its seed. With ``people=1, scenes=1``
    nothing but the affect state and the per-frame nuisances tells videos apart: a diagnostic that
    takes away the shortcut of recognising a video instead of reading its expressions.
    """

    videos: int = setting(38, "Number of videos (a _left/_right pair counts two).")
    frames_per_video: int = setting(600, "Mean annotated length in frames (no video is shorter "
                                         "than 40).")
    img_size: int = setting(112, "Side of the square face crops in pixels (112 in the release).")
    seed: int = setting(0, "Everything is a function of the config and this seed.")
    pairs: int = setting(3, "Number of _left/_right pairs (two subjects of one source video).")
    val_fraction: float = setting(0.2, "Share of the source videos in Validation_Set.")
    test_fraction: float = setting(0.2, "Share of the source videos in the test set.")
    task_prob: float = setting(0.7, "Chance that a video is annotated for each task (at least one "
                                    "task each).")
    new_root_fraction: float = setting(0.12, "Share of the source videos under "
                                             "cropped_aligned_new_50_vids.")
    long_video_factor: float = setting(5.0, "The one long video is this many times the mean "
                                            "length.")
    people: int | None = setting(None, "Cast only N people, video k showing person k mod N, in "
                                       "every split (none: a new person per video, as in the "
                                       "release).")
    scenes: int | None = setting(None, "Film in only N scenes (background, light, camera), source "
                                       "video s in scene s mod N (none: one per source video).")

    # A cast of 4 people filmed in 2 scenes, each person in videos of every split: with a new person
    # per video, a few dozen training videos let fine-tuning recognise the video instead of reading
    # its expressions (docs/results.md). 114 short videos give 19 Expr validation videos.
    PRESETS: ClassVar[dict[str, dict]] = {
        "tiny": dict(videos=9, frames_per_video=220, pairs=1, long_video_factor=3.0),
        "demo": dict(videos=114, frames_per_video=200, people=4, scenes=2),
        "bench": dict(videos=100, frames_per_video=800, pairs=6, long_video_factor=8.0),
    }

    def __post_init__(self):
        for key in ("val_fraction", "test_fraction", "new_root_fraction"):
            if not 0 < getattr(self, key) < 1:
                raise ConfigError(key, f"{getattr(self, key)}: give a share between 0 and 1")
        if not 0 <= self.task_prob <= 1:  # 0: one task a video
            raise ConfigError("task_prob", f"{self.task_prob}: give a chance from 0 to 1")
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError("test_fraction",
                              f"{self.test_fraction} with val_fraction {self.val_fraction} leaves "
                              "no video for Train_Set; make the two add up to less than 1")
        if self.pairs < 0:
            raise ConfigError("pairs", f"{self.pairs}: use 0 or more")
        if 2 * self.pairs > self.videos:
            raise ConfigError(
                "videos", f"{self.videos} is fewer than the {2 * self.pairs} that pairs "
                          f"{self.pairs} make (a _left and a _right video each); give more videos "
                          "or fewer pairs",
                others={"pairs": f"{self.pairs} make {2 * self.pairs} videos (a _left and a "
                                 f"_right each), more than videos {self.videos}; give fewer pairs "
                                 "or more videos"})
        n_val, n_test = self.split_counts()
        if self.videos - self.pairs - n_val - n_test < MIN_VIDEOS["Train_Set"]:
            raise ConfigError("videos",
                              f"{self.videos} is too few for a train, validation and test split "
                              f"of every task; use {self.pairs + n_val + n_test + 2} or more")
        if self.img_size < 16:
            raise ConfigError("img_size", f"{self.img_size} is too small to draw a face; use 16 "
                                          "or more")
        for key in ("people", "scenes"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(key, f"{value}: use 1 or more (or none for a new one per video)")
        if self.frames_per_video < 40:
            raise ConfigError("frames_per_video", f"{self.frames_per_video}: use 40 or more")

    def split_counts(self) -> tuple[int, int]:
        """Source videos (a _left/_right pair is one) in Validation_Set and in the test set."""
        sources = self.videos - self.pairs
        return (max(1, round(self.val_fraction * sources)),
                max(1, round(self.test_fraction * sources)))
