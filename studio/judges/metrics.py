"""Metrics on judge outputs: prompt adherence, diversity, Fréchet distance, and SDR for stems."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Adherence:
    """How often judged attributes match what the prompts asked for.

    Attributes:
        overall: fraction of samples whose judged attributes ALL match their prompt's.
        per_attribute: ``{attribute: fraction of samples (that name it) where it matches}``.
        counts: ``{attribute: number of samples whose prompt names it}``.
    """

    overall: float
    per_attribute: dict[str, float]
    counts: dict[str, int]


def prompt_adherence(
    judged: Sequence[Mapping[str, str]], targets: Sequence[Mapping[str, str]], attributes: Sequence[str] | None = None
) -> Adherence:
    """Score judged labels against the attributes each prompt names.

    Args:
        judged: the judge's labels per sample.
        targets: per sample, the attribute values its prompt asks for (a subset of attributes).
        attributes: if given, score only these attributes (e.g. ``["colour", "shape"]``).

    Returns:
        Adherence; samples whose prompt names none of the scored attributes count as matching.

    Raises:
        ValueError: if the two lists differ in length or are empty.
    """
    if len(judged) != len(targets) or not judged:
        raise ValueError(f"need one target per judged sample (got {len(judged)} judged, {len(targets)} targets)")
    hits: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    all_match = 0
    for pred, target in zip(judged, targets, strict=True):
        ok = True
        for attr, value in target.items():
            if attributes is not None and attr not in attributes:
                continue
            counts[attr] += 1
            match = pred.get(attr) == value
            hits[attr] += match
            ok &= match
        all_match += ok
    per_attribute = {attr: hits[attr] / counts[attr] for attr in sorted(counts)}
    return Adherence(overall=all_match / len(judged), per_attribute=per_attribute, counts=dict(counts))


def pairwise_diversity(embeddings: torch.Tensor) -> float:
    """Mean pairwise ``1 − cos`` between the rows of ``embeddings`` ``(N, D)``, N ≥ 2."""
    if embeddings.ndim != 2 or len(embeddings) < 2:
        raise ValueError(f"diversity needs at least 2 embeddings (N, D), got shape {tuple(embeddings.shape)}")
    e = torch.nn.functional.normalize(embeddings.double(), dim=1)
    cos = e @ e.T
    n = len(e)
    off_diagonal = (cos.sum() - cos.diagonal().sum()) / (n * (n - 1))
    return float(1.0 - off_diagonal)


def grouped_diversity(embeddings: torch.Tensor, groups: Sequence[str]) -> float | None:
    """Mean over groups (e.g. prompts) of the within-group :func:`pairwise_diversity`.

    Groups with a single sample are skipped; returns None when no group has two samples.
    """
    if len(groups) != len(embeddings):
        raise ValueError(f"need one group per embedding (got {len(groups)} groups, {len(embeddings)} embeddings)")
    index: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        index[g].append(i)
    values = [pairwise_diversity(embeddings[idx]) for idx in index.values() if len(idx) >= 2]
    return sum(values) / len(values) if values else None


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a (N, D)`` and ``b (M, D)``.

    ``‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^{1/2} Σb Σa^{1/2})^{1/2})`` (Dowson & Landau 1982;
    the FID formula of Heusel et al. 2017), computed with symmetric eigendecompositions in
    float64, which stays real and stable where ``sqrtm`` of the product does not.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"frechet_distance needs (N, D) and (M, D) with N, M >= 2; got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _psd_sqrt(cov_a)
    cross = _psd_sqrt(root_a @ cov_b @ root_a)
    value = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross.trace()
    return float(value.clamp_min(0.0))


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def sdr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Signal-to-distortion ratio in dB, ``10 log10(‖s‖² / ‖s − ŝ‖²)``, over the last axis.

    This is the plain (BSS-eval v4 "new SDR" / MDX challenge) definition, no projection.
    """
    num = reference.pow(2).sum(-1)
    den = (reference - estimate).pow(2).sum(-1)
    return 10 * torch.log10((num + eps) / (den + eps))


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), over the last axis, after removing means.

    The reference is rescaled by ``α = ⟨ŝ, s⟩ / ‖s‖²`` so that gain errors are not penalised.
    """
    estimate = estimate - estimate.mean(-1, keepdim=True)
    reference = reference - reference.mean(-1, keepdim=True)
    alpha = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + eps)
    target = alpha * reference
    noise = estimate - target
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))
