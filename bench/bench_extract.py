"""Extraction speed and memory, measured side by side in one run.

1. End-to-end ``extract`` (its own defaults: batch, decode workers and threads chosen for the
   machine) against the best forward-only rate of the same encoder over batch sizes and precisions
   (bf16 autocast and fp32), frames already decoded in memory, measured the way extraction computes
   (``pipeline.extract.encode``, rows made float16). Goal: >= 0.9. On a machine whose speed drifts
   between minutes (this one: 10-30 %), the telling figure is interleaved: one extraction with a
   forward-only pass over as many in-memory frames after each of its batches, timed apart, so both
   see the same second; with the fast JPEG path and with every file through Pillow. Beside it, whole
   runs: extraction alternated with forward only at its own batch and precision (``--repeats``
   rounds), the best of each kept.
2. The loader against a fast encoder: the same encoder with fewer blocks, the deepest that runs at
   least ``--fast-fps`` frames/s forward-only here, so that a slow forward pass cannot hide a slow
   loader; extraction with it against its own forward-only rate, and the loader alone, with the
   fast JPEG path (``pipeline.data.jpeg``) and with every file through Pillow.
3. ``extract`` against a per-frame loop in the style of the paper's authors (one image per forward
   pass, one ``.npy`` file per frame), in fp32 as their scripts run and in the extraction's own
   precision.
   Goal: >= 10x; file counts and bytes of both. Beside it, the most any batching can gain here:
   forward-only at the extraction's batch over forward-only at batch 1. When that is below 10x, the
   device is compute-bound at batch 1 (a small CPU) and no pipeline reaches the goal here.
4. Peak RSS of extraction for a short video and one ten times longer: flat (streamed, not held).

Run: ``python -m bench.bench_extract [--videos N] [--repeats N] [--model mae_vit_tiny_patch16]
[--img-size 112]``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from bench import reference
from pipeline import extract as extract_module
from pipeline.checkpoint import encoder_checkpoint, save_checkpoint
from pipeline.data.affwild2 import AffWild2
from pipeline.data.images import decode_image
from pipeline.data.synth import SynthConfig, generate
from pipeline.extract import ExtractConfig, extract, load_extraction_encoder
from pipeline.models.mae import build_encoder

CPU = torch.device("cpu")


def make_checkpoint(path: Path, model: str, img_size: int,
                    depth: int | None = None) -> torch.nn.Module:
    """A random-weight encoder checkpoint (``depth`` blocks, default the model's); returns the
    encoder as extraction loads it."""
    torch.manual_seed(0)
    config = {"img_size": img_size, **({"depth": depth} if depth else {})}
    encoder = build_encoder(model, **config)
    save_checkpoint(encoder_checkpoint("mae", model, config, encoder, img_size), path)
    return load_extraction_encoder(path, CPU)[0]


def tree_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return len(files), sum(p.stat().st_size for p in files)


_RSS_CHILD = """
import json, resource, sys
from pipeline.extract import ExtractConfig, extract
extract(ExtractConfig(data=sys.argv[1], ckpt=sys.argv[2], store=sys.argv[3], device="cpu"), \
progress=False)
print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss(root: Path, ckpt: Path, store: Path) -> float:
    """Peak RSS (MB) of a fresh process extracting ``root`` with extraction's defaults."""
    done = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(root), str(ckpt), str(store)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["max_rss_mb"]


def one_video_root(root: Path, frames: int, image: Path) -> Path:
    """An Aff-Wild2 root holding one video of ``frames`` frames, every frame a hard link
    to one JPEG."""
    video = root / "cropped_aligned" / "long"
    video.mkdir(parents=True)
    for k in range(1, frames + 1):
        os.link(image, video / f"{k:05d}.jpg")
    return root


def interleaved(encoder, images, config: ExtractConfig) -> dict:
    """Extraction with forward only interleaved batch by batch: after each of extraction's batches,
    the same number of frames already in memory (``images`` in turn) through the same
    :func:`pipeline.extract.encode`, timed apart. Both see the machine in the same second, so its
    drift (10-30 % within minutes here) cancels out of their ratio. Meant for 0 decode workers:
    workers go on decoding during the inserted passes, which hides their work from extraction's time
    and slows forward only, so the ratio would read high.

    Returns extraction's frames/s without the interleaved passes, forward only's, and their ratio.
    """
    own_encode, spent, position = extract_module.encode, [], [0]

    def encode_then_forward_only(model, frames, device, pooling, bf16, mean, std):
        pooled = own_encode(model, frames, device, pooling, bf16, mean, std)
        picks = (position[0] + np.arange(len(frames))) % len(images)
        position[0] += len(frames)
        batch = images[picks]  # gathered before the clock, as forward only slices its frames
        start = time.perf_counter()
        own_encode(encoder, batch, device, pooling, bf16, mean, std).numpy().astype(np.float16)
        spent.append(time.perf_counter() - start)
        return pooled

    with mock.patch.object(extract_module, "encode", encode_then_forward_only):
        summary = extract(config, progress=False)
    forward = sum(spent)
    return {"extract_fps": summary["frames"] / (summary["seconds"] - forward),
            "forward_only_fps": summary["frames"] / forward,
            "ratio": forward / (summary["seconds"] - forward)}


def alternate(encoder, images, config: ExtractConfig, repeats: int) -> dict:
    """``repeats`` rounds of ``extract`` then forward only at the batch and precision it ran with;
    the best of each, with the summary of the best extraction."""
    fwd, best = 0.0, None
    for _ in range(repeats):
        summary = extract(config, progress=False)
        if best is None or summary["frames_per_s"] > best["frames_per_s"]:
            best = summary
        fwd = max(fwd, reference.forward_only(encoder, images, summary["batch_size"], CPU, "cls",
                                              config.bf16, frames=summary["frames"]))
    return {"forward_only_fps": fwd, "summary": best}


def fast_depth(model: str, img_size: int, images: torch.Tensor, fps: float,
               tmp: Path) -> tuple[int, float, Path]:
    """The most blocks (12, 6, 3, 2, 1) whose bf16 forward-only rate reaches ``fps`` here
    (else 1 block): (depth, its forward-only frames/s, its checkpoint)."""
    for depth in (12, 6, 3, 2, 1):
        ckpt = tmp / f"fast-{depth}.pt"
        encoder = make_checkpoint(ckpt, model, img_size, depth)
        rate = max(reference.forward_only(encoder, images, 64, CPU, "cls", True) for _ in range(2))
        if rate >= fps or depth == 1:
            return depth, rate, ckpt
    raise AssertionError("unreachable")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mae_vit_tiny_patch16")
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--videos", type=int, default=12,
                        help="synthetic videos of 500 frames to extract")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="extraction's batch (default: its own)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decode workers (default: chosen from the cores)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: chosen from the cores)")
    parser.add_argument("--fast-fps", type=float, default=800.0,
                        help="forward-only rate of the fast encoder")
    parser.add_argument("--loop-frames", type=int, default=600,
                        help="frames for the per-frame loop")
    parser.add_argument("--rss-frames", type=int, default=2000,
                        help="the short video; the long one is 10x")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternated forward-only/extract rounds")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        tmp = Path(tmp)
        root = tmp / "synth"
        generate(root, SynthConfig(videos=args.videos, frames_per_video=500, pairs=1,
                                   img_size=args.img_size), progress=False)
        ckpt = tmp / "encoder.pt"
        encoder = make_checkpoint(ckpt, args.model, args.img_size)
        ds = AffWild2(root)
        paths = [v.image_path(k) for v in ds.videos.values() for k in v.frames]
        # (N, 3, S, S) uint8
        images = torch.stack([decode_image(p, args.img_size) for p in paths[:1024]])
        config = ExtractConfig(data=str(root), ckpt=str(ckpt), store=str(tmp / "store.zarr"),
                               device="cpu", batch_size=args.batch_size, workers=args.workers,
                               threads=args.threads, bf16=args.bf16, overwrite=True)

        # 1. the best forward pass here, then extraction alternated with forward only at its own
        # settings
        best = reference.best_forward_only(encoder, images, CPU)
        mixed = interleaved(encoder, images, config)
        with reference.pillow_only():
            mixed_pillow = interleaved(encoder, images, config)
        main_run = alternate(encoder, images, config, args.repeats)
        e2e, summary = main_run["summary"]["frames_per_s"], main_run["summary"]

        # 2. the loader against an encoder fast enough not to hide it
        depth, fast_fps, fast_ckpt = fast_depth(args.model, args.img_size, images, args.fast_fps,
                                                tmp)
        fast_encoder = load_extraction_encoder(fast_ckpt, CPU)[0]
        fast = alternate(fast_encoder, images, replace(config, ckpt=str(fast_ckpt), bf16=True),
                         args.repeats)
        loaders = {"fast": 0.0, "pillow": 0.0}  # alternated: the JPEG fast path on, then off
        for _ in range(2):
            for name in loaders:
                with reference.pillow_only(name == "pillow"):
                    rate = reference.loader_rate(paths[:2048], args.img_size,
                                                 summary["batch_size"], summary["workers"], CPU)
                loaders[name] = max(loaders[name], rate)
        loader = loaders["fast"]

        # 3. the authors' per-frame loop on a subset (its rate does not depend on the count), in
        # fp32 as their scripts run and in the extraction's precision; and the batching ceiling of
        # this device
        loop = reference.per_frame_loop(encoder, paths[: args.loop_frames], tmp / "npy",
                                        args.img_size, CPU)
        loop_same = reference.per_frame_loop(encoder, paths[: args.loop_frames], tmp / "npy-same",
                                             args.img_size, CPU, bf16=args.bf16)
        loop_files, loop_bytes = tree_size(tmp / "npy")
        fwd_one = reference.forward_only(encoder, images[: args.loop_frames], 1, CPU, "cls",
                                         args.bf16)
        store_files, store_bytes = tree_size(tmp / "store.zarr")

        # 4. memory for a short and a ten-times-longer video
        rss_short = peak_rss(one_video_root(tmp / "short", args.rss_frames, paths[0]), ckpt,
                             tmp / "s.zarr")
        rss_long = peak_rss(one_video_root(tmp / "long", 10 * args.rss_frames, paths[0]), ckpt,
                            tmp / "l.zarr")

    n = len(paths)
    fwd_same = main_run["forward_only_fps"]
    result = {
        "model": args.model, "img_size": args.img_size, "bf16": args.bf16, "frames": n,
        "repeats": args.repeats, "batch_size": summary["batch_size"], "workers": summary["workers"],
        "threads": summary["threads"], "forward_only_best_fps": round(best["fps"], 1),
        "forward_only_best": f"{'bf16' if best['bf16'] else 'fp32'} batch {best['batch_size']}",
        "forward_only_table": {k: round(v, 1) for k, v in best["table"].items()},
        "forward_only_same_settings_fps": round(fwd_same, 1), "extract_fps": e2e,
        "extract_over_best_forward": round(e2e / best["fps"], 3),
        "extract_over_forward": round(e2e / fwd_same, 3),
        "interleaved_extract_fps": round(mixed["extract_fps"], 1),
        "interleaved_forward_only_fps": round(mixed["forward_only_fps"], 1),
        "interleaved_extract_over_forward": round(mixed["ratio"], 3),
        "interleaved_pillow_only_extract_over_forward": round(mixed_pillow["ratio"], 3),
        "fast_depth": depth, "fast_forward_only_fps": round(fast["forward_only_fps"], 1),
        "fast_extract_fps": fast["summary"]["frames_per_s"],
        "fast_extract_over_forward": round(fast["summary"]["frames_per_s"]
                                           / fast["forward_only_fps"], 3),
        "loader_fps": round(loader, 1),
        # When the same cores decode and run the encoder in turn (no decode workers), the most
        # extraction can reach over forward only: forward time over forward + decode time.
        "serial_ceiling": round(1 / (1 + fwd_same / loader), 3),
        "fast_serial_ceiling": round(1 / (1 + fast["forward_only_fps"] / loader), 3),
        "loader_pillow_only_fps": round(loaders["pillow"], 1),
        "serial_ceiling_pillow_only": round(1 / (1 + fwd_same / loaders["pillow"]), 3),
        "per_frame_loop_fps": round(loop, 1), "extract_over_loop": round(e2e / loop, 1),
        "per_frame_loop_same_precision_fps": round(loop_same, 1),
        "extract_over_loop_same_precision": round(e2e / loop_same, 1),
        "forward_only_batch1_fps": round(fwd_one, 1),
        "batching_ceiling": round(fwd_same / fwd_one, 2),
        "store_files": store_files, "store_bytes": store_bytes,
        "npy_files_per_frame": loop_files / args.loop_frames,
        "npy_bytes_for_all_frames": int(loop_bytes / args.loop_frames * n),
        "rss_short_mb": round(rss_short), "rss_long_mb": round(rss_long),
        "rss_long_over_short": round(rss_long / rss_short, 3),
        "load": [load_before, os.getloadavg()[0]],
    }
    print(f"extraction benchmark: {args.model} at {args.img_size}px, bf16={args.bf16}, {n} frames, "
          f"extraction's batch {result['batch_size']}, {result['workers']} decode worker(s), "
          f"{result['threads']} threads; best of {args.repeats} alternated rounds")
    print("  forward only (decoded frames): "
          + ", ".join(f"{k} {v:.0f}" for k, v in best["table"].items()))
    print(f"  best forward only ({result['forward_only_best']})  {best['fps']:8.1f} frames/s")
    print(f"  extract end to end            {e2e:8.1f} frames/s  over the best forward "
          f"{e2e / best['fps']:.3f} (goal >= 0.9); over forward at its own settings "
          f"({fwd_same:.0f}) {e2e / fwd_same:.3f}")
    print(f"  interleaved batch by batch: extract {mixed['extract_fps']:.1f}, forward only "
          f"{mixed['forward_only_fps']:.1f} frames/s at its batch and precision  ratio "
          f"{mixed['ratio']:.3f} (goal >= 0.9; the machine's drift cancels out); every JPEG "
          f"through Pillow {mixed_pillow['ratio']:.3f}")
    print(f"  fast encoder ({depth} blocks)      {fast['forward_only_fps']:8.1f} frames/s forward "
          f"only, extract {fast['summary']['frames_per_s']:.1f}  ratio "
          f"{result['fast_extract_over_forward']:.3f} (decoding in turn bounds it at "
          f"{result['fast_serial_ceiling']:.3f}); loader alone {loader:.0f} frames/s")
    print(f"  decoding and the encoder in turn on the same cores reach at most "
          f"{result['serial_ceiling']:.3f} of forward only at its own settings (1 / (1 + "
          f"forward / loader))")
    print(f"  the loader with every JPEG through Pillow {loaders['pillow']:.0f} frames/s (the fast "
          f"path {loader / loaders['pillow']:.2f}x); in turn at most "
          f"{result['serial_ceiling_pillow_only']:.3f}")
    print(f"  per-frame loop + .npy, fp32   {loop:8.1f} frames/s  extract is {e2e / loop:.1f}x "
          "faster (goal >= 10x)")
    print(f"  the same loop, bf16={args.bf16!s:5}  {loop_same:8.1f} frames/s  extract is "
          f"{e2e / loop_same:.1f}x faster")
    print(f"  forward only at batch 1       {fwd_one:8.1f} frames/s  batching ceiling on this "
          f"device {fwd_same / fwd_one:.2f}x (batch {result['batch_size']} over batch 1, frames "
          "in memory)")
    print(f"  files: store {store_files} ({store_bytes / 1e6:.1f} MB) vs .npy {n} "
          f"({result['npy_bytes_for_all_frames'] / 1e6:.1f} MB) for {n} frames")
    print(f"  peak RSS: {args.rss_frames}-frame video {rss_short:.0f} MB, "
          f"{10 * args.rss_frames}-frame video {rss_long:.0f} MB  "
          f"(ratio {rss_long / rss_short:.2f}, flat is ~1)")
    print(f"  load average (1 min) before / after: {result['load'][0]:.2f} / "
          f"{result['load'][1]:.2f}")
    return result


if __name__ == "__main__":
    main()
