"""The training engine's loss reads: the losses of the pretraining and fine-tuning loops are read
from the device once every ``log_every`` steps (not after each step, which would stall a GPU's
host), the epoch's mean is still every micro-batch's, and a non-finite loss is still refused, naming
the step where it began."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pipeline.finetune as ft
import pipeline.pretrain as pt
from pipeline.configs import PretrainConfig
from pipeline.data.affwild2 import AU_NAMES, EXPR_CLASSES
from pipeline.distributed import DistInfo
from pipeline.engine import Engine
from pipeline.errors import InputError
from pipeline.finetune_model import build_classifier
from pipeline.models.mae import MaskedAutoencoderViT

pytestmark = pytest.mark.usefixtures("one_thread")

READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")


class Counted(torch.Tensor):
    """A tensor that counts the reads of its values on the host; what is computed from it is
    Counted too (torch's ``__torch_function__`` keeps the subclass through every op)."""

    reads: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READS:
            cls.reads.append(func.__name__)
        return super().__torch_function__(func, types, args, kwargs or {})


def counted(output):
    """A forward hook's replacement output: every tensor in it Counted."""
    if isinstance(output, dict):
        return {k: v.as_subclass(Counted) for k, v in output.items()}
    return tuple(t.as_subclass(Counted) for t in output)


def engine(tmp_path, steps: int, log_every: int) -> Engine:
    return Engine(tmp_path, "test", epochs=1, steps_per_epoch=steps, peak_lr=1e-3, min_lr=0.0,
                  warmup_steps=0, seed=0, dist=DistInfo(), resume_key={}, log_every=log_every,
                  tensorboard=False, progress=False)


def test_pretraining_reads_its_losses_every_log_every_steps(tmp_path):
    cfg = PretrainConfig(images=("unused",), out=str(tmp_path), model="mae_vit_tiny_patch16",
                         img_size=32, patch_size=8, batch_size=4, accum_iter=2,
                         decoder_embed_dim=32,
                         decoder_depth=1, decoder_num_heads=2, device="cpu", bf16=False,
                         log_every=4)
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(pt.model_config(cfg))
    losses = []
    model.register_forward_hook(lambda m, i, out: (losses.append(out[0].detach().clone()),
                                                   counted(out))[1])
    loader = [(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.full((4,), -1))
              for _ in range(8)]
    eng = engine(tmp_path, steps=4, log_every=4)
    optimizer = pt.make_optimizer(model, cfg, 1e-3, torch.device("cpu"))
    Counted.reads = []
    eng._epoch = 0
    mean = pt.train_one_epoch(model, loader, optimizer, eng, cfg,
                              torch.device("cpu"), on_unreadable=None)
    # eight micro-batches, four optimizer steps: read after steps 1 and 4 (after each micro-batch
    # before)
    assert len(Counted.reads) == 2, Counted.reads
    assert mean == pytest.approx(sum(float(v) for v in losses) / 8, rel=1e-12)


def test_finetuning_reads_its_losses_every_log_every_steps(tmp_path):
    cfg = ft.FinetuneConfig(data="unused", out=str(tmp_path), model="mae_vit_tiny_patch16",
                            img_size=32, patch_size=8, batch_size=4, mixup=0.8, cutmix=1.0,
                            aux_au=True, aux_va=True, device="cpu", bf16=False,
                            log_every=4)
    torch.manual_seed(0)
    model, source = build_classifier(cfg)
    model.register_forward_hook(lambda m, i, out: counted(out))
    b = 4

    def batch(i):
        return {"image": torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8),
                "expr": torch.randint(0, len(EXPR_CLASSES), (b,)),
                "au": torch.randint(0, 2, (b, len(AU_NAMES))),
                "au_valid": torch.ones(b, dtype=torch.bool), "va": torch.rand(b, 2) * 2 - 1,
                "va_valid": torch.ones(b, dtype=torch.bool), "row": torch.arange(b) + b * i,
                # one unreadable frame in the third batch: the masked path reads nothing either
                "ok": torch.arange(b) != (0 if i == 2 else -1)}

    loader = [batch(i) for i in range(8)]
    eng = engine(tmp_path, steps=8, log_every=4)
    optimizer = ft.make_optimizer(model, cfg, torch.device("cpu"))
    skipped = []
    Counted.reads = []
    eng._epoch = 0
    loss, accuracy = ft.train_one_epoch(model, loader, optimizer, eng,
                                        cfg, torch.device("cpu"), None, source["pixel_mean"],
                                        source["pixel_std"], skipped.append)
    # losses after steps 1, 4 and 8, then the epoch's hits and frames: five reads for eight steps
    assert len(Counted.reads) <= 5, Counted.reads
    assert skipped == [8] and math.isfinite(loss) and 0 <= accuracy <= 1


def _steps(eng: Engine, values: list[float]) -> None:
    """Optimizer steps whose losses take ``values`` (a weight kept on the graph)."""
    weight = torch.nn.Parameter(torch.ones(()))
    optimizer = torch.optim.SGD([weight], lr=0.0)
    for value in eng.batches(values, total=len(values)):
        eng.backward(weight * 0 + value, optimizer, images=1)


@pytest.mark.parametrize("where,at_read", [(2, "a step line"), (5, "the epoch's end")])
def test_a_non_finite_loss_is_refused_naming_the_step_it_began(tmp_path, where, at_read):
    eng = engine(tmp_path, steps=6, log_every=4)
    eng.run_epochs().__next__()
    values = [1.0] * 6
    values[where] = math.nan
    # log.jsonl's step numbers: the step whose loss it is, from 1
    with pytest.raises(InputError,
                       match=f"loss became nan at epoch 1, step {where + 1}; lower lr"):
        _steps(eng, values)
        eng.epoch_loss()


def test_the_epoch_mean_counts_every_micro_batch(tmp_path):
    eng = engine(tmp_path, steps=5, log_every=2)
    eng.run_epochs().__next__()
    _steps(eng, [1.0, 2.0, 3.0, 4.0, 6.0])
    assert eng.epoch_loss() == 3.2


TWO_RANKS_ONE_NAN = """
import math, sys
from pathlib import Path
import torch
from pipeline.distributed import init_distributed
from pipeline.engine import Engine
from pipeline.errors import InputError

info = init_distributed(torch.device("cpu"))
eng = Engine(sys.argv[1], "test", epochs=1, steps_per_epoch=6, peak_lr=1e-3, min_lr=0.0,
             warmup_steps=0, seed=0, dist=info, resume_key={}, log_every=4, tensorboard=False,
             progress=False)
next(eng.run_epochs())
values = [1.0] * 6
if info.rank == 0:
    values[2] = math.nan
weight = torch.nn.Parameter(torch.ones(()))
optimizer = torch.optim.SGD([weight], lr=0.0)
try:
    for value in eng.batches(values, total=len(values)):
        eng.backward(weight * 0 + value, optimizer, images=1)
    eng.epoch_loss()
except InputError as err:
    (Path(sys.argv[1]) / f"rank{info.rank}.txt").write_text(str(err))
"""


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_read(tmp_path):
    """Under torchrun a rank left going on would wait at its next all-reduce for the barrier
    timeout (two hours): both stop at the read where one saw the NaN."""
    script = tmp_path / "one_nan.py"
    script.write_text(TWO_RANKS_ONE_NAN)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path)],
        cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    said = [(tmp_path / f"rank{r}.txt").read_text() if (tmp_path / f"rank{r}.txt").exists()
            else None for r in (0, 1)]
    assert said == [
        "test: the loss became nan at epoch 1, step 3; lower lr and start a new run (the last "
        "checkpoint is kept)",
        "test: the loss became NaN or infinite on rank 0 by epoch 1, step 4; lower lr and start "
        "a new run (the last checkpoint is kept)"], proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr[-3000:]
