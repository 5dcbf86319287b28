"""Whole-video inference with overlapping windows averaged per frame, and evaluation of a run.

The authors validate on windows (dropping tails and short videos) and test on non-overlapping
windows. Here every frame of every video is predicted: the windows of ``sequences.window_starts``
(stride < window, so they overlap) are run in batches and each frame's outputs are averaged over the
windows that cover it. Outputs are averaged as VA values, Expr and AU probabilities, before any
post-processing. The metric is the official one over every valid frame of the whole set.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.checkpoint import read_checkpoint
from pipeline.data.affwild2 import AffWild2
from pipeline.device import autocast, fits_on, resolve_device, synchronize, to_device
from pipeline.errors import InputError
from pipeline.heads import postprocess
from pipeline.heads.folds import pooled_annotations
from pipeline.heads.sequences import (
    Batcher,
    FeatureTable,
    load_features,
    make_windows,
    window_index,
)
from pipeline.models import build_model

CHECKPOINT_FORMAT = "mae-affect-head"


def activate(task: str, out: torch.Tensor) -> torch.Tensor:
    """Raw outputs (..., K) as averageable quantities: VA values, Expr / AU probabilities."""
    if task == "expr":
        return out.softmax(dim=-1)
    if task == "au":
        return out.sigmoid()
    return out


@torch.no_grad()
def infer(model: torch.nn.Module, task: str, table: FeatureTable, videos, window: int, stride: int,
          batch_size: int = 32, device: torch.device | None = None, bf16: bool = False,
          progress: bool = False, batcher: Batcher | None = None) -> dict[str, np.ndarray]:
    """Per-frame outputs of whole videos, overlapping windows averaged.

    ``batcher``: one already made over ``table.features`` (a training loop's, so that its table is
    not copied to the device again); by default one is made, on the device when the table fits.

    Returns:
        video -> (T, K) float32 activated outputs (VA values, Expr / AU probabilities).
    """
    device = device or torch.device("cpu")
    model.eval()
    windows = make_windows(table, videos, window, stride)
    if batcher is None:
        batcher = Batcher(table.features,
                          device=device if fits_on(device, table.features.nbytes) else None)
    outputs = []  # per batch: activated outputs (B, W, K) on their way to the host, rows, keep
    starts = range(0, len(windows), batch_size)
    for i in tqdm(starts, desc="infer", unit="batch", disable=not progress, leave=False):
        b = batcher.batch(windows[i : i + batch_size], window)
        with autocast(device, bf16):
            out = model(to_device(b["x"], device), to_device(b["keep"], device))  # (B, W, K)
        # copied without waiting for it (read after the last batch)
        outputs.append((activate(task, out.float()).to("cpu", non_blocking=True),
                        *window_index(windows[i : i + batch_size], b["keep"].shape[1])))
    synchronize(device)
    # summed on the host in batch order: the same sums on every run (a GPU's index_add_ adds in
    # no fixed order)
    total = torch.zeros(len(table.features), model.out_dim)  # (sum T, K) sums over windows
    count = torch.zeros(len(table.features))
    for out, rows, keep in outputs:
        total.index_add_(0, rows[keep], out[keep])
        count.index_add_(0, rows[keep], torch.ones(int(keep.sum())))
    mean = (total / count.clamp(min=1)[:, None]).numpy()
    return {v: mean[slice(*table.offsets[v])] for v in videos}


@dataclass
class Run:
    """A trained head loaded from ``RUN/best.pt``: the model in eval mode and what it needs."""

    path: Path
    checkpoint: dict
    model: torch.nn.Module

    @property
    def task(self) -> str:
        return self.checkpoint["task"]

    @property
    def config(self) -> dict:
        return self.checkpoint["config"]

    @property
    def postprocess(self) -> postprocess.PostProcess:
        pp = self.checkpoint.get("postprocess")
        return (postprocess.PostProcess(self.task) if pp is None
                else postprocess.PostProcess.from_dict(pp))

    def resolve_input(self, key: str, index: int | None = None) -> Path:
        """A store (``key="stores"``, ``index``) or the dataset (``key="data"``) of the run, found
        by one rule: the absolute path recorded at training if it exists, else the path recorded
        relative to the run directory, taken from where the run directory is now (a run moved or
        copied together with its inputs, their relative place kept); else InputError naming both.
        Runs written before inputs were recorded give the path as it was passed."""
        inputs = self.checkpoint.get("inputs")
        if inputs is None:
            given = self.config[key]
            return Path(given[index] if index is not None else given)
        entry = inputs[key][index] if index is not None else inputs[key]
        candidates = [Path(entry["absolute"]), self.path / entry["from_run"]]
        for path in candidates:
            if path.exists():
                return path
        what = "feature store" if key == "stores" else "dataset"
        option = "--store" if key == "stores" else "--data"
        raise InputError(
            f"{self.path}: the {what} it was trained on is at neither {candidates[0]} nor "
            f"{os.path.abspath(candidates[1])} (its place relative to the run); pass {option}"
        )

    @property
    def stores(self) -> list[Path]:
        return [self.resolve_input("stores", i) for i in range(len(self.config["stores"]))]

    @property
    def data(self) -> Path:
        return self.resolve_input("data")

    def check_stores(self, table: FeatureTable) -> None:
        """Refuse a table whose stores were made by another encoder than the run's."""
        trained = self.checkpoint["stores"]
        if len(trained) != len(table.identities):
            raise InputError(
                f"{self.path} was trained on {len(trained)} store(s) side by side, "
                f"{len(table.identities)} given: pass the same --store options as in training"
            )
        for i, (want, got) in enumerate(zip(trained, table.identities, strict=True)):
            differ = [k for k in want if want[k] != got.get(k)]
            if differ:
                raise InputError(
                    f"store {table.paths[i]} differs from the one {self.path} was trained on in "
                    f"{', '.join(differ)} (trained {differ[0]}={want[differ[0]]!r}, given "
                    f"{got.get(differ[0])!r}): use features from the same encoder checkpoint"
                )

    def infer(self, table: FeatureTable, videos, device: torch.device,
              progress: bool = False) -> dict[str, np.ndarray]:
        """The run's head over whole videos with the run's window, stride, batch and precision:
        video -> (T, K) outputs, overlapping windows averaged (``infer``)."""
        c = self.config
        self.model.to(device)
        return infer(self.model, self.task, table, videos, c["window"], c["stride"],
                     c["batch_size"], device, c["bf16"], progress)


def load_run(run_dir: Path) -> Run:
    """Load ``RUN/best.pt`` (InputError naming the file when it is missing or not a head
    checkpoint)."""
    import pipeline.models.temporal  # noqa: F401  (registers the heads)

    run_dir = Path(run_dir)
    path = run_dir / "best.pt"
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint; is {run_dir} a run directory of "
                         "`mae-affect train`?")
    ckpt = read_checkpoint(path, "head checkpoint", "--run")  # plain data only, as every checkpoint
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a temporal-head checkpoint (written by "
                         "`mae-affect train`): give the folder of a head run (train's --out; "
                         "in a demo's output, heads/<task>/full-model)")
    model = build_model(ckpt["model"], in_dim=ckpt["in_dim"], out_dim=ckpt["out_dim"],
                        **ckpt["head"])
    model.load_state_dict(ckpt["state_dict"])
    return Run(run_dir, ckpt, model.eval())


def tables_for(runs: list[Run], stores=None) -> dict[str, FeatureTable]:
    """One feature table per fill rule the runs use, from the given stores (else the first
    run's)."""
    stores = list(stores) if stores else runs[0].stores
    tables: dict[str, FeatureTable] = {}
    for run in runs:
        fill = run.config["fill"]
        if fill not in tables:
            tables[fill] = load_features(stores, fill)
        run.check_stores(tables[fill])
    return tables


def evaluate_run(run_dir: Path, split: str | None = None, data_root: Path | None = None,
                 stores=None, device: str = "auto", progress: bool = True) -> dict:
    """The official figures of a run before and after its post-processing.

    Args:
        run_dir: a run directory of ``mae-affect train``.
        split: None for the run's own validation videos (the official Validation_Set on fold 0), or
            a split with annotations (Train_Set, Validation_Set, or Test_Set where ground truth
            exists).
        data_root, stores: default to those the run was trained with.
    """
    run = load_run(run_dir)
    ds = AffWild2(Path(data_root) if data_root else run.data)
    table = tables_for([run], stores)[run.config["fill"]]
    if split is None:
        videos = list(run.checkpoint["val_videos"])
        annotations = pooled_annotations(ds, run.task, videos)
    else:
        annotations = ds.annotations(run.task, split)
        videos = sorted(annotations)
    table.require(videos)
    raw = run.infer(table, videos, resolve_device(device), progress)
    before = postprocess.score(run.task,
                               postprocess.apply_all(postprocess.PostProcess(run.task), raw),
                               annotations)
    after = postprocess.score(run.task, postprocess.apply_all(run.postprocess, raw), annotations)
    return {
        "run": str(run.path), "task": run.task, "split": split or "validation (the run's)",
        "videos": len(videos), "epoch": run.checkpoint["epoch"], "score": after["score"],
        "before": before, "after": after, "postprocess": run.postprocess.to_dict(),
    }
