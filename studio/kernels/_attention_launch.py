"""Host side of the fused attention kernels: tile choice, launch plans, forward and backward drivers.

A launch is planned (kernel, grid, arguments) apart from being run, so a compile check can build the very
kernels a GPU would run on a machine without one (``tests/kernels/compile_check.py``). The tile choices in
:func:`kernel_config` are starting points, not tuned values: no GPU was available when they were written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import triton

from studio.kernels._attention_triton import (
    INTERPRETED,
    LOG2E,
    _bwd_dkdv_kernel,
    _bwd_dq_kernel,
    _bwd_preprocess_kernel,
    _fwd_kernel,
)

#: One branch's keys ``(B, Lk, H, D)``, values ``(B, Lk, H, D)`` and optional float32 key bias ``(B, H, Lk)``.
Branch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch options of one head dim; ``block_n`` caps the key tile each branch picks."""

    block_d: int
    block_d2: int
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    bwd_block_m: int
    bwd_block_n: int
    bwd_warps: int
    bwd_stages: int
    kv_splits: int = 0  # query splits of the dK/dV pass; 0 = enough programs to fill the GPU twice


def head_dim_blocks(head_dim: int, split: bool = True) -> tuple[int, int]:
    """The head dim as one or two power-of-two tiles (``tl.arange`` and ``tl.dot`` need powers of two >= 16).

    Split: 40 → (32, 16) computes 48 columns instead of 64, 80 → (64, 16) and 160 → (128, 32) compute exactly
    80 and 160 instead of 128 and 256. A second piece costs one more (smaller) ``tl.dot`` per product, so a split
    is taken only when it computes fewer columns than padding; ``split=False`` always pads (for benchmarks).
    """
    padded = max(16, triton.next_power_of_2(head_dim))
    if not split or padded == head_dim or head_dim <= 16:
        return padded, 0
    first = padded // 2
    second = max(16, triton.next_power_of_2(head_dim - first))
    return (first, second) if first + second < padded else (padded, 0)


def key_block(seq_k: int, largest: int) -> int:
    """The key tile (16 to ``largest``) that pads ``seq_k`` least, the larger on a tie (fewer iterations)."""
    tiles = [t for t in (16, 32, 64, 128) if t <= largest] or [16]
    return min(tiles, key=lambda t: (triton.cdiv(seq_k, t) * t, -t))


def kernel_config(head_dim: int, split_head_dim: bool = True) -> KernelConfig:
    """Starting tiles per head dim. Untuned: no GPU was available to this code's author (see the benchmark)."""
    block_d, block_d2 = head_dim_blocks(head_dim, split_head_dim)
    if INTERPRETED:  # small tiles: tests cross tile edges at small, fast shapes
        return KernelConfig(block_d, block_d2, 32, 32, 1, 1, 32, 32, 1, 1, kv_splits=1)
    width = block_d + block_d2
    warps = 4 if width <= 64 else 8
    return KernelConfig(
        block_d, block_d2,
        block_m=128 if width <= 128 else 64, block_n=64, num_warps=warps, num_stages=3 if width <= 128 else 2,
        bwd_block_m=64, bwd_block_n=64 if width <= 128 else 32, bwd_warps=warps, bwd_stages=2,
    )  # fmt: skip


@dataclass
class Launch:
    """One kernel launch, planned: ``run()`` launches it, ``compile()`` only builds it for the current target."""

    kernel: Any
    grid: tuple[int, int, int]
    args: tuple[Any, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def run(self) -> None:
        self.kernel[self.grid](*self.args, **self.meta)

    def compile(self) -> Any:
        return self.kernel.warmup(*self.args, grid=self.grid, **self.meta)


def _on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it the tensors' (cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, seq, head) strides of a ``(B, L, H, D)`` tensor."""
    return t.stride(0), t.stride(1), t.stride(2)


def _bias_strides(bias: torch.Tensor | None) -> tuple[int, int]:
    return (bias.stride(0), bias.stride(1)) if bias is not None else (0, 0)


def _weight_strides(weights: torch.Tensor | None) -> tuple[int, int, int, int]:
    """Strides of float32 weights ``(2, B, Lq, H or 1)``; a shared weight has head stride 0."""
    if weights is None:
        return 0, 0, 0, 0
    return weights.stride(0), weights.stride(1), weights.stride(2), weights.stride(3) if weights.shape[3] > 1 else 0


def _precision(dtype: torch.dtype) -> str:
    """float32 inputs multiply in full precision (TF32 would miss the float32 tolerance); 16-bit ignore it."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _branch_args(branch: Branch, dummy: torch.Tensor) -> tuple[Any, ...]:
    k, v, bias = branch
    return k, v, dummy if bias is None else bias


def _branch_strides(branch: Branch) -> tuple[int, ...]:
    k, v, bias = branch
    return (*_strides(k), *_strides(v), *_bias_strides(bias))


def plan_forward(
    q: torch.Tensor,
    branches: Sequence[Branch],
    weights: torch.Tensor | None,
    scale: float,
    config: KernelConfig,
    store_branches: bool,
) -> tuple[Launch, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Allocate the outputs and plan the forward: ``(launch, out, lse (branches, B·H, Lq), branch outputs)``."""
    batch, seq_q, heads, head_dim = q.shape
    two = len(branches) == 2
    first, second = branches[0], branches[-1]
    out = torch.empty((batch, seq_q, heads, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((len(branches), batch * heads, seq_q), dtype=torch.float32, device=q.device)
    branch_out = torch.empty((2, *out.shape), dtype=q.dtype, device=q.device) if two and store_branches else None
    args = (
        q, *_branch_args(first, q), *_branch_args(second, q), lse if weights is None else weights, out,
        out if branch_out is None else branch_out, lse,
        scale * LOG2E,
        *_strides(q), *_branch_strides(first), *_branch_strides(second), *_weight_strides(weights),
        *_strides(out), out.numel(), lse.stride(0),
        heads, seq_q, first[0].shape[1], second[0].shape[1],
    )  # fmt: skip
    meta = dict(
        HEAD_DIM=head_dim, BLOCK_M=config.block_m, BLOCK_N1=key_block(first[0].shape[1], config.block_n),
        BLOCK_N2=key_block(second[0].shape[1], config.block_n), BLOCK_D=config.block_d, BLOCK_D2=config.block_d2,
        HAS_BIAS1=first[2] is not None, HAS_BIAS2=two and second[2] is not None, TWO_BRANCH=two,
        STORE_BRANCHES=branch_out is not None, PRECISION=_precision(q.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    grid = (triton.cdiv(seq_q, config.block_m), batch * heads, 1)
    return Launch(_fwd_kernel, grid, args, meta), out, lse, branch_out


def forward(
    q: torch.Tensor,
    branches: Sequence[Branch],
    weights: torch.Tensor | None,
    scale: float,
    config: KernelConfig,
    store_branches: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run the forward: ``(out (B, Lq, H, D), lse, per-branch outputs (2, B, Lq, H, D) or None)``."""
    launch, out, lse, branch_out = plan_forward(q, branches, weights, scale, config, store_branches)
    with _on_device(q):
        launch.run()
    return out, lse, branch_out


def _kv_splits(config: KernelConfig, programs: int, seq_q: int, device: torch.device) -> int:
    """Query splits for the dK/dV pass: few keys (77-token cross-attention) give too few programs to fill a GPU."""
    if config.kv_splits:
        return config.kv_splits
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(2 * sms, programs), triton.cdiv(seq_q, config.bwd_block_m) // 4))


@dataclass
class BackwardPlan:
    """The backward's launches and the buffers they fill; :func:`backward` runs them and sums the partials."""

    launches: list[Launch]
    dq: torch.Tensor
    dk: list[torch.Tensor]  # per branch: (B, Lk, H, D) in k's dtype, or float32 partials (splits, B, Lk, H, D)
    dv: list[torch.Tensor]
    dw: torch.Tensor | None  # float32 (2, B, Lq, H): rowsum(dO · O_i), the weights' gradient per head


def _plan_dkdv(
    i: int,
    branch: Branch,
    q: torch.Tensor,
    dout: torch.Tensor,
    weights: torch.Tensor | None,
    lse: torch.Tensor,
    delta: torch.Tensor,
    scale: float,
    config: KernelConfig,
) -> tuple[Launch, torch.Tensor, torch.Tensor]:
    """dK/dV of branch ``i``: one program per (key tile, batch·head, query split); returns the gradient buffers."""
    batch, seq_q, heads, head_dim = q.shape
    k, v, bias = branch
    seq_k = k.shape[1]
    block_n = key_block(seq_k, config.bwd_block_n)
    tiles = triton.cdiv(seq_k, block_n)
    splits = _kv_splits(config, tiles * batch * heads, seq_q, q.device)
    rows_per_split = triton.cdiv(triton.cdiv(seq_q, splits), config.bwd_block_m) * config.bwd_block_m
    splits = triton.cdiv(seq_q, rows_per_split)
    if splits == 1:  # write the gradients in k's dtype directly
        dk, dv = (torch.empty_like(t, memory_format=torch.contiguous_format) for t in (k, v))
        grad_strides = (0, *_strides(dk))
    else:  # float32 partials, summed on the host
        dk, dv = (torch.empty((splits, *k.shape), dtype=torch.float32, device=q.device) for _ in range(2))
        grad_strides = (dk.stride(0), *_strides(dk[0]))
    launch = Launch(
        _bwd_dkdv_kernel,
        (tiles, batch * heads, splits),
        (q, k, v, q if bias is None else bias, dout, delta[i] if weights is None else weights[i], lse[i], delta[i],
         dk, dv, scale * LOG2E, scale, *_strides(q), *_strides(k), *_strides(v), *_bias_strides(bias),
         *_strides(dout), *_weight_strides(weights)[1:], *grad_strides, heads, seq_q, seq_k, rows_per_split),
        dict(HEAD_DIM=head_dim, BLOCK_M=config.bwd_block_m, BLOCK_N=block_n, BLOCK_D=config.block_d,
             BLOCK_D2=config.block_d2, HAS_BIAS=bias is not None, HAS_W=weights is not None,
             PRECISION=_precision(q.dtype), num_warps=config.bwd_warps, num_stages=config.bwd_stages),
    )  # fmt: skip
    return launch, dk, dv


def plan_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    branches: Sequence[Branch],
    weights: torch.Tensor | None,
    out: torch.Tensor,
    branch_out: torch.Tensor | None,
    lse: torch.Tensor,
    scale: float,
    config: KernelConfig,
) -> BackwardPlan:
    """Plan the three backward passes (preprocess, dK/dV per branch, dQ); ``dout`` must share ``out``'s strides."""
    batch, seq_q, heads, head_dim = q.shape
    two = len(branches) == 2
    first, second = branches[0], branches[-1]
    delta = torch.empty_like(lse)
    dw = torch.empty((2, batch, seq_q, heads), dtype=torch.float32, device=q.device) if two else None
    q_tiles = (triton.cdiv(seq_q, config.bwd_block_m), batch * heads, 1)
    w_or_dummy = delta if weights is None else weights
    preprocess = Launch(
        _bwd_preprocess_kernel,
        q_tiles,
        (dout, out, out if branch_out is None else branch_out, w_or_dummy, delta, delta if dw is None else dw,
         *_strides(out), out.numel(), *_weight_strides(weights), lse.stride(0), heads, seq_q),
        dict(HEAD_DIM=head_dim, BLOCK_M=config.bwd_block_m, BLOCK_DP=max(16, triton.next_power_of_2(head_dim)),
             TWO_BRANCH=two, num_warps=4),
    )  # fmt: skip
    dkdv = [_plan_dkdv(i, branch, q, dout, weights, lse, delta, scale, config) for i, branch in enumerate(branches)]
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dq_launch = Launch(
        _bwd_dq_kernel,
        q_tiles,
        (q, dout, dq, *_branch_args(first, q), *_branch_args(second, q), w_or_dummy, lse, delta, scale * LOG2E,
         scale, *_strides(q), *_strides(dout), *_strides(dq), *_branch_strides(first), *_branch_strides(second),
         *_weight_strides(weights), lse.stride(0), heads, seq_q, first[0].shape[1], second[0].shape[1]),
        dict(HEAD_DIM=head_dim, BLOCK_M=config.bwd_block_m, BLOCK_N1=key_block(first[0].shape[1], config.bwd_block_n),
             BLOCK_N2=key_block(second[0].shape[1], config.bwd_block_n), BLOCK_D=config.block_d,
             BLOCK_D2=config.block_d2, HAS_BIAS1=first[2] is not None, HAS_BIAS2=two and second[2] is not None,
             TWO_BRANCH=two, PRECISION=_precision(q.dtype), num_warps=config.bwd_warps,
             num_stages=config.bwd_stages),
    )  # fmt: skip
    launches = [preprocess, *(launch for launch, _, _ in dkdv), dq_launch]
    return BackwardPlan(launches, dq, [dk for _, dk, _ in dkdv], [dv for _, _, dv in dkdv], dw)


def backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    branches: Sequence[Branch],
    weights: torch.Tensor | None,
    out: torch.Tensor,
    branch_out: torch.Tensor | None,
    lse: torch.Tensor,
    scale: float,
    config: KernelConfig,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
    """Run the backward: ``(dq, [dk per branch], [dv per branch], dw (2, B, Lq, H) float32 or None)``."""
    dout = dout.contiguous() if dout.stride() != out.stride() else dout
    plan = plan_backward(dout, q, branches, weights, out, branch_out, lse, scale, config)
    with _on_device(q):
        for launch in plan.launches:
            launch.run()
    dks = [g if g.dim() == 4 else g.sum(0).to(k.dtype) for g, (k, _, _) in zip(plan.dk, branches)]
    dvs = [g if g.dim() == 4 else g.sum(0).to(v.dtype) for g, (_, v, _) in zip(plan.dv, branches)]
    return plan.dq, dks, dvs, plan.dw


def compile_for(launches: Sequence[Launch]) -> list[Any]:
    """Build (not run) every planned kernel for the active Triton target; returns the compiled kernels."""
    return [launch.compile() for launch in launches]


__all__ = [
    "INTERPRETED",
    "BackwardPlan",
    "Branch",
    "KernelConfig",
    "Launch",
    "backward",
    "compile_for",
    "forward",
    "head_dim_blocks",
    "kernel_config",
    "key_block",
    "plan_backward",
    "plan_forward",
]
