"""The one training engine behind every stage that trains the encoder (MAE pretraining, Expr
fine-tuning).

After facebookresearch/mae, where ``main_pretrain.py`` sets up, resumes, logs and saves while
``engine_pretrain.train_one_epoch`` holds the step: :class:`Engine` is the shared first half, and
each stage keeps only its step loop. What the engine does, once for every stage:

- **resume**: ``RUN/checkpoint-last.pt`` (model, optimizer, step, epoch) is loaded when present;
  options that would change the result are refused by name (``pipeline.runs.check_resumable``).
  ``epochs`` may change: a finished run is extended (MAE's 400 -> 800 -> 1600 habit), the schedule
  continues over the new length, and the change is recorded in ``log.jsonl``, the checkpoint and
  ``config.json``;
- **threads**: the epochs run with the run's torch thread count (``pipeline.device.cpu_budget``);
- **seeding**: torch's global RNG (masking noise, drop-path, mixing) is re-seeded at the start of
  every epoch from (seed, epoch, rank), so a resumed run ends with the weights an uninterrupted one
  has;
- **schedule**: linear warm-up to the peak, then half a cosine to ``min_lr``, updated every
  optimizer step (MAE's ``util/lr_sched.py``); parameter groups may carry an ``lr_scale``
  (layer-wise decay);
- **the step's surroundings**: DDP wrap under torchrun, ``no_sync`` between accumulated
  micro-batches, the non-finite loss guard, the optimizer step, a tqdm bar with a rate, step and
  epoch lines in ``log.jsonl`` and TensorBoard (:class:`pipeline.runlog.RunLog`);
- **host reads**: the losses stay on the device and are read in one transfer every ``log_every``
  optimizer steps and at the epoch's end, not after every step as MAE's ``loss.item()`` does: on a
  GPU each read would stall the host until the step is done, so the next batch could not be queued
  while it runs. The guard therefore sees a non-finite loss up to ``log_every`` steps late (the
  error names the step where it began; the weights in memory are dropped, the last checkpoint is
  not touched);
- **saving**: atomic checkpoint writes by rank 0, with the engine's state added, and a summary from
  the log.
"""

import contextlib
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline.config import ConfigError
from pipeline.device import torch_threads
from pipeline.distributed import DistInfo, barrier, first_rank
from pipeline.errors import InputError
from pipeline.runlog import RunLog
from pipeline.runs import atomic_torch_save, check_resumable, read_jsonl, to_jsonable, write_config

LAST = "checkpoint-last.pt"


def lr_at(step: int, peak: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then half a cosine down to ``min_lr``."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (peak - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The global RNG seed of one epoch on one rank (masking noise, drop-path, mixing)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


@dataclass
class Engine:
    """Resume, seeding, schedule, logging, DDP and saving of one training run (see the module
    docstring).

    Args:
        run_dir: the run directory (``config.json``, ``log.jsonl``, ``checkpoint-last.pt``, ...).
        name: the stage, for the progress bar and messages ("pretrain", "finetune").
        epochs: the epochs the run is to reach.
        steps_per_epoch: optimizer steps per epoch.
        peak_lr, min_lr, warmup_steps: the schedule (warm-up in optimizer steps).
        seed: the run's seed.
        dist: this process's place under torchrun.
        resume_key: the options that must match for a resume (``epochs`` is left out: it may
            change).
        lr_setting: the setting to lower when the loss becomes non-finite (named in the error).
        log_every: optimizer steps between step lines.
        tensorboard: also write TensorBoard event files (when TensorBoard is installed).
        progress: show the bar (rank 0 only).
        threads: torch intra-op threads while the epochs run (None: leave the caller's count); the
            caller's count is restored after the last epoch.
    """

    run_dir: Path
    name: str
    epochs: int
    steps_per_epoch: int
    peak_lr: float
    min_lr: float
    warmup_steps: int
    seed: int
    dist: DistInfo
    resume_key: dict
    lr_setting: str = "lr"
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True
    threads: int | None = None
    # State: where the run is (set by resume, advanced by the loop), not settings.
    epoch_done: int = field(default=0, init=False)
    step: int = field(default=0, init=False)
    epochs_history: list = field(default_factory=list, init=False)
    log: RunLog | None = field(default=None, init=False)
    # seconds from the start of the last ``batches`` to its first batch (the loader's start-up)
    first_batch_s: float = field(default=0.0, init=False)
    # (steps done, loss on the device) of the epoch's micro-batches not read yet
    _pending: list = field(default_factory=list, init=False, repr=False)
    # the epoch's losses read so far: their sum and count
    _loss_sum: float = field(default=0.0, init=False)
    _loss_count: int = field(default=0, init=False)
    _bar: tqdm | None = field(default=None, init=False, repr=False)
    _epoch: int = field(default=0, init=False)
    _lr: float = field(default=0.0, init=False)

    @property
    def last_path(self) -> Path:
        return Path(self.run_dir) / LAST

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               checkpoint: dict | None) -> None:
        """Continue from ``checkpoint`` (the run's ``checkpoint-last.pt`` as read, or None to
        start).

        Raises:
            InputError: the checkpoint was made with other options, or has trained more epochs than
                asked.
        """
        if checkpoint is None:
            return
        key = {k: v for k, v in to_jsonable(self.resume_key).items() if k != "epochs"}
        saved = {k: v for k, v in checkpoint.get("resume_key", {}).items() if k != "epochs"}
        check_resumable(saved, key, self.run_dir)
        done, before = int(checkpoint["epoch"]), int(checkpoint.get("epochs", self.epochs))
        if self.epochs < done:
            plan = (f"give {done} to keep it as it is, more to go on" if before == done else
                    f"give {before} to go on as planned, or another count above {done}")
            raise ConfigError("epochs", f"{self.epochs}: {self.last_path} has trained {done} "
                                        f"epochs already; {plan}, or a new out directory to "
                                        "start afresh")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        self.epoch_done, self.step = done, int(checkpoint["scheduler"]["step"])
        self.epochs_history = list(checkpoint.get("epochs_history", []))
        if before != self.epochs:
            self.epochs_history.append({"epochs": before, "changed_to": self.epochs,
                                        "at_epoch": done})
        if self.dist.is_main:  # said under --json too (on stderr), unlike the bar's lines
            changed = (f" (epochs {before} -> {self.epochs}: the learning-rate schedule is "
                       f"{'stretched' if self.epochs > before else 'shortened'} to "
                       f"{self.epochs})" if before != self.epochs else "")
            tqdm.write(f"{self.name}: resuming {self.last_path} after epoch {done} of "
                       f"{self.epochs}{changed}" if done < self.epochs else
                       f"{self.name}: {self.last_path} has trained its {done} epochs already; "
                       f"give epochs above {done} (--epochs) to go on", file=sys.stderr)

    def start(self, resolved: dict) -> None:
        """Write ``config.json`` (with the epochs history), open the log (dropping lines past the
        resumed epoch) and record an epochs change; rank 0 writes, every rank waits."""
        if self.dist.is_main:
            write_config(self.run_dir, {**resolved, "epochs_history": self.epochs_history})
            self.log = RunLog(self.run_dir, self.tensorboard,
                              purge_step=self.step + 1 if self.step else None)
            self.log.truncate_after("epoch", self.epoch_done)
            if self.epochs_history and self.epochs_history[-1]["at_epoch"] == self.epoch_done:
                change = self.epochs_history[-1]
                self.log.log({"epoch": self.epoch_done, "event": "epochs changed", **change})
        barrier()

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` in DistributedDataParallel under torchrun, else ``model`` itself."""
        if not self.dist.enabled:
            return model
        return DistributedDataParallel(model,
                                       device_ids=[device.index] if device.type == "cuda" else None)

    def run_epochs(self, stop_at_epoch: int | None = None) -> Iterator[int]:
        """The epochs left (0-based), torch's global RNG re-seeded from (seed, epoch, rank) before
        each.

        Args:
            stop_at_epoch: stop (resumably) once this many epochs are done; for time-sliced jobs and
                tests.
        """
        with torch_threads(self.threads) if self.threads else contextlib.nullcontext():
            for epoch in range(self.epoch_done, self.epochs):
                if stop_at_epoch is not None and epoch >= stop_at_epoch:
                    return
                torch.manual_seed(epoch_seed(self.seed, epoch, self.dist.rank))
                self._epoch = epoch
                yield epoch

    def batches(self, loader: Iterable, total: int, unit: str = "img") -> Iterator:
        """The loader's batches under a progress bar of ``total`` units (images, this process's)
        with a rate; the bar (rank 0's) counts every process's, as the log's rates do, assuming
        each has as many (DistributedSampler's equal shares). The wait for the first one (its
        workers starting, its first decode) is kept in ``first_batch_s``."""
        self._bar = tqdm(total=total * self.dist.world_size, unit=unit,
                         desc=f"{self.name} {self._epoch + 1}/{self.epochs}",
                         disable=not (self.progress and self.dist.is_main), dynamic_ncols=True)
        start, self.first_batch_s = time.perf_counter(), 0.0
        self._pending, self._loss_sum, self._loss_count = [], 0.0, 0
        try:
            for i, batch in enumerate(loader):
                if i == 0:
                    self.first_batch_s = time.perf_counter() - start
                yield batch
        finally:
            self._bar.close()

    def rates(self, images: int, seconds: float) -> dict:
        """An epoch's speed for its log line: ``img_per_s`` (images over the epoch's seconds),
        ``first_batch_s`` (the wait for its first batch) and ``img_per_s_after_first_batch`` (the
        loop's steady rate, the loader's start-up left out: what a long epoch runs at)."""
        steady = seconds - self.first_batch_s
        return {"img_per_s": images / seconds, "first_batch_s": round(self.first_batch_s, 3),
                "img_per_s_after_first_batch": images / steady if steady > 0 else None}

    def set_lr(self, optimizer: torch.optim.Optimizer) -> float:
        """Set every group's lr for the current optimizer step (times its ``lr_scale``); returns the
        lr."""
        self._lr = lr_at(self.step, self.peak_lr, self.min_lr, self.warmup_steps, self.total_steps)
        for group in optimizer.param_groups:
            group["lr"] = self._lr * group.get("lr_scale", 1.0)
        return self._lr

    def no_sync(self, model: torch.nn.Module, update: bool):
        """DDP's ``no_sync`` for a micro-batch whose gradients are only accumulated (not
        ``update``)."""
        if update or not isinstance(model, DistributedDataParallel):
            return contextlib.nullcontext()
        return model.no_sync()

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, *, images: int,
                 accum_iter: int = 1, update: bool = True,
                 parts: dict[str, torch.Tensor] | None = None) -> None:
        """Backward of ``loss / accum_iter``; with ``update``, the optimizer step. The loss is kept
        on the device and read with the others every ``log_every`` steps (``epoch_loss`` gives the
        epoch's mean).

        Args:
            loss: the micro-batch's mean loss (a scalar on the graph).
            images: the micro-batch's size, for the bar.
            accum_iter: micro-batches per optimizer step (gradient accumulation).
            update: step the optimizer (the last micro-batch of an accumulation).
            parts: the loss's named parts (scalars on the device), for the step lines.
        Raises:
            InputError: a loss read here is NaN or infinite (the lr setting to lower is named).
        """
        # the optimizer step this micro-batch counts towards, 1-based as log.jsonl numbers steps
        self._pending.append((self.step + 1, loss.detach()))
        (loss / accum_iter).backward()
        if update:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if self.step == 1 or self.step % self.log_every == 0:
                self._read_losses(parts or {}, step_line=True)
        if self._bar is not None:
            self._bar.update(images * self.dist.world_size)

    def epoch_loss(self) -> float:
        """The mean loss of the epoch's micro-batches (after reading those not read yet).

        Raises:
            InputError: one of them is NaN or infinite.
        """
        self._read_losses({}, step_line=False)
        return self._loss_sum / max(1, self._loss_count)

    def _read_losses(self, parts: dict[str, torch.Tensor], step_line: bool) -> None:
        """Read the pending losses (and ``parts``) in one transfer and refuse a non-finite one;
        with ``step_line``, write the line of the step just taken."""
        if not self._pending:
            return
        values = torch.stack([v.float() for _, v in self._pending]
                             + [p.detach().float() for p in parts.values()]).tolist()
        losses, part_values = values[: len(self._pending)], values[len(self._pending):]
        bad = next(((step, value) for (step, _), value in zip(self._pending, losses)
                    if not math.isfinite(value)), None)
        # Under torchrun every rank stops at the same read: one that went on would wait for the
        # others at its next all-reduce until the barrier timeout.
        first = first_rank(bad is not None, self._pending[-1][1].device)
        if first is not None:  # this rank's own value and step where it has one
            what = (f"{bad[1]} at epoch {self._epoch + 1}, step {bad[0]}" if bad else
                    f"NaN or infinite on rank {first} by epoch {self._epoch + 1}, step "
                    f"{self._pending[-1][0]}")
            raise InputError(f"{self.name}: the loss became {what}; lower {self.lr_setting} and "
                             "start a new run (the last checkpoint is kept)")
        self._pending = []
        for value in losses:  # one by one, in order: the sum a step-by-step read gives
            self._loss_sum += value
        self._loss_count += len(losses)
        if step_line and self.log is not None:
            record = {"epoch": self._epoch + 1, "step": self.step, "loss": losses[-1],
                      "lr": self._lr, **{f"loss_{k}": v for k, v in zip(parts, part_values)}}
            self.log.log(record, tag="train", step=self.step)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{self._lr:.2e}")

    def message(self, text: str) -> None:
        """A line on stderr that does not break the bar (rank 0 only; stdout is left to
        ``--json``)."""
        if self.progress and self.dist.is_main:
            tqdm.write(text, file=sys.stderr)

    def end_epoch(self, record: dict) -> None:
        """Append the epoch's line (``epoch``, ``lr`` added) to the log and TensorBoard (rank 0)."""
        if self.log is not None:
            self.log.log({"epoch": self._epoch + 1, **record, "lr": self._lr}, tag="epoch",
                         step=self._epoch + 1)

    def save_last(self, checkpoint: dict, optimizer: torch.optim.Optimizer, **state) -> None:
        """Write ``checkpoint-last.pt`` (rank 0, atomically) with the engine's state added to the
        stage's; every rank waits for it."""
        if self.dist.is_main:
            atomic_torch_save({
                **checkpoint, "optimizer": optimizer.state_dict(), "epoch": self._epoch + 1,
                "epochs": self.epochs,
                "scheduler": {"step": self.step, "peak_lr": self.peak_lr, "min_lr": self.min_lr,
                              "warmup_steps": self.warmup_steps, "total_steps": self.total_steps},
                "rng": {"seed": self.seed, "scheme": "per-epoch reseed from (seed, epoch, rank)"},
                "resume_key": to_jsonable(self.resume_key), "epochs_history": self.epochs_history,
                **state,
            }, self.last_path)
        barrier()

    def finish(self) -> list[dict]:
        """Close the log; every rank waits for rank 0. Returns the records of ``log.jsonl``
        (rank 0)."""
        if self.log is not None:
            self.log.close()
        barrier()
        path = Path(self.run_dir) / "log.jsonl"
        return read_jsonl(path) if self.dist.is_main and path.exists() else []
