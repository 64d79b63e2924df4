"""How far finetuned models drift from their base on their own rollouts, step by step.

Usage:
    .venv/bin/python benchmarks/rollout_gap.py RUN_OR_MODEL [RUN_OR_MODEL ...] [--base shapes] [--batches 3]

Each model (a pipeline folder, or a run folder holding ``model/``) samples guided rollouts of world captions
as the ``reward-shapes`` recipe does (10 DDIM steps, w = 3, rescale 0.7, guided at t/T ≤ 0.6). At every step's state
it prints the mean squared difference between the model's and the base's outputs on both branches: the
quantity the reward trainer's ``anchor_weight`` penalises at one random step. Also prints the reward judge's
hit rate on the rollouts' final samples.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from studio.recipes import get_recipe
from studio.trainers.config import sample_generator
from studio.trainers.reward_finetune import RewardFinetuneTrainer
from studio.worlds import sample_seed

#: A caption stream apart from the recipe's training stream (``data_seed`` 8642).
CAPTION_SEED = 999


def unet_folder(path: Path) -> Path:
    model = path / "model" if (path / "model").is_dir() else path
    return model / "unet"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--base", default="shapes")
    parser.add_argument("--batches", type=int, default=3, help="batches of 16 rollouts")
    args = parser.parse_args(argv)

    # the recipe's rollouts (10 DDIM steps, w = 3 refined); gradients are not needed, so K = 1
    recipe = get_recipe("reward-shapes")
    config = dataclasses.replace(recipe, base=args.base, out=Path("runs/rollout-gap"), backprop_steps=1)
    trainer = RewardFinetuneTrainer(config)
    trainer.setup()
    for path in args.models:
        trainer.model.load_state_dict(UNet2DConditionModel.from_pretrained(unet_folder(path)).state_dict())
        gaps, hits = [], []
        for b in range(args.batches):
            indices = range(b * config.batch_size, (b + 1) * config.batch_size)
            samples = [trainer.world.sample(sample_seed(CAPTION_SEED, i)) for i in indices]
            gens = [sample_generator(0, b, i) for i in indices]
            embeds, mask = trainer.encode([s.caption for s in samples])
            model, base = (
                trainer.predictor(unet, *trainer.with_unconditional(embeds, mask))
                for unet in (trainer.model, trainer.teacher)
            )
            trajectory = []
            with torch.no_grad():
                scores, _ = trainer.reward(samples, embeds, mask, gens, trajectory)
                hits.append(scores.logged["reward_judge_hits"].mean().item())
                per_step = []
                for x, t in zip(trajectory, trainer.sampler.timesteps):
                    x, t = torch.cat([x, x]), t.expand(2 * len(x))
                    per_step.append((model(x, t) - base(x, t)).square().mean().item())
            gaps.append(per_step)
        gap = np.mean(gaps, axis=0)
        steps = " ".join(f"{g:.3f}" for g in gap)
        print(f"{path}: reward-judge hits {np.mean(hits):.3f}; gap per step (high noise first) {steps}", end="")
        print(f"; mean {gap.mean():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
