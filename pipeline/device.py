"""Device choice, the few CUDA-only switches, and how the host's cores are shared: kept thin so the
CPU runs the same code path."""

import contextlib
import functools
import os
import sys

import torch
from tqdm import tqdm

from pipeline.errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the local CUDA device when there is one, else the CPU.

    Under torchrun each rank takes ``cuda:LOCAL_RANK``.

    Raises:
        InputError: ``cuda`` asked for without a visible CUDA device, or an unknown name.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                "--device cuda was asked for but no CUDA device is visible; use --device cpu"
            )
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")


def autocast(device: torch.device, bf16: bool = True):
    """bf16 autocast on CUDA, and on the CPU too when asked (CPUs with native bf16 units gain from
    it; docs/results.md has the measured speed-ups). A GPU without bf16 units (before Ampere, e.g.
    a T4 or V100) would emulate it, slower than float32: there the run stays in float32, with one
    warning."""
    if compute_dtype(device, bf16) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def compute_dtype(device: torch.device, bf16: bool = True) -> str:
    """What :func:`autocast` runs a model in on ``device``: ``"bfloat16"`` (autocast) or
    ``"float32"`` (not asked, or a GPU without bf16 units)."""
    if not bf16 or (device.type == "cuda" and not _native_bf16(device)):
        return "float32"
    return "bfloat16"


@functools.cache
def _native_bf16(device: torch.device) -> bool:
    """Whether a CUDA device computes in bf16 natively (compute capability 8.0 or later); where it
    does not, warns once (on rank 0 under torchrun)."""
    native = torch.cuda.get_device_properties(device).major >= 8
    if not native and int(os.environ.get("RANK", 0)) == 0:
        tqdm.write(f"warning: {torch.cuda.get_device_name(device)} has no bf16 units; running in "
                   "float32 instead of bf16 autocast (pass --no-bf16 to say so)", file=sys.stderr)
    return native


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a CUDA device (a no-op on the CPU), before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pin_memory(device: torch.device) -> bool:
    """Pinned host memory only helps host-to-GPU copies."""
    return device.type == "cuda"


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait: on CUDA a pinned copy sent
    with ``non_blocking`` (a plain copy from pageable memory waits for the device's queue to
    drain); elsewhere ``tensor.to(device)``, which is the tensor itself on its own device."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def fits_on(device: torch.device, nbytes: int, share: float = 0.5) -> bool:
    """Whether ``nbytes`` may be kept on ``device``: on CUDA at most ``share`` of the memory it has
    free now (with what torch's allocator holds cached but unused, e.g. an earlier run's table), so
    that the model, its activations and the optimizer keep the rest; the CPU always (the bytes are
    in its memory already)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return nbytes <= share * (free + cached)


def host_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cpu_budget(device: torch.device, workers: int | None = None, threads: int | None = None,
               local_world_size: int = 1) -> tuple[int, int]:
    """Decode workers and torch intra-op threads for one process, so that they do not fight for
    cores.

    ``None`` is "choose from the cores"; a number given is kept. Each of the ``local_world_size``
    processes on this host gets an equal share ``C`` of its cores.

    - CUDA: the device computes and the host only decodes, so the workers take all but one core of
      the share (at most 12: beyond that the copy to the device, not the decode, is the limit) and
      the main process keeps the rest, at most 4 threads, for its own few CPU operations.
    - CPU: the step's threads split every operation evenly and wait for each other at its end, so a
      worker that takes a core from one of them stalls them all. Workers therefore get cores of
      their own: none below 4 cores (the main process decodes each batch between steps, with every
      core free again for the step), else ``C // 8`` (at least 1) beside ``C - workers`` threads:
      decoding a frame costs a small share of its forward pass (docs/results-speed.md).

    Threads left at ``None`` take the cores the workers leave, whether the workers were given or
    chosen. Auto threads never exceed torch's current count, so a limit set by
    ``OMP_NUM_THREADS`` (torchrun sets it to 1 for several processes) or by the caller
    (``torch.set_num_threads``) is kept.

    Returns:
        (workers, threads), both resolved.
    """
    share = max(1, host_cores() // max(1, local_world_size))
    if workers is None:
        workers = min(12, max(1, share - 1)) if device.type == "cuda" else (
            0 if share < 4 else max(1, share // 8))
    # the threads take the cores the workers leave, however many workers were given
    auto_threads = min(4, share - workers) if device.type == "cuda" else share - workers
    threads = min(auto_threads, torch.get_num_threads()) if threads is None else threads
    return workers, max(1, threads)


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run the block with ``threads`` torch intra-op threads, then restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def lower_priority(_: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: one torch thread and a lower scheduling priority (``nice``),
    so that a decode worker never delays the main process, which keeps the device fed."""
    torch.set_num_threads(1)
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)
