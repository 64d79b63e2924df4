"""Recipes: named functions that return a training config (``mixstudio train NAME --set key=value``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from studio.judges.train import JudgeTrainConfig
from studio.trainers.cfg_distill import CFGDistillConfig
from studio.trainers.finetune import FinetuneConfig
from studio.trainers.pretrain import PretrainConfig


def _judge(world: str, role: str) -> Callable[[], JudgeTrainConfig]:
    # reward and eval judges differ in init seed, data stream and width, so they fail differently
    seed, data_seed = (1, 101) if role == "reward" else (2, 202)
    per_world = {
        "shapes": {"train_samples": 24_000, "epochs": 6, "width": 24 if role == "reward" else 32},
        # audio convs cost ~10x more per sample on this CPU: fewer samples, narrower, 32 ms frames
        "synth": {
            "train_samples": 8_000,
            "epochs": 6,
            "width": 16 if role == "reward" else 20,
            "time_pool": 2,
            "batch_size": 64,
        },
    }

    def recipe() -> JudgeTrainConfig:
        out = Path(f"runs/judge-{world}-{role}")
        return JudgeTrainConfig(world=world, role=role, seed=seed, data_seed=data_seed, out=out, **per_world[world])

    recipe.__doc__ = f"The {role} judge of the {world} world (ships in assets/judges/{world}-{role})."
    return recipe


def pretrain_shapes() -> PretrainConfig:
    """The embedded text-to-image base model: a 3.1M-parameter pixel-space UNet on 32x32 shapes."""
    # (32, 64, 96) trains 1.8x faster per step than (64, 96, 96) on this CPU (2.75 vs 4.9 s at batch 32,
    # 1 contended thread); in a one-hour budget more steps beat more width. v-prediction without min-SNR:
    # after ~1450 steps, eval-judge colour adherence on training-vocabulary prompts (w=4, DDIM 25) was 0.969,
    # against 0.31 for epsilon + min-SNR-5, whose DDIM samples kept residual noise.
    return PretrainConfig(
        world="shapes",
        out=Path("runs/pretrain-shapes"),
        prediction_type="v_prediction",
        snr_gamma=None,
        channels=(32, 64, 96),
        attention_levels=(1, 2),
        max_steps=1050,
        batch_size=32,
        lr=6e-4,
        lr_warmup_steps=100,
        checkpoint_every=100,
        sample_every=350,
        max_minutes=65,
    )


def pretrain_synth() -> PretrainConfig:
    """The embedded text-to-music base model: a UNet on 80x64 log-mel spectrograms (hop 512)."""
    # Per sample, an 80x128 mel costs ~8x the MACs of a 32x32 RGB image with the same UNet, which would leave
    # ~400 batch-16 steps in an hour. Hop 512 (80x64) and a 16-channel top level bring it to ~1.5x. The vocoder
    # pays for it (benchmarks/bench_vocoder.py, 100 clips: sc 0.412 vs 0.334; eval judge on reconstructions
    # drums 0.91 vs 1.00, key 0.98 vs 1.00, tempo/mode/lead unchanged).
    return PretrainConfig(
        world="synth",
        out=Path("runs/pretrain-synth"),
        prediction_type="v_prediction",
        snr_gamma=None,
        mel_hop_length=512,
        channels=(16, 32, 64, 96),
        attention_levels=(2, 3),
        max_steps=1300,
        batch_size=16,
        lr=6e-4,
        lr_warmup_steps=100,
        checkpoint_every=100,
        sample_every=325,
        max_minutes=65,
    )


def cfg_distill_shapes() -> CFGDistillConfig:
    """The unguided student of the embedded ``shapes`` model (β = 0: the quality student).

    ``--set diversity_weight=0.5`` trains a diversity student (reward backpropagated through the last two of
    eight sampler steps).
    """
    return CFGDistillConfig(
        base="shapes",
        out=Path("runs/cfg-distill-shapes"),
        guidance_scale=4.0,
        on_policy=0.75,
        rollout_steps=10,
        diversity_mode="backprop",
        max_steps=400,
        batch_size=16,
        lr=1e-4,
        lr_warmup_steps=20,
        checkpoint_every=100,
        sample_every=100,
    )


def cfg_distill_synth() -> CFGDistillConfig:
    """The unguided student of the embedded ``synth`` model; the diversity term uses REINFORCE.

    The Griffin-Lim vocoder is not differentiable, so ``diversity_weight > 0`` trains by policy gradient on
    η = 1 trajectories (two samples for each of 4 prompts per step, batch-mean baseline).
    """
    return CFGDistillConfig(
        base="synth",
        out=Path("runs/cfg-distill-synth"),
        guidance_scale=4.0,
        on_policy=0.75,
        rollout_steps=10,
        diversity_mode="reinforce",
        diversity_prompts=4,
        max_steps=300,
        batch_size=8,
        lr=1e-4,
        lr_warmup_steps=20,
        checkpoint_every=100,
        sample_every=100,
    )


def finetune() -> FinetuneConfig:
    """DreamBooth-style personalisation of the embedded ``shapes`` model with a LoRA (any method via --set).

    ``mixstudio train finetune --set data.dir=concept/ --set adapter.method=oft --set adapter.block_size=8``
    """
    return FinetuneConfig(
        base="shapes",
        out=Path("runs/finetune"),
        adapter={"method": "lora"},  # method defaults only, so --set adapter.method=oft leaves no LoRA keys
        prior_weight=1.0,
        class_samples=32,
        max_steps=300,
        batch_size=4,
        lr=1e-3,
        lr_warmup_steps=10,
        checkpoint_every=100,
        sample_every=100,
    )


#: The one place a recipe name maps to the function that builds its config.
RECIPES: dict[str, Callable[[], Any]] = {
    **{f"judge-{world}-{role}": _judge(world, role) for world in ("shapes", "synth") for role in ("reward", "eval")},
    "pretrain-shapes": pretrain_shapes,
    "pretrain-synth": pretrain_synth,
    "cfg-distill-shapes": cfg_distill_shapes,
    "cfg-distill-synth": cfg_distill_synth,
    "finetune": finetune,
}


def get_recipe(name: str) -> Any:
    """The config of recipe ``name``.

    Raises:
        ValueError: naming the unknown recipe and the known ones.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; use one of {sorted(RECIPES)}")
    return RECIPES[name]()


def run_config(config: Any, command: str = "") -> Any:
    """Run the trainer that owns ``config``'s type."""
    from studio.judges.train import train_judge
    from studio.trainers.cfg_distill import CFGDistillTrainer
    from studio.trainers.finetune import FinetuneTrainer
    from studio.trainers.pretrain import PretrainTrainer

    runners: dict[type, Callable[..., Any]] = {
        JudgeTrainConfig: train_judge,
        PretrainConfig: lambda config, command: PretrainTrainer(config, command=command).fit(),
        CFGDistillConfig: lambda config, command: CFGDistillTrainer(config, command=command).fit(),
        FinetuneConfig: lambda config, command: FinetuneTrainer(config, command=command).fit(),
    }
    runner = runners.get(type(config))
    if runner is None:
        raise ValueError(f"no trainer for config type {type(config).__name__}")
    return runner(config, command=command)
