"""Train a judge on world samples and write it with a model card (``mixstudio train judge-*``)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from studio.config import to_dict
from studio.io import atomic_dir, atomic_write_text
from studio.judges.model import Judge, judge_loss, parameter_count
from studio.worlds import World, get_world, sample_seed
from studio.worlds.base import to_tensor

logger = logging.getLogger(__name__)

#: Held-out judge accuracy is measured on this seed stream, disjoint from every training stream.
HELD_OUT_SEED = 987_654_321


@dataclass(kw_only=True)
class JudgeTrainConfig:
    """How to train one judge.

    Attributes:
        world: ``shapes`` or ``synth``.
        role: ``reward`` (the only judge trainers may optimise) or ``eval`` (every reported number).
        seed: initialisation and shuffling seed.
        data_seed: base seed of the training sample stream (reward and eval judges use different ones).
        train_samples: number of rendered training samples.
        eval_samples: number of held-out samples for the accuracy table.
        epochs: passes over the training samples (each with fresh augmentation).
        batch_size: samples per step.
        lr: peak AdamW learning rate (one-cycle schedule).
        width: first-stage CNN channels.
        embed_dim: embedding size.
        time_pool: spectrogram frames averaged before the CNN (audio judges; cost ∝ 1/time_pool).
        out: output folder (diffusers ``save_pretrained`` layout plus ``metrics.json`` and ``README.md``).
    """

    world: Literal["shapes", "synth"] = "shapes"
    role: Literal["reward", "eval"] = "eval"
    seed: int = 0
    data_seed: int = 1
    train_samples: int = 24_000
    eval_samples: int = 2_000
    epochs: int = 6
    batch_size: int = 128
    lr: float = 3e-3
    width: int = 32
    embed_dim: int = 128
    time_pool: int = 1
    out: Path = Path("runs/judge")

    def __post_init__(self) -> None:
        if self.world not in ("shapes", "synth"):
            raise ValueError(f"world must be 'shapes' or 'synth', got {self.world!r}")
        if self.role not in ("reward", "eval"):
            raise ValueError(f"role must be 'reward' or 'eval', got {self.role!r}")
        for name in ("train_samples", "eval_samples", "epochs", "batch_size", "width", "embed_dim", "time_pool"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not (0 < self.lr < 1):
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if self.data_seed == HELD_OUT_SEED:
            raise ValueError(f"data_seed {HELD_OUT_SEED} is the held-out stream; pick another")


def render_batch(world: World, base_seed: int, count: int, desc: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Render ``count`` samples of a seed stream: data ``(N, ...)`` and class indices per attribute ``(N,)``."""
    data, targets = [], {attr: [] for attr in world.attributes}
    for i in tqdm(range(count), desc=desc, unit="sample", leave=False, mininterval=2):
        sample = world.sample(sample_seed(base_seed, i))
        data.append(to_tensor(sample.data))
        for attr, values in world.attributes.items():
            targets[attr].append(values.index(sample.labels[attr]))
    return torch.stack(data), {attr: torch.tensor(v) for attr, v in targets.items()}


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Nuisance augmentation that a generator's output may show: noise, blur (images), shifts (audio)."""
    b = x.shape[0]
    shape = (b,) + (1,) * (x.ndim - 1)
    if x.ndim == 4:
        blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        use_blur = torch.rand(shape, generator=generator) < 0.25
        x = torch.where(use_blur, 0.5 * x + 0.5 * blurred, x)
        sigma = torch.rand(shape, generator=generator) * 0.12 * (torch.rand(shape, generator=generator) < 0.5)
        return (x + sigma * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
    rms = x.pow(2).mean(-1, keepdim=True).sqrt()
    snr_db = 15 + 30 * torch.rand(shape, generator=generator)
    noisy = torch.rand(shape, generator=generator) < 0.5
    noise = torch.randn(x.shape, generator=generator) * rms * 10 ** (-snr_db / 20) * noisy
    gain = 10 ** ((torch.rand(shape, generator=generator) - 0.5) * 12 / 20)
    return (x + noise) * gain


def accuracy_table(model: Judge, data: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """Held-out accuracy per attribute, plus ``all`` (every attribute right)."""
    labels, _ = model.predict(data)
    table, all_ok = {}, torch.ones(len(data), dtype=torch.bool)
    for attr, values in model.attributes.items():
        pred = torch.tensor([values.index(lab[attr]) for lab in labels])
        ok = pred == targets[attr]
        table[attr] = float(ok.float().mean())
        all_ok &= ok
    table["all"] = float(all_ok.float().mean())
    return table


def train_judge(config: JudgeTrainConfig, command: str = "") -> dict[str, float]:
    """Train a judge as ``config`` says and write it to ``config.out``; returns the accuracy table."""
    start = time.time()
    torch.manual_seed(config.seed)
    world = get_world(config.world)
    model = Judge(
        world=world.name,
        modality=world.modality,
        attributes=world.describe(),
        width=config.width,
        embed_dim=config.embed_dim,
    )
    data, targets = render_batch(world, config.data_seed, config.train_samples, f"render {config.world} train")
    held_data, held_targets = render_batch(
        world, HELD_OUT_SEED, config.eval_samples, f"render {config.world} held-out"
    )

    steps_per_epoch = math.ceil(config.train_samples / config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps_per_epoch * config.epochs)
    generator = torch.Generator().manual_seed(config.seed)
    bar = tqdm(total=steps_per_epoch * config.epochs, desc=f"train judge {config.world}-{config.role}", unit="step")
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(config.train_samples, generator=generator)
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            out = model(augment(data[idx], generator))
            loss = judge_loss(out, {attr: t[idx] for attr, t in targets.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
    bar.close()

    table = accuracy_table(model, held_data, held_targets)
    wall = time.time() - start
    logger.info("judge %s-%s held-out accuracy %s (%.0f s)", config.world, config.role, table, wall)
    with atomic_dir(config.out) as tmp:
        model.save_pretrained(tmp)
        metrics = {
            "held_out_accuracy": table,
            "wall_time_s": round(wall, 1),
            "parameters": parameter_count(model),
            "held_out_samples": config.eval_samples,
            "torch_threads": torch.get_num_threads(),
        }
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        atomic_write_text(tmp / "train_config.json", json.dumps(to_dict(config), indent=2) + "\n")
        atomic_write_text(tmp / "README.md", model_card(config, metrics, command))
    return table


def model_card(config: JudgeTrainConfig, metrics: dict, command: str) -> str:
    """Markdown model card: what the judge is, the command that made it, and its accuracy table."""
    rows = "\n".join(f"| {attr} | {acc:.4f} |" for attr, acc in metrics["held_out_accuracy"].items())
    purpose = (
        "the reward judge: the only judge trainers may optimise against"
        if config.role == "reward"
        else "the eval judge: every reported number uses it, never a trainer"
    )
    return f"""# Judge `{config.world}-{config.role}`

An attribute classifier and embedder for the `{config.world}` world; {purpose}.

- Made by: `{command or "mixstudio train judge-" + config.world + "-" + config.role}`
- Wall time: {metrics["wall_time_s"]} s on {metrics["torch_threads"]} CPU threads
- Parameters: {metrics["parameters"]:,}
- Training: {config.train_samples} rendered samples (data seed {config.data_seed}), {config.epochs} epochs, \
batch {config.batch_size}, AdamW one-cycle lr {config.lr}, seed {config.seed}

## Held-out accuracy ({metrics["held_out_samples"]} clean world samples, seed stream {HELD_OUT_SEED})

| attribute | accuracy |
| --- | --- |
{rows}
"""
