"""``make gpu-check``: every stage once on CUDA, on the synthetic ``bench`` set: which CUDA
branches ran (as observed while they ran), each loop's speed against its bare step, and each
stage's peak memory.

One process runs the stages through their own library functions (``pretrain``, ``finetune``,
``extract``, ``train_run``) and measures beside each what it is compared with
(``bench/reference.py``); then one ``torchrun`` over every visible GPU runs a short pretraining,
fine-tuning and extraction, each watched by an :class:`Observer`. Printed: one JSON object, then a
readable table.

- **branches**: per stage, on every rank: the process-group backend and world size, whether the
  model ran inside DistributedDataParallel, the dtype of every linear layer's output
  (bf16 under autocast), and every host-to-device copy's source (pinned or pageable) and mode
  (non-blocking or not);
- **pretraining, fine-tuning**: the paper's ViT-B/16 at 224 px, images/s of the loop (the epoch's
  rate as the run logs it) against a bare step (same model, batch and precision, batch already on
  the device), alternated, the best round of each;
- **extraction**: frames/s against forward only on frames already on the device (goal >= 0.9), and
  against the authors' per-frame loop (one frame a forward pass, one ``.npy`` a frame; goal >= 10x);
  the loader's decode rate alone;
- **temporal head**: the paper-size TCN + Transformer on the extracted store: training frames/s, the
  share of a step spent getting the batch, and one VA run of the paper's 40 epochs projected to
  Aff-Wild2's size;
- **memory**: the peak device memory of each stage.

Without CUDA the same code runs scaled down on the CPU (ViT-Tiny/16 at 112 px, a small set, two gloo
processes) and says so; ``tests/test_gpu_check.py`` runs it, so the command cannot rot.

    python -m bench.gpu_check [--out DIR] [--data DIR] [--json]
"""

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from bench import exit_on_bad_input, reference
from pipeline import config, distributed
from pipeline.configs import ExtractConfig, FinetuneConfig, PretrainConfig, SynthConfig, TrainConfig
from pipeline.data.affwild2 import AffWild2
from pipeline.data.images import decode_image
from pipeline.data.synth import generate
from pipeline.device import host_cores, resolve_device
from pipeline.errors import InputError
from pipeline.extract import batch_size_for, extract, load_extraction_encoder
from pipeline.finetune import finetune
from pipeline.heads.train import prepare, train_run
from pipeline.pretrain import pretrain
from pipeline.runs import read_jsonl, to_jsonable

REPO = Path(__file__).resolve().parent.parent
# Aff-Wild2's VA set, for the projection: about 3 million frames in 594 videos, 356 of them in the
# training set and 76 in validation (the ABAW split); frames assumed in proportion to videos.
AFFWILD2_VA_FRAMES = {"train": round(3_000_000 * 356 / 594),
                      "validation": round(3_000_000 * 76 / 594)}
PAPER_VA_EPOCHS = 40


@dataclass(frozen=True)
class Scale:
    """How big each part runs: the paper's model on CUDA, a small one on the CPU.

    Args:
        model, img_size: the registered MAE model and its input side in pixels.
        synth: the synthetic set (``SynthConfig`` settings).
        batch_size: images per step of pretraining and fine-tuning.
        steps: optimizer steps per timed epoch and per bare-step round.
        rounds: alternated rounds of loop and bare step (the best of each is kept).
        frames_per_video, val_frames_per_video: fine-tuning's draw per video and validation frames.
        forward_frames: frames on the device for the forward-only reference.
        per_frame: frames of the authors' per-frame loop.
        loader_frames: frames of the loader-alone rate.
        head_preset, head_epochs: the temporal head's preset (``TrainConfig.PRESETS``) and epochs.
        ranks: torchrun processes (every visible GPU; two gloo processes on the CPU).
        torchrun_splits: the splits extraction runs under torchrun (enough videos for every rank).
    """

    model: str
    img_size: int
    synth: dict
    batch_size: int
    steps: int
    rounds: int
    frames_per_video: int
    val_frames_per_video: int
    forward_frames: int
    per_frame: int
    loader_frames: int
    head_preset: str
    head_epochs: int
    ranks: int
    torchrun_splits: tuple[str, ...]


def cuda_scale() -> Scale:
    """The paper's ViT-B/16 at 224 px on the ``bench`` synthetic set (80,000 frames), sized for a
    few minutes on one modern GPU; the training batch from the first GPU's memory (128 from 40 GiB,
    64 from 20 GiB, else 32: a guess from ViT-B/16's size, not measured on each)."""
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    batch_size = 128 if gib >= 40 else 64 if gib >= 20 else 32
    return Scale(model="mae_vit_base_patch16", img_size=224,
                 synth=config.preset_values(SynthConfig, "bench"),
                 batch_size=batch_size, steps=60, rounds=2, frames_per_video=100,
                 val_frames_per_video=20,
                 forward_frames=256 * 12, per_frame=300, loader_frames=20_000, head_preset="paper",
                 head_epochs=3, ranks=torch.cuda.device_count(),
                 torchrun_splits=("Validation_Set",))


def cpu_scale() -> Scale:
    """The same path scaled down for a CPU: ViT-Tiny/16 at 112 px on 8 short videos, a few
    steps a stage."""
    return Scale(model="mae_vit_tiny_patch16", img_size=112,
                 synth=dict(videos=8, frames_per_video=50, pairs=1, long_video_factor=2.0),
                 batch_size=8, steps=2, rounds=2, frames_per_video=16, val_frames_per_video=8,
                 forward_frames=128, per_frame=24, loader_frames=256, head_preset="tiny",
                 head_epochs=2, ranks=2, torchrun_splits=("all",))


class Observer(TorchFunctionMode):
    """What the torch calls of a block did, seen as they ran (the calling thread only).

    Counts every host-to-device ``Tensor.to`` by its source's memory (pinned or pageable) and its
    mode (non-blocking or not), every ``linear``'s output by dtype and device, and the forward
    passes of DistributedDataParallel models.
    """

    def __init__(self):
        super().__init__()
        self.copies: Counter = Counter()
        self.linear: Counter = Counter()
        self.ddp_forwards = 0
        self._hook = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if (func is torch.Tensor.to and isinstance(out, torch.Tensor)
                and isinstance(args[0], torch.Tensor)):
            if args[0].device.type == "cpu" and out.device.type != "cpu":
                pinned = "pinned" if args[0].is_pinned() else "pageable"
                mode = "non_blocking" if kwargs.get("non_blocking", False) else "blocking"
                self.copies[f"{pinned} {mode}"] += 1
        elif func is torch.nn.functional.linear and isinstance(out, torch.Tensor):
            self.linear[f"{str(out.dtype).removeprefix('torch.')} {out.device}"] += 1
        return out

    def _on_forward(self, module, args, output):
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            self.ddp_forwards += 1

    def __enter__(self):
        self._hook = torch.nn.modules.module.register_module_forward_hook(self._on_forward)
        return super().__enter__()

    def __exit__(self, *exc):
        self._hook.remove()
        return super().__exit__(*exc)

    def facts(self) -> dict:
        """What was seen; ``devices``: those the linear layers' outputs were on (``cuda:1``)."""
        return {"h2d_copies": dict(self.copies), "linear_outputs": dict(self.linear),
                "ddp_forwards": self.ddp_forwards,
                "devices": sorted({key.split(" ")[1] for key in self.linear})}


# ------------------------------------------------------------------------------------------ configs

def stage_configs(scale: Scale, data: Path, out: Path, device: str) -> dict:
    """The pretraining, fine-tuning and extraction configs of one check (paths under ``out``)."""
    pre = PretrainConfig(images=(str(data),), out=str(out / "pretrain"), model=scale.model,
                         img_size=scale.img_size, epochs=1, batch_size=scale.batch_size,
                         accum_iter=1, lr=1.5e-4, warmup_epochs=1,
                         max_images=scale.batch_size * scale.steps, device=device, recon_images=2,
                         tensorboard=False)
    fine = FinetuneConfig(data=str(data), out=str(out / "finetune"),
                          init=str(out / "pretrain" / "checkpoint-last.pt"),
                          epochs=1, batch_size=scale.batch_size, lr=1e-4, warmup_epochs=0.5,
                          frames_per_video=scale.frames_per_video,
                          val_frames_per_video=scale.val_frames_per_video,
                          device=device, tensorboard=False)
    ext = ExtractConfig(data=str(data), ckpt=str(out / "finetune" / "best.pt"),
                        store=str(out / "features.zarr"), device=device, overwrite=True)
    return {"pretrain": pre, "finetune": fine, "extract": ext}


def _last_epoch(run_dir: str) -> tuple[float, float]:
    """The last epoch's loop rate (images/s once its first batch arrived: a long epoch's rate, the
    loader's start-up left out, which weighs heavily in a check's short epochs) and that start-up
    in seconds."""
    last = [r for r in read_jsonl(Path(run_dir) / "log.jsonl") if "img_per_s" in r][-1]
    return last["img_per_s_after_first_batch"] or last["img_per_s"], last["first_batch_s"]


# ------------------------------------------------------------------------------------------- memory

def _reset_peak(device: torch.device) -> int:
    """Start a stage's peak count; returns the memory already held (the stage's peak
    is above it)."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _peak_gib(device: torch.device, held: int) -> float | None:
    """The stage's peak device memory in GiB above what was held before it (None on the CPU)."""
    if device.type != "cuda":
        return None
    return round((torch.cuda.max_memory_allocated(device) - held) / 2**30, 2)


# ------------------------------------------------------------------------------------------- stages

def _ratios(loops: list[float], bares: list[float]) -> dict:
    """The loop against its bare step: the best round of each, and the median of each round's own
    ratio (a round's loop and bare step ran minutes apart at most, so a drift in the machine's
    speed cancels)."""
    return {"loop_img_per_s": max(loops), "bare_img_per_s": max(bares),
            "ratio": max(loops) / max(bares),
            "paired_ratio": float(np.median([a / b for a, b in zip(loops, bares)])),
            "rounds": {"loop": loops, "bare": bares}}


def _alternate(bare: reference.BareStep, run, cfg, device: torch.device, rounds: int,
               steps: int) -> tuple[list[float], list[float], list, list[float], dict]:
    """Rounds of a bare-step rate over ``steps`` steps, then one more epoch of the run ``cfg.out``
    through the stage's function ``run`` (the first round starts it, the next extend it). Returns
    the loop's (:func:`_last_epoch`) and the bare step's images/s per round, the peak memory of each
    epoch, each epoch's wait for its first batch, and the run's last summary."""
    loops, bares, peaks, startups = [], [], [], []
    for r in range(rounds):
        bares.append(bare.rate(steps))
        held = _reset_peak(device)
        summary = run(replace(cfg, epochs=r + 1), progress=False)
        peaks.append(_peak_gib(device, held))
        rate, startup = _last_epoch(cfg.out)
        loops.append(rate)
        startups.append(startup)
    return loops, bares, peaks, startups, summary


def check_pretrain(cfg: PretrainConfig, device: torch.device, rounds: int, steps: int) -> dict:
    """The pretraining loop against its bare step, alternated: each round a bare-step rate over
    ``steps`` steps, then one more epoch of the run ``cfg.out`` (the first round starts it, the next
    extend it)."""
    loops, bares, peaks, startups, summary = _alternate(reference.PretrainStep(cfg, device),
                                                        pretrain, cfg, device, rounds, steps)
    resolved = json.loads((Path(cfg.out) / "config.json").read_text())["pretrain"]
    return {"model": cfg.model, "img_size": cfg.img_size, "batch_size": cfg.batch_size,
            "bf16": cfg.bf16, "workers": resolved["workers"], "threads": resolved["threads"],
            **_ratios(loops, bares), "peak_memory_gib": _max(peaks), "first_batch_s": startups,
            "checkpoint": summary["checkpoint"]}


def check_finetune(cfg: FinetuneConfig, device: torch.device, rounds: int, steps: int) -> dict:
    """The fine-tuning loop (the epoch's rate, validation apart) against its bare step, alternated
    as :func:`check_pretrain`."""
    loops, bares, peaks, startups, summary = _alternate(reference.FinetuneStep(cfg, device),
                                                        finetune, cfg, device, rounds, steps)
    resolved = json.loads((Path(cfg.out) / "config.json").read_text())["finetune"]
    return {"batch_size": cfg.batch_size, "bf16": cfg.bf16, "workers": resolved["workers"],
            "threads": resolved["threads"], "train_frames_per_epoch": summary["train_frames"],
            **_ratios(loops, bares), "peak_memory_gib": _max(peaks), "first_batch_s": startups,
            "best_checkpoint": summary["best_checkpoint"]}


def check_extract(cfg: ExtractConfig, scale: Scale, device: torch.device, out: Path) -> dict:
    """Extraction of every frame, between two forward-only measurements on frames already on the
    device (same encoder, batch, pooling and precision; the better kept); then the authors'
    per-frame loop and the loader alone."""
    ds = AffWild2(Path(cfg.data))
    paths = [v.image_path(k) for v in ds.videos.values() for k in v.frames]
    encoder, info = load_extraction_encoder(Path(cfg.ckpt), device)
    pooling = cfg.pooling or info.pooling or "cls"
    batch_size = batch_size_for(cfg, device)
    frames = torch.stack([decode_image(p, info.img_size)
                          for p in paths[: scale.forward_frames]]).to(device)

    def forward() -> float:
        return reference.forward_only(encoder, frames, batch_size, device, pooling, cfg.bf16,
                                      info.pixel_mean, info.pixel_std, frames=len(paths))

    forwards = [forward()]
    held = _reset_peak(device)
    summary = extract(cfg, progress=False)
    peak = _peak_gib(device, held)
    forwards.append(forward())
    per_frame = reference.per_frame_loop(encoder, paths[: scale.per_frame], out / "npy",
                                         info.img_size, device)
    loader = reference.loader_rate(paths[: scale.loader_frames], info.img_size, batch_size,
                                   summary["workers"], device)
    fps = summary["frames_per_s"]
    return {"frames": summary["frames"], "batch_size": summary["batch_size"],
            "workers": summary["workers"], "threads": summary["threads"], "bf16": cfg.bf16,
            "frames_per_s": fps,
            "forward_only_fps": max(forwards), "over_forward_only": fps / max(forwards),
            "per_frame_loop_fps": per_frame, "over_per_frame_loop": fps / per_frame,
            "loader_fps": loader, "peak_memory_gib": peak, "forward_rounds": forwards,
            "store": cfg.store}


def check_head(store: str, data: str, scale: Scale, device: torch.device, out: Path) -> dict:
    """A VA head of the preset's sizes on the store: its best epoch's training frames/s and data
    share, and the paper's 40-epoch VA run projected to Aff-Wild2's size from this run's rates."""
    cfg = TrainConfig.create(preset=scale.head_preset, task="va", stores=(store,), data=data,
                             epochs=scale.head_epochs, device=device.type, tensorboard=False)
    prepared = prepare(cfg)
    held = _reset_peak(device)
    train_run(prepared, cfg, out / "heads" / "va", progress=False, make_plots=False)
    peak = _peak_gib(device, held)
    epochs = [r for r in read_jsonl(out / "heads" / "va" / "log.jsonl") if "frames_per_s" in r]
    best = max(epochs, key=lambda r: r["frames_per_s"])
    val_frames = prepared.frames(prepared.val_videos)
    # a training epoch visits every frame about window / stride times (overlapping windows)
    epoch_s = AFFWILD2_VA_FRAMES["train"] * cfg.window / cfg.stride / best["frames_per_s"]
    eval_s = (min(r["eval_seconds"] for r in epochs) * AFFWILD2_VA_FRAMES["validation"]
              / max(1, val_frames))
    return {"model": cfg.model, "head": asdict(cfg.head), "window": cfg.window,
            "stride": cfg.stride, "batch_size": cfg.batch_size, "bf16": cfg.bf16,
            "in_dim": prepared.table.dim,
            "train_frames": prepared.frames(prepared.train_videos), "val_frames": val_frames,
            "frames_per_s": best["frames_per_s"], "data_share": best["data_share"],
            "eval_seconds": best["eval_seconds"], "peak_memory_gib": peak,
            "projected_va_run_s": PAPER_VA_EPOCHS * (epoch_s + eval_s),
            "projection": {"epochs": PAPER_VA_EPOCHS, **{f"affwild2_va_{k}_frames": v
                                                         for k, v in AFFWILD2_VA_FRAMES.items()},
                           "train_epoch_s": epoch_s, "validation_s": eval_s}}


# ----------------------------------------------------------------------------------------- torchrun

def rank_job(spec_path: Path) -> None:
    """One torchrun process: pretraining, fine-tuning and extraction in turn, each watched by an
    :class:`Observer`; rank 0 writes every rank's facts to the spec's ``result``."""
    spec = json.loads(spec_path.read_text())
    runs = (("pretrain", PretrainConfig, pretrain), ("finetune", FinetuneConfig, finetune),
            ("extract", ExtractConfig, extract))
    facts = {}
    device = resolve_device(spec["pretrain"]["device"])  # every stage's; cuda:LOCAL_RANK
    distributed.init_distributed(device)  # the rank's GPU current before anything touches it
    for stage, cls, fn in runs:
        cfg = config.build(cls, spec[stage])
        held = _reset_peak(device)
        with Observer() as seen:
            fn(cfg, progress=False)
        facts[stage] = {
            **seen.facts(), "rank": int(os.environ.get("RANK", 0)),
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "peak_memory_gib": _peak_gib(device, held),
            # the GPU the rank's collectives and unindexed "cuda" tensors use
            "current_device": (f"cuda:{torch.cuda.current_device()}" if device.type == "cuda"
                               else None),
        }
    gathered = distributed.gather_objects(facts)
    if not dist.is_initialized() or dist.get_rank() == 0:
        Path(spec["result"]).write_text(json.dumps(gathered))
    distributed.cleanup()


def check_torchrun(scale: Scale, data: Path, out: Path, device: torch.device) -> dict:
    """Short runs of the three stages under ``torchrun`` over ``scale.ranks`` processes
    (every visible GPU, or two gloo processes on the CPU); returns, per stage, what every
    rank observed."""
    if device.type == "cuda":  # what this process cached goes back, for the ranks to use
        gc.collect()
        torch.cuda.empty_cache()
    configs = stage_configs(scale, data, out, device.type)
    per_rank = scale.batch_size // max(1, scale.ranks) or 1
    spec = {
        "pretrain": to_jsonable(replace(configs["pretrain"], batch_size=per_rank,
                                        max_images=per_rank * scale.ranks * 2)),
        "finetune": to_jsonable(replace(configs["finetune"], batch_size=per_rank)),
        "extract": to_jsonable(replace(configs["extract"], splits=scale.torchrun_splits)),
        "result": str(out / "torchrun.json"),
    }
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "torchrun-spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", str(scale.ranks), "-m", "bench.gpu_check",
                           "--rank-job", str(spec_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    ranks = json.loads(Path(spec["result"]).read_text())
    stages = {}
    for stage in ("pretrain", "finetune", "extract"):
        seen = [r[stage] for r in ranks]
        stages[stage] = {
            "processes": len(seen), "backend": seen[0]["backend"],
            "world_size": seen[0]["world_size"], "devices": [s["devices"] for s in seen],
            "current_devices": [s["current_device"] for s in seen],
            "ddp_forwards": [s["ddp_forwards"] for s in seen],
            "linear_outputs": _sum_counts(s["linear_outputs"] for s in seen),
            "h2d_copies": _sum_counts(s["h2d_copies"] for s in seen),
            "peak_memory_gib": [s["peak_memory_gib"] for s in seen],
        }
    return {"seconds": time.perf_counter() - start, "stages": stages}


def _sum_counts(counts) -> dict:
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    return dict(total)


def _max(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


# ----------------------------------------------------------------------------------------- verdicts

def branches(torchrun: dict, device: torch.device) -> dict:
    """Whether each branch ran, read from what the runs observed (never from the settings)."""
    out = {}
    for stage, seen in torchrun["stages"].items():
        linear, copies = seen["linear_outputs"], seen["h2d_copies"]
        # torchrun over one GPU runs one process, which needs no process group
        if seen["backend"] is None:
            group = f"none: {seen['processes']} process"
        else:
            group = f"{seen['backend']}, {seen['world_size']} processes"
        out[stage] = {
            "bf16_autocast": sum(n for k, n in linear.items() if k.startswith("bfloat16")) > 0,
            "pinned_non_blocking_copies": (copies.get("pinned non_blocking", 0)
                                           if device.type == "cuda" else None),
            "other_copies": sum(n for k, n in copies.items() if k != "pinned non_blocking"),
            "process_group": group,
            # extraction splits the videos between processes and needs no gradient sync
            "ddp": (all(n > 0 for n in seen["ddp_forwards"])
                    if seen["processes"] > 1 and stage != "extract" else None),
            # per rank, the devices its linear layers ran on
            "on": ["+".join(d) or "none" for d in seen["devices"]],
            # each rank on its own GPU: its current device (set_device) differs from every other
            # rank's, and its layers ran there and nowhere else (a rank given no frame to extract
            # ran none)
            "own_gpu_each": (len(set(seen["current_devices"])) == len(seen["current_devices"])
                             and all(set(d) <= {current} for d, current
                                     in zip(seen["devices"], seen["current_devices"],
                                            strict=True))
                             if device.type == "cuda" else None),
        }
    return out


def goals(result: dict) -> dict:
    """The issue's goals, met or not, from the measured ratios (and, on CUDA, the ranks' GPUs)."""
    met = {
        "pretrain loop / bare step >= 0.9": result["pretrain"]["ratio"] >= 0.9,
        "finetune loop / bare step >= 0.9": result["finetune"]["ratio"] >= 0.9,
        "extract / forward only >= 0.9": result["extract"]["over_forward_only"] >= 0.9,
        "extract / per-frame loop >= 10": result["extract"]["over_per_frame_loop"] >= 10,
    }
    if result["cuda"]:
        met["every torchrun rank on its own GPU"] = all(
            b["own_gpu_each"] for b in result["branches"].values())
    return met


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} GiB"


def table(r: dict) -> str:
    """The readable form of the result."""
    p, f, e, h = r["pretrain"], r["finetune"], r["extract"], r["heads"]
    lines = [
        f"gpu-check on {r['device']}"
        f"{'' if r['cuda'] else '  (NO CUDA: the CPU path, scaled down)'}",
        f"  torch {r['torch']}, {r['cores']} host cores, load {r['load'][0]:.2f} -> "
        f"{r['load'][1]:.2f}, {r['seconds']:.0f} s in all",
        "",
        "branches observed (torchrun: "
        + f"{r['torchrun']['stages']['pretrain']['processes']} process(es))",
        f"  {'stage':<10}{'bf16 autocast':>14}{'pinned+non-blocking copies':>28}"
        f"{'other copies':>14}  {'process group':<20}{'DDP':>6}  on",
    ]
    for stage, b in r["branches"].items():
        copies = ("n/a (CPU)" if b["pinned_non_blocking_copies"] is None
                  else str(b["pinned_non_blocking_copies"]))
        lines.append(f"  {stage:<10}{str(b['bf16_autocast']):>14}{copies:>28}"
                     f"{b['other_copies']:>14}  {b['process_group']:<20}{str(b['ddp']):>6}  "
                     f"{', '.join(b['on'])}")
    lines += [
        "",
        f"training loops ({p['model']} at {p['img_size']} px, batch {p['batch_size']}, "
        f"bf16 {p['bf16']}; the loop once its first batch arrived, beside that wait)",
        f"  {'stage':<10}{'loop img/s':>12}{'bare step':>11}{'ratio':>7}{'paired':>8}"
        f"{'workers':>9}{'threads':>9}{'peak mem':>11}{'1st batch':>11}",
    ]
    for name, s in (("pretrain", p), ("finetune", f)):
        lines.append(f"  {name:<10}{s['loop_img_per_s']:>12.1f}{s['bare_img_per_s']:>11.1f}"
                     f"{s['ratio']:>7.2f}{s['paired_ratio']:>8.2f}{s['workers']:>9}"
                     f"{s['threads']:>9}{_gib(s['peak_memory_gib']):>11}"
                     f"{max(s['first_batch_s']):>10.2f}s")
    lines += [
        "",
        f"extraction ({e['frames']} frames, batch {e['batch_size']}, {e['workers']} decode "
        f"workers, {e['threads']} threads, peak {_gib(e['peak_memory_gib'])})",
        f"  extract            {e['frames_per_s']:>9.1f} frames/s",
        f"  forward only       {e['forward_only_fps']:>9.1f} frames/s  extract / forward "
        f"{e['over_forward_only']:.2f}  (goal >= 0.9)",
        f"  per-frame + .npy   {e['per_frame_loop_fps']:>9.1f} frames/s  extract / per-frame "
        f"{e['over_per_frame_loop']:.1f}x  (goal >= 10x)",
        f"  loader alone       {e['loader_fps']:>9.1f} frames/s  ({e['workers']} workers)",
        "",
        f"temporal head ({h['model']}, {h['head']['tcn_channels']} / d_model "
        f"{h['head']['d_model']} x {h['head']['num_layers']}, D={h['in_dim']}, W={h['window']}, "
        f"batch {h['batch_size']}, peak {_gib(h['peak_memory_gib'])})",
        f"  training {h['frames_per_s']:.0f} frames/s, data share {100 * h['data_share']:.1f} %",
        f"  one VA run of {h['projection']['epochs']} epochs at Aff-Wild2's size (~"
        f"{h['projection']['affwild2_va_train_frames'] / 1e6:.1f} M training frames): "
        f"{h['projected_va_run_s'] / 60:.1f} min projected",
        "",
        "goals: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in r["goals"].items()),
    ]
    if not r["cuda"]:
        lines.append("  (the CPU path's runs are a few steps each: they check that the code runs; "
                     "its ratios weigh start-up, not the steady state that bench/ measures)")
    return "\n".join(lines)


def run_check(out: Path, data: Path | None = None, device: torch.device | None = None) -> dict:
    """The whole check (see the module docstring); ``out`` must be a new or empty folder."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scale = cuda_scale() if device.type == "cuda" else cpu_scale()
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: exists and is not empty; give a new --out for the check's runs")
    out.mkdir(parents=True, exist_ok=True)
    load_before, start = os.getloadavg()[0], time.perf_counter()
    data = data or out / "synth"
    generate(data, SynthConfig(**scale.synth), progress=False, workers=host_cores())
    configs = stage_configs(scale, data, out, device.type)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cuda": device.type == "cuda", "torch": torch.__version__, "cores": host_cores(),
        "scale": asdict(scale),
    }
    parts = {
        "pretrain": lambda: check_pretrain(configs["pretrain"], device, scale.rounds, scale.steps),
        "finetune": lambda: check_finetune(configs["finetune"], device, scale.rounds, scale.steps),
        "extract": lambda: check_extract(configs["extract"], scale, device, out),
        "heads": lambda: check_head(configs["extract"].store, str(data), scale, device, out),
        "torchrun": lambda: check_torchrun(scale, data, out / "torchrun", device),
    }
    result["part_seconds"] = {"data": time.perf_counter() - start}
    for name, part in parts.items():
        began = time.perf_counter()
        result[name] = part()
        result["part_seconds"][name] = time.perf_counter() - began
    result["branches"] = branches(result["torchrun"], device)
    result["goals"] = goals(result)
    result["load"] = [load_before, os.getloadavg()[0]]
    result["seconds"] = time.perf_counter() - start
    return result


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="Folder for the runs (default: a temporary one, deleted at the end).")
    parser.add_argument("--data", type=Path, default=None,
                        help="Reuse this synthetic set (made there if absent).")
    parser.add_argument("--json", action="store_true", help="Print the JSON object only.")
    parser.add_argument("--rank-job", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_job is not None:
        rank_job(args.rank_job)
        return None
    tmp = None
    if args.out is None:
        tmp = tempfile.mkdtemp(prefix="gpu-check-")
    try:
        result = exit_on_bad_input(run_check, args.out or Path(tmp) / "runs", args.data)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(to_jsonable(result), sort_keys=True))
    if not args.json:
        print(table(result))
    return result


if __name__ == "__main__":
    main()
