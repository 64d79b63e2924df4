"""Rewards that trainers optimise: one interface, judged on the *reward* judge (never the eval judge).

An :class:`Embedder` maps a batch of samples in a pipeline's model space (pixels, VAE latents,
mel images) to embeddings; rewards are functions of embeddings. Every embedder here is
differentiable, so rewards can be backpropagated through the sampler: images end to end (pixels
or VAE decoder → judge), music through the mel vocoder with its Griffin-Lim phase held fixed
(:meth:`studio.models.audio.MelCodec.decode`). Trainers may also optimise any reward by policy
gradient (REINFORCE), which needs no gradient at all.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F

from studio.judges import load_judge


class Embedder(Protocol):
    """``(B, ...) model-space samples -> (B, D) embeddings``, differentiable in the samples."""

    def __call__(self, samples: torch.Tensor) -> torch.Tensor: ...


class JudgeEmbedder:
    """Embeddings of a world judge (``reward`` by default) on a pipeline's model-space samples.

    Args:
        pipe: an image pipeline (pixels or ``vae`` latents) or a music pipeline (``codec`` mels).
        world: the judge's world.
        role: ``reward`` for training signals; ``eval`` only to measure reward hacking.
    """

    def __init__(self, pipe, world: str, role: str = "reward"):
        self.judge = load_judge(world, role).eval().requires_grad_(False)
        self.vae = getattr(pipe, "vae", None)
        self.codec = getattr(pipe, "codec", None)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Model space → judge input: images ``(B, 3, H, W)`` in [-1, 1], or waveforms ``(B, T)``."""
        if self.codec is not None:
            return self.codec.decode(samples.float())
        if self.vae is not None:
            return self.vae.decode(samples / self.vae.config.scaling_factor).sample.clamp(-1, 1)
        return samples.clamp(-1, 1)

    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        return self.judge(self.decode(samples).to(self.judge.device)).embedding


def pair_diversity(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Diversity reward of sample pairs, ``r = 1 − cos(E(x1), E(x2))`` (arXiv 2410.06084, eq. 3); ``(B,)``.

    Example: identical embeddings give 0, orthogonal ones 1, opposite ones 2.
    """
    return 1 - F.cosine_similarity(first, second, dim=-1)


def pooled_statistics(values: torch.Tensor, accelerator) -> tuple[float, float]:
    """Mean and unbiased standard deviation of ``values`` pooled over every data-parallel process.

    One collective, which every process must join, including one that holds no values this step.
    """
    local = values.detach().double()
    count = torch.tensor(float(len(local)), dtype=local.dtype, device=local.device)
    total, squares, count = accelerator.reduce(torch.stack([local.sum(), (local**2).sum(), count]), "sum").tolist()
    mean = total / count
    return mean, math.sqrt(max(squares - count * mean**2, 0.0) / max(count - 1, 1))
