"""A run's log: ``log.jsonl`` always, and TensorBoard event files beside it when TensorBoard is
installed.

``log.jsonl`` holds one JSON object a line (step lines and epoch lines), flushed as written, so a
killed run keeps its history. Researchers watch MAE runs in TensorBoard, so the same scalars (and
the MAE's reconstruction picture) also go to ``RUN/tensorboard/`` through
``torch.utils.tensorboard``, as facebookresearch/mae's ``log_writer`` does; resuming purges the
events after the resumed step.
"""

import json
from pathlib import Path

import numpy as np

from pipeline.runs import atomic_write_text, to_jsonable


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can be imported (the ``tensorboard`` package is
    installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class RunLog:
    """Appends records to ``log.jsonl`` and mirrors their numbers to TensorBoard.

    Args:
        run_dir: the run directory.
        tensorboard: write event files to ``run_dir/tensorboard`` (skipped when TensorBoard is
            missing).
        purge_step: on resume, the first global step to write again (events from it on are dropped).
    """

    def __init__(self, run_dir: Path, tensorboard: bool = False, purge_step: int | None = None):
        self.path = Path(run_dir) / "log.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = None
        # opened at the first event, so that a finished run's rerun adds no empty event file
        self._tensorboard = tensorboard and tensorboard_available()
        self._tb_args = dict(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=purge_step)

    def _events(self):
        """The TensorBoard writer, opened on first use; None without TensorBoard."""
        if self.writer is None and self._tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(**self._tb_args)
        return self.writer

    def truncate_after(self, key: str, value: int) -> None:
        """On resume: drop lines written after the checkpoint being resumed
        (``record[key] > value``)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get(key, -1) <= value]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, record: dict, *, tag: str | None = None, step: int | None = None) -> None:
        """Append ``record``; with ``tag`` and ``step`` its numbers also go to TensorBoard as
        ``tag/key``."""
        with open(self.path, "a") as f:
            f.write(json.dumps(to_jsonable(record)) + "\n")
        if tag is not None and step is not None and self._events() is not None:
            for key, value in record.items():
                if (isinstance(value, (int, float)) and not isinstance(value, bool)
                        and key not in ("epoch", "step")):
                    self.writer.add_scalar(f"{tag}/{key}", value, step)

    def image(self, tag: str, picture, step: int) -> None:
        """A PIL image to TensorBoard (no-op without it); (H, W, C) uint8."""
        if self._events() is not None:
            self.writer.add_image(tag, np.asarray(picture.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self._tensorboard = False
