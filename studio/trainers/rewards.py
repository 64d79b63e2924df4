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

from studio.judges import JudgeOutput, load_judge


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

    def judge_output(self, samples: torch.Tensor) -> JudgeOutput:
        """The judge's logits and embedding of model-space samples, differentiable in the samples."""
        return self.judge(self.decode(samples).to(self.judge.device))

    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        return self.judge_output(samples).embedding


def pair_diversity(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Diversity reward of sample pairs, ``r = 1 − cos(E(x1), E(x2))`` (arXiv 2410.06084, eq. 3); ``(B,)``.

    Example: identical embeddings give 0, orthogonal ones 1, opposite ones 2.
    """
    return 1 - F.cosine_similarity(first, second, dim=-1)


def label_log_likelihood(
    logits: dict[str, torch.Tensor], targets: list[dict[str, str]], vocabulary: dict[str, list[str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adherence reward: per sample, the mean judge log-probability of the values its prompt asks for.

    ``r(x, c) = 1/|A(c)| · Σ_{a ∈ A(c)} log p(a = c_a | x)`` over the attributes ``A(c)`` that ``targets``
    names and the judge knows; a sample whose target names none of them gets 0 and counts as no sample.

    Args:
        logits: the judge's ``{attribute: (B, n_values)}``.
        targets: per sample, ``{attribute: value}`` (what its prompt names).
        vocabulary: the judge's ``{attribute: [value, ...]}`` in class order.

    Returns:
        ``(reward, hits)``: the reward ``(B,)`` and, per sample, the fraction of its named attributes that
        the judge's argmax gets right ``(B,)`` (1 where none is named).

    Example: two attributes at probability 0.5 and 1 give ``(log 0.5 + 0) / 2 ≈ −0.347``.
    """
    batch = len(targets)
    device = next(iter(logits.values())).device
    total = torch.zeros(batch, device=device)
    hits = torch.zeros(batch, device=device)
    count = torch.zeros(batch, device=device)
    for attr, values in vocabulary.items():
        rows = [i for i, target in enumerate(targets) if attr in target]
        if not rows:
            continue
        index = torch.tensor(rows, device=device)
        label = torch.tensor([values.index(targets[i][attr]) for i in rows], device=device)
        log_p = F.log_softmax(logits[attr][index].float(), dim=-1)
        total = total.index_add(0, index, log_p.gather(1, label[:, None])[:, 0])
        hits = hits.index_add(0, index, (log_p.argmax(-1) == label).float())
        count = count.index_add(0, index, torch.ones_like(label, dtype=count.dtype))
    named = count.clamp_min(1)
    return total / named, torch.where(count > 0, hits / named, torch.ones_like(hits))


def pooled_statistics(values: torch.Tensor, accelerator) -> tuple[float, float]:
    """Mean and unbiased standard deviation of ``values`` pooled over every data-parallel process.

    One collective, which every process must join, including one that holds no values this step.
    """
    local = values.detach().double()
    count = torch.tensor(float(len(local)), dtype=local.dtype, device=local.device)
    total, squares, count = accelerator.reduce(torch.stack([local.sum(), (local**2).sum(), count]), "sum").tolist()
    mean = total / count
    return mean, math.sqrt(max(squares - count * mean**2, 0.0) / max(count - 1, 1))
