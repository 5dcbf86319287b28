"""``make gpu-check`` on the CPU: every stage runs scaled down, the CUDA branches' checks read what
ran (autocast's dtype, the copies, the process group), and the table prints, so the command cannot
rot."""

import json

import pytest
import torch

from bench import gpu_check

pytestmark = pytest.mark.usefixtures("one_thread")


def test_observer_sees_the_dtype_each_linear_ran_in():
    layer = torch.nn.Linear(4, 4)
    with gpu_check.Observer() as seen:
        layer(torch.ones(2, 4))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(torch.ones(2, 4))
        torch.ones(3).to("cpu", non_blocking=True)  # host to host: not a device copy
    assert seen.facts() == {"h2d_copies": {},
                            "linear_outputs": {"float32 cpu": 1, "bfloat16 cpu": 1},
                            "ddp_forwards": 0, "devices": ["cpu"]}


def test_the_verdict_sees_two_ranks_on_one_gpu():
    def own_gpu_each(devices, current):
        seen = {"linear_outputs": {"bfloat16 cuda:0": 4}, "h2d_copies": {}, "backend": "nccl",
                "world_size": 2, "processes": 2, "ddp_forwards": [1, 1], "devices": devices,
                "current_devices": current}
        return gpu_check.branches({"stages": {"pretrain": seen}},
                                  torch.device("cuda", 0))["pretrain"]["own_gpu_each"]

    assert own_gpu_each([["cuda:0"], ["cuda:1"]], ["cuda:0", "cuda:1"])
    assert own_gpu_each([["cuda:0"], []], ["cuda:0", "cuda:1"])  # rank 1 had nothing to extract
    assert not own_gpu_each([["cuda:0"], ["cuda:0"]], ["cuda:0", "cuda:1"])
    assert not own_gpu_each([["cuda:0"], ["cuda:0", "cuda:1"]], ["cuda:0", "cuda:1"])
    # layers on the right GPUs, but both ranks' collectives on GPU 0 (no set_device)
    assert not own_gpu_each([["cuda:0"], ["cuda:1"]], ["cuda:0", "cuda:0"])


def test_gpu_check_runs_every_stage_on_the_cpu(tmp_path, capsys):
    result = gpu_check.main(["--out", str(tmp_path / "runs")])
    assert not result["cuda"] and result["device"] == "cpu"
    for stage in ("pretrain", "finetune", "extract"):
        seen = result["branches"][stage]
        assert (seen["bf16_autocast"] and seen["process_group"] == "gloo, 2 processes"
                and seen["on"] == ["cpu", "cpu"] and seen["own_gpu_each"] is None)
        assert seen["pinned_non_blocking_copies"] is None and seen["other_copies"] == 0
    assert result["branches"]["pretrain"]["ddp"] and result["branches"]["finetune"]["ddp"]
    assert result["branches"]["extract"]["ddp"] is None  # extraction splits videos, nothing to sync
    for stage in ("pretrain", "finetune"):
        assert result[stage]["loop_img_per_s"] > 0 and result[stage]["bare_img_per_s"] > 0
        assert all(0 <= s < 60 for s in result[stage]["first_batch_s"])
        # resolved from the cores
        assert result[stage]["threads"] == 1 and result[stage]["workers"] == 0
    ext = result["extract"]
    assert ext["frames"] > 0 and ext["forward_only_fps"] > 0 and ext["per_frame_loop_fps"] > 0
    assert ext["loader_fps"] > 0
    head = result["heads"]
    assert head["projected_va_run_s"] > 0 and 0 <= head["data_share"] < 1
    assert set(result["goals"]) == {"pretrain loop / bare step >= 0.9",
                                    "finetune loop / bare step >= 0.9",
                                    "extract / forward only >= 0.9",
                                    "extract / per-frame loop >= 10"}
    printed = capsys.readouterr().out.splitlines()
    assert json.loads(printed[0])["extract"]["frames"] == ext["frames"]
    assert "NO CUDA" in printed[1] and any("extract / forward" in line for line in printed)
