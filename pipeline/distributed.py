"""torchrun support: one process per device, rank 0 writes.

Set up from the environment torchrun provides (RANK, WORLD_SIZE, LOCAL_RANK); a plain ``python`` run
is a world of one. NCCL on CUDA, gloo on the CPU (the tests run two gloo ranks), chosen from the
device the run resolved, not from what the machine has.
"""

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.errors import InputError

# How long a rank waits for the others in any collective (a barrier, DDP's all-reduce) before the
# job ends. Ranks wait at barriers for the slowest one (face detection splits videos by file size,
# rank 0 merges HDF5 parts), longer than NCCL's default of 10 minutes; the price is that a truly
# hung job also takes this long to end.
BARRIER_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this host (they share its cores)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun set up, if any; idempotent.

    ``device``: the run's (:func:`pipeline.device.resolve_device`, which gives each rank
    ``cuda:LOCAL_RANK``): NCCL with that GPU as the rank's current device for CUDA, gloo otherwise.

    Raises:
        InputError: a rank's LOCAL_RANK has no GPU (more processes per node than visible GPUs).
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", 0)),
                    int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    if not dist.is_initialized():
        if device.type == "cuda":
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise InputError(
                    f"torchrun rank {info.rank} has LOCAL_RANK {device.index} but "
                    f"{torch.cuda.device_count()} GPU(s) are visible; start at most that many "
                    "processes per node (--nproc_per_node) or widen CUDA_VISIBLE_DEVICES")
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=BARRIER_TIMEOUT)
    return info


# The commands whose work torchrun shares between processes; any other would run whole in each.
TORCHRUN_COMMANDS = ("pretrain", "finetune", "extract", "faces")


def check_single_process(command: str) -> None:
    """Refuse to run ``command`` under torchrun unless it shares its work between processes
    (``TORCHRUN_COMMANDS``): every rank would do all of it, writing the same files at once.

    Raises:
        InputError: WORLD_SIZE is above 1 (every rank says it; torchrun ends the job).
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1 and command not in TORCHRUN_COMMANDS:
        raise InputError(f"{command} runs in one process, not under torchrun ({world_size} "
                         f"processes here): start it as `mae-affect {command} ...`; torchrun "
                         f"shares the work of {', '.join(TORCHRUN_COMMANDS)}")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def first_rank(flag: bool, device: torch.device) -> int | None:
    """The lowest rank on which ``flag`` holds, or None (without torchrun: 0 or None); every rank
    must call it at the same point. ``device``: where the collective runs (the rank's GPU under
    NCCL)."""
    if not dist.is_initialized():
        return 0 if flag else None
    world = dist.get_world_size()
    value = torch.tensor([dist.get_rank() if flag else world], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item()) if value.item() < world else None


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without torchrun)."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
