"""Ablations: every combination of a grid of settings, for several seeds, on data loaded once.

This is how a user repeats the paper's Table 5 on their own features:
``--grid "model=temporal_tcn,temporal_transformer,temporal_tcn_transformer" --seeds 3``. Any
TrainConfig or HeadConfig field can be a grid key. The table reports the official validation score
(whole videos, best epoch) before and after post-processing as mean ± std (sample std) over seeds.
"""

import csv
import dataclasses
import io
import itertools
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.config import ConfigError, coerce, settable
from pipeline.configs.heads import ABLATION_SEEDS
from pipeline.data.affwild2 import AffWild2
from pipeline.device import resolve_device
from pipeline.errors import InputError
from pipeline.heads.sequences import FeatureTable, TaskData, load_features
from pipeline.heads.train import TrainConfig, prepare, train_run
from pipeline.runs import atomic_write_text, check_out_dir

FIXED = ("task", "stores", "data")  # what the loaded data is; one ablation, one dataset


def parse_grid(specs) -> dict[str, list]:
    """``["model=tcn,transformer", "window=100,300"]`` -> {"model": [...], "window": [100, 300]}."""
    grid: dict[str, list] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise InputError(f"--grid {spec!r}: use KEY=V1,V2,..., e.g. --grid "
                             "\"model=temporal_tcn,temporal_tcn_transformer\"")
        if key in FIXED:
            raise InputError(f"--grid {key}: the {key} is fixed for an ablation; run one ablation "
                             f"per {key}")
        if key in grid:
            raise InputError(f"--grid {key} given twice; list all its values in one option")
        known = settable(TrainConfig)
        if key not in known:
            raise InputError(f"--grid {key} is not a setting; settable: {', '.join(sorted(known))}")
        try:
            grid[key] = [coerce(key, known[key][1], v) for v in values.split(",")]
        except ConfigError as err:
            raise InputError(f"--grid {spec!r}: {err.problem}") from None
    return grid


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample std (None for one value: one seed gives no spread)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def _cell(mean: float, std: float | None) -> str:
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _label(value) -> str:
    return "-".join(map(str, value)) if isinstance(value, tuple) else str(value)


def ablate(settings: dict, grid: dict[str, list], out_dir: Path, seeds: int = ABLATION_SEEDS,
           progress: bool = True) -> dict:
    """Train every grid combination for seeds seed .. seed + seeds - 1.

    Args:
        settings: the fixed settings (task, stores, data and any other TrainConfig / HeadConfig
            field), as for ``TrainConfig.create``.
        grid: setting -> values (``parse_grid``).
        out_dir: where the runs and tables go (an earlier ablation's runs that this grid does not
            make are removed, with a line on stderr).
        seeds: runs per combination.

    Returns:
        {"rows": per-combination means and stds (None for one seed), "runs": per-run scores,
        "markdown": the table};
        writes OUT/ablation.md, OUT/ablation.csv (the table) and OUT/runs.csv (every run), one run
        directory per combination and seed.
    """
    if seeds < 1:
        raise InputError(f"--seeds {seeds}: give at least 1")
    out_dir = check_out_dir(out_dir)
    keys = list(grid)
    combos = list(itertools.product(*grid.values())) or [()]
    configs = []
    for combo in combos:  # every config is built (and checked) before the first run starts
        try:
            configs.append(TrainConfig.create(**{**settings,
                                                 **dict(zip(keys, combo, strict=True))}))
        except ConfigError as err:
            if err.key not in keys:
                raise
            raise InputError(f"--grid {err.key}={_label(combo[keys.index(err.key)])}: "
                             f"{err.problem}") from None
    base = configs[0]
    resolve_device(base.device)  # refused before any store is read or run written
    names = [re.sub(r"[^A-Za-z0-9_.+-]", "",
                    "_".join(f"{k}-{_label(v)}" for k, v in zip(keys, combo, strict=True))
                    or "base") for combo in combos]
    ds = AffWild2(Path(base.data))
    tables: dict[str, FeatureTable] = {}
    datasets: dict[tuple, TaskData] = {}
    for cfg in configs:  # loaded (and refused) before an earlier ablation's runs are touched
        if cfg.fill not in tables:
            tables[cfg.fill] = load_features(cfg.stores, cfg.fill)
        if (cfg.fill, cfg.fold, cfg.folds) not in datasets:
            datasets[cfg.fill, cfg.fold, cfg.folds] = prepare(cfg, tables[cfg.fill], ds)
    _drop_earlier_runs(out_dir, {out_dir / n / f"seed{c.seed + s}"
                                 for n, c in zip(names, configs, strict=True)
                                 for s in range(seeds)})
    runs, rows = [], []
    bar = tqdm(total=len(configs) * seeds, desc=f"ablate {base.task}", unit="run",
               disable=not progress)
    for combo, cfg, name in zip(combos, configs, names, strict=True):
        split_key = (cfg.fill, cfg.fold, cfg.folds)
        scores, afters = [], []
        for s in range(seeds):
            seed_cfg = dataclasses.replace(cfg, seed=cfg.seed + s)
            summary = train_run(datasets[split_key], seed_cfg,
                                out_dir / name / f"seed{seed_cfg.seed}", progress=False,
                                make_plots=False)
            runs.append({**{k: _label(v) for k, v in zip(keys, combo, strict=True)},
                         "seed": seed_cfg.seed, "score": summary["before"]["score"],
                         "score_postprocessed": summary["after"]["score"],
                         "best_epoch": summary["best_epoch"],
                         "seconds": round(summary["seconds"], 2)})
            scores.append(summary["before"]["score"])
            afters.append(summary["after"]["score"])
            bar.update()
            bar.set_postfix(last=f"{scores[-1]:.3f}")
        m, sd = _mean_std(scores)
        pm, psd = _mean_std(afters)
        rows.append({**{k: _label(v) for k, v in zip(keys, combo, strict=True)}, "seeds": seeds,
                     "score_mean": m, "score_std": sd, "postprocessed_mean": pm,
                     "postprocessed_std": psd})
    bar.close()
    markdown = markdown_table(base.task, keys, rows)
    atomic_write_text(out_dir / "ablation.md", markdown)
    atomic_write_text(out_dir / "ablation.csv", _csv(rows))
    atomic_write_text(out_dir / "runs.csv", _csv(runs))
    return {"task": base.task, "grid": {k: [_label(v) for v in vs] for k, vs in grid.items()},
            "seeds": seeds, "rows": rows, "runs": runs, "markdown": markdown, "out": str(out_dir)}


def _drop_earlier_runs(out_dir: Path, planned: set[Path]) -> None:
    """Delete the run directories (``<combination>/seed<N>`` holding a ``config.json``) of an
    earlier ablation into ``out_dir`` that this one does not make, so that the folder holds what
    its tables say; anything else in ``out_dir`` is left."""
    stale = [d for d in out_dir.glob("*/seed*")
             if d.is_dir() and (d / "config.json").is_file() and d not in planned]
    for d in stale:
        shutil.rmtree(d)
        if not any(d.parent.iterdir()):
            d.parent.rmdir()
    if stale:
        tqdm.write(f"removed {len(stale)} run(s) of an earlier ablation in {out_dir} that this "
                   "grid does not hold", file=sys.stderr)


def markdown_table(task: str, keys: list[str], rows: list[dict]) -> str:
    """Validation score (mean ± std over seeds) before and after post-processing, one row per
    combination."""
    seeds = rows[0]["seeds"] if rows else 0
    over = f"mean ± std, {seeds} seeds" if seeds > 1 else "1 seed"
    head = [*keys, f"{task} score ({over})", "post-processed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r[k] for k in keys] + [_cell(r["score_mean"], r["score_std"]),
                                        _cell(r["postprocessed_mean"], r["postprocessed_std"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()
