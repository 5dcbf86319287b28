"""Device choice and the few CUDA-only switches, kept thin so the CPU runs the same code path."""

import contextlib

import torch

from pipeline.errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the local CUDA device when there is one, else the CPU.

    Under torchrun each rank takes ``cuda:LOCAL_RANK``.
    """
    import os

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")


def autocast(device: torch.device, bf16: bool = True):
    """bf16 autocast on CUDA, and on the CPU too when asked (CPUs with native bf16 units gain from it;
    docs/results.md has the measured speed-ups)."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def pin_memory(device: torch.device) -> bool:
    """Pinned host memory only helps host-to-GPU copies."""
    return device.type == "cuda"
