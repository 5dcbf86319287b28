"""Pretraining and fine-tuning loops against their bare steps, measured side by side in one run.

Each loop is the stage's own library function (``pretrain``, ``finetune``) on a synthetic set, its
rate the epoch's images/s as the run logs it (loader, schedule, logging, DDP hooks included;
checkpointing and validation are outside the epoch's clock). Its reference is a bare step
(``bench/reference.py``): the same model, optimizer, loss, batch size and precision, on one batch
already in memory, forward, backward, optimizer step and nothing else. Rounds alternate the two
(a bare-step round, then one more epoch of the run), so a change in the machine's load hits both;
printed: the best round of each and their ratio, and the median of each round's own ratio
("paired"). Goal: >= 0.9.

    python -m bench.bench_loops [--rounds 3] [--steps 30] [--batch-size 64] [--workers N] \
        [--threads N]

Defaults are the CPU demo's budget (ViT-Tiny/16 at 112 px, batch 64, bf16 autocast, workers and
threads chosen from the cores).
"""

import argparse
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from bench.gpu_check import check_finetune, check_pretrain
from pipeline import config
from pipeline.configs import FinetuneConfig, PretrainConfig, SynthConfig
from pipeline.data.synth import generate
from pipeline.pretrain import pretrain

STAGES = ("pretrain", "finetune")


def line(stage: str, s: dict) -> str:
    rounds = (" ".join(f"{v:.0f}" for v in s["rounds"]["loop"]) + " | "
              + " ".join(f"{v:.0f}" for v in s["rounds"]["bare"]))
    return (f"{stage:<10}{s['loop_img_per_s']:>12.1f}{s['bare_img_per_s']:>11.1f}{s['ratio']:>7.2f}"
            f"{s['paired_ratio']:>8.2f}{s['workers']:>9}{s['threads']:>9}  {rounds}  "
            f"(load {os.getloadavg()[0]:.2f})")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30,
                        help="optimizer steps per epoch and per bare round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None,
                        help="decode workers (default: chosen from the cores)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: chosen from the cores)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    device = torch.device("cpu")
    load_before = os.getloadavg()[0]
    result = {"cores": os.cpu_count(), "batch_size": args.batch_size, "steps": args.steps,
              "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="bench-loops-") as tmp:
        tmp = Path(tmp)
        data = tmp / "synth"
        # 48 videos of ~200 frames: Expr training videos for ~30 fine-tuning steps of 64 frames an
        # epoch
        generate(data, SynthConfig(videos=48, frames_per_video=200, people=4, scenes=2),
                 progress=False)
        common = dict(workers=args.workers, threads=args.threads, device="cpu", tensorboard=False)
        pre = replace(config.preset(PretrainConfig, "demo"), images=(str(data),),
                      out=str(tmp / "pretrain"), batch_size=args.batch_size,
                      max_images=args.batch_size * args.steps, recon_images=2, **common)
        if not args.json:
            print(f"training loops against bare steps on the CPU ({os.cpu_count()} cores), "
                  f"ViT-Tiny/16 at 112 px, batch {args.batch_size}, bf16, {args.steps} steps a "
                  f"round, best of {args.rounds} alternated rounds (load {load_before:.2f})")
            print(f"{'stage':<10}{'loop img/s':>12}{'bare step':>11}{'ratio':>7}{'paired':>8}"
                  f"{'workers':>9}{'threads':>9}  rounds (loop | bare)", flush=True)
        if "pretrain" in args.stages:
            result["pretrain"] = check_pretrain(pre, device, args.rounds, args.steps)
            checkpoint = result["pretrain"]["checkpoint"]
            if not args.json:
                print(line("pretrain", result["pretrain"]), flush=True)
        else:  # an encoder to fine-tune: one short epoch
            checkpoint = pretrain(replace(pre, epochs=1, max_images=args.batch_size),
                                  progress=False)["checkpoint"]
        if "finetune" in args.stages:
            fine = replace(config.preset(FinetuneConfig, "demo"), data=str(data),
                           out=str(tmp / "finetune"), init=checkpoint, batch_size=args.batch_size,
                           val_frames_per_video=4, **common)
            result["finetune"] = check_finetune(fine, device, args.rounds, args.steps)
            if not args.json:
                print(line("finetune", result["finetune"]), flush=True)
    result["load"] = [load_before, os.getloadavg()[0]]

    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"load average (1 min) before / after: {result['load'][0]:.2f} / "
              f"{result['load'][1]:.2f} (above the core count, other processes shared the CPU)")
    return result


if __name__ == "__main__":
    main()
