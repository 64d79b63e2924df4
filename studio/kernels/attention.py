"""Fused flash attention and two-branch attention: autograd Functions over the Triton kernels, and public
functions that fall back to the PyTorch reference, visibly, where the kernels cannot run.

``flash_attention(q, k, v)`` is ``softmax(q kᵀ/√d) v`` without the attention matrix in memory.
``two_branch_attention(q, k1, v1, k2, v2, w1, w2)`` is ``w1·attn(q, k1, v1) + w2·attn(q, k2, v2)`` in one kernel
that reads Q once and writes one output: the shape of mixture-of-attention (a prior and a personalised branch
mixed by a per-pixel router) and of IP-Adapter's decoupled cross-attention (text keys and image-prompt keys).

Triton is imported on first use, not with this module. The kernels are in ``studio.kernels._attention_triton``;
where they cannot run (no triton, CPU tensors without the interpreter, bfloat16 in the interpreter, head dim over
256, a key bias that needs a gradient) the public functions log one line naming the reason and the fallback,
once per reason, and return the float32 reference of :mod:`studio.kernels.reference`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from types import ModuleType
from typing import Any

import torch

from studio.kernels.reference import attention_reference, default_scale, two_branch_reference

logger = logging.getLogger(__name__)

#: The largest head dim the kernels take (two tiles of up to 128 + 128 columns).
MAX_HEAD_DIM = 256
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_logged: set[tuple[str, str]] = set()


def _kernels() -> ModuleType:
    import studio.kernels._attention_launch as _attention_launch

    return _attention_launch


def _interpreted() -> bool:
    """Whether the kernels are (or, imported now, would be) built for the Triton interpreter; imports nothing."""
    module = sys.modules.get("studio.kernels._attention_triton")
    if module is not None:
        return module.INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def load_kernels(interpret: bool) -> ModuleType:
    """Build the Triton kernels for the interpreter (CPU tensors, slow: tests, debugging) or for the GPU.

    Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` runs, i.e. when the kernel module is imported. This sets
    the variable as asked, (re-)imports the kernel modules and restores it, so it does not leak into subprocesses
    or other libraries. Triton itself is imported first, in the mode the process would give it (diffusers imports
    it anyway, via torch._dynamo); the kernels use only its builtins, so they run interpreted either way.
    """
    import triton.language  # noqa: F401  (triton's own library first, in the process's mode: see above)

    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        import studio.kernels._attention_launch as _attention_launch
        import studio.kernels._attention_triton as _attention_triton

        if interpret != _attention_triton.INTERPRETED:
            importlib.reload(_attention_triton)
            importlib.reload(_attention_launch)
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved
    return _attention_launch


def triton_environment(device: torch.device) -> str | None:
    """Why the Triton attention kernels cannot run on ``device`` in this process, or ``None`` when they can."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'mixstudio[kernels]')"
    if device.type == "cpu" and not _interpreted():
        return "the tensors are on the CPU and the Triton interpreter is off (TRITON_INTERPRET=1 at import)"
    if device.type not in ("cpu", "cuda"):
        return f"Triton has no backend for device {device.type!r}"
    return None


def triton_unavailable(q: torch.Tensor, key_biases: tuple[torch.Tensor | None, ...] = ()) -> str | None:
    """Why the Triton attention kernels cannot run on these inputs, or ``None`` when they can.

    Args:
        q: the queries ``(B, Lq, H, D)`` (device, dtype and head dim decide).
        key_biases: the key biases that will be passed (one that requires grad cannot be used).
    """
    reason = triton_environment(q.device)
    if reason is not None:
        return reason
    if q.dtype not in _KERNEL_DTYPES:
        return f"dtype {q.dtype} is not one of float16, bfloat16, float32"
    if _interpreted() and q.dtype == torch.bfloat16:
        return "the Triton interpreter has no bfloat16 (numpy)"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head_dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    if q.numel() == 0:
        return "an empty input (a grid of no programs)"
    if any(b is not None and b.requires_grad for b in key_biases):
        return "a key bias that requires grad (the kernels give no bias gradient)"
    return None


def _log_fallback(function: str, reason: str) -> None:
    """One line per (function, reason): which kernel cannot run, why, and what runs instead."""
    if (function, reason) not in _logged:
        _logged.add((function, reason))
        logger.warning("%s: Triton kernel cannot run (%s); using the PyTorch reference", function, reason)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, names: str = "q, k, v") -> None:
    """Raise ValueError unless q ``(B, Lq, H, D)`` and k, v ``(B, Lk, H, D)`` agree in shape, dtype and device."""
    qn, kn, vn = (n.strip() for n in names.split(","))
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"{names} must be 4-D (batch, seq, heads, head_dim); got {qn} {tuple(q.shape)}, {kn} {tuple(k.shape)}, "
            f"{vn} {tuple(v.shape)} (from (batch, heads, seq, head_dim) use .transpose(1, 2))"
        )
    if k.shape != v.shape or (k.shape[0], k.shape[2], k.shape[3]) != (q.shape[0], q.shape[2], q.shape[3]):
        raise ValueError(
            f"{kn} and {vn} must be (batch, seq_k, heads, head_dim) with {qn}'s batch, heads and head_dim "
            f"{(q.shape[0], q.shape[2], q.shape[3])}; got {kn} {tuple(k.shape)}, {vn} {tuple(v.shape)}"
        )
    if k.shape[1] == 0:
        raise ValueError(f"{kn} has no keys (seq_k = 0); attention over no keys is undefined")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError(
            f"{names} must share one dtype and device; got {q.dtype}/{q.device}, {k.dtype}/{k.device}, "
            f"{v.dtype}/{v.device}: cast them, e.g. {kn}.to({qn})"
        )


def key_bias_tensor(key_bias: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, name: str) -> torch.Tensor | None:
    """A key bias as the kernels read it: float32 ``(B, H, Lk)`` (broadcast by strides, not copied).

    Args:
        key_bias: boolean (True = attend) or additive float ``(B or 1, H or 1, Lk)``, or None.
    """
    if key_bias is None:
        return None
    batch, seq_k, heads = q.shape[0], k.shape[1], q.shape[2]
    shape = tuple(key_bias.shape)
    if key_bias.dim() != 3 or shape[0] not in (1, batch) or shape[1] not in (1, heads) or shape[2] != seq_k:
        raise ValueError(
            f"{name} must be (batch or 1, heads or 1, seq_k) = ({batch} or 1, {heads} or 1, {seq_k}); got {shape}. "
            "A mask that varies over queries needs the 'sdpa' or 'reference' backend"
        )
    if key_bias.dtype == torch.bool:
        bias = torch.zeros(shape, device=key_bias.device).masked_fill(~key_bias, float("-inf"))
    else:
        bias = key_bias.float()
    bias = bias.expand(batch, heads, seq_k)
    return bias if bias.stride(-1) == 1 else bias.contiguous()


def _as_mask(bias: torch.Tensor | None) -> torch.Tensor | None:
    """A ``(B, H, Lk)`` key bias as a ``(B, H, 1, Lk)`` additive mask for the reference."""
    return None if bias is None else bias.unsqueeze(2)


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd over the fused kernels: forward keeps the output and the log-sum-exp, backward recomputes P."""

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_bias: torch.Tensor | None,
        scale: float,
        config: Any = None,
    ) -> torch.Tensor:
        kernels = _kernels()
        config = config or kernels.kernel_config(q.shape[-1])
        out, lse, _ = kernels.forward(q, [(k, v, key_bias)], None, scale, config)
        ctx.save_for_backward(q, k, v, key_bias, out, lse)
        ctx.scale, ctx.config = scale, config
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, key_bias, out, lse = ctx.saved_tensors
        dq, dk, dv, _ = _kernels().backward(dout, q, [(k, v, key_bias)], None, out, None, lse, ctx.scale, ctx.config)
        return dq, dk[0], dv[0], None, None, None


class TwoBranchAttentionFunction(torch.autograd.Function):
    """Autograd over the two-branch kernels; the branch outputs are kept only when a gradient is needed."""

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k1: torch.Tensor,
        v1: torch.Tensor,
        k2: torch.Tensor,
        v2: torch.Tensor,
        w1: torch.Tensor,
        w2: torch.Tensor,
        key_bias1: torch.Tensor | None,
        key_bias2: torch.Tensor | None,
        scale: float,
        config: Any = None,
    ) -> torch.Tensor:
        kernels = _kernels()
        config = config or kernels.kernel_config(q.shape[-1])
        weights = torch.stack((w1, w2)).float().contiguous()  # (2, B, Lq, H or 1), read by stride
        branches = [(k1, v1, key_bias1), (k2, v2, key_bias2)]
        need_grad = any(ctx.needs_input_grad[:7])
        out, lse, branch_out = kernels.forward(q, branches, weights, scale, config, store_branches=need_grad)
        ctx.save_for_backward(q, k1, v1, k2, v2, key_bias1, key_bias2, weights, out, branch_out, lse)
        ctx.scale, ctx.config, ctx.w_dtypes = scale, config, (w1.dtype, w2.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k1, v1, k2, v2, bias1, bias2, weights, out, branch_out, lse = ctx.saved_tensors
        branches = [(k1, v1, bias1), (k2, v2, bias2)]
        dq, dk, dv, dw = _kernels().backward(dout, q, branches, weights, out, branch_out, lse, ctx.scale, ctx.config)
        shared = weights.shape[-1] == 1  # one weight for every head: its gradient sums over them
        dws = [(g.sum(-1, keepdim=True) if shared else g).to(dtype) for g, dtype in zip(dw, ctx.w_dtypes)]
        return dq, dk[0], dv[0], dk[1], dv[1], dws[0], dws[1], None, None, None, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    *,
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused ``softmax(q kᵀ · scale + key_bias) v`` (forward and backward in Triton).

    Args:
        q: queries ``(B, Lq, H, D)``, float16 / bfloat16 / float32, any Lq.
        k: keys ``(B, Lk, H, D)``, any Lk (77-token text, 4 image-prompt tokens, 4096 pixels).
        v: values ``(B, Lk, H, D)``.
        scale: softmax scale (default ``1/sqrt(D)``).
        key_bias: optional key-padding mask ``(B or 1, H or 1, Lk)``: boolean (True = attend) or additive float
            (diffusers' ``encoder_attention_mask`` bias, -10000 or -inf); no gradient flows to it.

    Returns:
        ``(B, Lq, H, D)`` in q's dtype. Rows whose keys are all masked are zero.
    """
    check_qkv(q, k, v)
    bias = key_bias_tensor(key_bias, q, k, "key_bias")
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    reason = triton_unavailable(q, (key_bias,))
    if reason is not None:
        _log_fallback("flash_attention", reason)
        return attention_reference(q, k, v, scale, _as_mask(bias))
    return FlashAttentionFunction.apply(q, k, v, bias, scale)


def check_weights(w1: torch.Tensor, w2: torch.Tensor, q: torch.Tensor) -> None:
    """Raise ValueError unless w1 and w2 are both ``(B, Lq, H)`` or both ``(B, Lq, 1)``."""
    batch, seq_q, heads = q.shape[:3]
    allowed = {(batch, seq_q, heads), (batch, seq_q, 1)}
    if tuple(w1.shape) not in allowed or w1.shape != w2.shape:
        raise ValueError(
            f"w1 and w2 must both be (batch, seq_q, heads) = {(batch, seq_q, heads)} or (batch, seq_q, 1) = "
            f"{(batch, seq_q, 1)}; got w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)} (a router's (B, Lq, 2) output "
            "splits as r[..., 0:1], r[..., 1:2])"
        )
    if not (w1.is_floating_point() and w2.is_floating_point()) or w1.device != q.device or w2.device != q.device:
        raise ValueError(
            f"w1 and w2 must be floating tensors on {q.device}; got {w1.dtype}/{w1.device}, {w2.dtype}/{w2.device}"
        )


def two_branch_attention(
    q: torch.Tensor,
    k1: torch.Tensor,
    v1: torch.Tensor,
    k2: torch.Tensor,
    v2: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    scale: float | None = None,
    *,
    key_bias1: torch.Tensor | None = None,
    key_bias2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused ``w1 · attn(q, k1, v1) + w2 · attn(q, k2, v2)``: two branches over the same queries, one pass.

    The weights are applied per token (and per head) in the kernel's epilogue, so Q is read once and one
    ``(B, Lq, H, D)`` output is written; gradients reach q, both branches' keys and values, and both weights.

    Args:
        q: queries ``(B, Lq, H, D)``.
        k1, v1: the first branch ``(B, L1, H, D)`` (e.g. the frozen prior's keys and values).
        k2, v2: the second branch ``(B, L2, H, D)``; L2 may differ from L1 (image-prompt tokens vs text).
        w1, w2: weights ``(B, Lq, H)`` or ``(B, Lq, 1)`` (one per token, shared by the heads): a router's
            softmax output, or a constant IP-Adapter scale expanded to that shape.
        scale: softmax scale of both branches (default ``1/sqrt(D)``).
        key_bias1, key_bias2: optional key masks of each branch, as in :func:`flash_attention`.

    Returns:
        ``(B, Lq, H, D)`` in q's dtype.
    """
    check_qkv(q, k1, v1, "q, k1, v1")
    check_qkv(q, k2, v2, "q, k2, v2")
    check_weights(w1, w2, q)
    bias1 = key_bias_tensor(key_bias1, q, k1, "key_bias1")
    bias2 = key_bias_tensor(key_bias2, q, k2, "key_bias2")
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    reason = triton_unavailable(q, (key_bias1, key_bias2))
    if reason is not None:
        _log_fallback("two_branch_attention", reason)
        return two_branch_reference(q, k1, v1, k2, v2, w1, w2, scale, _as_mask(bias1), _as_mask(bias2))
    return TwoBranchAttentionFunction.apply(q, k1, v1, k2, v2, w1, w2, bias1, bias2, scale)
