"""The demo end to end on the tiny synthetic set (small budgets), the report it writes, and a second
run that reuses every stage's output."""

import json
import re
from pathlib import Path

import pytest

from cli import cli
from pipeline.demo import ABLATIONS, DemoConfig, run_demo
from pipeline.models.checkpoint import read_checkpoint

TINY_HEADS = {"window": 64, "stride": 32, "tcn_channels": (32, 16), "d_model": 32, "num_layers": 1, "num_heads": 2,
              "ff_dim": 32, "head_hidden": 16}


@pytest.mark.slow
def test_demo_writes_every_stage_and_a_complete_report(tmp_path):
    cfg = DemoConfig(out=str(tmp_path / "run"), data=str(tmp_path / "data"), preset="tiny", img_size=64,
                     pretrain_epochs=1, pretrain_batch=32, finetune_epochs=1, finetune_batch=32,
                     head_epochs=2, heads=TINY_HEADS, workers=0, device="cpu")
    figures = run_demo(cfg, progress=False)
    run = tmp_path / "run"

    assert set(figures["table"]) == {row for row, _, _ in ABLATIONS}
    assert all(set(scores) == {"va", "expr", "au"} for scores in figures["table"].values())
    for task, sub in figures["submissions"].items():
        assert sub["valid"], sub["problems"]
        assert (run / "submissions" / f"{task}.csv").exists()

    # LP-FT: the fine-tune started from the linear probe's head, and the report says so
    config = json.loads((run / "finetune" / "config.json").read_text())
    assert config["encoder"]["head_init"] == str((run / "probe" / "best.pt").resolve())
    assert figures["probe"]["best_f1"] >= 0 and read_checkpoint(run / "probe" / "best.pt")["linear_probe"]

    page = (run / "report.html").read_text()
    assert "LP-FT" in page
    for section in ("summary", "store", "mae", "finetune", "task-va", "task-expr", "task-au", "ablation",
                    "submissions"):
        assert f'id="{section}"' in page, section
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    # MAE loss + first/last reconstructions, fine-tuning curve, per task its curves and its own plot
    assert len(images) >= 3 + 3 * 2
    for name in ("va_traces", "expr_confusion", "au_f1", "training_curves"):
        assert name in images
    ablation = page.split('id="ablation"')[1].split("</section>")[0]
    assert ablation.count("<tr>") == 1 + len(ABLATIONS)

    # a second run finds every output complete and current: nothing is trained again
    stamps = {p: p.stat().st_mtime_ns for p in (run / "heads").rglob("best.pt")}
    again = run_demo(cfg, progress=False)
    assert again["table"] == figures["table"]
    assert {p: p.stat().st_mtime_ns for p in (run / "heads").rglob("best.pt")} == stamps
    assert again["extraction"]["finetuned"]["extracted"] == 0


def _makefile_args(name: str) -> list[str]:
    text = (Path(__file__).parents[1] / "Makefile").read_text().replace("\\\n", " ")
    value = re.search(rf"^{name}\s*\?=\s*(.*)$", text, re.M).group(1)
    return re.sub(r"\$\((\w+)\)", lambda m: " ".join(_makefile_args(m.group(1))), value).split()


def test_makefile_budgets_are_the_demos():
    """`make extract` after `make demo` resumes the demo's runs only if both use the same budgets."""
    cfg = DemoConfig()
    pre = cli.commands["pretrain"].make_context("pretrain", ["--images", "x", "--out", "y",
                                                             *_makefile_args("PRETRAIN_ARGS")]).params
    assert (pre["epochs"], pre["batch_size"], pre["lr"], pre["max_images"], pre["crop_scale"]) == (
        cfg.pretrain_epochs, cfg.pretrain_batch, cfg.pretrain_lr, cfg.pretrain_max_images, cfg.pretrain_crop_scale)
    assert (pre["decoder_dim"], pre["decoder_depth"], pre["decoder_heads"]) == cfg.decoder
    assert (pre["accum_iter"], pre["warmup_epochs"]) == (1, 1)
    assert _makefile_args("MODEL") == [cfg.model] and _makefile_args("IMG_SIZE") == [str(cfg.img_size)]
    for name, probe in (("FINETUNE_ARGS", False), ("PROBE_ARGS", True)):
        fine = cli.commands["finetune"].make_context("finetune", ["--data", "x", "--out", "y",
                                                                  *_makefile_args(name)]).params
        assert (fine["epochs"], fine["batch_size"], fine["frames_per_video"], fine["warmup_epochs"]) == (
            cfg.finetune_epochs, cfg.finetune_batch, cfg.finetune_frames_per_video, 0.5)
        assert fine["linear_probe"] == probe and fine["lr"] == (cfg.probe_lr if probe else cfg.finetune_lr)
