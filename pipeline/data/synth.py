"""Synthetic mini-Aff-Wild2: cartoon faces driven by a hidden affect state, in the exact release
layout.

Each video has a hidden per-frame state: valence and arousal (slow random processes plus short
events), 12 action units (each driven by valence/arousal and its own slow latent, thresholded with
hysteresis so runs last many frames) and an expression class derived from both (smoothed, minimum
run length). ``faces.py`` draws the state; the labels are the state itself. Per-person baselines,
head motion, blinks, speech, noise, blur, occluders and missing faces make one frame ambiguous, so
temporal context helps. The files follow the Aff-Wild2 release layout (and its quirks: gaps, invalid
runs, CRLF, trailing blank lines, ``_left``/``_right`` pairs, a second image root), plus
``synthetic_ground_truth/`` with the test labels, which real Aff-Wild2 does not ship.

Everything is a function of (config, seed): video k draws from ``default_rng([seed, stream, k])``,
so videos render in any order, in parallel, to the same bytes.
"""

import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.configs.synth import MIN_VIDEOS, SynthConfig
from pipeline.data.affwild2 import AU_NAMES, CHALLENGE_DIRS, EXPR_CLASSES, HEADERS, TASKS
from pipeline.data.faces import (
    FaceRenderer,
    FrameParams,
    Identity,
    Scene,
    encode_jpeg,
    sample_identity,
    sample_scene,
)
from pipeline.errors import InputError

SPLITS = ("Train_Set", "Validation_Set", "Test_Set")
ANNOTATION_DIR = "6th ABAW Annotations"
GROUND_TRUTH_DIR = "synthetic_ground_truth"
IMAGE_ROOTS = ("cropped_aligned", "cropped_aligned_new_50_vids")
TEST_LIST_DIR = "names_of_videos_in_each_test_set"
TEST_LISTS = {
    "va": "Valence_Arousal_Estimation_Challenge_test_set_release.txt",
    "expr": "Expression_Recognition_Challenge_test_set_release.txt",
    "au": "Action_Unit_Detection_Challenge_test_set_release.txt",
}
EXAMPLE_FILES = {
    "va": "CVPR_6th_ABAW_VA_test_set_example.txt",
    "expr": "CVPR_6th_ABAW_Expr_test_set_example.txt",
    "au": "CVPR_6th_ABAW_AU_test_set_example.txt",
}
EXAMPLE_VALUES = {"va": "0.0,0.0", "expr": "0", "au": ",".join(["0"] * len(AU_NAMES))}
INVALID = {"va": "-5,-5", "expr": "-1", "au": ",".join(["-1"] * len(AU_NAMES))}
# Rng streams: video k draws stream s from default_rng([seed, s, k]).
PLAN, STATE, RENDER, SCENE, SHARED, IDENTITY = range(6)

# AU drive = w_v * valence + w_a * arousal + bias (+ a slow latent, speech for AU25/26), in AU_NAMES
# order; the signs follow the prototypes of Ekman & Friesen's EMFACS (AU6+12 joy, AU1+4+15 sadness,
# AU4+7+23 anger, AU1+2+26 surprise, AU10 disgust).
AU_DRIVE = np.array([
    # valence, arousal, bias
    [-0.3, 1.0, -0.9],   # AU1 inner brow raise
    [0.0, 1.1, -1.0],    # AU2 outer brow raise
    [-1.1, 0.4, -0.8],   # AU4 brow lower
    [1.3, 0.2, -0.6],    # AU6 cheek raise
    [-0.6, 0.5, -0.6],   # AU7 lid tighten
    [-0.9, 0.1, -0.9],   # AU10 upper lip raise
    [1.5, 0.1, -0.3],    # AU12 lip corner pull
    [-1.0, -0.5, -1.0],  # AU15 lip corner depress
    [-0.7, 0.6, -1.0],   # AU23 lip tighten
    [-0.4, -0.3, -0.9],  # AU24 lip press
    [0.2, 0.8, -0.3],    # AU25 lips part
    [0.0, 1.0, -1.2],    # AU26 jaw drop
])
AU_HYSTERESIS = 0.15


@dataclass(frozen=True)
class VideoPlan:
    """Where one video goes and who is in it (drawn before any frame is rendered)."""

    index: int
    name: str
    source: str
    source_index: int
    frames: int
    image_root: str
    split: str
    tasks: tuple[str, ...]
    identity: Identity
    scene: Scene
    crlf: bool
    trailing_blank: bool


@dataclass(frozen=True)
class Timeline:
    """The hidden state and the nuisances of one video, row t = frame t + 1.

    valence, arousal (T,) float; au (T, 12) bool; expr (T,) int; face (T,) bool (False: no image);
    invalid (T,) bool per task; the rest drives the renderer only.
    """

    valence: np.ndarray
    arousal: np.ndarray
    au: np.ndarray
    expr: np.ndarray
    face: np.ndarray
    invalid: dict[str, np.ndarray]
    au_intensity: np.ndarray  # (T, 12)
    pose: np.ndarray  # (T, 5): dx, dy, roll, yaw, pitch
    blink: np.ndarray
    gaze: np.ndarray  # (T, 2)
    talk: np.ndarray
    gain: np.ndarray
    blur: np.ndarray
    occluders: dict[int, tuple]


def _video_name(style: int, k: int, rng: np.random.Generator) -> str:
    """Names in the styles of the release: ``4-30-1920x1080``, ``video12``, ``105``."""
    if style == 0:
        res = ("1920x1080", "1280x720", "640x360")[rng.integers(3)]
        return f"{k}-{(25, 30, 60)[rng.integers(3)]}-{res}"
    return f"video{k}" if style == 1 else str(100 + k)


def plan_videos(cfg: SynthConfig) -> list[VideoPlan]:
    """Names, lengths, splits, tasks, image roots and identities of every video."""
    rng = np.random.default_rng([cfg.seed, PLAN])
    n_src = cfg.videos - cfg.pairs
    paired = np.zeros(n_src, bool)
    paired[rng.permutation(n_src)[:cfg.pairs]] = True
    names = [_video_name(int(rng.integers(3)), k + 1, rng) for k in range(n_src)]

    # Lengths: log-normal, one long video (never paired, always in train), total fixed.
    weight = rng.lognormal(0.0, 0.6, n_src)
    weight /= weight.mean()
    long = int(rng.choice(np.flatnonzero(~paired)))
    weight[long] = cfg.long_video_factor
    scale = cfg.videos * cfg.frames_per_video / (weight * (1 + paired)).sum()
    lengths = np.maximum(40, np.round(weight * scale)).astype(int)

    n_val, n_test = cfg.split_counts()
    order = [s for s in rng.permutation(n_src) if s != long]
    split = {s: "Train_Set" for s in range(n_src)}
    split.update({s: "Validation_Set" for s in order[:n_val]})
    split.update({s: "Test_Set" for s in order[n_val:n_val + n_test]})

    tasks = [{t for t in TASKS if rng.random() < cfg.task_prob} or {TASKS[rng.integers(3)]}
             for _ in range(n_src)]
    for task in TASKS:  # top up so every split of every task has its minimum of videos
        for name_split, need in MIN_VIDEOS.items():
            members = [s for s in rng.permutation(n_src) if split[s] == name_split]
            have = sum(1 + paired[s] for s in members if task in tasks[s])
            for s in (s for s in members if task not in tasks[s]):
                if have >= need:
                    break
                tasks[s].add(task)
                have += 1 + paired[s]

    n_new = max(1, round(cfg.new_root_fraction * n_src))
    new_root = set(rng.permutation(n_src)[:n_new].tolist())
    quirks = rng.random((n_src, 2)) < 0.3  # CRLF, trailing blank line; at least one file each
    for j in np.flatnonzero(~quirks.any(axis=0)):
        quirks[rng.integers(n_src), j] = True

    plans = []
    for s in range(n_src):
        scene = sample_scene(np.random.default_rng([cfg.seed, SCENE,
                                                    s if cfg.scenes is None else s % cfg.scenes]))
        for side in ("_left", "_right") if paired[s] else ("",):
            k = len(plans)
            person = k if cfg.people is None else k % cfg.people
            plans.append(VideoPlan(
                index=k, name=names[s] + side, source=names[s], source_index=s,
                frames=int(lengths[s]), image_root=IMAGE_ROOTS[s in new_root], split=split[s],
                tasks=tuple(t for t in TASKS if t in tasks[s]),
                identity=sample_identity(np.random.default_rng([cfg.seed, IDENTITY, person])),
                scene=scene, crlf=bool(quirks[s, 0]), trailing_blank=bool(quirks[s, 1]),
            ))
    return plans


def _smooth(rng: np.random.Generator, T: int, sigma: float) -> np.ndarray:
    """White noise low-passed by a Gaussian kernel of ``sigma`` frames, unit variance, (T,)."""
    pad = int(3 * sigma) + 1
    t = np.arange(-pad, pad + 1)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= np.sqrt((kernel**2).sum())
    white = rng.standard_normal(T + 2 * pad)
    n = len(white) + len(kernel) - 1
    full = np.fft.irfft(np.fft.rfft(white, n) * np.fft.rfft(kernel, n), n)
    return full[2 * pad:2 * pad + T]  # the part where the kernel lies fully inside the noise


def _runs(rng: np.random.Generator, T: int, count: int, mean_length: float,
          max_length: int) -> np.ndarray:
    """A (T,) bool mask of ``count`` runs at random places with exponential lengths."""
    mask = np.zeros(T, bool)
    for start, length in zip(rng.integers(0, T, count), rng.exponential(mean_length, count)):
        mask[start:start + 2 + min(int(length), max_length)] = True
    return mask


def _hysteresis(drive: np.ndarray, level: float) -> np.ndarray:
    """On above +level, off below -level, else keep the last state; (T, K) -> (T, K) bool."""
    T = len(drive)
    decided = np.abs(drive) > level
    idx = np.where(decided, np.arange(T)[:, None], -1)
    last = np.maximum.accumulate(idx, axis=0)  # last frame where the drive was decisive
    state = drive[np.maximum(last, 0), np.arange(drive.shape[1])] > 0
    return np.where(last >= 0, state, drive > 0)


def _expression(v: np.ndarray, a: np.ndarray, au: np.ndarray, min_run: int = 10) -> np.ndarray:
    """Class scores from the state (EMFACS prototypes), smoothed, argmax, short runs merged."""
    on = dict(zip(AU_NAMES, au.T.astype(float)))
    scores = np.stack([
        0.75 - 1.3 * np.abs(v) - 1.0 * np.abs(a),                                        # Neutral
        -0.9 * v + 1.0 * a + 0.5 * on["AU4"] + 0.4 * on["AU23"] - 1.4,                   # Anger
        -1.1 * v + 0.9 * on["AU10"] - 0.3 * np.abs(a) - 0.85,                            # Disgust
        -0.6 * v + 1.2 * a + 0.4 * on["AU1"] * on["AU4"] + 0.3 * on["AU25"] - 1.45,      # Fear
        1.4 * v + 0.5 * on["AU12"] + 0.4 * on["AU6"] - 0.95,                             # Happiness
        -1.0 * v - 0.8 * a + 0.5 * on["AU15"] + 0.2 * on["AU1"] - 0.95,                  # Sadness
        1.3 * a + 0.4 * on["AU2"] + 0.4 * on["AU26"] - 0.4 * np.abs(v) - 1.1,            # Surprise
        0.7 * v - 0.7 * a + 0.5 * on["AU24"] - 0.35,                                     # Other
    ], axis=1)  # (T, 8)
    kernel = np.ones(9) / 9
    scores = np.stack([np.convolve(c, kernel, mode="same") for c in scores.T], axis=1)
    return merge_short_runs(scores.argmax(axis=1), min_run)


def merge_short_runs(expr: np.ndarray, min_run: int) -> np.ndarray:
    """Runs shorter than ``min_run`` join the run before them; the short runs before the first long
    one join it (merged into each other, they could still be short). In place; returns ``expr``."""
    starts = np.flatnonzero(np.diff(expr, prepend=-1))
    ends = np.append(starts[1:], len(expr))
    long = np.flatnonzero(ends - starts >= min_run)
    first = long[0] if len(long) else np.argmax(ends - starts)
    expr[:starts[first]] = expr[starts[first]]
    for s, e in zip(starts[first + 1:], ends[first + 1:]):
        if e - s < min_run:
            expr[s:e] = expr[s - 1]
    return expr


def simulate(plan: VideoPlan, cfg: SynthConfig) -> Timeline:
    """The hidden state, labels and nuisances of one video (no rendering)."""
    T = plan.frames
    rng = np.random.default_rng([cfg.seed, STATE, plan.index])
    shared = np.random.default_rng([cfg.seed, SHARED, plan.source_index])  # same for _left, _right
    t = np.arange(T)

    # Valence/arousal: a mood shared by a pair's two subjects, own slow and fast parts, short
    # events.
    slow, mid = rng.uniform(60, 300), rng.uniform(15, 50)
    mood = np.stack([_smooth(shared, T, shared.uniform(100, 400)) for _ in range(2)])  # (2, T)
    mean = rng.normal((0.15, 0.15), (0.35, 0.3))
    raw = (mean[:, None] + 0.4 * mood
           + np.stack([0.5 * _smooth(rng, T, slow) + 0.35 * _smooth(rng, T, mid)
                       + 0.1 * _smooth(rng, T, 4) for _ in range(2)]))
    n_events = rng.poisson(T / 400)
    for centre, width, dv, da in zip(rng.integers(0, T, n_events), rng.uniform(8, 40, n_events),
                                     rng.normal(0, 0.8, n_events), rng.uniform(0.6, 1.4, n_events)):
        bump = np.exp(-0.5 * ((t - centre) / width) ** 2)
        raw += np.array([dv, da])[:, None] * bump
    v, a = np.tanh(1.1 * raw)

    # Action units: driven by (v, a), a slow latent and a personal bias; speech opens the lips.
    talking = _smooth(rng, T, 40) > 0.3
    talk = talking * 0.045 * np.abs(_smooth(rng, T, 1.5))
    latent = np.stack([_smooth(rng, T, s) for s in rng.uniform(10, 50, 12)], axis=1)  # (T, 12)
    drive = (np.stack([v, a, np.ones(T)], axis=1) @ AU_DRIVE.T + 0.55 * latent
             + rng.normal(0, 0.25, 12))
    drive[:, AU_NAMES.index("AU25")] += 0.8 * talking
    drive[:, AU_NAMES.index("AU26")] += 0.3 * talking
    au = _hysteresis(drive, AU_HYSTERESIS)
    expr = _expression(v, a, au)

    # Rendered AU intensity: onsets and offsets take a few frames; each person shows AUs
    # differently.
    alpha = 0.35
    ema = alpha * (1 - alpha) ** np.arange(15)
    intensity = np.stack([np.convolve(c, ema)[:T] for c in au.T.astype(float)], axis=1)
    intensity = intensity / ema.sum() * np.array(plan.identity.au_gain) + 0.08 * latent
    intensity = np.clip(intensity, 0.0, 1.3)

    # Head motion: slow drift plus jitter whose energy grows with arousal.
    energy = (0.35 + 0.65 / (1 + np.exp(-3 * a))) * rng.uniform(0.6, 1.4)
    # (5, 2): drift and jitter amplitude of dx, dy, roll, yaw, pitch
    amp = np.array([[0.05, 0.04], [0.03, 0.03], [0.06, 0.06], [0.35, 0.25], [0.25, 0.2]])
    pose = np.stack([d * _smooth(rng, T, 60) + j * energy * _smooth(rng, T, 3) for d, j in amp],
                    axis=1)

    blink = np.zeros(T)
    starts = np.flatnonzero(rng.random(T) < 1 / rng.uniform(60, 120))
    for shift, depth in enumerate((0.6, 1.0, 0.5)):  # a blink closes and opens over three frames
        at = np.minimum(starts + shift, T - 1)
        blink[at] = np.maximum(blink[at], depth)
    gaze = np.clip(np.stack([0.8 * _smooth(rng, T, 20), 0.5 * _smooth(rng, T, 20)], axis=1), -1, 1)
    gain = 1.0 + 0.06 * _smooth(rng, T, 30)
    blur = np.where(_smooth(rng, T, 10) > 1.6, rng.uniform(0.5, 1.5), 0.0) * cfg.img_size / 112

    occluders = {}
    for start in rng.integers(0, T, rng.poisson(T / 500)):
        length = int(rng.integers(15, 80))
        p0, p1 = rng.uniform((0.1, 0.7), (0.9, 1.0)), rng.uniform((0.1, 0.55), (0.9, 0.95))
        radius = rng.uniform((0.15, 0.2), (0.3, 0.35))
        colour = tuple(int(c) for c in rng.integers(30, 240, 3))
        for i, frame in enumerate(range(start, min(start + length, T))):
            cx, cy = p0 + (p1 - p0) * i / length
            occluders[frame] = (float(cx), float(cy), float(radius[0]), float(radius[1]), colour)

    # Missing faces: runs inside, sometimes at the start, often a few frames after the last image.
    no_face = _runs(rng, T, rng.poisson(T / 350), 15, 80)
    if rng.random() < 0.15:
        no_face[:rng.integers(1, 11)] = True
    if rng.random() < 0.4:
        no_face[T - rng.integers(1, 9):] = True
    no_face[rng.integers(T)] = False  # never a video without a single image

    invalid = {}
    hide_no_face = rng.random() < 0.5  # some annotators leave frames without a face unlabelled
    for task in TASKS:
        count = rng.poisson(T / 900) + int(rng.random() < 0.5)
        invalid[task] = _runs(rng, T, count, 20, 100) | (no_face & hide_no_face)
    return Timeline(v, a, au, expr, ~no_face, invalid, intensity, pose, blink, gaze, talk, gain,
                    blur, occluders)


def label_lines(tl: Timeline, task: str) -> list[str]:
    """One text line per frame in the annotation format, invalid markers included."""
    if task == "va":
        # + 0.0 turns -0.0 into 0.0
        va = np.round(np.stack([tl.valence, tl.arousal], axis=1), 3) + 0.0
        lines = [f"{x:.3f},{y:.3f}" for x, y in va]
    elif task == "expr":
        lines = [str(c) for c in tl.expr]
    else:
        lines = [",".join("1" if x else "0" for x in row) for row in tl.au]
    return [INVALID[task] if bad else line for line, bad in zip(lines, tl.invalid[task])]


def _label_summary(tl: Timeline, task: str) -> dict:
    """Counts a reader can be checked against: valid rows and per-label statistics over them."""
    ok = ~tl.invalid[task]
    summary = {"rows": len(ok), "valid": int(ok.sum())}
    if task == "va":
        va = np.round(np.stack([tl.valence, tl.arousal], axis=1), 3)[ok]
        summary["mean"] = [round(float(x), 6) for x in va.mean(axis=0)] if ok.any() else [0.0, 0.0]
    elif task == "expr":
        summary["counts"] = np.bincount(tl.expr[ok], minlength=len(EXPR_CLASSES)).tolist()
    else:
        summary["positives"] = tl.au[ok].sum(axis=0).astype(int).tolist()
    return summary


def _write_text(path: Path, lines: list[str], crlf: bool = False,
                trailing_blank: bool = False) -> None:
    end = "\r\n" if crlf else "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("".join(line + end for line in lines)
                      + (end if trailing_blank else "")).encode())


def make_video(plan: VideoPlan, cfg: SynthConfig, root: Path) -> dict:
    """Simulate, render and annotate one video under ``root``; returns its summary for
    synth.json."""
    tl = simulate(plan, cfg)
    rng = np.random.default_rng([cfg.seed, RENDER, plan.index])
    renderer = FaceRenderer(plan.identity, plan.scene, cfg.img_size)
    folder = root / plan.image_root / plan.name
    folder.mkdir(parents=True)
    frames = np.flatnonzero(tl.face)
    for t in frames:
        f = FrameParams(
            valence=float(tl.valence[t]), arousal=float(tl.arousal[t]), au=tl.au_intensity[t],
            dx=float(tl.pose[t, 0]), dy=float(tl.pose[t, 1]), roll=float(tl.pose[t, 2]),
            yaw=float(tl.pose[t, 3]), pitch=float(tl.pose[t, 4]), blink=float(tl.blink[t]),
            gaze=(float(tl.gaze[t, 0]), float(tl.gaze[t, 1])), talk=float(tl.talk[t]),
            gain=float(tl.gain[t]), blur=float(tl.blur[t]), occluder=tl.occluders.get(int(t)),
        )
        encode_jpeg(renderer.render(f, rng), folder / f"{t + 1:05d}.jpg", plan.scene.jpeg_quality)

    for task in plan.tasks:
        challenge = CHALLENGE_DIRS[task][0]
        if plan.split == "Test_Set":
            path = root / GROUND_TRUTH_DIR / challenge / "Test_Set" / f"{plan.name}.txt"
        else:
            path = root / ANNOTATION_DIR / challenge / plan.split / f"{plan.name}.txt"
        lines = [",".join(HEADERS[task]), *label_lines(tl, task)]
        _write_text(path, lines, plan.crlf, plan.trailing_blank)

    return {
        "source": plan.source,
        "image_root": plan.image_root,
        "frames": plan.frames,
        "images": len(frames),
        "first_image": int(frames[0]) + 1,
        "last_image": int(frames[-1]) + 1,
        "split": {task: plan.split for task in plan.tasks},
        "labels": {task: _label_summary(tl, task) for task in plan.tasks},
        "identity": asdict(plan.identity),
        "scene": asdict(plan.scene),
    }


def _make_video_job(job: tuple[VideoPlan, SynthConfig, Path]) -> tuple[str, dict]:
    plan, cfg, root = job
    return plan.name, make_video(plan, cfg, root)


def _write_test_files(root: Path, plans: list[VideoPlan]) -> dict[str, list[str]]:
    """Test-set video lists and the organisers' example submissions (a row for every frame)."""
    tests = {}
    for task in TASKS:
        videos = sorted((p for p in plans if p.split == "Test_Set" and task in p.tasks),
                        key=lambda p: p.name)
        tests[task] = [p.name for p in videos]
        _write_text(root / TEST_LIST_DIR / TEST_LISTS[task], tests[task])
        header = ",".join(("image_location", *HEADERS[task]))
        rows = [f"{p.name}/{k:05d}.jpg,{EXAMPLE_VALUES[task]}"
                for p in videos for k in range(1, p.frames + 1)]
        _write_text(root / EXAMPLE_FILES[task], [header, *rows])
    return tests


def _default_workers(cfg: SynthConfig) -> int:
    return 1 if cfg.videos * cfg.frames_per_video < 5000 else min(2, os.cpu_count() or 1)


def generate(out_dir: Path, config: SynthConfig, progress: bool = True,
             workers: int | None = None) -> dict:
    """Write a synthetic mini-Aff-Wild2 to ``out_dir``, atomically (built beside it, then renamed).

    A folder already holding a dataset of the same config is left as it is (``"skipped": True``).

    Args:
        out_dir: the dataset root to create; must not exist, be empty, or hold the same config.
        config: what to generate (see ``PRESETS``).
        progress: show a tqdm bar over frames.
        workers: processes rendering videos in parallel (None: 2 for configs over 5,000 frames
            where the cores allow, else 1); the bytes written do not depend on it.
    Returns:
        summary: root, videos, frames, images, per-task split sizes, seconds, skipped.
    Raises:
        InputError: ``workers`` below 1, or ``out_dir`` holds something else.
    """
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers}: use 1 or more (or leave it out to choose from the "
                         "set's size and the cores)")
    out_dir = Path(out_dir)
    plans = plan_videos(config)
    existing = out_dir / "synth.json"
    if existing.exists():
        meta = json.loads(existing.read_text())
        made, asked = meta.get("config", {}), asdict(config)
        if made != asked:
            diff = ", ".join(f"{k}={made.get(k)} (asked {v})" for k, v in asked.items()
                             if made.get(k) != v)
            raise InputError(
                f"{existing}: holds a dataset made with another config: {diff}; "
                "pass a new --out or delete the folder"
            )
        return _summary(out_dir, meta, seconds=0.0, skipped=True)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: exists and is not an empty folder; pass a new --out or "
                         "delete it")

    start = time.perf_counter()
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for folder in IMAGE_ROOTS:
            (staging / folder).mkdir(parents=True)
        # longest first
        jobs = [(p, config, staging) for p in sorted(plans, key=lambda p: -p.frames)]
        n = workers if workers is not None else _default_workers(config)
        videos = {}
        total = sum(p.frames for p in plans)
        with tqdm(total=total, unit="frame", desc="synth", disable=not progress) as bar:
            if n > 1:
                # Ctrl-C reaches the whole process group: the workers leave it to the parent,
                # which ends the pool, instead of each printing its traceback
                with get_context().Pool(n, initializer=signal.signal,
                                        initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
                    for name, summary in pool.imap_unordered(_make_video_job, jobs):
                        videos[name] = summary
                        bar.update(summary["frames"])
            else:
                for job in jobs:
                    name, summary = _make_video_job(job)
                    videos[name] = summary
                    bar.update(summary["frames"])
        tests = _write_test_files(staging, plans)
        meta = {
            "generator": "mae-affect synthetic mini-Aff-Wild2",
            "config": asdict(config),
            "seed": config.seed,
            "splits": {
                task: {
                    split: [p.name for p in plans if task in p.tasks and p.split == split]
                    for split in SPLITS[:2]
                } | {"Test_Set": tests[task]}
                for task in TASKS
            },
            "videos": {p.name: videos[p.name] for p in plans},
        }
        (staging / "synth.json").write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _summary(out_dir, meta, seconds=time.perf_counter() - start, skipped=False)


def _summary(root: Path, meta: dict, seconds: float, skipped: bool) -> dict:
    videos = meta["videos"].values()
    return {
        "root": str(root),
        "videos": len(meta["videos"]),
        "frames": sum(v["frames"] for v in videos),
        "images": sum(v["images"] for v in videos),
        "splits": {task: {s: len(names) for s, names in splits.items()}
                   for task, splits in meta["splits"].items()},
        "seconds": round(seconds, 2),
        "skipped": skipped,
    }
