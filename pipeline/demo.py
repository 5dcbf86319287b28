"""The whole method on the synthetic mini-Aff-Wild2, stage after stage, with a report at the end.

synthetic data -> MAE pretraining -> Expr linear probe -> Expr fine-tuning started from the probe's head
(LP-FT) -> extraction (fine-tuned, and pretrained-only for the ablation) -> the three temporal heads -> the
analogue of the paper's Table 5 -> test submissions -> ``report.html``. Each stage calls the same library
function as its command and skips work whose output is complete and current: pretraining, the probe and
fine-tuning resume to their last epoch, extraction skips complete videos, a head run is reused when its
config, data and store are unchanged. A second run is therefore quick.

The budgets (epochs, head settings) are the demo's, scaled to a 2-core CPU; the paper's defaults are
what the individual commands use.
"""

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import features
from pipeline.data.affwild2 import TASKS
from pipeline.data.synth import PRESETS, generate
from pipeline.extract import ExtractConfig, extract
from pipeline.finetune import FinetuneConfig, finetune
from pipeline.heads.predict import predict
from pipeline.heads.train import TrainConfig, prepare, train_run
from pipeline.pretrain import PretrainConfig, pretrain
from pipeline.report import write_report
from pipeline.runs import atomic_write_text, sha256_file, to_jsonable
from pipeline.submission import check_submission, score_submission

# The analogue of the paper's Table 5: (row, features, head model).
ABLATIONS = (
    ("full model", "finetuned", "tcn_transformer"),
    ("without Expr fine-tuning", "pretrained", "tcn_transformer"),
    ("without TCN", "finetuned", "transformer"),
    ("without Transformer", "finetuned", "tcn"),
    ("frame-wise linear", "finetuned", "linear"),
)
# Paper Table 5 (Aff-Wild2 validation), for the report's side-by-side.
PAPER_TABLE5 = {
    "full model": {"va": 0.5805, "expr": 0.4561, "au": 0.5762},
    "without Expr fine-tuning": {"va": 0.5038, "expr": 0.4014, "au": 0.5194},
    "without TCN": {"va": 0.5675, "expr": 0.4372, "au": 0.5519},
    "without Transformer": {"va": 0.5734, "expr": 0.4428, "au": 0.5612},
}


@dataclass(frozen=True)
class DemoConfig:
    """Budgets for a 2-core CPU; every size can be raised for a GPU.

    Args:
        out: the demo's run directory (pretrain/, finetune/, stores, heads/, submissions/, report.html).
        data: where the synthetic dataset goes (made once, reused).
        preset: synthetic preset (tiny for tests, demo by default).
        heads: TrainConfig settings shared by every head run, over the heads' ``demo`` preset (the
            paper's sizes scaled down for a few thousand windows on a CPU).
    """

    out: str = "runs/demo"
    data: str = "data/synth-demo"
    preset: str = "demo"
    model: str = "mae_vit_tiny_patch16"
    img_size: int = 112
    pretrain_epochs: int = 8  # on every frame, ~2,750 steps: the budget measured in the README (probe, LP-FT)
    pretrain_batch: int = 64
    pretrain_lr: float = 1e-3  # absolute: MAE's blr rule is tuned for batch 1024
    pretrain_max_images: int | None = None  # None: every frame
    pretrain_crop_scale: tuple[float, float] = (0.8, 1.0)  # aligned faces: keep the geometry fine-tuning sees
    decoder: tuple[int, int, int] = (128, 2, 4)  # width, depth, heads: half the cost of the registered one
    probe_lr: float = 5e-3
    lp_ft: bool = True  # fine-tune from a linear probe's head (LP-FT); False: from a fresh head, as the paper
    # 10 epochs of at most 100 frames a video (4,352 frames an epoch on the demo set): 3 epochs fitted
    # nothing on a set without the per-video shortcut (README, "What each stage adds").
    finetune_epochs: int = 10
    finetune_batch: int = 64
    finetune_lr: float = 5e-4
    finetune_frames_per_video: int = 100
    head_epochs: int | None = None  # None: the heads' "demo" preset (20)
    heads: dict = field(default_factory=dict)  # settings over the heads' "demo" preset
    workers: int = 2
    device: str = "auto"
    seed: int = 0


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """Run (or resume) every stage and write ``OUT/report.html``; returns the figures shown."""
    out, data = Path(cfg.out), Path(cfg.data)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(name: str, fn):
        start = time.perf_counter()
        if progress:
            print(f"\n== {name} ==", flush=True)
        result = fn()
        timings[name] = round(time.perf_counter() - start, 1)
        return result

    stage("synthetic data", lambda: generate(data, replace(PRESETS[cfg.preset], seed=cfg.seed), progress))
    images = [str(p) for p in sorted(data.glob("cropped_aligned*")) if p.is_dir()]
    pre = stage("MAE pretraining", lambda: pretrain(PretrainConfig(
        images=tuple(images), out=str(out / "pretrain"), model=cfg.model, img_size=cfg.img_size,
        epochs=cfg.pretrain_epochs, batch_size=cfg.pretrain_batch, accum_iter=1, lr=cfg.pretrain_lr,
        warmup_epochs=1, max_images=cfg.pretrain_max_images, crop_scale=cfg.pretrain_crop_scale,
        decoder_dim=cfg.decoder[0], decoder_depth=cfg.decoder[1], decoder_heads=cfg.decoder[2],
        workers=cfg.workers, seed=cfg.seed, device=cfg.device), progress=progress))
    pre_ckpt = out / "pretrain" / "checkpoint-last.pt"
    fine_cfg = FinetuneConfig(
        data=str(data), out=str(out / "finetune"), init=str(pre_ckpt), epochs=cfg.finetune_epochs,
        batch_size=cfg.finetune_batch, lr=cfg.finetune_lr, frames_per_video=cfg.finetune_frames_per_video,
        warmup_epochs=0.5, workers=cfg.workers, seed=cfg.seed, device=cfg.device)
    probe = None
    if cfg.lp_ft:
        probe_cfg = replace(fine_cfg, out=str(out / "probe"), linear_probe=True, lr=cfg.probe_lr)
        probe = stage("Expr linear probe", lambda: finetune(probe_cfg, progress=progress))
        fine_cfg = replace(fine_cfg, head_init=probe["best_checkpoint"])
    fine = stage("Expr fine-tuning", lambda: finetune(fine_cfg, progress=progress))

    stores = {"finetuned": out / "features.zarr", "pretrained": out / "features-pretrained.zarr"}
    ckpts = {"finetuned": out / "finetune" / "best.pt", "pretrained": pre_ckpt}
    extraction = {
        kind: stage(f"extraction ({kind} encoder)", lambda kind=kind: _extract_current(
            data, ckpts[kind], stores[kind], fine_cfg.pooling, cfg, progress))
        for kind in stores
    }

    made_by = {kind: _checkpoint_of(path) for kind, path in stores.items()}
    table: dict[str, dict[str, dict]] = {row: {} for row, _, _ in ABLATIONS}
    submissions = {}
    for task in TASKS:
        def heads(task=task):
            prepared = {}
            for row, kind, model in ABLATIONS:
                settings = {**cfg.heads, "task": task, "stores": (str(stores[kind]),), "data": str(data),
                            "model": model, "device": cfg.device, "seed": cfg.seed}
                if cfg.head_epochs is not None:
                    settings["epochs"] = cfg.head_epochs
                train_cfg = TrainConfig.create(preset="demo", **settings)
                run_dir = out / "heads" / task / _slug(row)
                stamp = {"config": to_jsonable(train_cfg), "store": made_by[kind]}
                summary = _current_run(run_dir, stamp)
                if summary is None:
                    if kind not in prepared:
                        prepared[kind] = prepare(train_cfg)
                    summary = train_run(prepared[kind], train_cfg, run_dir, progress=progress)
                    atomic_write_text(run_dir / "demo-stamp.json", json.dumps(stamp, sort_keys=True))
                table[row][task] = summary
        stage(f"temporal heads: {task}", heads)
        submissions[task] = stage(f"test submission: {task}", lambda task=task: _submit(
            out / "heads" / task / _slug(ABLATIONS[0][0]), out / "submissions" / f"{task}.csv", data, cfg))

    figures = {
        "pretrain": pre, "probe": probe, "finetune": fine, "extraction": extraction,
        "table": {row: {t: s["score"] for t, s in tasks.items()} for row, tasks in table.items()},
        "validation": {t: table[ABLATIONS[0][0]][t] for t in TASKS},
        "submissions": submissions, "seconds": timings,
    }
    atomic_write_text(out / "demo.json", json.dumps(to_jsonable(figures), indent=2, sort_keys=True) + "\n")
    write_report(out / "report.html", demo_dir=out)
    return figures


def _slug(row: str) -> str:
    return row.replace(" ", "-").replace("/", "-").lower()


def _checkpoint_of(store: Path) -> str:
    with features.open_store(store) as opened:
        return opened.attrs["checkpoint_sha256"]


def _current_run(run_dir: Path, stamp: dict) -> dict | None:
    """The summary of a head run made with this config on this store, or None if it must be (re)done."""
    stamp_path, summary_path = run_dir / "demo-stamp.json", run_dir / "summary.json"
    if stamp_path.exists() and summary_path.exists() and json.loads(stamp_path.read_text()) == json.loads(
            json.dumps(stamp, sort_keys=True)):
        return json.loads(summary_path.read_text())
    return None


def _extract_current(data: Path, ckpt: Path, store: Path, pooling: str, cfg: DemoConfig, progress: bool) -> dict:
    """Extract, resuming a store of this very checkpoint, or starting afresh if the checkpoint changed."""
    stale = store.exists() and _checkpoint_of(store) != sha256_file(ckpt)
    config = ExtractConfig(workers=cfg.workers, device=cfg.device, pooling=pooling, overwrite=stale)
    result = extract(data, ckpt, store, config, progress=progress)
    with features.open_store(store) as opened:
        info = opened.info()
    result = {**result, "bytes": info.get("bytes"), "checkpoint_sha256": info["attrs"]["checkpoint_sha256"]}
    # The speed of the run that did the work is kept beside the store, so a resumed demo still reports it.
    record = store.with_name(store.name + ".extraction.json")
    if result["extracted"] or not record.exists():
        atomic_write_text(record, json.dumps(result, sort_keys=True))
        return result
    earlier = json.loads(record.read_text())
    return {**result, "frames_per_s": earlier["frames_per_s"], "extracted_frames": earlier["frames"]}


def _submit(run_dir: Path, out_csv: Path, data: Path, cfg: DemoConfig) -> dict:
    """Write the test submission of a run, check it against the example file, and score it on the
    synthetic test labels (which only the synthetic dataset has)."""
    from pipeline.data.affwild2 import AffWild2

    result = predict([run_dir], out_csv, data_root=data, device=cfg.device, progress=False)
    ds = AffWild2(data)
    task = result["task"]
    problems = check_submission(out_csv, task, ds.example_submission(task))
    scored = score_submission(out_csv, task, ds, split="Test_Set")
    return {"file": str(out_csv), "rows": result.get("rows"), "valid": not problems, "problems": problems,
            "test_score": scored["score"], "test": scored}
