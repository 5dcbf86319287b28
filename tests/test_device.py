"""The host's share: decode workers and torch threads chosen from the cores, a number given kept."""

import pytest
import torch

from pipeline import device as dev
from pipeline.config import ConfigError
from pipeline.configs import ExtractConfig, FinetuneConfig, PretrainConfig

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture
def cores(monkeypatch):
    """Pretend the host has N cores and torch was left at its default of N threads."""
    def set_cores(n: int, torch_threads: int | None = None):
        monkeypatch.setattr(dev, "host_cores", lambda: n)
        monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads or n)
    return set_cores


def test_cpu_workers_get_cores_of_their_own(cores):
    cores(2)
    assert dev.cpu_budget(CPU) == (0, 2)  # decoding between steps, every core for the step
    cores(4)
    assert dev.cpu_budget(CPU) == (1, 3)
    cores(16)
    assert dev.cpu_budget(CPU) == (2, 14)
    cores(16)
    assert dev.cpu_budget(CPU, local_world_size=4) == (1, 3)  # four processes share the host


def test_cuda_gives_the_workers_all_but_one_core(cores):
    cores(16)
    assert dev.cpu_budget(CUDA) == (12, 4)
    cores(16)
    assert dev.cpu_budget(CUDA, local_world_size=8) == (1, 1)
    cores(4)
    assert dev.cpu_budget(CUDA) == (3, 1)


def test_given_numbers_are_kept_and_auto_threads_respect_a_limit(cores):
    cores(8)
    assert dev.cpu_budget(CPU, workers=0, threads=3) == (0, 3)
    # OMP_NUM_THREADS=1 (torchrun) or torch.set_num_threads(1) by the caller
    cores(8, torch_threads=1)
    assert dev.cpu_budget(CPU) == (1, 1)
    cores(2, torch_threads=1)
    assert dev.cpu_budget(CPU) == (0, 1)


def test_torch_threads_are_restored():
    before = torch.get_num_threads()
    with dev.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("cls", [PretrainConfig, FinetuneConfig, ExtractConfig])
def test_configs_take_none_for_auto_and_refuse_nonsense(cls):
    assert cls().workers is None and cls().threads is None
    with pytest.raises(ConfigError, match="threads 0: use 1 or more"):
        cls(threads=0)
    with pytest.raises(ConfigError, match="workers -1: use 0 or more"):
        cls(workers=-1)
