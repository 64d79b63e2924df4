"""Two CPU processes (torchrun, gloo) train what one process trains with the same global batch."""

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
from studio.trainers.launch import check_process_count
from studio.worlds import get_world

#: Each test launches two training processes (~20 s): run with `make test-all`.
pytestmark = pytest.mark.slow

TORCHRUN = Path(sys.executable).with_name("torchrun")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this python")


def train(recipe: str, settings: list[str], out: Path, processes: int = 1) -> None:
    overrides = [x for s in settings for x in ("--set", s)]
    launch = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else [sys.executable]
    command = [*launch, "-m", "studio", "--quiet", "train", recipe, *overrides, "--out", str(out)]
    subprocess.run(command, check=True, env=ENV, timeout=600)


@needs_torchrun
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
    one, two = tmp_path / "one", tmp_path / "two"
    train("finetune", settings, one)
    two.mkdir()
    shutil.copytree(one / "class_samples", two / "class_samples")  # identical prior data for both runs
    train("finetune", settings, two, processes=2)

    # two copies of a one-process run would also agree with it: check the run really had two processes
    assert json.loads((two / "adapter.json").read_text())["metrics"]["processes"] == 2
    single, parallel = load_file(one / "adapter.safetensors"), load_file(two / "adapter.safetensors")
    assert single.keys() == parallel.keys() and single
    for key in single:
        torch.testing.assert_close(parallel[key], single[key], rtol=1e-4, atol=1e-6)


@needs_torchrun
def test_pretraining_over_two_processes_equals_one(tmp_path):
    """A base model from scratch: same initialisation, per-sample draws, EMA; exported weights agree."""
    settings = [
        "channels=16,32", "attention_levels=1", "batch_size=4", "max_steps=3", "lr=1e-3", "sample_prompts=2",
        "checkpoint_every=3", "seed=3",
    ]  # fmt: skip
    train("pretrain-shapes", settings, tmp_path / "one")
    train("pretrain-shapes", settings, tmp_path / "two", processes=2)
    metrics = json.loads((tmp_path / "two" / "model" / "train_metrics.json").read_text())
    assert metrics["processes"] == 2
    weights = "model/unet/diffusion_pytorch_model.safetensors"
    single, parallel = load_file(tmp_path / "one" / weights), load_file(tmp_path / "two" / weights)
    assert single.keys() == parallel.keys() and single
    for key in single:
        torch.testing.assert_close(parallel[key], single[key], rtol=1e-4, atol=1e-6)


@needs_torchrun
@pytest.mark.parametrize("mode", ["backprop", "reinforce"])
def test_the_diversity_reward_is_one_update_over_two_processes(tiny_shapes_folder, tmp_path, mode):
    """Three reward prompts of a batch of four: two on the first process, one on the second. Rewards are
    pooled over processes (REINFORCE's baseline) and weighted so that averaged gradients equal one process's."""
    settings = [
        f"base={tiny_shapes_folder}", "max_steps=2", "batch_size=4", "diversity_weight=0.5", "diversity_prompts=3",
        f"diversity_mode={mode}", "rollout_steps=2", "sample_every=0", "sample_prompts=2", "checkpoint_every=2",
    ]  # fmt: skip
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert_two_processes_train_as_one(
        "cfg-distill-shapes", settings, tmp_path, tiny_shapes_folder, weights, "diversity_reward"
    )


@needs_torchrun
def test_musicgen_distillation_is_one_update_over_two_processes(tiny_musicgen, tmp_path):
    """Token-level KL on both processes, REINFORCE pairs for three of four prompts (two, then one)."""
    settings = [
        f"base={tiny_musicgen}", "max_new_tokens=8", "max_steps=2", "batch_size=4", "lr=0.01",
        "diversity_weight=0.5", "diversity_prompts=3", "checkpoint_every=2",
    ]  # fmt: skip
    assert_two_processes_train_as_one(
        "cfg-distill-musicgen", settings, tmp_path, tiny_musicgen, "model.safetensors", "diversity"
    )


@needs_torchrun
def test_reward_finetuning_is_one_update_over_two_processes(tiny_shapes_folder, tmp_path):
    """DRaFT-3 on guided rollouts plus the pretraining loss, the recipe's base anchor and a diversity reward, two
    captions (four rollouts) per process."""
    settings = [
        f"base={tiny_shapes_folder}", "max_steps=2", "batch_size=4", "lr=1e-3", "sample_steps=3", "backprop_steps=3",
        "diversity_weight=0.5", "sample_every=0", "sample_prompts=2", "checkpoint_every=2",
    ]  # fmt: skip
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert_two_processes_train_as_one(
        "reward-shapes", settings, tmp_path, tiny_shapes_folder, weights, "diversity_reward"
    )


@needs_torchrun
def test_ddpo_is_one_update_over_two_processes(tiny_shapes_folder, tmp_path):
    """One caption's four trajectories per round, two on each process: its advantages need every process's
    rewards (pooled before the stat tracker), and the first of two inner updates is taken inside the round."""
    settings = [
        f"base={tiny_shapes_folder}", "max_steps=2", "batch_size=4", "samples_per_prompt=4", "stat_min_count=2",
        "sample_steps=3", "inner_epochs=2", "lr=1e-3", "lr_warmup_steps=0", "sample_every=0", "sample_prompts=2",
        "checkpoint_every=2",
    ]  # fmt: skip
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert_two_processes_train_as_one("ddpo-shapes", settings, tmp_path, tiny_shapes_folder, weights, "reward")


def assert_two_processes_train_as_one(recipe, settings, tmp_path, base: Path, weights: str, reward: str) -> None:
    """One and two processes log the same pooled reward and move the exported ``weights`` alike.

    Adam turns float noise in near-zero gradients into full-size steps on a few weights, so the updates
    are compared as a whole: within 1% of the update's norm (each process drawing its own reward pairs
    gave 27-32%).
    """
    runs = tmp_path / "one", tmp_path / "two"
    train(recipe, settings, runs[0])
    train(recipe, settings, runs[1], processes=2)
    metrics = [json.loads((run / "model" / "train_metrics.json").read_text()) for run in runs]
    assert [m["processes"] for m in metrics] == [1, 2]
    assert metrics[1][reward] == pytest.approx(metrics[0][reward], rel=1e-5)

    start, one, two = (load_file(folder / weights) for folder in (base, runs[0] / "model", runs[1] / "model"))
    assert one.keys() == two.keys() and one.keys() <= start.keys()
    update_one = torch.cat([(one[k] - start[k]).flatten() for k in one])
    update_two = torch.cat([(two[k] - start[k]).flatten() for k in one])
    assert update_one.norm() > 0
    assert (update_two - update_one).norm() < 0.01 * update_one.norm()


def test_an_accelerator_that_misses_the_launched_processes_is_refused(monkeypatch):
    one_process = SimpleNamespace(num_processes=1)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_process_count(one_process)  # a plain run
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="launched as 2 processes"):
        check_process_count(one_process)
    check_process_count(SimpleNamespace(num_processes=2))
