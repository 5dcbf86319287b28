"""Benchmark: temporal-head training fed from memory vs from one .npz file per window \
(the authors' way).

Both feeds run in the same process, on the same synthetic sequences, with the same model, seed and
batches, so their ratio is measured side by side:
- memory: every video's features in one array (what ``load_all`` gives), a batch is one index op;
- npz: every window written to its own ``.npz`` first (as the authors repack their per-frame
  ``.npy`` files), a batch reads and stacks B files.
Printed: training frames/s, the share of step time spent getting the batch, and the ratios. The npz
files were just written, so they are read from the page cache: the npz figures are a best case.

    python -m bench.bench_heads [--steps 4] [--batch-size 8] [--dim 768] [--bf16] [--json]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pipeline.models.temporal  # noqa: F401  (registers the heads)
from pipeline.device import autocast
from pipeline.heads.losses import TaskLoss
from pipeline.heads.sequences import Batcher, FeatureTable, make_windows, window_index
from pipeline.models import build_model


def synthetic_table(videos: int, mean_frames: int, dim: int, seed: int = 0):
    """Random features (sum T, D) float16, VA labels, valid mask, and video offsets."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(mean_frames // 3, 2 * mean_frames, size=videos)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    features = rng.standard_normal((offsets[-1], dim), dtype=np.float32).astype(np.float16)
    labels = rng.uniform(-1, 1, (offsets[-1], 2)).astype(np.float32)
    valid = rng.random(offsets[-1]) > 0.05
    return features, labels, valid, offsets


def all_windows(offsets: np.ndarray, W: int, S: int) -> np.ndarray:
    """The training windows (start row, length) of every video, as the heads make them."""
    table = FeatureTable(np.zeros((offsets[-1], 0)), np.ones(offsets[-1], bool),
                         {str(i): (int(a), int(b))
                          for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:], strict=True))},
                         [], [], "zeros")
    return make_windows(table, table.videos, W, S)


def write_npz(folder: Path, features, labels, valid, windows, W: int) -> list[Path]:
    """One uncompressed .npz per window: features (W, D) float32, labels (W, 2), counted (W,)."""
    paths = []
    for i, (start, length) in enumerate(windows):
        rows, keep = window_index(np.array([[start, length]]), W)
        rows, keep = rows[0].numpy(), keep[0].numpy()
        path = folder / f"{i:06d}.npz"
        np.savez(path, features=features[rows].astype(np.float32) * keep[:, None],
                 labels=labels[rows], counted=valid[rows] & keep, keep=keep)
        paths.append(path)
    return paths


def npz_batch(paths: list[Path]) -> dict[str, torch.Tensor]:
    loaded = [np.load(p) for p in paths]
    return {
        "x": torch.from_numpy(np.stack([f["features"] for f in loaded])),
        "labels": torch.from_numpy(np.stack([f["labels"] for f in loaded])),
        "counted": torch.from_numpy(np.stack([f["counted"] for f in loaded])),
        "keep": torch.from_numpy(np.stack([f["keep"] for f in loaded])),
    }


def train_steps(get_batch, order: np.ndarray, steps: int, batch_size: int, dim: int, bf16: bool,
                sizes: dict) -> dict:
    """``steps`` training steps (after one untimed warm-up step): frames/s and data share."""
    torch.manual_seed(0)
    model = build_model("temporal_tcn_transformer", in_dim=dim, out_dim=2, **sizes).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=1e-5)
    loss_fn = TaskLoss("va")
    device = torch.device("cpu")
    t_data = t_total = 0.0
    frames = 0
    for step in range(steps + 1):
        t0 = time.perf_counter()
        b = get_batch(order[step * batch_size : (step + 1) * batch_size])
        t1 = time.perf_counter()
        with autocast(device, bf16):
            out = model(b["x"], b["keep"])
        loss = loss_fn(out, b["labels"], b["counted"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t2 = time.perf_counter()
        if step > 0:  # the first step pays one-off allocation costs
            t_data += t1 - t0
            t_total += t2 - t0
            frames += int(b["keep"].sum())
    return {"frames_per_s": frames / t_total, "data_share": t_data / t_total,
            "step_s": t_total / steps, "data_ms_per_step": 1000 * t_data / steps}


def time_loading(get_batch, order: np.ndarray, batch_size: int, batches: int) -> float:
    """Milliseconds per batch of the feed alone (no model)."""
    t0 = time.perf_counter()
    for i in range(batches):
        get_batch(order[(i * batch_size) % len(order) :][:batch_size])
    return 1000 * (time.perf_counter() - t0) / batches


def run(steps: int = 4, batch_size: int = 8, dim: int = 768, videos: int = 40,
        mean_frames: int = 900, window: int = 300, stride: int = 200, bf16: bool = False,
        small: bool = False) -> dict:
    sizes = (dict(tcn_channels=(256, 128, 128), d_model=128, num_layers=2, ff_dim=256,
                  head_hidden=64) if small else {})
    features, labels, valid, offsets = synthetic_table(videos, mean_frames, dim)
    windows = all_windows(offsets, window, stride)
    order = np.random.default_rng(0).permutation(len(windows))
    if len(order) < (steps + 1) * batch_size:
        raise ValueError(f"{len(order)} windows are too few for {steps + 1} steps of {batch_size}; "
                         "add --videos")
    memory = Batcher(features, labels, valid)

    def memory_batch(idx):
        return memory.batch(windows[idx], window)

    with tempfile.TemporaryDirectory(prefix="bench_npz_") as tmp:
        t0 = time.perf_counter()
        paths = write_npz(Path(tmp), features, labels, valid, windows, window)
        write_s = time.perf_counter() - t0
        disk = sum(p.stat().st_size for p in paths)

        def npz_batch_of(idx):
            return npz_batch([paths[i] for i in idx])

        load_batches = max(20, steps)
        result = {
            "config": {"steps": steps, "batch_size": batch_size, "dim": dim,
                       "frames": int(offsets[-1]), "windows": len(windows), "window": window,
                       "stride": stride, "bf16": bf16,
                       "model": ("temporal_tcn_transformer"
                                 + (" (small)" if small else " (paper sizes)")),
                       "threads": torch.get_num_threads()},
            "memory_load_ms": time_loading(memory_batch, order, batch_size, load_batches),
            "npz_load_ms": time_loading(npz_batch_of, order, batch_size, load_batches),
            "memory": train_steps(memory_batch, order, steps, batch_size, dim, bf16, sizes),
            "npz": train_steps(npz_batch_of, order, steps, batch_size, dim, bf16, sizes),
            "npz_files": len(paths), "npz_bytes": disk, "npz_write_s": write_s,
            "memory_bytes": int(features.nbytes + labels.nbytes + valid.nbytes),
        }
    result["ratios"] = {
        "load_npz_over_memory": result["npz_load_ms"] / result["memory_load_ms"],
        "train_memory_over_npz_frames_per_s":
            result["memory"]["frames_per_s"] / result["npz"]["frames_per_s"],
    }
    return result


def report(r: dict) -> str:
    c = r["config"]
    lines = [
        f"temporal-head training, {c['model']}, D={c['dim']}, W={c['window']}/S={c['stride']}, "
        f"batch {c['batch_size']}, {c['steps']} timed steps, bf16={c['bf16']}, "
        f"{c['threads']} threads, {c['windows']} windows of {c['frames']} frames",
        f"{'feed':<8}{'frames/s':>10}{'step s':>9}{'data ms/step':>14}{'data share':>12}"
        f"{'load ms/batch':>15}",
    ]
    for feed in ("memory", "npz"):
        t = r[feed]
        lines.append(f"{feed:<8}{t['frames_per_s']:>10.0f}{t['step_s']:>9.3f}"
                     f"{t['data_ms_per_step']:>14.2f}{100 * t['data_share']:>11.2f}%"
                     f"{r[f'{feed}_load_ms']:>15.2f}")
    q = r["ratios"]
    lines += [
        f"loading a batch: npz / memory = {q['load_npz_over_memory']:.1f}x",
        f"training throughput: memory / npz = {q['train_memory_over_npz_frames_per_s']:.2f}x",
        f"npz: {r['npz_files']} files, {r['npz_bytes'] / 2**20:.0f} MiB written in "
        f"{r['npz_write_s']:.1f} s (memory table {r['memory_bytes'] / 2**20:.0f} MiB)",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--videos", type=int, default=40)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--small", action="store_true",
                   help="A small head instead of the paper's sizes.")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    r = run(a.steps, a.batch_size, a.dim, a.videos, bf16=a.bf16, small=a.small)
    print(json.dumps(r, sort_keys=True) if a.json else report(r))


if __name__ == "__main__":
    main()
