"""Readable PyTorch references for the attention kernels, and the one tolerance table they are compared with.

Every tensor is laid out ``(batch, seq, heads, head_dim)`` as in diffusers' ``dispatch_attention_fn``. The
references compute in float32 whatever the input dtype and cast the output back, so they are the oracle for
the Triton kernels and for every attention backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    """``|actual - expected| <= atol + rtol * |expected|``, elementwise (``torch.testing.assert_close``)."""

    atol: float
    rtol: float


#: The one tolerance table for kernels against :func:`attention_reference` (outputs and gradients of O(1)
#: random inputs, float32 oracle). float32 covers accumulation-order rounding over <= 256 keys; float16 and
#: bfloat16 cover one rounding of the probabilities to the input dtype before the P·V product (bfloat16 keeps 8
#: mantissa bits: 2^-8 ≈ 4e-3 relative) plus the rounding of the output. A 1% error in the softmax scale
#: exceeds every row (tests/kernels checks that it does).
TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float32: Tolerance(atol=2e-5, rtol=2e-5),
    torch.float16: Tolerance(atol=4e-3, rtol=4e-3),
    torch.bfloat16: Tolerance(atol=3e-2, rtol=2e-2),
}


def default_scale(head_dim: int) -> float:
    """The softmax scale ``1/sqrt(head_dim)`` of "Attention is all you need" (and of SDPA)."""
    return 1.0 / math.sqrt(head_dim)


def additive_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A float32 additive mask: boolean ``True`` (attend) → 0, ``False`` → -inf; float masks pass through."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask.float()


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(q kᵀ · scale + mask) v`` in float32, written out.

    A query row whose keys are all masked (-inf) gets a zero output and zero gradients, as in FlashAttention
    and the kernels here (the plain formula would give NaN).

    Args:
        q: queries ``(B, Lq, H, D)``.
        k: keys ``(B, Lk, H, D)``.
        v: values ``(B, Lk, H, D)``.
        scale: softmax scale (default ``1/sqrt(D)``).
        mask: boolean (True = attend) or additive float mask broadcastable to ``(B, H, Lq, Lk)``.

    Returns:
        ``(B, Lq, H, D)`` in ``q.dtype``.
    """
    scale = default_scale(q.shape[-1]) if scale is None else scale
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
    scores = qf @ kf.transpose(-1, -2) * scale
    bias = additive_mask(mask)
    if bias is not None:
        scores = scores + bias
    row_max = scores.amax(dim=-1, keepdim=True).detach()  # for range only: softmax does not depend on it
    probs = torch.exp(scores - torch.where(torch.isneginf(row_max), 0.0, row_max))
    total = probs.sum(dim=-1, keepdim=True)
    probs = probs / torch.where(total == 0, 1.0, total)  # a row with every key masked: 0, and 0 gradient
    return (probs @ vf).transpose(1, 2).to(q.dtype)


def two_branch_reference(
    q: torch.Tensor,
    k1: torch.Tensor,
    v1: torch.Tensor,
    k2: torch.Tensor,
    v2: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    scale: float | None = None,
    mask1: torch.Tensor | None = None,
    mask2: torch.Tensor | None = None,
) -> torch.Tensor:
    """``w1 · attn(q, k1, v1) + w2 · attn(q, k2, v2)``: two attentions over the same queries, mixed per token.

    Args:
        q: queries ``(B, Lq, H, D)``.
        k1, v1: the first branch's keys and values ``(B, L1, H, D)``.
        k2, v2: the second branch's keys and values ``(B, L2, H, D)``.
        w1, w2: per-token weights ``(B, Lq, H)`` or ``(B, Lq, 1)`` (shared by the heads).
        scale: softmax scale of both branches (default ``1/sqrt(D)``).
        mask1, mask2: masks of each branch, as in :func:`attention_reference`.

    Returns:
        ``(B, Lq, H, D)`` in ``q.dtype``.
    """
    o1 = attention_reference(q, k1, v1, scale, mask1).float()
    o2 = attention_reference(q, k2, v2, scale, mask2).float()
    return (w1.float().unsqueeze(-1) * o1 + w2.float().unsqueeze(-1) * o2).to(q.dtype)
