"""What each stage adds to Expr recognition: (a) a linear probe on the frozen MAE encoder, (b) the encoder
fine-tuned from MAE, (c) the same fine-tune from random weights, each over several seeds; optionally (d)
LP-FT, the fine-tune of (b) started from (a)'s head (``--settings abcd``).

All settings use ``pipeline.finetune.finetune`` with the same budget (the demo's by default) and the same
architecture; only the initialisation and what trains differ ((c) starts from a random-weight checkpoint of
the MAE encoder's exact shape). A seed changes the data order, the augmentation, the head and, for
(c), the encoder's random weights. Printed: the best-epoch validation macro F1 of every run, the mean and
standard deviation per setting, and the score of a uniform guess on the same frames. One Validation_Set of
a few videos makes a single run's F1 noisy; the spread over seeds says how far to trust a difference.

    python -m bench.compare_stages --data data/synth-demo --init runs/demo/pretrain/checkpoint-last.pt \
        [--seeds 0 1 2] [--epochs 3] [--frames-per-video 150] [--out DIR] [--json]
"""

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.data.affwild2 import AffWild2
from pipeline.data.frames import expr_frames
from pipeline.errors import InputError
from pipeline.finetune import FinetuneConfig, finetune
from pipeline.metrics import uniform_guess_expr_f1
from pipeline.models.checkpoint import (
    EncoderInfo,
    encoder_checkpoint,
    load_encoder,
    save_checkpoint,
)
from pipeline.models.mae import build_encoder

SETTINGS = {
    "a": "linear probe on the frozen MAE encoder",
    "b": "fine-tuned from MAE",
    "c": "the same fine-tune from random weights",
    "d": "LP-FT: (b) started from (a)'s head",
}


def random_twin(info: EncoderInfo, seed: int, path: Path) -> Path:
    """A checkpoint of the MAE encoder's exact architecture (width, depth, patch, input size, pixel
    statistics) with fresh random weights drawn from ``seed``: the start of run (c)."""
    torch.manual_seed(seed)
    encoder = build_encoder(info.model_name, **info.model_config)
    save_checkpoint(encoder_checkpoint("random", info.model_name, info.model_config, encoder, info.img_size,
                                       info.pixel_mean, info.pixel_std), path)
    return path


def stage_configs(base: FinetuneConfig, init: Path, info: EncoderInfo, probe_lr: float, out: Path,
                  seed: int) -> dict[str, FinetuneConfig]:
    """The runs (a)-(d) of one seed; ``info`` describes the MAE encoder at ``init``; (d) reads (a)'s best.pt."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = random_twin(info, seed, out / f"random-init-seed{seed}.pt")
    return {
        "a": replace(base, init=str(init), linear_probe=True, lr=probe_lr, seed=seed, out=str(out / f"a-seed{seed}")),
        "b": replace(base, init=str(init), seed=seed, out=str(out / f"b-seed{seed}")),
        "c": replace(base, init=str(scratch), seed=seed, out=str(out / f"c-seed{seed}")),
        "d": replace(base, init=str(init), head_init=str(out / f"a-seed{seed}" / "best.pt"), seed=seed,
                     out=str(out / f"d-seed{seed}")),
    }


def main(argv=None) -> dict:
    """Run the comparison; bad input (a missing folder, an unreadable checkpoint) exits 2 with one line."""
    try:
        return _compare(argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _compare(argv) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="Aff-Wild2-layout root (the synthetic demo set).")
    parser.add_argument("--init", required=True, help="MAE checkpoint for (a) and (b).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4, help="Fine-tuning lr of (b) and (c).")
    parser.add_argument("--probe-lr", type=float, default=5e-3, help="Linear-probe lr of (a).")
    parser.add_argument("--frames-per-video", type=int, default=150)
    parser.add_argument("--warmup-epochs", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--settings", default="abc", help="Which of a, b, c, d to run (d needs a).")
    parser.add_argument("--out", default=None, help="Keep the runs here (default: a temporary folder).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of the table.")
    args = parser.parse_args(argv)
    if not args.seeds or not set(args.settings) <= set(SETTINGS) or ("d" in args.settings and "a" not in args.settings):
        parser.error("--seeds needs at least one seed and --settings letters from 'abcd' (d starts from a's head)")

    base = FinetuneConfig(data=args.data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          frames_per_video=args.frames_per_video, warmup_epochs=args.warmup_epochs,
                          workers=args.workers)
    init = Path(args.init).resolve()
    info = load_encoder(init)[1]  # checked before anything is written
    val_index = expr_frames(AffWild2(Path(args.data)), "Validation_Set")
    scores: dict[str, list[float]] = {k: [] for k in args.settings}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        for seed in args.seeds:
            configs = stage_configs(base, init, info, args.probe_lr, out, seed)
            for key in sorted(args.settings):  # a before d
                summary = finetune(configs[key], progress=not args.json)
                scores[key].append(round(float(summary["best_f1"]), 4))
    result = {
        "seeds": args.seeds, "uniform_guess_f1": round(uniform_guess_expr_f1(val_index.expr), 4),
        "validation_frames": len(val_index), "validation_videos": len(val_index.videos),
        "settings": {k: {"what": SETTINGS[k], "best_f1": v, "mean": round(float(np.mean(v)), 4),
                         "std": round(float(np.std(v)), 4)} for k, v in scores.items()},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"validation: {result['validation_frames']} frames of {result['validation_videos']} videos; "
              f"a uniform guess scores {result['uniform_guess_f1']:.3f}")
        print("| setting | best-epoch validation macro F1 per seed | mean | std |")
        print("|---|---|---|---|")
        for key, row in result["settings"].items():
            print(f"| ({key}) {row['what']} | {', '.join(f'{s:.3f}' for s in row['best_f1'])} | "
                  f"{row['mean']:.3f} | {row['std']:.3f} |")
    return result


if __name__ == "__main__":
    main()
