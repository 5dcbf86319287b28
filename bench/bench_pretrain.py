"""MAE pretraining throughput on this machine: images/s of a full optimizer step (forward, backward,
fused AdamW) for the tiny and small models, fp32 against bf16 autocast, measured side by side.

Rounds alternate the two precisions so a change in machine load hits both alike; the table gives the
median round. With ``--images DIR`` the data pipeline alone (decode + random resized crop + flip,
one process) is timed too, to see whether the loader or the model is the bottleneck.

    python -m bench.bench_pretrain [--img-size 112] [--batch-size 32] [--threads 1 2] [--images DIR]

On a CPU shared with other processes, two OpenMP threads per process can be many times slower than
one (threads spin waiting for each other while the cores run someone else); ``--threads 1 2`` shows
it.
"""

import argparse
import os
import statistics
import time

import torch

from pipeline.data.pretrain_images import PretrainImages, find_images
from pipeline.device import autocast
from pipeline.models.encoder import normalize
from pipeline.models.mae import MaskedAutoencoderViT, mae_config


def step_rate(model, optimizer, images: torch.Tensor, bf16: bool, steps: int) -> float:
    """Images per second over ``steps`` optimizer steps on the CPU."""
    device = torch.device("cpu")
    start = time.perf_counter()
    for _ in range(steps):
        with autocast(device, bf16):
            loss, _, _ = model(normalize(images))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * len(images) / (time.perf_counter() - start)


def bench_model(name: str, img_size: int, batch_size: int, steps: int,
                rounds: int) -> dict[bool, float]:
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(mae_config(name, img_size=img_size)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    images = torch.randint(0, 256, (batch_size, 3, img_size, img_size), dtype=torch.uint8)
    rates: dict[bool, list[float]] = {False: [], True: []}
    for bf16 in (False, True):
        step_rate(model, optimizer, images, bf16, 1)  # warm-up: kernel selection, first allocations
    for _ in range(rounds):
        for bf16 in (False, True):
            rates[bf16].append(step_rate(model, optimizer, images, bf16, steps))
    return {bf16: statistics.median(r) for bf16, r in rates.items()}


def loader_rate(folder: str, img_size: int, n: int = 256) -> float:
    dataset = PretrainImages(find_images([folder])[:n], img_size)
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+",
                        default=["mae_vit_tiny_patch16", "mae_vit_small_patch16"])
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="torch intra-op thread counts to compare (default: torch's)")
    parser.add_argument("--images", default=None,
                        help="a face-image folder: also time decode + augmentation")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    print(f"MAE pretraining step on the CPU ({os.cpu_count()} cores), img {args.img_size}, "
          f"batch {args.batch_size}, median of {args.rounds} rounds x {args.steps} steps, "
          "registered decoders")
    print(f"{'model':<24} {'threads':>7} {'fp32 img/s':>11} {'bf16 img/s':>11} {'bf16/fp32':>10}")
    for name in args.models:
        for threads in args.threads:
            torch.set_num_threads(threads)
            rate = bench_model(name, args.img_size, args.batch_size, args.steps, args.rounds)
            print(f"{name:<24} {threads:>7} {rate[False]:>11.1f} {rate[True]:>11.1f} "
                  f"{rate[True] / rate[False]:>9.2f}x")
    if args.images:
        print(f"data pipeline alone (decode + crop + flip, 1 process): "
              f"{loader_rate(args.images, args.img_size):.0f} img/s")
    print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
          "(above the core count, other processes shared the CPU)")


if __name__ == "__main__":
    main()
