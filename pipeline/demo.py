"""The whole method on the synthetic mini-Aff-Wild2, stage after stage, with a report at the end.

synthetic data -> MAE pretraining -> Expr linear probe -> Expr fine-tuning started from the probe's
head (LP-FT) -> extraction (fine-tuned, and pretrained-only for the ablation) -> the three temporal
heads -> the analogue of the paper's Table 5 -> test submissions -> ``report.html``. Each stage
calls the same library function as its command and skips work whose output is complete and current:
pretraining, the probe and fine-tuning resume to their last epoch, extraction skips complete videos,
a head run is reused when its config, data and store are unchanged. A second run is therefore quick.

The budgets are each stage's ``demo`` preset (its config's ``PRESETS``), scaled to a 2-core CPU, or
its ``tiny`` preset for a smoke test; the paper's defaults are what the individual commands use
without ``--preset``. ``make pretrain`` and the other Make targets run the same presets, so they
resume what the demo made.
"""

import dataclasses
import json
import time
from pathlib import Path

import features
from pipeline import config
from pipeline.configs.demo import DEMO_PRESETS, DemoConfig
from pipeline.data.affwild2 import TASKS, AffWild2
from pipeline.data.frames import expr_frames
from pipeline.data.synth import SynthConfig, generate
from pipeline.device import resolve_device
from pipeline.extract import ExtractConfig, extract, store_is_current
from pipeline.finetune import FinetuneConfig, finetune
from pipeline.heads.intervals import intervals
from pipeline.heads.predict import predict
from pipeline.heads.train import TrainConfig, prepare, train_run
from pipeline.metrics import uniform_guess_expr_f1
from pipeline.pretrain import PretrainConfig, pretrain
from pipeline.report import check_report_path, write_report
from pipeline.runs import atomic_write_text, check_out_dir, to_jsonable
from pipeline.submission import check_submission, score_submission
from pipeline.table5 import ABLATIONS, slug


def stage_configs(cfg: DemoConfig) -> dict:
    """The config of every stage of the demo: its preset's, with the demo's paths, device, seed,
    workers."""
    names = DEMO_PRESETS[cfg.preset]
    out, data = Path(cfg.out), Path(cfg.data)
    common = {"workers": cfg.workers, "device": cfg.device, "seed": cfg.seed}

    def build(cls, preset: str, **values):
        return config.build(cls, {**config.preset_values(cls, preset), **values})

    # The root: its cropped_aligned* folders hold every frame (the annotation files are not images).
    pre = build(PretrainConfig, names["pretrain"], images=(str(data),), out=str(out / "pretrain"),
                **common)
    init = str(out / "pretrain" / "checkpoint-last.pt")
    probe = build(FinetuneConfig, names["probe"], data=str(data), out=str(out / "probe"), init=init,
                  **common)
    fine = build(FinetuneConfig, names["finetune"], data=str(data), out=str(out / "finetune"),
                 init=init, head_init=str(out / "probe" / "best.pt") if cfg.lp_ft else None,
                 **common)
    return {"synth": build(SynthConfig, names["synth"], seed=cfg.seed), "pretrain": pre,
            "probe": probe if cfg.lp_ft else None, "finetune": fine, "heads": names["heads"]}


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """Run (or resume) every stage and write ``OUT/report.html``; returns the figures shown."""
    out, data = check_out_dir(cfg.out), check_out_dir(cfg.data, "--data")
    check_report_path(out / "report.html")
    out.mkdir(parents=True, exist_ok=True)
    configs = stage_configs(cfg)
    timings: dict[str, float] = {}

    def stage(name: str, fn):
        start = time.perf_counter()
        if progress:
            print(f"\n== {name} ==", flush=True)
        result = fn()
        timings[name] = round(time.perf_counter() - start, 1)
        return result

    stage("synthetic data", lambda: generate(data, configs["synth"], progress))
    pre = stage("MAE pretraining", lambda: pretrain(configs["pretrain"], progress=progress))
    pre_ckpt = Path(configs["pretrain"].out) / "checkpoint-last.pt"
    probe = None
    if configs["probe"] is not None:
        probe = stage("Expr linear probe", lambda: finetune(configs["probe"], progress=progress))
    fine = stage("Expr fine-tuning", lambda: finetune(configs["finetune"], progress=progress))

    stores = {"finetuned": out / "features.zarr", "pretrained": out / "features-pretrained.zarr"}
    ckpts = {"finetuned": out / "finetune" / "best.pt", "pretrained": pre_ckpt}
    extraction = {
        kind: stage(f"extraction ({kind} encoder)", lambda kind=kind: _extract_current(
            data, ckpts[kind], stores[kind], configs["finetune"].pooling, cfg, progress))
        for kind in stores
    }

    made_by = {kind: _checkpoint_of(path) for kind, path in stores.items()}
    table: dict[str, dict[str, dict]] = {row: {} for row, _, _ in ABLATIONS}
    submissions, spreads = {}, {}
    for task in TASKS:
        def heads(task=task):
            prepared = {}
            for row, kind, model in ABLATIONS:
                train_cfg = TrainConfig.create(preset=configs["heads"], task=task,
                                               stores=(str(stores[kind]),), data=str(data),
                                               model=model, device=cfg.device, seed=cfg.seed)
                run_dir = out / "heads" / task / slug(row)
                stamp = {"config": to_jsonable(train_cfg), "store": made_by[kind]}
                summary = _current_run(run_dir, stamp)
                if summary is None:
                    if kind not in prepared:
                        prepared[kind] = prepare(train_cfg)
                    summary = train_run(prepared[kind], train_cfg, run_dir, progress=progress)
                    atomic_write_text(run_dir / "demo-stamp.json",
                                      json.dumps(stamp, sort_keys=True))
                table[row][task] = summary
        stage(f"temporal heads: {task}", heads)
        spreads[task] = intervals(
            {row: out / "heads" / task / slug(row) for row, _, _ in ABLATIONS}, task,
            reference=ABLATIONS[0][0], seed=cfg.seed)
        submissions[task] = stage(f"test submission: {task}", lambda task=task: _submit(
            out / "heads" / task / slug(ABLATIONS[0][0]), out / "submissions" / f"{task}.csv",
            data, cfg))

    # A uniform guess on the frames fine-tuning's validation scored (evenly spaced when capped).
    val_index = expr_frames(AffWild2(data), "Validation_Set")
    scored = val_index.capped(configs["finetune"].val_frames_per_video)
    guess = uniform_guess_expr_f1(val_index.expr[scored])
    figures = {
        "preset": cfg.preset, "frame_guess_f1": guess,
        "pretrain": pre, "probe": probe, "finetune": fine, "extraction": extraction,
        "table": {row: {t: s["score"] for t, s in tasks.items()} for row, tasks in table.items()},
        "validation": {t: table[ABLATIONS[0][0]][t] for t in TASKS}, "intervals": spreads,
        "submissions": submissions, "seconds": timings,
    }
    atomic_write_text(out / "demo.json",
                      json.dumps(to_jsonable(figures), indent=2, sort_keys=True) + "\n")
    write_report(out / "report.html", demo_dir=out)
    return figures


def _checkpoint_of(store: Path) -> str:
    with features.open_store(store) as opened:
        return opened.attrs["checkpoint_sha256"]


def _current_run(run_dir: Path, stamp: dict) -> dict | None:
    """The summary of a head run made with this config on this store, or None if it must be
    (re)done."""
    stamp_path, summary_path = run_dir / "demo-stamp.json", run_dir / "summary.json"
    if stamp_path.exists() and summary_path.exists() and (
            json.loads(stamp_path.read_text()) == json.loads(json.dumps(stamp, sort_keys=True))):
        return json.loads(summary_path.read_text())
    return None


def _extract_current(data: Path, ckpt: Path, store: Path, pooling: str, cfg: DemoConfig,
                     progress: bool) -> dict:
    """Extract, resuming a store of this very checkpoint and precision, or starting afresh if
    either changed (the store is the demo's own)."""
    run = ExtractConfig(data=str(data), ckpt=str(ckpt), store=str(store), workers=cfg.workers,
                        device=cfg.device, pooling=pooling)
    stale = store.exists() and not store_is_current(store, ckpt, resolve_device(cfg.device),
                                                    run.bf16)
    result = extract(dataclasses.replace(run, overwrite=stale), progress=progress)
    with features.open_store(store) as opened:
        info = opened.info()
    result = {**result, "bytes": info.get("bytes"),
              "checkpoint_sha256": info["attrs"]["checkpoint_sha256"]}
    # The speed of the run that did the work is kept beside the store, so a resumed demo still
    # reports it.
    record = store.with_name(store.name + ".extraction.json")
    if result["extracted"] or not record.exists():
        atomic_write_text(record, json.dumps(result, sort_keys=True))
        return result
    earlier = json.loads(record.read_text())
    return {**result, "frames_per_s": earlier["frames_per_s"],
            "extracted_frames": earlier["frames"]}


def _submit(run_dir: Path, out_csv: Path, data: Path, cfg: DemoConfig) -> dict:
    """Write the test submission of a run, check it against the example file, and score it on the
    synthetic test labels (which only the synthetic dataset has)."""
    from pipeline.data.affwild2 import AffWild2

    result = predict([run_dir], out_csv, data_root=data, device=cfg.device, progress=False)
    ds = AffWild2(data)
    task = result["task"]
    problems = check_submission(out_csv, task, ds.example_submission(task))
    scored = score_submission(out_csv, task, ds, split="Test_Set")
    return {"file": str(out_csv), "rows": result.get("rows"), "valid": not problems,
            "problems": problems, "test_score": scored["score"], "test": scored}


TASK_NAMES = {"va": "VA", "expr": "Expr", "au": "AU"}


def closing_table(figures: dict, out: Path) -> str:
    """The demo's closing table: the ablation rows by task with 95 % intervals over validation
    videos, the differences from the full model that the validation set resolves, test scores, where
    the report is."""
    tasks = TASKS
    spread = figures.get("intervals", {})

    def cell(row: str, task: str) -> str:
        score = figures["table"][row].get(task, float("nan"))
        ci = spread.get(task, {}).get("runs", {}).get(row, {}).get("ci95")
        return f"{score:7.3f} [{ci[0]:6.3f},{ci[1]:6.3f}]" if ci else f"{score:7.3f}"

    lines = [f"{'setting':<26}" + "".join(f"{t:>24}" for t in tasks)]
    lines += [f"{row:<26}" + "".join(f"{cell(row, t):>24}" for t in tasks)
              for row in figures["table"]]
    lines.append(f"{'test (synthetic labels)':<26}"
                 + "".join(f"{figures['submissions'][t]['test_score']:>24.3f}" for t in tasks))
    resolved = [f"{row} {t} {d['diff']:+.3f} [{d['ci95'][0]:+.3f},{d['ci95'][1]:+.3f}]"
                for t in tasks for row, d in spread.get(t, {}).get("differences", {}).items()
                if d["ci95"][0] > 0 or d["ci95"][1] < 0]
    videos = ", ".join(f"{TASK_NAMES[t]} {spread[t]['videos']}" for t in tasks if t in spread)
    lines.append("validation: VA mean CCC, Expr macro F1, AU mean F1, [95 % interval over the "
                 f"validation videos: {videos or 'none'}]; report: {out / 'report.html'}")
    lines.append("differences from the full model that these videos resolve: "
                 + ("; ".join(resolved) if resolved else "none (every interval includes 0)"))
    frame_level = [f"{name} {figures[key]['best_f1']:.4f}" for key, name in
                   (("probe", "linear probe"), ("finetune", "fine-tuned encoder"))
                   if figures.get(key)]
    guess = (f" (a uniform guess: {figures['frame_guess_f1']:.4f})"
             if "frame_guess_f1" in figures else "")
    lines.append("frame-level Expr macro F1 before the temporal heads: "
                 f"{', '.join(frame_level)}{guess}")
    return "\n".join(lines)
