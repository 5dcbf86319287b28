"""``analyze``: new footage -> per-frame valence, arousal, expression and action units.

The method's own path, end to end, on videos without annotations: ``faces`` (crops in the Aff-Wild2
layout, kept under ``OUT/faces``) -> ``extract`` with the given encoder into a feature store (kept,
and shareable like any other: ``OUT/features.zarr``) -> each head run's own prediction path
(``heads.predict.predict_videos``: overlapping windows averaged, the run's fill rule for frames
without a face, the post-processing tuned on its validation set). Nothing here predicts by itself.

Per output video it writes ``OUT/<video>.csv`` (one row per decoded frame, at its own time stamp)
and ``OUT/<video>.png`` (a timeline), one ``OUT/report.html`` over all videos, and with ``render``
``OUT/<source>.mp4`` with the boxes and predictions drawn; ``OUT/analyze.json`` holds the summary
and, under ``"analyze"``, the resolved settings (a valid ``--config``, as a run's ``config.json``
is). Videos whose record has warnings (damaged input: frames lost show as a jump in ``time_s``) are
named in both. ``analyze`` returns the per-frame tables as well (column -> array, what
``pandas.DataFrame`` takes).
"""

import csv
import io
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

import features
from pipeline.checkpoint import load_encoder
from pipeline.config import ConfigError
from pipeline.configs.video import IMAGE_DIR, AnalyzeConfig
from pipeline.data.affwild2 import AU_NAMES, EXPR_CLASSES, TASKS
from pipeline.device import resolve_device
from pipeline.errors import InputError
from pipeline.extract import ExtractConfig, extract, store_is_current
from pipeline.heads.evaluate import Run, load_run, tables_for
from pipeline.heads.predict import predict_videos
from pipeline.runs import atomic_write_text, check_out_dir, sha256_file, to_jsonable
from pipeline.video.decode import find_videos, same_file
from pipeline.video.faces import faces
from pipeline.video.record import read_record, record_path

EXPR_PROB_COLUMNS = tuple(f"{c}_prob" for c in EXPR_CLASSES)
AU_PROB_COLUMNS = tuple(f"{a}_prob" for a in AU_NAMES)


def load_heads(run_dirs) -> dict[str, Run]:
    """Head runs by task, one per task (InputError for none, or two of one task)."""
    runs: dict[str, Run] = {}
    for run_dir in run_dirs:
        run = load_run(run_dir)
        if run.task in runs:
            raise InputError(f"{run_dir} and {runs[run.task].path} are both {run.task} runs: give "
                             "one run per task")
        runs[run.task] = run
    if not runs:
        raise InputError("no head run given: pass --heads RUN [RUN ...] (runs of "
                         "`mae-affect train`)")
    return runs


def check_encoder(runs: dict[str, Run], encoder: Path) -> str:
    """Refuse, before any work, heads trained on features of another encoder checkpoint than
    ``encoder`` (the full identity check follows on the store, ``Run.check_stores``); return the
    encoder file's sha256."""
    if Path(encoder).is_dir():
        raise InputError(f"{encoder}: a folder, not a checkpoint file; pass --encoder with the "
                         "checkpoint file the heads' feature store was extracted with (a run's "
                         "best.pt)")
    if not Path(encoder).is_file():
        raise InputError(f"{encoder}: encoder checkpoint not found; pass --encoder with the "
                         "checkpoint the heads' feature store was extracted with")
    sha = sha256_file(encoder)
    for run in runs.values():
        trained = [s.get("checkpoint_sha256") for s in run.checkpoint["stores"]]
        if len(trained) != 1:
            raise InputError(
                f"{run.path} was trained on {len(trained)} feature stores side by side; analyze "
                "extracts one, with --encoder: give head runs trained on one store (or extract "
                "each encoder's store and use `mae-affect predict`)"
            )
        if trained[0] != sha:
            load_encoder(encoder)  # a file that is no encoder checkpoint at all is named as such
            raise InputError(
                f"{run.path} was trained on features of the encoder with checkpoint_sha256 "
                f"{trained[0][:12]}..., but {encoder} has {sha[:12]}...: pass the encoder its "
                "feature store was extracted with"
            )
    return sha


def _check_out_spares_the_inputs(inputs, out: Path, render: bool) -> None:
    """Refuse, before any work, an ``out`` that is an input folder (its CSVs, renders and
    ``faces/`` would mix with the videos, and a rerun would read them), and a render
    ``OUT/<source>.mp4`` that would be a source given by name (the same file on disk, whatever
    its spelling)."""
    for given in map(Path, inputs):
        if given.is_dir() and same_file(given, out):
            raise InputError(f"--out {out} is the videos' own folder {given}: give another "
                             f"--out (e.g. {given / 'analysis'})")
    if render:
        for source in find_videos(inputs, exclude=out)[0]:
            mp4 = out / f"{source.stem}.mp4"
            if same_file(mp4, source):
                raise InputError(f"{source}: --render would write its rendered video over it "
                                 f"({mp4}); give an --out other than the videos' folder")


def _complete_in(store: Path, videos: list[str]) -> list[str]:
    """Those of ``videos`` that ``store`` holds complete (none when it does not open)."""
    try:
        with features.open_store(store) as opened:
            held = set(opened.videos())
    except features.StoreError:
        return []
    return [v for v in videos if v in held]


def frame_table(record: dict, present: np.ndarray,
                predictions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """One video's per-frame table: column -> (T,) array, one row per decoded frame (frames lost
    to damage show as a jump in ``time_s``).

    Args:
        record: the video's ``faces`` record (frame times).
        present: (T,) bool, a face was found (and its crop read) in the frame.
        predictions: task -> (raw (T, K), final) from ``predict_videos`` and the post-processing.
    Returns:
        ``frame`` (1-based), ``time_s``, ``face`` (0/1); with VA ``valence``, ``arousal``; with Expr
        the eight ``<class>_prob`` and ``expression`` (the class name); with AU the twelve
        ``<AU>_prob`` and the twelve ``<AU>`` 0/1 at the run's thresholds.
    """
    T = len(present)
    times = np.asarray(record["times"], np.float64)
    if len(times) != T:
        raise InputError(f"{record['video']}: its record has {len(times)} frame times, the store "
                         f"{T} frames; the store was extracted from other crops: delete it and "
                         "analyze again")
    table = {"frame": np.arange(1, T + 1), "time_s": times, "face": present.astype(np.int64)}
    if "va" in predictions:
        _, final = predictions["va"]
        table["valence"], table["arousal"] = final[:, 0], final[:, 1]
    if "expr" in predictions:
        raw, final = predictions["expr"]
        table.update({c: raw[:, i] for i, c in enumerate(EXPR_PROB_COLUMNS)})
        table["expression"] = np.asarray(EXPR_CLASSES)[final]
    if "au" in predictions:
        raw, final = predictions["au"]
        table.update({c: raw[:, i] for i, c in enumerate(AU_PROB_COLUMNS)})
        table.update({a: final[:, i].astype(np.int64) for i, a in enumerate(AU_NAMES)})
    return table


def table_csv(table: dict) -> str:
    """A per-frame table as CSV text (floats to 4 decimals, times to 6)."""
    columns = list(table)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    formats = [_formatter(name, table[name]) for name in columns]
    for i in range(len(table["frame"])):
        writer.writerow([f(table[name][i]) for name, f in zip(columns, formats)])
    return buf.getvalue()


def _formatter(name: str, values: np.ndarray):
    if name == "time_s":
        return lambda v: f"{v:.6f}"
    if np.issubdtype(values.dtype, np.floating):
        return lambda v: f"{v:.4f}"
    return str


def analyze(inputs, out: Path, config: AnalyzeConfig, progress: bool = True) -> dict:
    """Faces, features and the heads' predictions for videos without annotations.

    Args:
        inputs: video files and folders of videos.
        out: the output folder (``faces/``, ``features.zarr``, CSVs, PNGs, ``report.html``, MP4s).
        config: the settings: ``encoder`` (the checkpoint the heads' feature store was extracted
            with), ``heads`` (head run directories of ``mae-affect train``, at most one per task),
            the faces stage's, extraction's, rendering.
        progress: show progress bars.
    Returns:
        a summary (``videos``: per output video its source, frames, faces, CSV and PNG, and
        ``warnings``, its record's, for damaged input; ``report``; ``faces`` and ``extraction``
        summaries; ``analyze``, the resolved settings) and ``tables``: video -> per-frame table
        (``frame_table``).
    Raises:
        InputError for unusable videos (one, or all), ``out`` being a file or an input folder, a
        render that would replace a source, an ``encoder`` that is a folder or no checkpoint, head
        runs of one task given twice, heads trained on features of another encoder than
        ``encoder`` or on several stores side by side; each before any folder is made.
        ConfigError: ``encoder`` or ``heads`` not given. ``OUT/features.zarr`` made by another
        encoder or precision is extracted afresh.
    """
    from pipeline.video.render import render_video
    from pipeline.video.timeline import report_page, timeline_png

    for key, what in (("encoder", "the encoder checkpoint the heads' feature store was "
                                  "extracted with (a fine-tuning run's best.pt)"),
                      ("heads", "the head run folder(s) of `mae-affect train`, one per task")):
        if not getattr(config, key):
            raise ConfigError(key, f"is required: give {what}")
    # absolute (symlinks kept as typed), so that OUT/analyze.json works as --config from any folder
    config = replace(config, encoder=str(Path(config.encoder).absolute()),
                     heads=tuple(str(Path(h).absolute()) for h in config.heads))
    encoder = Path(config.encoder)
    out = Path(out)
    check_out_dir(out)
    runs = load_heads(config.heads)
    encoder_sha256 = check_encoder(runs, encoder)
    _check_out_spares_the_inputs(inputs, out, config.render)
    root = out / "faces"
    found = faces(inputs, root, config.faces, progress, exclude=out)
    videos = [v for source in found["outputs"].values() for v in source]
    store = out / "features.zarr"
    device = resolve_device(config.faces.device)
    # OUT's store is this command's cache: made by another encoder or precision, or holding a
    # video whose crops faces made again just now (its source changed), it is made again
    redone = _complete_in(store, found["written_videos"])
    stale = store.exists() and bool(redone or not store_is_current(
        store, encoder, device, config.bf16, encoder_sha256))
    if stale:
        why = (f"holds features of {', '.join(redone[:3])}, whose crops were made again" if redone
               else "holds features of another encoder or precision")
        tqdm.write(f"{store} {why}: extracting afresh", file=sys.stderr)
    extracted = extract(ExtractConfig(
        data=str(root), ckpt=str(encoder), store=str(store), batch_size=config.extract_batch_size,
        workers=config.workers, device=config.faces.device, bf16=config.bf16, overwrite=stale),
        progress=progress)
    # refuses heads trained on another encoder's features
    tables = tables_for(list(runs.values()), [store])
    predictions: dict[str, dict] = {v: {} for v in videos}
    for task in TASKS:
        if task in runs:
            raw, pp = predict_videos([runs[task]], tables, videos, device, progress)
            for v in videos:
                predictions[v][task] = (raw[v], pp.apply(raw[v]))
    table_of = next(iter(tables.values()))
    image_root = root / IMAGE_DIR
    records = {v: read_record(record_path(image_root, v)) for v in videos}
    # where each source is now (its record says where it was when its crops were made)
    source_of = {v: str(Path(source).resolve()) for source, names in found["outputs"].items()
                 for v in names}
    result_tables, summaries = {}, {}
    for v in tqdm(videos, desc="write", unit="video", disable=not progress, leave=False):
        present = table_of.present[slice(*table_of.offsets[v])]
        table = frame_table(records[v], present, predictions[v])
        result_tables[v] = table
        atomic_write_text(out / f"{v}.csv", table_csv(table))
        timeline_png(table, f"{v} ({Path(source_of[v]).name})", out / f"{v}.png")
        summaries[v] = {"source": source_of[v], "frames": len(present),
                        "faces": int(present.sum()), "fps": records[v]["fps"], "csv": f"{v}.csv",
                        "png": f"{v}.png", "warnings": records[v]["warnings"]}
        if not present.any():
            tqdm.write(f"warning: {v}: no face in any frame; its predictions come from filled "
                       "rows only (face=0 throughout): leave it out of any average",
                       file=sys.stderr)
    if config.render:
        for source, names in found["outputs"].items():
            mp4 = out / f"{Path(source).stem}.mp4"
            render_video(Path(source), [records[n] for n in names],
                         [result_tables[n] for n in names], mp4, progress=progress)
            for n in names:
                summaries[n]["mp4"] = mp4.name
    heads_used = {task: str(run.path) for task, run in runs.items()}
    report = report_page(out / "report.html", summaries, result_tables, out, heads_used,
                         str(encoder))
    summary = {
        "out": str(out), "videos": summaries, "report": str(report), "heads": heads_used,
        "encoder": str(encoder), "store": str(store),
        "faces": {k: v for k, v in found.items() if k != "outputs"},
        "extraction": {k: extracted[k] for k in ("extracted", "skipped", "frames", "frames_per_s")},
        "analyze": to_jsonable(config),  # where --config looks, as in a run's config.json
    }
    atomic_write_text(out / "analyze.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return {**summary, "tables": result_tables}
