"""The ``faces`` stage: raw videos -> aligned face crops in exactly the Aff-Wild2 layout.

A frame's way: video file -> PyAV decode (background thread, presentation order, upright, time
stamp) -> uint8 batch on the device -> detector (boxes, scores, 5 landmarks) -> tracker (which face
is which subject) -> similarity onto the 5-point template -> ``grid_sample`` crop on the device ->
JPEG (thread pool) -> ``ROOT/cropped_aligned/<video>/<NNNNN>.jpg``, 1-based frame numbers of the
source, no image where no face was found; two subjects give ``<video>_left`` and ``<video>_right``.
Beside each folder, ``<video>.json`` (``pipeline.video.record``) maps every frame back to its time
and place.

A video is built in a hidden folder under ROOT and renamed into place; its record, written last and
atomically, marks it complete. The record keeps the source's size and sha256, so a rerun knows a
video by its content: it skips complete videos (wherever the file now is), refuses a file that
changed since its crops were made, another file of the same name and other settings, and redoes
any video a killed run left behind. Under torchrun the videos are split between ranks by file size,
as extraction splits them by frames. Settings, inputs and the output folder are checked before any
folder is made; a run that writes nothing removes the folders it made.
"""

import contextlib
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pipeline import distributed, partition
from pipeline.checkpoint import warn
from pipeline.configs.video import IMAGE_DIR, OUTPUT_KEYS, FacesConfig
from pipeline.device import resolve_device
from pipeline.errors import InputError
from pipeline.runs import check_out_dir, sha256_file
from pipeline.video import require
from pipeline.video.align import estimate_similarity, template, warp_faces
from pipeline.video.decode import (
    DecodeReport,
    VideoError,
    VideoInfo,
    find_videos,
    probe,
    read_batches,
)
from pipeline.video.detect import build_detector, check_detector
from pipeline.video.record import read_record, record_path, source_identity, write_record
from pipeline.video.track import Tracker, name_tracks


def output_settings(config: FacesConfig) -> dict:
    return {k: getattr(config, k) for k in OUTPUT_KEYS}


def _same_content(source: Path, record: dict) -> bool:
    """Whether ``source`` has the size and sha256 its record keeps (hashed only if sizes agree)."""
    return (source.stat().st_size == record["source_bytes"]
            and sha256_file(source) == record["source_sha256"])


def existing_outputs(image_root: Path, stem: str, source: Path,
                     config: FacesConfig) -> dict | None:
    """The record of a source's complete earlier run (its first output's; ``["outputs"]`` names
    them all), or None when the source must be (re)done.

    A record that keeps its source's size and sha256 is this source's when the content matches,
    wherever the file now is (a moved folder); one written before records kept them, when its path
    is this source's. The file is hashed only when a record of its name exists.

    Raises InputError when a complete output of that name was made from other content (the file
    changed since its crops were made, or another file of that name) or with other settings.
    """
    for first in (stem, f"{stem}_left", f"{stem}_right"):
        path = record_path(image_root, first)
        record = read_record(path)
        if record is None:
            continue
        redo = (f"delete that video's folder(s) and record(s) in {image_root} "
                f"({', '.join(f'{o}/, {o}.json' for o in record['outputs'])}) to redo it")
        same_path = Path(record["source"]) == source.resolve()
        if "source_sha256" in record and not _same_content(source, record):
            if same_path:
                raise InputError(
                    f"{source}: the file changed since its crops were made (the record {path} "
                    f"keeps {record['source_bytes']} bytes, sha256 "
                    f"{record['source_sha256'][:12]}...); {redo}"
                )
            raise InputError(
                f"{path}: {first!r} was made from {record['source']}, another file than {source}; "
                "rename one of the videos or use another --out (or, if the file changed since its "
                f"crops were made, {redo})"
            )
        if "source_sha256" not in record and not same_path:
            # a record from before records kept the content: its path decides
            raise InputError(
                f"{path}: {first!r} was made from {record['source']}, not {source}; rename one of "
                "the videos or use another --out"
            )
        if record["config"] != output_settings(config):
            changed = sorted(k for k in OUTPUT_KEYS
                             if record["config"].get(k) != getattr(config, k))
            raise InputError(
                f"{record_path(image_root, first)}: made with other settings "
                f"({', '.join(changed)}); use another --out, or delete that video's folder and "
                "record to redo it"
            )
        if all(read_record(record_path(image_root, o)) is not None for o in record["outputs"]):
            return record
    return None


def _unique_stems(videos: list[Path]) -> None:
    """Refuse two sources whose output videos could share a name: the same stem, or one's stem
    another's with ``_left``/``_right`` (the names a two-person video's people get)."""
    seen: dict[str, Path] = {}
    for v in videos:
        if v.stem in seen:
            raise InputError(f"two videos named {v.stem!r}: {seen[v.stem]} and {v}; their crops "
                             "would share one folder: rename one or run them into different --out "
                             "folders")
        seen[v.stem] = v
    for v in videos:
        for side in ("_left", "_right"):
            if v.stem + side in seen:
                raise InputError(
                    f"{seen[v.stem + side]} and {v}: {v.stem!r}'s crops are {v.stem}, or "
                    f"{v.stem}_left and {v.stem}_right for two people (as Aff-Wild2 names them), "
                    f"so {v.stem + side!r} would name the crops of both: rename one or run them "
                    "into different --out folders")


def faces(inputs, out: Path, config: FacesConfig | None = None, progress: bool = True,
          exclude: Path | None = None) -> dict:
    """Detect, track and align the faces of videos into an Aff-Wild2-layout root.

    Args:
        inputs: video files and folders of videos (searched recursively; other files are ignored
            with one warning line).
        out: the root to write: ``out/cropped_aligned/<video>/`` and ``<video>.json`` beside it.
        config: the stage's options (default: ``FacesConfig()``).
        progress: show a frames/s bar.
        exclude: a folder the search of ``inputs`` leaves out (default ``out/cropped_aligned``;
            ``analyze`` gives its own output folder): :func:`pipeline.video.decode.find_videos`.
    Returns:
        a summary: root, videos found, written now, skipped (complete already), failed (with why),
        ``outputs`` (source file -> its output videos, skipped ones included), ``written_videos``
        (the output videos this run made), ``warnings`` (source
        file -> its record's warnings, for damaged input: frames are numbered as decoded), frames,
        faces, seconds, frames/s.
    Raises:
        InputError when no input is a usable video (a single bad file, an empty folder), ``out`` is
        a file, for options out of range, for two sources whose crops could share a name (one stem,
        or ``a`` beside ``a_left``), for a name clash with an earlier run and for a source that
        changed since its crops were made; a bad file among others is a warning. Nothing is
        left behind by a refusal.
    """
    config = config or FacesConfig()
    require("av")
    root = Path(out)
    check_out_dir(root)
    check_detector(config.detector)
    device = resolve_device(config.device)
    dist = distributed.init_distributed(device)
    image_root = root / IMAGE_DIR
    videos, ignored = find_videos(inputs, exclude=image_root if exclude is None else exclude)
    if ignored and dist.is_main:
        shown = ", ".join(p.name for p in ignored[:3]) + (", ..." if len(ignored) > 3 else "")
        warn(f"{len(ignored)} file(s) without a video suffix ignored: {shown}")
    if not videos:
        raise InputError(f"no video file in {', '.join(map(str, inputs))}; pass videos (.mp4, "
                         ".avi, .mov, ...)")
    _unique_stems(videos)
    # made when a video is written; removed again if none is usable
    created = [d for d in (image_root, *image_root.parents) if not d.exists()]

    outputs: dict[str, list[str]] = {}
    warnings: dict[str, list[str]] = {}
    written_videos: list[str] = []  # output videos made by this run
    todo = []
    for path in videos:
        done = existing_outputs(image_root, path.stem, path, config)
        if done is None:
            todo.append(path)
        else:
            outputs[str(path)], warnings[str(path)] = done["outputs"], done["warnings"]
    distributed.barrier()  # every rank has its list before any rank writes a video
    mine = partition.balance(todo, lambda p: p.stat().st_size, dist.world_size)[dist.rank]

    failed: dict[str, str] = {}
    infos: dict[Path, VideoInfo] = {}
    for path in mine:
        try:
            infos[path] = probe(path)
        except VideoError as err:
            failed[str(path)] = str(err)
    detector = build_detector(config.detector, device, min_face=config.min_face) if infos else None
    total = sum(i.frames for i in infos.values())
    bar = tqdm(total=total or None, unit="frame",
               desc=f"faces{f' (rank 0 of {dist.world_size})' if dist.enabled else ''}",
               disable=not (progress and dist.is_main) or not infos, dynamic_ncols=True)
    frames = found = written_now = 0
    start = time.perf_counter()
    try:
        for path, info in infos.items():
            try:
                written = process_video(path, info, root, config, detector, device, bar)
            except VideoError as err:
                failed[str(path)] = str(err)
                continue
            outputs[str(path)] = [w["video"] for w in written]
            written_videos += outputs[str(path)]
            warnings[str(path)] = written[0]["warnings"]
            written_now += 1
            frames += written[0]["num_frames"]
            found += sum(w["faces"] for w in written)
    except BaseException:  # Ctrl-C, a failed write: the folders this run made and left empty go
        _remove_empty(created)
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - start

    distributed.barrier()
    ranks = distributed.gather_objects({"outputs": outputs, "warnings": warnings,
                                        "written_videos": written_videos,
                                        "failed": failed, "frames": frames, "faces": found,
                                        "seconds": seconds, "written": written_now})
    failed = {k: v for r in ranks for k, v in r["failed"].items()}
    merged = {k: v for r in ranks for k, v in r["outputs"].items()}
    outputs = {str(p): merged[str(p)] for p in videos if str(p) in merged}  # in the order given
    merged = {k: v for r in ranks for k, v in r["warnings"].items() if v}
    warnings = {str(p): merged[str(p)] for p in videos if str(p) in merged}
    if failed:
        if not outputs:
            if dist.is_main:  # nothing written: the folders this run made go too
                _remove_empty(created)
            first = next(iter(failed.values()))
            raise InputError(first if len(failed) == 1
                             else f"{first} (and {len(failed) - 1} more unusable videos)")
        if dist.is_main:
            for message in failed.values():
                warn(f"{message}; video skipped")
    frames = sum(r["frames"] for r in ranks)
    seconds = max(r["seconds"] for r in ranks)
    return {
        "root": str(root), "videos": len(videos), "written": sum(r["written"] for r in ranks),
        "skipped": len(videos) - len(todo), "failed": failed, "outputs": outputs,
        "warnings": warnings, "frames": frames,
        "written_videos": sorted(v for r in ranks for v in r["written_videos"]),
        "faces": sum(r["faces"] for r in ranks), "seconds": round(seconds, 3),
        "frames_per_s": round(frames / seconds, 1) if seconds > 0 else 0.0,
        "ranks": dist.world_size, "rank": dist.rank,
    }


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders a run made (innermost first) that are still empty."""
    for folder in created:
        with contextlib.suppress(OSError):  # not empty: something else is in it, or gone
            folder.rmdir()


@dataclass
class _Track:
    """What one subject's track collects while the video is decoded."""

    folder: Path
    frames: list
    boxes: list
    landmarks: list
    scores: list


def process_video(path: Path, info: VideoInfo, root: Path, config: FacesConfig, detector,
                  device: torch.device, bar=None) -> list[dict]:
    """Decode, detect, track and align one video; write its output videos and records atomically.

    Returns:
        the records written (one per output video). Raises VideoError when the file yields no frame.
    """
    av = require("av")
    identity = source_identity(path)  # before decoding: the content the crops are made from
    stem = path.stem
    image_root = root / IMAGE_DIR
    tmp = root / f".faces-tmp-{stem}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    n_tracks = 1 if config.subjects == "1" else 2
    tracks = [_Track(tmp / f"track{t}", [], [], [], []) for t in range(n_tracks)]
    for track in tracks:
        track.folder.mkdir(parents=True)
    tracker = Tracker(n_tracks)
    dst = template(config.size)
    report = DecodeReport()
    times: list[float] = []
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="jpeg") as pool:
            pending = []
            for batch in read_batches(path, config.batch_size, report):
                x = torch.from_numpy(batch.frames).to(device)  # (B, H, W, 3) uint8
                crops_of = []  # (batch row, track, landmarks (5, 2))
                for i, det in enumerate(detector.detect(x)):
                    det = det.keep(det.scores >= config.min_score)
                    k = batch.start + i + 1  # 1-based frame number
                    for t, j in enumerate(tracker.update(det.boxes)):
                        if j >= 0:
                            track = tracks[t]
                            track.frames.append(k)
                            track.boxes.append(det.boxes[j])
                            track.landmarks.append(det.landmarks[j])
                            track.scores.append(float(det.scores[j]))
                            crops_of.append((i, t, k, det.landmarks[j]))
                if crops_of:
                    lmk = torch.from_numpy(np.stack([c[3] for c in crops_of]))  # (N, 5, 2)
                    index = torch.tensor([c[0] for c in crops_of])
                    crops = warp_faces(x, index, estimate_similarity(lmk, dst),
                                       config.size).cpu().numpy()
                    for (_, t, k, _), crop in zip(crops_of, crops):
                        target = tracks[t].folder / f"{k:05d}.jpg"
                        pending.append(pool.submit(_save_jpeg, crop, target, config.jpeg_quality))
                times.extend(batch.times.tolist())
                if bar is not None:
                    bar.update(len(batch.frames))
            for job in pending:
                job.result()  # raises a failed write here
        names = name_tracks(stem, [float(np.mean([(b[0] + b[2]) / 2 for b in t.boxes])) if t.boxes
                                   else None for t in tracks],
                            [len(t.frames) for t in tracks], config.subjects, info.width,
                            config.second_share)
        kept = [(name, t) for name, t in zip(names, tracks) if name is not None]
        warning = report.warning(path)
        if warning:
            warn(warning)
        faceless = [name for name, t in kept if not t.frames and len(kept) > 1]
        if faceless:  # --subjects 2 on a video of one person
            warn(f"{path}: --subjects 2, but {' and '.join(faceless)} had no face in any frame "
                 "(written without crops); --subjects auto writes one video then")
        common = {
            "source": str(path.resolve()), **identity, "source_stem": stem,
            "outputs": [n for n, _ in kept],
            "width": info.width, "height": info.height, "rotation": info.rotation, "fps": info.fps,
            "rate": str(info.rate), "codec": info.codec, "num_frames": len(times),
            "times": [round(t, 6) for t in times], "template": dst.tolist(),
            "detector": {"name": detector.name, "version": detector.version,
                         "settings": detector.settings()},
            "decoder": {"name": "pyav", "version": av.__version__},
            "config": output_settings(config), "warnings": [warning] if warning else [],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        records = []
        for name, track in kept:
            subject = name[len(stem) + 1:] if name != stem else None
            records.append({
                "video": name, "subject": subject, **common, "faces": len(track.frames),
                "frames": track.frames,
                "boxes": np.round(np.asarray(track.boxes, np.float64).reshape(-1, 4), 2).tolist(),
                "landmarks": np.round(np.asarray(track.landmarks, np.float64).reshape(-1, 5, 2),
                                      2).tolist(),
                "scores": [round(s, 5) for s in track.scores],
            })
        _publish(image_root, stem, kept, records)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return records


def _save_jpeg(crop: np.ndarray, path: Path, quality: int) -> None:
    Image.fromarray(crop).save(path, format="JPEG", quality=quality)


def _publish(image_root: Path, stem: str, kept: list, records: list[dict]) -> None:
    """Move a finished video's folders into place, then write its records (the completion marks)."""
    image_root.mkdir(parents=True, exist_ok=True)
    for name in (stem, f"{stem}_left", f"{stem}_right"):  # what a killed run of this video left
        record_path(image_root, name).unlink(missing_ok=True)
        shutil.rmtree(image_root / name, ignore_errors=True)
    for name, track in kept:
        track.folder.rename(image_root / name)
    for record in records:
        write_record(record_path(image_root, record["video"]), record)
