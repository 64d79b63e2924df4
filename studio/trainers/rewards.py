"""Rewards that trainers optimise: one interface, judged on the *reward* judge (never the eval judge).

A reward maps decoded samples (images ``(B, 3, H, W)`` in [-1, 1], or waveforms ``(B, T)``) and their prompts to
one score per sample (:class:`Reward`). Trainers name it by string, looked up in :data:`REWARDS` (the judge's
``adherence``, the pairwise ``diversity``), or bring their own by import path, ``module.path:callable``
(:func:`build_reward`). Reward backpropagation (DRaFT, AlignProp) needs the scores to be differentiable in the
samples; policy-gradient trainers (DDPO, REINFORCE) use their values only.

An :class:`Embedder` maps a batch of samples in a pipeline's model space (pixels, VAE latents,
mel images) to embeddings. Every reward and embedder here is differentiable, so rewards can be
backpropagated through the sampler: images end to end (pixels or VAE decoder → judge), music through
the mel vocoder with its Griffin-Lim phase held fixed (:meth:`studio.models.audio.MelCodec.decode`).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from studio.judges import JudgeOutput, load_judge
from studio.models.zoo import Role
from studio.worlds import get_world


@dataclass
class Scores:
    """What a reward returns: ``reward`` ``(B,)`` and, optionally, per-sample numbers to log (``(B,)`` each)."""

    reward: torch.Tensor
    logged: dict[str, torch.Tensor] = field(default_factory=dict)


class Reward(Protocol):
    """``(samples, prompts) -> (B,)`` scores (higher is better), or :class:`Scores`.

    Args:
        samples: decoded samples, images ``(B, 3, H, W)`` in [-1, 1] or waveforms ``(B, T)``.
        prompts: the ``B`` prompts they were sampled for.
    """

    def __call__(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor | Scores: ...


def decode_samples(pipe, samples: torch.Tensor) -> torch.Tensor:
    """Model space → what rewards score: images ``(B, 3, H, W)`` in [-1, 1], or waveforms ``(B, T)``.

    Args:
        pipe: an image pipeline (pixels or ``vae`` latents) or a music pipeline (``codec`` mels).
        samples: ``(B, C, H, W)`` model-space samples; the decode is differentiable in them.
    """
    codec, vae = getattr(pipe, "codec", None), getattr(pipe, "vae", None)
    if codec is not None:
        return codec.decode(samples.float())
    if vae is not None:
        return vae.decode(samples / vae.config.scaling_factor).sample.clamp(-1, 1)
    return samples.clamp(-1, 1)


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
        """Model space → judge input (:func:`decode_samples`)."""
        return decode_samples(self, samples)

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


class AdherenceReward:
    """The reward judge's log-likelihood of what each prompt asks for (:func:`label_log_likelihood`).

    Also logs ``reward_judge_hits``, the fraction of each prompt's named attributes the judge's argmax gets right.

    Args:
        world: the world whose judge scores the samples and whose phrases parse the prompts.
        attributes: the attributes to score (empty: every attribute a prompt names).
        role: ``reward`` for training; ``eval`` only to measure reward hacking.

    Raises:
        ValueError: for attributes the world's judge does not know.
    """

    def __init__(self, world: str, attributes: Sequence[str] = (), role: Role = "reward"):
        self.world = get_world(world)
        self.judge = load_judge(world, role).eval().requires_grad_(False)
        vocabulary = self.judge.attributes
        unknown = sorted(set(attributes) - set(vocabulary))
        if unknown:
            raise ValueError(
                f"attributes {unknown} are not attributes of {self.world.name}; use some of {sorted(vocabulary)}"
            )
        self.vocabulary = {a: v for a, v in vocabulary.items() if not attributes or a in attributes}

    def __call__(self, samples: torch.Tensor, prompts: Sequence[str]) -> Scores:
        judged = self.judge(samples.to(self.judge.device))
        targets = [self.world.parse_prompt(p) for p in prompts]
        reward, hits = label_log_likelihood(judged.logits, targets, self.vocabulary)
        return Scores(reward, {"reward_judge_hits": hits})


class DiversityReward:
    """``1 − cos`` of the reward judge's embeddings of two samples of one prompt (:func:`pair_diversity`).

    Samples come in consecutive pairs of the same prompt (``0, 1``, ``2, 3``, ...); both samples of a pair get
    the pair's score, so the mean over samples is the mean over pairs.

    Args:
        world: the world whose judge embeds the samples.
        attributes: unused (the embedding sees every attribute); accepted so every named reward builds alike.
        role: the judge's role.
    """

    def __init__(self, world: str, attributes: Sequence[str] = (), role: Role = "reward"):
        self.judge = load_judge(world, role).eval().requires_grad_(False)

    def __call__(self, samples: torch.Tensor, prompts: Sequence[str]) -> Scores:
        prompts = list(prompts)
        if len(prompts) % 2 or prompts[0::2] != prompts[1::2]:
            raise ValueError(
                "the diversity reward scores consecutive pairs of samples of one prompt, got prompts "
                f"{prompts[:4]}...; sample each prompt an even number of times, in consecutive order"
            )
        embedding = self.judge(samples.to(self.judge.device)).embedding
        return Scores(pair_diversity(embedding[0::2], embedding[1::2]).repeat_interleave(2))


#: The one place a reward name maps to its class; ``module.path:callable`` names a reward of your own.
REWARDS: dict[str, Callable[..., Reward]] = {
    "adherence": AdherenceReward,
    "diversity": DiversityReward,
}


def import_reward(path: str) -> Reward:
    """The callable at ``module.path:callable`` (a function, or an object with ``__call__``), used as it is.

    Raises:
        ValueError: in one line, for a path that is not ``module:name`` or does not resolve to a callable.
    """
    fix = f"use one of {sorted(REWARDS)} or module.path:callable"
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"reward {path!r} is neither a known reward nor an import path; {fix}")
    try:
        found = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"reward {path!r} does not resolve ({reason}); {fix}") from None
    if not callable(found):
        raise ValueError(f"reward {path!r} is a {type(found).__name__}, not a callable; {fix}")
    return found


def check_reward(name: str) -> str:
    """Validate a config's reward: a name in :data:`REWARDS` or an import path that resolves (see
    :func:`import_reward`); returns ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"reward must be one of {sorted(REWARDS)} or module.path:callable, got {name!r}")
    if name not in REWARDS:
        import_reward(name)
    return name


def build_reward(name: str, world: str, attributes: Sequence[str] = ()) -> Reward:
    """The reward ``name``: a :data:`REWARDS` class built on ``world``'s reward judge, or an imported callable.

    Args:
        name: a key of :data:`REWARDS`, or ``module.path:callable``.
        world: the world whose reward judge the named rewards use.
        attributes: the attributes the adherence reward scores (empty: all a prompt names).
    """
    if name in REWARDS:
        return REWARDS[name](world, attributes=attributes)
    return import_reward(name)


def score(reward: Reward, samples: torch.Tensor, prompts: Sequence[str]) -> Scores:
    """``reward(samples, prompts)`` as :class:`Scores`, checked to hold one score per sample.

    Raises:
        ValueError: when the reward returns anything but a ``(B,)`` tensor (or :class:`Scores` holding one).
    """
    out = reward(samples, list(prompts))
    scores = out if isinstance(out, Scores) else Scores(out)
    if not isinstance(scores.reward, torch.Tensor) or tuple(scores.reward.shape) != (len(samples),):
        shape = tuple(scores.reward.shape) if isinstance(scores.reward, torch.Tensor) else type(scores.reward).__name__
        raise ValueError(
            f"the reward returned {shape} for {len(samples)} samples; a reward returns one score per sample, a "
            f"tensor of shape ({len(samples)},)"
        )
    return scores
