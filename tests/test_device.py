"""The host's share (decode workers and torch threads chosen from the cores, a number given
kept), and the process group a torchrun rank joins."""

import pytest
import torch

from pipeline import device as dev
from pipeline import distributed
from pipeline.config import ConfigError
from pipeline.configs import ExtractConfig, FinetuneConfig, PretrainConfig
from pipeline.errors import InputError

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


def test_auto_threads_take_the_cores_the_given_workers_leave(cores):
    cores(2)
    assert dev.cpu_budget(CPU, workers=1) == (1, 1)
    cores(8)
    assert dev.cpu_budget(CPU, workers=4) == (4, 4)
    assert dev.cpu_budget(CPU, workers=0) == (0, 8)
    assert dev.cpu_budget(CPU, workers=12) == (12, 1)  # more workers than cores: one thread left
    cores(16)
    assert dev.cpu_budget(CUDA, workers=2) == (2, 4)
    assert dev.cpu_budget(CUDA, workers=15) == (15, 1)


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


@pytest.fixture
def torchrun_env(monkeypatch):
    """This process as rank 1 of 2 under torchrun, with the process group's start recorded instead
    of made."""
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
                       "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    started = []
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda **kwargs: started.append(kwargs))
    return started


def test_the_process_group_follows_the_runs_device_not_the_machine(torchrun_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, --device cpu
    info = distributed.init_distributed(CPU)
    assert (info.rank, info.world_size, info.local_rank) == (1, 2, 1)
    assert torchrun_env == [{"backend": "gloo", "timeout": distributed.BARRIER_TIMEOUT}]
    assert distributed.BARRIER_TIMEOUT.total_seconds() > 600  # NCCL's default would end long waits


def test_more_ranks_than_gpus_is_one_clear_error(torchrun_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InputError, match="LOCAL_RANK 1 but 1 GPU.*--nproc_per_node"):
        distributed.init_distributed(torch.device("cuda", 1))
    assert torchrun_env == []


def test_a_rank_makes_its_own_gpu_current_before_the_group_starts(torchrun_env, monkeypatch):
    made_current = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    distributed.init_distributed(torch.device("cuda", 1))
    assert made_current == [torch.device("cuda", 1)]
    assert torchrun_env == [{"backend": "nccl", "timeout": distributed.BARRIER_TIMEOUT}]


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # the autocast object is only made
@pytest.mark.parametrize(("major", "autocast_on"), [(7, False), (8, True), (9, True)])
def test_gpus_without_bf16_units_run_in_float32(monkeypatch, capsys, major, autocast_on):
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: type("Props", (), {"major": major})())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"GPU sm{major}0")
    dev._native_bf16.cache_clear()
    try:
        context = dev.autocast(CUDA, bf16=True)
        assert isinstance(context, torch.autocast) == autocast_on
        assert ("no bf16 units" in capsys.readouterr().err) != autocast_on
        dev.autocast(CUDA, bf16=True)  # asked again: no second warning
        assert "no bf16 units" not in capsys.readouterr().err
    finally:
        dev._native_bf16.cache_clear()
