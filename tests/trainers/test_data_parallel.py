"""Two CPU processes (torchrun, gloo) train the same adapter as one process with the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from studio.io import write_png
from studio.trainers.base import check_process_count
from studio.worlds import get_world

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this python")
def test_two_processes_equal_one_with_the_same_global_batch(tiny_shapes_folder, tmp_path):
    concept = tmp_path / "concept"
    concept.mkdir()
    world = get_world("shapes")
    for i in range(4):
        write_png(concept / f"{i}.png", world.sample(500 + i, fixed={"shape": "cross"}).data)
    settings = [
        f"base={tiny_shapes_folder}", "world=shapes", f"data.dir={concept}", "adapter.method=lora", "adapter.rank=2",
        "class_samples=2", "max_steps=3", "batch_size=4", "lr=0.01", "sample_every=0", "checkpoint_every=3",
        "sample_prompts=a sks shape",
    ]  # fmt: skip
    args = ["-m", "studio", "--quiet", "train", "finetune", *[x for s in settings for x in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    one = tmp_path / "one"
    subprocess.run([sys.executable, *args, "--out", str(one)], check=True, env=env, timeout=600)
    two = tmp_path / "two"
    two.mkdir()
    shutil.copytree(one / "class_samples", two / "class_samples")  # identical prior data for both runs
    launch = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2"]
    subprocess.run([*launch, *args, "--out", str(two)], check=True, env=env, timeout=600)

    # two copies of a one-process run would also agree with it: check the run really had two processes
    assert json.loads((two / "adapter.json").read_text())["metrics"]["processes"] == 2
    single, parallel = load_file(one / "adapter.safetensors"), load_file(two / "adapter.safetensors")
    assert single.keys() == parallel.keys() and single
    for key in single:
        torch.testing.assert_close(parallel[key], single[key], rtol=1e-4, atol=1e-6)


def test_an_accelerator_that_misses_the_launched_processes_is_refused(monkeypatch):
    one_process = SimpleNamespace(num_processes=1)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_process_count(one_process)  # a plain run
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="launched as 2 processes"):
        check_process_count(one_process)
    check_process_count(SimpleNamespace(num_processes=2))
