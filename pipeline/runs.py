"""Run directories: the resolved config, a JSON-lines log, atomic checkpoint writes.

Every output says how it was made: ``config.json`` sits next to every checkpoint, and every file is
written to a temporary name first and renamed, so a killed run never leaves a half-written file.
"""

import copy
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tuples and numpy scalars as plain JSON values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` of ``obj`` written atomically, its tensors on the host: a checkpoint written
    on a GPU loads with a plain ``torch.load(path, weights_only=True)`` on a machine without one.
    Tensors that share memory still share it in the file (a checkpoint's ``encoder`` entry and its
    ``model`` entry are views of the same weights): each storage is copied once."""
    # here, so that the CLI's settings (which use this module) answer without loading torch
    import torch

    storages: dict = {}  # (device, address) -> the storage on the host

    def on_host(value):
        """``value`` with every tensor in it a view of a host storage; dicts keep their class and
        attributes (a state dict's ``_metadata``)."""
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            key = (str(storage.device), storage.data_ptr())
            if key not in storages:  # a CPU storage is used as it is
                storages[key] = storage if storage.device.type == "cpu" else storage.cpu()
            view = torch.empty(0, dtype=value.dtype)
            return view.set_(storages[key], value.storage_offset(), value.size(), value.stride())
        if isinstance(value, dict):
            copied = copy.copy(value)
            copied.update({k: on_host(v) for k, v in value.items()})
            return copied
        if type(value) in (list, tuple):
            return type(value)(on_host(v) for v in value)
        return value

    host = on_host(obj)
    _atomic_write(path, lambda f: torch.save(host, f))


def check_out_dir(path, option: str = "--out") -> Path:
    """``path`` as a directory to write into: new, or a folder already.

    Raises:
        InputError: it (or a parent) is a file; named with ``option``, before any work.
    """
    from pipeline.errors import InputError

    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise InputError(f"{p}: a file, not a folder; give {option} a folder (new, or "
                                 "one this command wrote)")
            return path
    return path


def run_kind(run_dir) -> str | None:
    """The stage whose run ``run_dir`` holds, by its ``config.json``: "pretrain", "finetune"
    (their settings sit under that key) or "heads" (a head run's flat settings: ``task`` and
    ``window``); None without a readable config.json."""
    try:
        saved = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict):
        return None
    for kind in ("pretrain", "finetune"):
        if isinstance(saved.get(kind), dict):
            return kind
    return "heads" if {"task", "window"} <= set(saved) else None


# The plots a head run writes (pipeline.heads.train; a rerun replaces these, not a user's own).
HEAD_PLOTS = ("training_curves.png", "va_traces.png", "expr_confusion.png", "au_f1.png")
# What a training run writes at its top level (pretrain, finetune, the heads).
RUN_FILES = frozenset({"config.json", "log.jsonl", "checkpoint-last.pt", "best.pt", "recon",
                       "tensorboard", "summary.json", "val_predictions.npz", *HEAD_PLOTS})


def check_run_kind(run_dir, kind: str, option: str = "--out") -> None:
    """Refuse to write a ``kind`` run into a folder holding another stage's run, whose
    checkpoint (a fine-tuned encoder: hours of work) it would overwrite, or, without a run, a
    feature store or files of a run's names (``RUN_FILES``), which it would mix with or replace;
    other files (a log, a job script) are left beside the run.

    Raises:
        InputError: naming the folder and the stage or the files it holds.
    """
    from pipeline.errors import InputError

    found = run_kind(run_dir)
    if found is not None and found != kind:
        raise InputError(f"{run_dir} holds a {found} run (its config.json); give {option} a new "
                         f"folder for this {kind} run")
    # A folder of no run is the user's (a log tee'd into it, a job script): refused only where
    # the run would mix with a feature store or replace files of a run's names.
    held = {p.name for p in Path(run_dir).iterdir()} if Path(run_dir).is_dir() else set()
    clash = sorted(held & ({"zarr.json"} | RUN_FILES))
    if found is None and clash:
        what = "a feature store" if "zarr.json" in clash else f"{', '.join(clash[:3])}"
        raise InputError(f"{run_dir} holds {what} and no {kind} run (no config.json of one); "
                         f"give {option} a new folder, or one of a {kind} run")


def check_out_file(path, option: str = "--out") -> Path:
    """``path`` as a file to write: not a folder, in a folder that is not a file.

    Raises:
        InputError: it is a folder (or a parent is a file); named with ``option``, before any work.
    """
    from pipeline.errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: a folder; give {option} a file path, e.g. {path / 'out.csv'}")
    check_out_dir(path.parent, option)
    return path


def write_config(run_dir: Path, config: Any, name: str = "config.json") -> Path:
    """Write the resolved config (a dataclass or dict) as ``run_dir/config.json``."""
    path = Path(run_dir) / name
    atomic_write_text(path, json.dumps(to_jsonable(config), indent=2, sort_keys=True) + "\n")
    return path


# Options that may change between a run and its resume without changing the result.
RESUME_FREE = frozenset({"out", "workers", "threads", "device", "log_every", "tensorboard"})


def check_resumable(saved: dict, current: dict, run_dir: Path) -> None:
    """Refuse to resume ``run_dir/checkpoint-last.pt`` with options that would change the result
    (a file that moved, its ``KEY_sha256`` unchanged, is the same option)."""
    from pipeline.errors import InputError

    def same_content(key: str) -> bool:  # a path whose file's sha256 both record alike (moved)
        sha = f"{key}_sha256"
        return sha in saved and saved.get(sha) == current.get(sha)

    diff = sorted(k for k in set(saved) | set(current) if k not in RESUME_FREE
                  and saved.get(k) != current.get(k) and not same_content(k))
    if diff:
        changes = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff)
        made = saved.get("world_size")
        how = ("rerun with the run's own options to resume it" if diff != ["world_size"] else
               "run it without torchrun, as it was made" if made == 1 else
               f"run it under torchrun with {made} processes in all, as it was made (e.g. "
               f"--nproc_per_node {made} on one machine)")
        raise InputError(f"{run_dir}/checkpoint-last.pt was made with other options ({changes}); "
                         f"{how}, or give a new --out")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
