"""Triton kernels with PyTorch references: fused flash attention and two-branch attention.

Importing this package does not import triton; the kernels load on first use. On CPU (without the Triton
interpreter) and for unsupported inputs the public functions log one line and run the float32 reference.
"""

from studio.kernels.attention import (
    MAX_HEAD_DIM,
    FlashAttentionFunction,
    TwoBranchAttentionFunction,
    flash_attention,
    load_kernels,
    triton_environment,
    triton_unavailable,
    two_branch_attention,
)
from studio.kernels.reference import TOLERANCES, Tolerance, attention_reference, default_scale, two_branch_reference

__all__ = [
    "MAX_HEAD_DIM",
    "TOLERANCES",
    "FlashAttentionFunction",
    "Tolerance",
    "TwoBranchAttentionFunction",
    "attention_reference",
    "default_scale",
    "flash_attention",
    "load_kernels",
    "triton_environment",
    "triton_unavailable",
    "two_branch_attention",
    "two_branch_reference",
]
