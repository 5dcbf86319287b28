"""What each stage adds to Expr recognition: (a) a linear probe on the frozen MAE encoder, (b) the
encoder fine-tuned from MAE, (c) the same fine-tune from random weights, each over several seeds;
optionally (d) LP-FT, the fine-tune of (b) started from (a)'s head, and its random-weight twins: (e)
a linear probe on the frozen random encoder and (f) LP-FT from it, started from (e)'s head
(``--settings abcdef``).

All settings use ``pipeline.finetune.finetune`` with the same budget (the demo's by default) and the
same architecture; only the initialisation and what trains differ ((c), (e) and (f) start from a
random-weight checkpoint of the MAE encoder's exact shape). A seed changes the data order, the
augmentation, the head and the random encoder's weights. Printed: the best-epoch validation macro F1
of every run, the mean and standard deviation per setting, and the score of a uniform guess on the
same frames. One Validation_Set of a few videos makes a single run's F1 noisy, and the spread over
seeds does not show it: the seeds share the validation videos. So each run's best checkpoint also
predicts every validation frame once more, and a bootstrap over the validation videos (whole videos
drawn with replacement, the same draws for every setting) gives a 95 % interval for each setting's
seed-mean F1 and for the differences that say what a stage adds: (b) - (c), (d) - (f) and (a) - (e)
what pretraining adds, (b) - (a) and (d) - (a) what fine-tuning the encoder adds to the frozen one,
and each setting against a uniform guess.

    python -m bench.compare_stages --data data/synth-demo \
        --init runs/demo/pretrain/checkpoint-last.pt \
        [--seeds 0 1 2] [--preset demo] [--set epochs=10] [--bootstrap 2000] [--out DIR] [--json]

Runs already finished in ``--out`` are not trained again (fine-tuning resumes), so a comparison can
be re-scored, for instance with another number of resamples, in the time inference takes.
"""

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench import exit_on_bad_input
from pipeline import config
from pipeline.checkpoint import (
    EncoderInfo,
    encoder_checkpoint,
    load_encoder,
    save_checkpoint,
)
from pipeline.configs import FinetuneConfig
from pipeline.data.affwild2 import AffWild2
from pipeline.data.frames import FrameIndex, expr_frames
from pipeline.device import cpu_budget, resolve_device
from pipeline.finetune import finetune
from pipeline.finetune_eval import predict_expr, validation_loader
from pipeline.finetune_model import load_classifier
from pipeline.metrics import (
    expr_confusion,
    expr_f1_from_confusion,
    uniform_guess_expr_f1,
    uniform_guess_f1_from_counts,
    video_bootstrap,
)
from pipeline.models.mae import build_encoder

SETTINGS = {
    "a": "linear probe on the frozen MAE encoder",
    "b": "fine-tuned from MAE",
    "c": "the same fine-tune from random weights",
    "d": "LP-FT: (b) started from (a)'s head",
    "e": "linear probe on the frozen random-weight encoder",
    "f": "LP-FT from random weights: (c) started from (e)'s head",
}
# An LP-FT setting starts from the best head of its probe.
PROBE_OF = {"d": "a", "f": "e"}
# (higher, lower, what the difference measures); a pair is reported when both settings ran.
CONTRASTS = (
    ("b", "c", "what pretraining adds: (b) fine-tuned from MAE - (c) from random weights"),
    ("d", "f", "what pretraining adds with LP-FT: (d) from MAE - (f) from random weights"),
    ("d", "c", "pretraining and the probe's head together: (d) - (c)"),
    ("a", "e", "what pretraining adds to the frozen encoder: (a) - (e)"),
    ("b", "a", "what fine-tuning adds: (b) fine-tuned encoder - (a) frozen encoder"),
    ("d", "a", "what fine-tuning adds with LP-FT: (d) - (a)"),
)


def random_twin(info: EncoderInfo, seed: int, path: Path) -> Path:
    """A checkpoint of the MAE encoder's exact architecture (width, depth, patch, input size, pixel
    statistics) with fresh random weights drawn from ``seed``: the start of run (c)."""
    torch.manual_seed(seed)
    encoder = build_encoder(info.model_name, **info.model_config)
    save_checkpoint(encoder_checkpoint("random", info.model_name, info.model_config, encoder,
                                       info.img_size, info.pixel_mean, info.pixel_std), path)
    return path


def stage_configs(base: FinetuneConfig, probe: FinetuneConfig, init: Path, info: EncoderInfo,
                  out: Path, seed: int) -> dict[str, FinetuneConfig]:
    """The runs (a)-(f) of one seed: probes from ``probe``, fine-tunes from ``base``; ``info``
    describes the MAE encoder at ``init``; (d) and (f) read the best.pt of their probes
    (a) and (e)."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = str(random_twin(info, seed, out / f"random-init-seed{seed}.pt"))
    starts = {"a": str(init), "b": str(init), "c": scratch, "d": str(init), "e": scratch,
              "f": scratch}
    configs = {}
    for key, start in starts.items():
        run = replace(probe if key in PROBE_OF.values() else base, init=start, seed=seed,
                      out=str(out / f"{key}-seed{seed}"))
        if key in PROBE_OF:
            run = replace(run, head_init=str(out / f"{PROBE_OF[key]}-seed{seed}" / "best.pt"))
        configs[key] = run
    return configs


def video_confusions(run: Path, val_index: FrameIndex, cfg: FinetuneConfig) -> np.ndarray:
    """(V, 8, 8) confusion counts per validation video of ``run/best.pt``, over the frames its
    validation scored (row = true class, column = prediction; unreadable frames left out)."""
    model, info = load_classifier(run / "best.pt")
    device = resolve_device(cfg.device)
    workers, _ = cpu_budget(device, cfg.workers, cfg.threads)  # none: chosen from the cores
    loader = validation_loader(val_index, info.img_size, replace(cfg, workers=workers), device)
    result = predict_expr(model.to(device), loader, device, cfg.bf16, info.pixel_mean,
                          info.pixel_std)
    ok = result["ok"].astype(bool)
    rows, pred = result["row"][ok], result["pred"][ok]
    video, true = val_index.video_id[rows], val_index.expr[rows]
    return np.stack([expr_confusion(pred[video == v], true[video == v])
                     for v in range(len(val_index.videos))])


def bootstrap_summary(confusions: dict[str, np.ndarray], resamples: int, seed: int = 0) -> dict:
    """95 % intervals over validation videos.

    Args:
        confusions: setting -> (seeds, V, 8, 8) per-video confusion counts of each seed's run.
        resamples: bootstrap draws; every setting (and the uniform guess) is scored on the same
            draws, so the differences are paired.
    Returns:
        {"resamples", "videos", "settings": {k: {"mean", "ci95"}}, "contrasts": [{"pair", "what",
        "diff", "ci95", "share_above_0"}]}; "guess" is the uniform guess, and every setting is also
        set against it.
    """
    first = next(iter(confusions.values()))
    n_videos = first.shape[1]
    weights = video_bootstrap(n_videos, resamples, seed)  # (B, V)
    full = {k: float(expr_f1_from_confusion(c.sum(1)).mean()) for k, c in confusions.items()}
    # (B,) seed-mean F1
    boot = {k: expr_f1_from_confusion(np.einsum("bv,svij->bsij", weights, c)).mean(1)
            for k, c in confusions.items()}
    true_counts = first[0].sum(-1)  # (V, 8): the same labels under every run
    full["guess"] = float(uniform_guess_f1_from_counts(true_counts.sum(0)))
    boot["guess"] = uniform_guess_f1_from_counts(weights @ true_counts)

    def interval(x: np.ndarray) -> list[float]:
        return [round(float(v), 4) for v in np.percentile(x, [2.5, 97.5])]

    pairs = [p for p in CONTRASTS if p[0] in confusions and p[1] in confusions]
    pairs += [(k, "guess", f"({k}) - a uniform guess") for k in sorted(confusions)]
    return {
        "resamples": resamples, "videos": n_videos,
        "settings": {k: {"mean": round(full[k], 4), "ci95": interval(boot[k])} for k in boot},
        "contrasts": [{"pair": f"{hi}-{lo}", "what": what, "diff": round(full[hi] - full[lo], 4),
                       "ci95": interval(boot[hi] - boot[lo]),
                       "share_above_0": round(float((boot[hi] > boot[lo]).mean()), 4)}
                      for hi, lo, what in pairs],
    }


def main(argv=None) -> dict:
    """Run the comparison; bad input (a missing folder, an unreadable checkpoint) exits 2
    with one line."""
    return exit_on_bad_input(_compare, argv)


def _compare(argv) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True,
                        help="Aff-Wild2-layout root (the synthetic demo set).")
    parser.add_argument("--init", required=True, help="MAE checkpoint for (a), (b) and (d).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="demo",
                        help="FinetuneConfig preset of (b), (c), (d) and (f); PRESET-probe is that "
                             "of (a) and (e) (default: the demo's budget).")
    parser.add_argument("--set", dest="set_items", action="append", default=[], metavar="KEY=VALUE",
                        help="A FinetuneConfig setting for every run, e.g. epochs=3 (repeatable).")
    parser.add_argument("--workers", default="none",
                        help="Decode workers of every run (default none: chosen from the cores).")
    parser.add_argument("--settings", default="abc",
                        help="Which of a-f to run (d needs a, f needs e).")
    parser.add_argument("--bootstrap", type=int, default=2000,
                        help="Resamples of the validation videos for the 95 %% intervals "
                             "(0: none).")
    parser.add_argument("--out", default=None,
                        help="Keep the runs here (default: a temporary folder).")
    parser.add_argument("--json", action="store_true",
                        help="Print one JSON object instead of the table.")
    args = parser.parse_args(argv)
    needs_probe = any(lp in args.settings and probe not in args.settings
                      for lp, probe in PROBE_OF.items())
    if not args.seeds or not set(args.settings) <= set(SETTINGS) or needs_probe:
        parser.error("--seeds needs at least one seed and --settings letters from 'abcdef' "
                     "(d starts from a's head, f from e's)")
    if args.bootstrap < 0:
        parser.error("--bootstrap must be >= 0")

    given = {**config.parse_settings(FinetuneConfig, [*args.set_items, f"workers={args.workers}"]),
             "data": args.data}
    base, probe = (config.build(FinetuneConfig,
                                {**config.preset_values(FinetuneConfig, name), **given})
                   for name in (args.preset, f"{args.preset}-probe"))
    init = Path(args.init).resolve()
    info = load_encoder(init)[1]  # checked before anything is written
    val_index = expr_frames(AffWild2(Path(args.data)), "Validation_Set")
    scores: dict[str, list[float]] = {k: [] for k in args.settings}
    confusions: dict[str, list[np.ndarray]] = {k: [] for k in args.settings}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        for seed in args.seeds:
            configs = stage_configs(base, probe, init, info, out, seed)
            for key in sorted(args.settings):  # every probe before its LP-FT
                summary = finetune(configs[key], progress=not args.json)
                scores[key].append(round(float(summary["best_f1"]), 4))
                if args.bootstrap:
                    confusions[key].append(video_confusions(Path(configs[key].out), val_index,
                                                            configs[key]))
    result = {
        "seeds": args.seeds, "uniform_guess_f1": round(uniform_guess_expr_f1(val_index.expr), 4),
        "validation_frames": len(val_index), "validation_videos": len(val_index.videos),
        "settings": {k: {"what": SETTINGS[k], "best_f1": v, "mean": round(float(np.mean(v)), 4),
                         "std": round(float(np.std(v)), 4)} for k, v in scores.items()},
    }
    if args.bootstrap:
        result["bootstrap"] = bootstrap_summary({k: np.stack(v) for k, v in confusions.items()},
                                                args.bootstrap)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"validation: {result['validation_frames']} frames of "
              f"{result['validation_videos']} videos; "
              f"a uniform guess scores {result['uniform_guess_f1']:.3f}")
        print("| setting | best-epoch validation macro F1 per seed | mean | std |")
        print("|---|---|---|---|")
        for key, row in result["settings"].items():
            print(f"| ({key}) {row['what']} | {', '.join(f'{s:.3f}' for s in row['best_f1'])} | "
                  f"{row['mean']:.3f} | {row['std']:.3f} |")
        if args.bootstrap:
            boot = result["bootstrap"]
            print(f"\n95 % intervals from {boot['resamples']} resamples of the {boot['videos']} "
                  "validation videos (seed-mean F1; the same draws for every setting):")
            print("| difference | of seed-mean F1 | 95 % interval | resamples above 0 |")
            print("|---|---|---|---|")
            for c in boot["contrasts"]:
                print(f"| {c['what']} | {c['diff']:+.3f} | "
                      f"{c['ci95'][0]:+.3f} .. {c['ci95'][1]:+.3f} | {c['share_above_0']:.0%} |")
    return result


if __name__ == "__main__":
    main()
