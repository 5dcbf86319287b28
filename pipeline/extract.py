"""Extraction: the fine-tuned ViT runs once over every frame and fills a feature store.

A frame's way: image file -> decoded into its batch (by DataLoader workers, or between batches by
the main process: ``pipeline.device.cpu_budget``) -> uint8 batch -> device -> normalise ->
``encoder.forward_features`` (the encoder's own, no copy) -> pooling -> float16 rows -> the
store's writer (:mod:`pipeline.store_feeder`, on a thread of its own where the host has cores to
spare) -> ``videos/<video>/features``. Frames of all videos form one flat
ordered stream, so short videos share batches with long ones and the device never starves; a
video's rows are written in chunk-sized blocks as they arrive, so memory does not grow with video
length.

Resumable (:mod:`pipeline.extract_resume`): videos the store already marks complete are skipped,
the rest are (re)done. Under torchrun the videos are split between ranks, balanced by frame count;
Zarr ranks write into one store, HDF5 ranks into part files merged by rank 0 at the end.
"""

import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import features
from pipeline import distributed, partition
from pipeline.checkpoint import EncoderInfo, load_encoder
from pipeline.config import ConfigError
from pipeline.configs.extract import ExtractConfig
from pipeline.data.affwild2 import TASKS, TEST, AffWild2
from pipeline.data.images import UnreadableImage, decode_batch, decode_image
from pipeline.device import (
    autocast,
    compute_dtype,
    cpu_budget,
    lower_priority,
    pin_memory,
    resolve_device,
    torch_threads,
)
from pipeline.errors import InputError
from pipeline.extract_resume import open_writer
from pipeline.models.encoder import PIXEL_MEAN, PIXEL_STD, normalize, pool_tokens
from pipeline.runs import sha256_file
from pipeline.store_feeder import StoreFeeder, feed_batch, writes_in_background


def select_videos(ds: AffWild2, splits: tuple[str, ...]) -> list[str]:
    """The videos of the chosen splits (any task), or every listed video for ``all`` (image folders,
    annotations, example files: :meth:`AffWild2.listed_videos`); ``ExtractConfig`` checks the
    names."""
    if "all" in splits:
        return ds.listed_videos()
    chosen: set[str] = set()
    lists = 0
    for task in TASKS:
        for split in splits:
            if split == TEST:
                try:
                    chosen.update(ds.test_videos(task))
                    lists += 1
                except InputError:
                    continue  # this copy has no test list for the task
            elif ds.available(task, split):
                chosen.update(ds.annotations(task, split))
    if TEST in splits and not lists:
        raise InputError(f"{ds.root}: no test-set video list (*test_set_release*.txt) for any "
                         "task; --splits test needs names_of_videos_in_each_test_set/")
    return sorted(chosen)


def balance(videos: list[str], lengths: dict[str, int], world_size: int) -> list[list[str]]:
    """Split videos between ranks with about equal frame counts (longest first to the lightest
    rank)."""
    return [sorted(p) for p in partition.balance(videos, lengths.__getitem__, world_size)]


class FrameStream(Dataset):
    """The image frames of a list of videos, in order: item i -> (uint8 (3, S, S), readable).

    The DataLoader asks for a batch of items at once (``__getitems__``), decoded into one array
    (:func:`pipeline.data.images.decode_batch`): (uint8 (B, 3, S, S), readable (B,)).
    """

    def __init__(self, paths: list[Path], img_size: int):
        self.paths = paths
        self.img_size = img_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        images, readable = self.__getitems__([i])
        return images[0], bool(readable[0])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_batch([self.paths[i] for i in indices], self.img_size)


def _whole_batch(batch):
    """The DataLoader's collate for :class:`FrameStream`: its batches come whole from
    ``__getitems__``."""
    return batch


def frame_loader(paths: list[Path], img_size: int, batch_size: int, workers: int,
                 device: torch.device) -> DataLoader:
    """Batches of decoded frames, in order: ``(uint8 (B, 3, S, S), readable (B,) bool)``.

    ``workers`` processes decode (0: the calling process does), each at a lower priority than the
    encoder (:func:`pipeline.device.lower_priority`); batches are pinned for the copy to a CUDA
    device.
    """
    return DataLoader(FrameStream(paths, img_size), batch_size=batch_size, num_workers=workers,
                      collate_fn=_whole_batch, pin_memory=pin_memory(device),
                      worker_init_fn=lower_priority, persistent_workers=False)


def batch_size_for(config: ExtractConfig, device: torch.device) -> int:
    """Frames per forward pass: ``config.batch_size``, else 256 on CUDA and 64 on the CPU (larger
    batches gained nothing on the 2-core test machine; docs/results-speed.md)."""
    return config.batch_size or (256 if device.type == "cuda" else 64)


def load_extraction_encoder(ckpt: Path,
                            device: torch.device) -> tuple[torch.nn.Module, EncoderInfo]:
    """The encoder of a checkpoint (:func:`pipeline.checkpoint.load_encoder`), ready for
    :func:`encode`: in eval mode on ``device``, with channels-last weights on CUDA."""
    encoder, info = load_encoder(ckpt)
    encoder.eval().to(device)
    if device.type == "cuda":
        encoder.to(memory_format=torch.channels_last)
    return encoder, info


def encode(encoder: torch.nn.Module, images: torch.Tensor, device: torch.device, pooling: str,
           bf16: bool, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD) -> torch.Tensor:
    """One batch through the encoder as extraction runs it: uint8 (B, 3, S, S) (on the host, pinned,
    or already on ``device``) -> pooled float32 (B, D) on the host.

    The copy is non-blocking (it overlaps the host's work when the batch is pinned); on CUDA the
    images go channels-last, the layout the patch embedding's convolution runs fastest in; the
    encoder's own ``forward_features`` under bf16 autocast when asked, then the pooling.
    """
    images = images.to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(device, bf16):
        tokens = encoder.forward_features(normalize(images, pixel_mean, pixel_std))  # (B, 1+N, D)
    return pool_tokens(tokens, pooling).float().cpu()  # (B, D)


def _named(found: list[tuple[str, str]]) -> str:
    """The first three (video, why) as one clause, "; ..." after them when there are more."""
    return "; ".join(f"{v}: {why}" for v, why in found[:3]) + ("; ..." if len(found) > 3 else "")


def store_attrs(info: EncoderInfo, pooling: str, feature_dim: int, dtype: str,
                compute_dtype: str) -> dict:
    """The store's root attributes: what made it (encoder, checkpoint hash, preprocessing,
    pooling, the precision the encoder ran in: ``compute_dtype``, bfloat16 or float32)."""
    return {
        "encoder": info.model_name,
        "encoder_config": info.model_config,
        "checkpoint_sha256": info.sha256,
        "input_size": info.img_size,
        "pixel_mean": list(info.pixel_mean),
        "pixel_std": list(info.pixel_std),
        "pooling": pooling,
        "feature_dim": feature_dim,
        "dtype": dtype,
        "compute_dtype": compute_dtype,
    }


def store_is_current(store: Path, ckpt: Path, device: torch.device, bf16: bool,
                     ckpt_sha256: str | None = None) -> bool:
    """Whether ``store`` opens and holds features of the checkpoint ``ckpt`` computed as an
    extraction with ``bf16`` on ``device`` computes them (``compute_dtype``; a store that does not
    say is taken at its word). A command whose store is its own cache (the demo, ``analyze``)
    extracts afresh when it is not, instead of refusing as ``extract`` does without
    ``--overwrite``.

    Args:
        store: the store's path (a missing or unreadable one is not current).
        ckpt: the encoder checkpoint the store should hold the features of.
        device, bf16: the extraction to compare with (its ``compute_dtype``).
        ckpt_sha256: the checkpoint's sha256 where the caller has it already (else it is hashed).
    """
    try:
        with features.open_store(store) as opened:
            attrs = opened.attrs
    except features.StoreError:
        return False
    compute = compute_dtype(device, bf16)
    return (attrs.get("checkpoint_sha256") == (ckpt_sha256 or sha256_file(ckpt))
            and attrs.get("compute_dtype", compute) == compute)


def extract(config: ExtractConfig, progress: bool = True) -> dict:
    """Run the encoder over every frame of the selected videos and write the feature store.

    Args:
        config: the run (``data``, ``ckpt``, ``store`` and how).
        progress: show a tqdm bar with frames/s.

    Returns:
        a summary: videos done and skipped, frames, seconds, frames/s, unreadable files, and the
        device, batch size, decode workers and torch threads the run resolved.
    """
    for key in ("data", "ckpt", "store"):
        if not getattr(config, key):
            raise ConfigError(key, "is required; give it")
    data_root, ckpt, store_path = Path(config.data), Path(config.ckpt), Path(config.store)
    device = resolve_device(config.device)
    dist = distributed.init_distributed(device)
    workers, threads = cpu_budget(device, config.workers, config.threads, dist.local_world_size)
    batch_size = batch_size_for(config, device)
    ds = AffWild2(data_root)
    videos = select_videos(ds, config.splits)
    if not videos:
        raise InputError(f"{data_root}: no video selected by splits {', '.join(config.splits)}")
    lengths = {v: ds.num_frames(v) for v in videos}
    empty = [v for v in videos if lengths[v] == 0]
    if empty and dist.is_main:
        tqdm.write(f"warning: skipped {len(empty)} listed video(s) of unknown length (no images, "
                   f"annotation or example-file rows): {', '.join(empty[:5])}", file=sys.stderr)
    videos = [v for v in videos if lengths[v] > 0]
    unknown = [v for v in config.redo if v not in videos]
    if unknown:
        raise ConfigError("redo", f"{unknown[0]!r} is not a video this run extracts (of "
                                  f"{len(videos)} selected by splits {', '.join(config.splits)})")

    encoder, info = load_extraction_encoder(ckpt, device)
    pooling = config.pooling or info.pooling or "cls"
    attrs = store_attrs(info, pooling, encoder.embed_dim, config.dtype,
                        compute_dtype(device, config.bf16))

    fmt = config.format or features.infer_format(Path(store_path))
    image_frames = {v: np.asarray(ds.videos[v].frames if v in ds.videos else [], np.int64)
                    for v in videos}  # 1-based frame numbers with an image file

    def decodes(video: str, frame: int) -> bool:
        try:
            decode_image(ds.videos[video].image_path(frame))
            return True
        except UnreadableImage:
            return False

    writer, done, outdated, kept = open_writer(
        Path(store_path), attrs, fmt, config.overwrite, dist,
        {v: (lengths[v], image_frames[v]) for v in videos}, decodes, config.redo)
    feeder = bar = None
    try:  # from here on, a failure closes the store (an HDF5 file is not left open)
        if outdated:  # rank 0's findings
            tqdm.write(f"extract: {len(outdated)} complete video(s) in {store_path} are extracted "
                       f"again ({_named(outdated)})", file=sys.stderr)
        if kept:
            tqdm.write(f"warning: {len(kept)} video(s) in {store_path} have faces whose images "
                       f"are gone from the data ({_named(kept)}); kept as stored (a fresh store "
                       "extracts them from the data as it is now)", file=sys.stderr)
        todo = [v for v in videos if v not in done]
        if len(todo) < len(videos) and dist.is_main:  # said under --json too (on stderr)
            tqdm.write(f"extract: {len(videos) - len(todo)} of the {len(videos)} videos are in "
                       f"{store_path} already; extracting the other {len(todo)}", file=sys.stderr)
        imageless = [v for v in todo if v not in ds.videos]
        if imageless and dist.is_main:
            named = ", ".join(f"{v} ({lengths[v]} frames)" for v in imageless[:5])
            tqdm.write(f"warning: {len(imageless)} listed video(s) have no images and are stored "
                       f"as all-absent (every frame without a face, filled like one): {named}"
                       f"{', ...' if len(imageless) > 5 else ''}", file=sys.stderr)
        mine = balance(todo, lengths, dist.world_size)[dist.rank]

        frames = [(v, int(k)) for v in mine if v in ds.videos for k in ds.videos[v].frames]
        paths = [ds.videos[v].image_path(k) for v, k in frames]
        loader = frame_loader(paths, info.img_size, batch_size, workers, device)
        feeder = StoreFeeder(writer, mine, lengths, {v: len(image_frames[v]) for v in mine},
                             background=writes_in_background(device, workers))
        unreadable: list[str] = []
        bar = tqdm(total=len(frames), unit="frame",
                   desc=f"extract{f' (rank 0 of {dist.world_size})' if dist.enabled else ''}",
                   disable=not (progress and dist.is_main) or not frames, dynamic_ncols=True)
        start = time.perf_counter()
        position = 0
        with torch.inference_mode(), torch_threads(threads):
            for images, readable in loader:
                pooled = encode(encoder, images, device, pooling, config.bf16, info.pixel_mean,
                                info.pixel_std).numpy().astype(config.dtype)  # (B, D)
                batch = frames[position: position + len(pooled)]
                for i in np.flatnonzero(~readable.numpy()):
                    unreadable.append(str(paths[position + i]))
                    bar.write(
                        f"warning: unreadable image {paths[position + i]}: frame stored as absent",
                        file=sys.stderr)
                feed_batch(feeder, batch, pooled, readable.numpy())
                position += len(pooled)
                bar.update(len(pooled))
        feeder.close()
    except BaseException:
        if feeder is not None:
            feeder.abort()
        with contextlib.suppress(Exception):  # the error that stopped the run is the one to see
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    # Workers close first; rank 0 closes (consolidating Zarr metadata) and merges HDF5 parts after
    # them.
    if not dist.is_main:
        writer.close()
    distributed.barrier()
    if dist.is_main:
        writer.close()
    if dist.is_main and fmt == "hdf5" and dist.enabled:
        parts = [features.part_path(store_path, r) for r in range(dist.world_size)]
        features.merge_stores(parts, store_path)
        for part in parts:  # merged: a resumed run finds these videos in the store itself
            part.unlink()
    distributed.barrier()
    mine_summary = {"extracted": len(mine), "frames": len(frames), "seconds": seconds,
                    "unreadable": unreadable}
    ranks = distributed.gather_objects(mine_summary)
    seconds = max(r["seconds"] for r in ranks)
    total = sum(r["frames"] for r in ranks)
    return {
        "store": str(store_path),
        "videos": len(videos),
        "extracted": sum(r["extracted"] for r in ranks),
        "skipped": len(done & set(videos)),
        "frames": total,
        "seconds": round(seconds, 3),
        "frames_per_s": round(total / seconds, 1) if seconds > 0 else 0.0,
        "unreadable": [u for r in ranks for u in r["unreadable"]],
        "unreadable_frames": sum(len(r["unreadable"]) for r in ranks),
        "ranks": dist.world_size,
        "rank": dist.rank,
        "device": str(device),
        "batch_size": batch_size,
        "workers": workers,
        "threads": threads,
    }
