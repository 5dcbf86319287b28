"""One self-contained HTML page (plots embedded as base64 PNG) about a set of runs.

It shows what a person checks after a run: the MAE reconstructions and loss, the fine-tuning curve,
how the feature store was made, for each task the official validation figures with their plots, the
ablation table beside the paper's Table 5, and the test submissions. Sources are found from run
directories: a demo directory (``demo.json``), or any pretraining, fine-tuning and head runs.
"""

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import features
from pipeline.data.affwild2 import AU_NAMES, EXPR_CLASSES, TASKS, VA_NAMES
from pipeline.errors import InputError
from pipeline.html_page import page, png_img
from pipeline.plots import curves
from pipeline.runs import atomic_write_text, check_out_file, read_jsonl
from pipeline.table5 import ABLATIONS, PAPER_TABLE5, slug

# Frame-level macro F1 above a uniform guess by less than this is read as "no better than a guess"
# (the spread of a guess's F1 over the demo's 19 validation videos is of this order).
READS_EXPRESSIONS = 0.02
TASK_TITLES = {"va": "Valence-arousal (mean CCC)", "expr": "Expression (macro F1)",
               "au": "Action units (mean F1)"}
PER_TASK = {"va": VA_NAMES, "expr": EXPR_CLASSES, "au": AU_NAMES}
HEAD_PLOTS = ("training_curves.png", "va_traces.png", "expr_confusion.png", "au_f1.png")


@dataclass
class Sources:
    """What a report is made of; any part may be missing."""

    pretrain: Path | None = None
    finetune: Path | None = None
    heads: dict[str, Path] = field(default_factory=dict)  # task -> the main run
    stores: list[Path] = field(default_factory=list)
    demo: dict | None = None


def collect(paths: list[Path]) -> Sources:
    """Classify run directories by what they hold; a demo directory brings all of its parts."""
    src = Sources()
    for path in map(Path, paths):
        if not path.is_dir():
            raise InputError(f"{path}: not a run directory")
        if (path / "demo.json").exists():
            src.demo = json.loads((path / "demo.json").read_text())
            src.pretrain, src.finetune = path / "pretrain", path / "finetune"
            src.stores = [p for p in (path / "features.zarr", path / "features-pretrained.zarr")
                          if p.exists()]
            main = slug(ABLATIONS[0][0])
            src.heads = {t: path / "heads" / t / main for t in TASKS
                         if (path / "heads" / t / main).is_dir()}
        elif (path / "recon").is_dir():
            src.pretrain = path
        elif (path / "summary.json").exists() and "task" in (
                summary := json.loads((path / "summary.json").read_text())):
            src.heads[summary["task"]] = path
            config = json.loads((path / "config.json").read_text())
            src.stores += [Path(s) for s in config.get("stores", [])
                           if Path(s).exists() and Path(s) not in src.stores]
        elif (path / "best.pt").exists() and (path / "log.jsonl").exists():
            src.finetune = path
        else:
            raise InputError(
                f"{path}: not a demo, pretraining, fine-tuning or head run (nothing known in it)"
            )
    return src


def check_report_path(path: Path) -> None:
    """Raises InputError when the report cannot be written at ``path`` (a folder in its place, or
    a file where one of its folders goes); the demo checks before its stages run."""
    if Path(path).is_dir():
        raise InputError(f"{path}: a folder is in the way of the report; remove or rename it")
    check_out_file(path)


def write_report(out: Path, demo_dir: Path | None = None, runs: list[Path] | None = None) -> Path:
    """Write the HTML report to ``out`` (atomically) from a demo directory or a list of runs.

    Raises:
        InputError: ``out`` cannot be written (``check_report_path``).
    """
    check_report_path(out)
    src = collect([demo_dir] if demo_dir is not None else list(runs or []))
    parts = [_summary(src), _store(src), _pretrain(src), _finetune(src)]
    parts += [_task(task, src.heads[task]) for task in TASKS if task in src.heads]
    parts += [_ablation(src), _submissions(src)]
    body = "\n".join(p for p in parts if p)
    atomic_write_text(Path(out), page("mae-affect report", body, css=_FIGURES))
    return Path(out)


# --- sections -------------------------------------------------------------------------------------


def _summary(src: Sources) -> str:
    rows = []
    for task in TASKS:
        if task in src.heads:
            s = _read_summary(src.heads[task])
            rows.append((TASK_TITLES[task], f"{s['before']['score']:.4f}",
                         f"{s['after']['score']:.4f}", _test_score(src, task)))
    if not rows:
        return ""
    table = _table(("task", "validation", "after post-processing", "test (synthetic labels)"), rows)
    return f'<section id="summary"><h2>Results</h2>{table}</section>'


def _store(src: Sources) -> str:
    if not src.stores:
        return ""
    rows = []
    for path in src.stores:
        with features.open_store(path) as store:
            info = store.info()
        attrs = info["attrs"]
        speed = ""
        if src.demo:
            for result in src.demo.get("extraction", {}).values():
                if Path(result["store"]) == path or Path(result["store"]).name == path.name:
                    speed = f"{result['frames_per_s']:.0f}"
        rows.append((path.name, attrs["encoder"], attrs["checkpoint_sha256"][:12], attrs["pooling"],
                     f"{attrs['feature_dim']} x {attrs['dtype']}", info.get("videos"),
                     info.get("frames"), f"{info.get('bytes', 0) / 1e6:.1f} MB", speed))
    table = _table(("store", "encoder", "checkpoint sha256", "pooling", "width", "videos", "frames",
                    "size", "frames/s"), rows)
    return f'<section id="store"><h2>Feature stores</h2>{table}</section>'


def _pretrain(src: Sources) -> str:
    if src.pretrain is None or not (src.pretrain / "log.jsonl").exists():
        return ""
    log = read_jsonl(src.pretrain / "log.jsonl")
    steps = [r for r in log if "step" in r and "loss" in r]
    epochs = [r for r in log if "seconds" in r]
    curve = _embed(curves.mae_loss(steps))
    recon = sorted((src.pretrain / "recon").glob("*.png"))
    pictures = "".join(f"<figure>{_png(recon[i])}<figcaption>{recon[i].stem}</figcaption></figure>"
                       for i in sorted({0, len(recon) - 1}) if recon)
    speed = f"{epochs[-1]['img_per_s']:.0f} images/s" if epochs else ""
    loss = (f"loss {steps[0]['loss']:.3f} at the first logged step, {epochs[-1]['loss']:.3f} in "
            "the last epoch" if steps and epochs else "")
    return (f'<section id="mae"><h2>MAE pretraining</h2><p>{loss}; {speed}.</p>{curve}'
            "<p>Reconstructions (columns: original | masked | reconstruction | reconstruction "
            "with the visible patches pasted in), first and last "
            f"epoch:</p>{pictures}</section>")


def _finetune(src: Sources) -> str:
    if src.finetune is None or not (src.finetune / "log.jsonl").exists():
        return ""
    epochs = [r for r in read_jsonl(src.finetune / "log.jsonl") if "val_f1" in r]
    if not epochs:
        return ""
    best = max(epochs, key=lambda r: r["val_f1"])
    run_config = json.loads((src.finetune / "config.json").read_text())
    per_video = run_config.get("finetune", {}).get("val_frames_per_video", 0)
    scored = f"{per_video} evenly spaced frames of each video" if per_video else "every frame"
    text = (f'Best validation macro F1 {best["val_f1"]:.4f} at epoch {best["epoch"]} (frame level, '
            f'before any temporal model, on {scored}).')
    head_init = run_config["encoder"].get("head_init")
    probe_log = Path(head_init).parent / "log.jsonl" if head_init else None
    probe = None
    # LP-FT: show the probe the fine-tune started from
    if probe_log is not None and probe_log.exists():
        probe = [r for r in read_jsonl(probe_log) if "val_f1" in r]
        text += (' The fine-tune started from the head of a linear probe on the frozen encoder '
                 '(LP-FT), whose best validation macro F1 was '
                 f'{max(r["val_f1"] for r in probe):.4f}.')
    guess = (src.demo or {}).get("frame_guess_f1")
    if guess is not None:
        text += f" A uniform guess scores {guess:.4f} on the same frames."
        if best["val_f1"] < guess + READS_EXPRESSIONS:
            text += (f" At the {src.demo.get('preset', 'demo')} budget the fine-tuned encoder does "
                     "not read the expressions better than a guess: the MAE has had too few steps "
                     "to draw the eyes and mouth, and fine-tuning too few to learn them, so the "
                     "rows below compare temporal heads on features that carry little affect, and "
                     "what the stages add cannot show here. The longer budget, <code>make demo "
                     "PRESET=demo-full</code>, trains long enough for that (docs/results.md has "
                     "its figures).")
    curve = _embed(curves.finetune_curves(epochs, probe))
    return f'<section id="finetune"><h2>Expr fine-tuning</h2><p>{text}</p>{curve}</section>'


def _task(task: str, run: Path) -> str:
    s = _read_summary(run)
    names = PER_TASK[task]
    rows = [(n, f"{s['before'].get(n, float('nan')):.4f}", f"{s['after'].get(n, float('nan')):.4f}")
            for n in names]
    rows.append(("score", f"{s['before']['score']:.4f}", f"{s['after']['score']:.4f}"))
    table = _table(("", "validation", "after post-processing"), rows)
    plots = "".join(f"<figure>{_png(run / name)}</figure>" for name in HEAD_PLOTS
                    if (run / name).exists())
    pp = html.escape(json.dumps(s.get("postprocess", {})))
    return (f'<section id="task-{task}"><h2>{TASK_TITLES[task]}</h2><p>Run '
            f'<code>{html.escape(str(run))}</code>, best epoch {s["best_epoch"]}, post-processing '
            f'chosen on validation: <code>{pp}</code>.</p>'
            f"{table}{plots}</section>")


def _ablation(src: Sources) -> str:
    if not src.demo or not src.demo.get("table"):
        return ""
    table, spread = src.demo["table"], src.demo.get("intervals", {})
    order = ([r for r, _, _ in ABLATIONS if r in table]
             + sorted(set(table) - {r for r, _, _ in ABLATIONS}))

    def cell(row: str, task: str) -> str:
        if task not in table[row]:
            return ""
        ci = spread.get(task, {}).get("runs", {}).get(row, {}).get("ci95")
        return f"{table[row][task]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    def difference(row: str, task: str) -> str:
        d = spread.get(task, {}).get("differences", {}).get(row)
        if d is None:
            return ""
        mark = " *" if d["ci95"][0] > 0 or d["ci95"][1] < 0 else ""
        return f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]{mark}"

    rows = []
    for row in order:
        paper = _paper_row(row)
        rows.append((row, *(cell(row, t) for t in TASKS),
                     *(f"{paper[t]:.4f}" if t in paper else "" for t in TASKS)))
    scores = _table(("setting", "VA", "Expr", "AU", "paper VA", "paper Expr", "paper AU"), rows)
    diffs = _table(("minus the full model", "VA", "Expr", "AU"),
                   [(row, *(difference(row, t) for t in TASKS)) for row in order[1:]])
    videos = ", ".join(f"{t} {spread[t]['videos']}" for t in TASKS if t in spread)
    note = (f"<p>Synthetic validation set ({videos} videos); each setting trained once, one seed, "
            "with the same budget. In brackets: 95 % intervals from 2,000 draws of whole "
            "validation videos with replacement, the same draws for every row; * marks a "
            "difference whose interval excludes 0. What the synthetic set can show: whether a "
            "stage or a part of the head changes the score by more than the spread between these "
            "few videos. What it cannot: the size of a gain on Aff-Wild2, where the videos are "
            "longer, the people many and the features of a fully trained encoder far richer; with "
            "one seed, a difference whose interval includes 0 is not evidence either way.</p>")
    return ('<section id="ablation"><h2>Ablation (the analogue of the paper\'s Table 5)</h2>'
            f'{note}{scores}'
            f"{diffs}</section>")


def _submissions(src: Sources) -> str:
    subs = (src.demo or {}).get("submissions")
    if not subs:
        return ""
    rows = [(t, Path(s["file"]).name, s.get("rows"),
             "yes" if s["valid"] else "; ".join(s["problems"]),
             f"{s['test_score']:.4f}") for t, s in subs.items()]
    table = _table(("task", "file", "rows", "passes check-submission",
                    "test score (synthetic labels)"), rows)
    return f'<section id="submissions"><h2>Test-set submissions</h2>{table}</section>'


# --- helpers --------------------------------------------------------------------------------------


def _paper_row(row: str) -> dict:
    return PAPER_TABLE5.get(row, {})


def _read_summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _test_score(src: Sources, task: str) -> str:
    sub = ((src.demo or {}).get("submissions") or {}).get(task)
    return f"{sub['test_score']:.4f}" if sub else ""


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(path: Path) -> str:
    return png_img(Path(path).read_bytes(), Path(path).stem)


def _embed(png: bytes) -> str:
    return f"<figure>{png_img(png, 'plot')}</figure>"


_FIGURES = "figure { display: inline-block; margin: 0.5em; }\n"
