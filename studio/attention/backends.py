"""Attention backends by name: ``BACKENDS`` maps each name to a backend that states its constraints, says why it
cannot run on given inputs, and runs ``attention(q, k, v)`` on ``(batch, seq, heads, head_dim)`` tensors.

============  ==========================  ======================  =========  =====================================
name          what runs                   devices                 head_dim   masks
============  ==========================  ======================  =========  =====================================
``sdpa``      ``F.scaled_dot_product_``   any                     any        boolean or additive, any broadcast
              ``attention`` (default)                                        of (B, H, Lq, Lk)
``triton``    studio's fused kernels      CUDA; CPU only under    <= 256     key masks (B|1, H|1, 1, Lk) only
              (:mod:`studio.kernels`)     ``TRITON_INTERPRET=1``
``xformers``  ``memory_efficient_``       CUDA, xformers          xformers'  boolean or additive (B|1, H|1,
              ``attention``               installed               limits     Lq|1, Lk), expanded
``reference`` softmax(QKᵀ·scale + M)V in  any                     any        boolean or additive, any broadcast
              float32: the oracle
============  ==========================  ======================  =========  =====================================

dtypes: float16, bfloat16 and float32 everywhere (``sdpa`` and ``reference`` also float64; ``triton`` has no
bfloat16 under the interpreter). When the chosen backend cannot run, :func:`attention` logs one line naming the
reason and the fallback (``sdpa``), once per (backend, reason), and runs ``sdpa``.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from studio.kernels.attention import MAX_HEAD_DIM, check_qkv, triton_environment, triton_unavailable
from studio.kernels.reference import additive_mask, attention_reference

logger = logging.getLogger(__name__)

#: What runs when the chosen backend cannot: it takes every device, dtype, head dim and mask.
FALLBACK = "sdpa"
_FLOAT16_32 = (torch.float16, torch.bfloat16, torch.float32)
_logged: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Constraints:
    """What a backend accepts. ``devices``/``max_head_dim`` of None mean any."""

    devices: tuple[str, ...] | None
    dtypes: tuple[torch.dtype, ...]
    max_head_dim: int | None
    key_masks_only: bool  # masks must not vary over queries: (B|1, H|1, 1, Lk)
    summary: str

    def check(self, q: torch.Tensor, mask: torch.Tensor | None) -> str | None:
        """The first constraint these inputs break, in words, or None."""
        if self.devices is not None and q.device.type not in self.devices:
            return f"device {q.device.type!r} is not one of {list(self.devices)}"
        if q.dtype not in self.dtypes:
            return f"dtype {q.dtype} is not one of {[str(d) for d in self.dtypes]}"
        if self.max_head_dim is not None and q.shape[-1] > self.max_head_dim:
            return f"head_dim {q.shape[-1]} > {self.max_head_dim}"
        if self.key_masks_only and mask is not None and mask.shape[2] != 1:
            return f"a mask that varies over queries {tuple(mask.shape)} (only key masks (B, H, 1, Lk))"
        return None


class AttentionBackend:
    """One way to compute attention. Subclasses set ``name`` and ``constraints`` and implement ``run``."""

    name: str
    constraints: Constraints

    def environment(self, device: torch.device) -> str | None:
        """Why this backend cannot run on ``device`` in this process (a missing package), or None."""
        return None

    def check(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> str | None:
        """Why this backend cannot run on these inputs, or None. ``mask`` is 4-D (see :func:`normalize_mask`)."""
        return self.environment(q.device) or self.constraints.check(q, mask)

    def run(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None
    ) -> torch.Tensor:
        raise NotImplementedError


class SdpaBackend(AttentionBackend):
    name = "sdpa"
    constraints = Constraints(None, (*_FLOAT16_32, torch.float64), None, False, "PyTorch picks its own kernel")

    def run(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None) -> Tensor:
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, scale=scale
        )
        return out.transpose(1, 2)


class TritonBackend(AttentionBackend):
    name = "triton"
    constraints = Constraints(("cuda", "cpu"), _FLOAT16_32, MAX_HEAD_DIM, True, "studio.kernels.flash_attention")

    def check(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> str | None:
        return triton_unavailable(q, (mask,)) or self.constraints.check(q, mask)

    def environment(self, device: torch.device) -> str | None:
        return triton_environment(device)

    def run(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None) -> Tensor:
        from studio.kernels.attention import flash_attention

        return flash_attention(q, k, v, scale, key_bias=None if mask is None else mask[:, :, 0, :])


class XformersBackend(AttentionBackend):
    name = "xformers"
    constraints = Constraints(("cuda",), _FLOAT16_32, None, False, "xformers.ops.memory_efficient_attention")

    def environment(self, device: torch.device) -> str | None:
        if importlib.util.find_spec("xformers") is None:
            return "xformers is not installed"
        return None if device.type == "cuda" else "xformers needs CUDA tensors"

    def run(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None) -> Tensor:
        import xformers.ops

        bias = None
        if mask is not None:
            batch, seq_q, heads = q.shape[:3]
            seq_k = k.shape[1]
            # xformers reads a tensor bias with rows aligned to 8 elements: allocate wider, then slice
            padded = torch.empty(batch, heads, seq_q, -(-seq_k // 8) * 8, dtype=q.dtype, device=q.device)
            bias = padded[..., :seq_k]
            bias.copy_(additive_mask(mask).expand(batch, heads, seq_q, seq_k))
        return xformers.ops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=scale)


class ReferenceBackend(AttentionBackend):
    name = "reference"
    constraints = Constraints(None, (*_FLOAT16_32, torch.float64), None, False, "studio.kernels.attention_reference")

    def run(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None) -> Tensor:
        return attention_reference(q, k, v, scale, mask)


#: The one place a backend name maps to its implementation.
BACKENDS: dict[str, AttentionBackend] = {
    "sdpa": SdpaBackend(),
    "triton": TritonBackend(),
    "xformers": XformersBackend(),
    "reference": ReferenceBackend(),
}


def get_attention_backend(name: str) -> AttentionBackend:
    """The backend called ``name``; ValueError naming the allowed names otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; use one of {sorted(BACKENDS)}")
    return BACKENDS[name]


def available_backends(device: torch.device | str = "cpu") -> dict[str, str | None]:
    """Each backend name → why it cannot run on ``device`` in this process (None: it can)."""
    device = torch.device(device)
    return {name: backend.environment(device) for name, backend in BACKENDS.items()}


def normalize_mask(mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """A mask as 4-D ``(B|1, H|1, Lq|1, Lk)``; ValueError for a shape that does not broadcast.

    Accepted: ``(B, Lk)`` key padding, ``(B, Lq|1, Lk)``, ``(B|1, H|1, Lq|1, Lk)``; boolean (True = attend) or
    additive float.
    """
    if mask is None:
        return None
    batch, seq_q, heads, seq_k = q.shape[0], q.shape[1], q.shape[2], k.shape[1]
    given = tuple(mask.shape)
    if mask.dim() == 2:
        mask = mask[:, None, None, :]
    elif mask.dim() == 3:
        mask = mask[:, None]
    if (
        mask.dim() != 4
        or mask.shape[0] not in (1, batch)
        or mask.shape[1] not in (1, heads)
        or mask.shape[2] not in (1, seq_q)
        or mask.shape[3] != seq_k
    ):
        raise ValueError(
            f"mask {given} does not broadcast to (batch, heads, seq_q, seq_k) = "
            f"{(batch, heads, seq_q, seq_k)}; pass (B, Lk), (B, Lq or 1, Lk) or (B or 1, H or 1, Lq or 1, Lk)"
        )
    return mask


def _log_fallback(name: str, reason: str) -> None:
    if (name, reason) not in _logged:
        _logged.add((name, reason))
        logger.warning("attention backend %r cannot run (%s); falling back to %r", name, reason, FALLBACK)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    backend: str = "sdpa",
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention through the named backend, or through ``sdpa`` (logged once) where that one cannot run.

    Args:
        q: queries ``(B, Lq, H, D)``.
        k: keys ``(B, Lk, H, D)``.
        v: values ``(B, Lk, H, D)``.
        backend: a name in :data:`BACKENDS`.
        mask: boolean (True = attend) or additive float mask, see :func:`normalize_mask`.
        scale: softmax scale (default ``1/sqrt(D)``).

    Returns:
        ``(B, Lq, H, D)`` in q's dtype.
    """
    chosen = get_attention_backend(backend)
    check_qkv(q, k, v)
    mask = normalize_mask(mask, q, k)
    reason = chosen.check(q, k, v, mask)
    if reason is not None:
        _log_fallback(backend, reason)
        chosen = BACKENDS[FALLBACK]
    return chosen.run(q, k, v, mask, scale)
