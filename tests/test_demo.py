"""The demo end to end on the tiny synthetic set (small budgets), the report it writes, and a second
run that reuses every stage's output."""

import json
import re

import pytest

from pipeline.checkpoint import read_checkpoint
from pipeline.configs import DemoConfig
from pipeline.demo import closing_table, run_demo
from pipeline.errors import InputError
from pipeline.table5 import ABLATIONS


@pytest.mark.slow
def test_demo_writes_every_stage_and_a_complete_report(tmp_path):
    cfg = DemoConfig(out=str(tmp_path / "run"), data=str(tmp_path / "data"), preset="tiny",
                     workers=0, device="cpu")
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
    assert (figures["probe"]["best_f1"] >= 0
            and read_checkpoint(run / "probe" / "best.pt")["linear_probe"])

    page = (run / "report.html").read_text()
    assert "LP-FT" in page
    for section in ("summary", "store", "mae", "finetune", "task-va", "task-expr", "task-au",
                    "ablation", "submissions"):
        assert f'id="{section}"' in page, section
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    # MAE loss + first/last reconstructions, fine-tuning curve, per task its curves and its own plot
    assert len(images) >= 3 + 3 * 2
    for name in ("va_traces", "expr_confusion", "au_f1", "training_curves"):
        assert name in images
    ablation = page.split('id="ablation"')[1].split("</section>")[0]
    # scores; differences from the full model
    assert ablation.count("<tr>") == (1 + len(ABLATIONS)) + len(ABLATIONS)
    for task in ("va", "expr", "au"):  # every row has its interval over the validation videos
        spread = figures["intervals"][task]
        assert (set(spread["runs"]) == set(figures["table"])
                and len(spread["differences"]) == len(ABLATIONS) - 1)
        for row, scored in spread["runs"].items():
            assert scored["score"] == pytest.approx(figures["table"][row][task], abs=1e-6)
            assert scored["ci95"][0] <= scored["score"] <= scored["ci95"][1]

    closing = closing_table(figures, run)
    counts = ", ".join(f"{name} {figures['intervals'][t]['videos']}"
                       for t, name in (("va", "VA"), ("expr", "Expr"), ("au", "AU")))
    assert f"[95 % interval over the validation videos: {counts}]" in closing

    # a second run finds every output complete and current: nothing is trained again
    stamps = {p: p.stat().st_mtime_ns for p in (run / "heads").rglob("best.pt")}
    again = run_demo(cfg, progress=False)
    assert again["table"] == figures["table"]
    assert {p: p.stat().st_mtime_ns for p in (run / "heads").rglob("best.pt")} == stamps
    assert again["extraction"]["finetuned"]["extracted"] == 0


def test_a_folder_in_the_way_of_the_report_is_refused_before_any_stage(tmp_path):
    """Not after the eleven minutes of stages that would come before the report."""
    (tmp_path / "run" / "report.html").mkdir(parents=True)
    cfg = DemoConfig(out=str(tmp_path / "run"), data=str(tmp_path / "data"), preset="tiny",
                     workers=0, device="cpu")
    with pytest.raises(InputError, match="report.html: a folder is in the way of the report"):
        run_demo(cfg, progress=False)
    assert not (tmp_path / "data").exists()
