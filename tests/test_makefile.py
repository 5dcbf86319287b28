"""The Makefile's defaults, read from ``make -n`` (a dry run: nothing is executed): the
synthetic set's runs go to runs/PRESET, and another DATA gets its own RUNS, so that a real copy
never resumes into the synthetic set's runs."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(*args: str) -> str:
    return subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("args,runs", [
    ((), "runs/demo"), (("PRESET=tiny",), "runs/tiny"), (("PRESET=demo-full",), "runs/demo-full"),
    (("DATA=/data/affwild2",), "runs/demo-affwild2"),
    (("DATA=/data/affwild2/",), "runs/demo-affwild2"),
    (("DATA=/data/affwild2", "RUNS=runs/aw2"), "runs/aw2"),
])
def test_runs_follow_the_data(args, runs):
    commands = dry_run("extract", *args)
    assert f"--out {runs}/pretrain " in commands and f"--store {runs}/features.zarr" in commands


@pytest.mark.parametrize("preset", ["demo", "demo-full", "tiny"])
def test_make_demo_and_the_cli_demo_write_to_the_same_places(preset):
    """`mae-affect demo --preset P` with no --out or --data uses the folders `make demo PRESET=P`
    names, so the two resume each other's runs rather than refusing them."""
    from pipeline.configs.demo import DemoConfig

    cfg = DemoConfig(preset=preset)
    assert f"--out {cfg.out} --data {cfg.data} " in dry_run("demo", f"PRESET={preset}")
