"""Every stage's settings, each a frozen dataclass: the one place a setting, its default and its
help live.

The stages (``pipeline.pretrain``, ``pipeline.finetune``, ``pipeline.extract``, ``pipeline.heads``,
``pipeline.data.synth``, ``pipeline.demo``, ``pipeline.video``) run them; the command line,
``--config`` files, ``--set`` and the named presets derive from them (:mod:`pipeline.config`,
:mod:`pipeline.cli_config`). Nothing here imports torch, so that ``mae-affect --help`` and a refused
option answer at once.
"""

from pipeline.configs.demo import DemoConfig
from pipeline.configs.extract import ExtractConfig
from pipeline.configs.finetune import FinetuneConfig
from pipeline.configs.heads import HeadConfig, TrainConfig
from pipeline.configs.pretrain import PretrainConfig
from pipeline.configs.synth import SynthConfig
from pipeline.configs.video import AnalyzeConfig, FacesConfig

# Each stage's settings by the section a run's config.json keeps them under (the heads' at the top).
STAGES = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "extract": ExtractConfig,
          "heads": TrainConfig, "synth": SynthConfig, "demo": DemoConfig, "faces": FacesConfig,
          "analyze": AnalyzeConfig}

__all__ = ["STAGES", "AnalyzeConfig", "DemoConfig", "ExtractConfig", "FacesConfig",
           "FinetuneConfig", "HeadConfig", "PretrainConfig", "SynthConfig", "TrainConfig"]
