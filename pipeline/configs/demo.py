"""The settings of the demo: where it runs, and which budget (a demo preset) its stages use."""

from dataclasses import dataclass

from pipeline.config import check_choices, setting
from pipeline.configs.common import DEVICES, check_host_share

# A demo preset names the synthetic dataset and each stage's preset (the stage configs' PRESETS).
DEMO_PRESETS = {
    "demo": {"synth": "demo", "pretrain": "demo", "probe": "demo-probe", "finetune": "demo",
             "heads": "demo"},
    "demo-full": {"synth": "demo", "pretrain": "demo-full", "probe": "demo-full-probe",
                  "finetune": "demo-full", "heads": "demo-full"},
    "tiny": {"synth": "tiny", "pretrain": "tiny", "probe": "tiny-probe", "finetune": "tiny",
             "heads": "tiny"},
}


@dataclass(frozen=True)
class DemoConfig:
    """The whole method on the synthetic set: where it goes, and which budget (a demo preset) it
    runs."""

    out: str | None = setting(None, "Demo run directory (pretrain/, finetune/, stores, heads/, "
                                    "report.html); none: runs/PRESET, as make demo.")
    data: str | None = setting(None, "Where the synthetic dataset is made (once) and read; none: "
                                     "data/synth-SET, SET the preset's synthetic set (demo for "
                                     "demo and demo-full), as make demo.")
    preset: str = setting("demo", "The budget: demo (the 15-minute CPU demo), demo-full (the "
                                  "longer one, about 30 minutes) or tiny (a smoke test of every "
                                  "stage).",
                          choices=tuple(DEMO_PRESETS))
    lp_ft: bool = setting(True, "Fine-tune from a linear probe's head (LP-FT); false: from a fresh "
                                "head, as the paper.")
    workers: int | None = setting(None, "DataLoader processes of every stage (none: chosen from "
                                        "the cores).")
    device: str = setting("auto", "auto, cpu or cuda.", choices=DEVICES)
    seed: int = setting(0, "Seed of the dataset and of every stage.")

    def __post_init__(self):
        check_choices(self)
        check_host_share(self)
        # each preset its own run directory, so that one never resumes into another's runs
        if self.out is None:
            object.__setattr__(self, "out", f"runs/{self.preset}")
        if self.data is None:
            object.__setattr__(self, "data", f"data/synth-{DEMO_PRESETS[self.preset]['synth']}")
