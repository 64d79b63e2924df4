"""Fused flash attention and two-branch attention against the float32 reference, under the Triton interpreter.

Outputs and the gradients of every input, at head dims 40/64/80 (non-power-of-two split into 32+16 and 64+16),
query lengths that are not tile multiples, 77-key and 8-key cross-attention, key masks, and both epilogues.
Tolerances come from the one table, ``studio.kernels.TOLERANCES``; ``test_tolerances_catch_a_wrong_scale``
shows they fail for a 1% error in the softmax scale.
"""

import logging

import pytest
import torch

from studio.kernels import (
    TOLERANCES,
    FlashAttentionFunction,
    TwoBranchAttentionFunction,
    attention_reference,
    flash_attention,
    triton_unavailable,
    two_branch_attention,
    two_branch_reference,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels fixture compiles on CUDA, else interprets
# (name, seq_q, seq_k): interpreter tiles are 32 queries x <= 32 keys, so every case crosses a ragged edge
SHAPES = [("self", 50, 50), ("cross-77", 37, 77), ("few-keys", 33, 8)]
HEAD_DIMS = [40, 64, 80]


def make(batch: int, seq: int, heads: int, head_dim: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, heads, head_dim, generator=g).to(DEVICE, dtype).requires_grad_()


def qkv(seq_q: int, seq_k: int, head_dim: int, dtype=torch.float32, batch: int = 2, heads: int = 2, seed: int = 0):
    return tuple(make(batch, n, heads, head_dim, dtype, seed + i) for i, n in enumerate((seq_q, seq_k, seq_k)))


def value_and_grads(fn, inputs, seed: int = 100):
    """fn's output and the gradients of every input for one fixed random output gradient."""
    out = fn(*inputs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    return out, torch.autograd.grad(out, inputs, grad)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.float(), expected.float(), atol=tol.atol, rtol=tol.rtol, msg=lambda m: f"{what} ({dtype}): {m}"
    )


def check_all(fn, ref, inputs, names: str, dtype: torch.dtype) -> None:
    out, grads = value_and_grads(fn, inputs)
    ref_out, ref_grads = value_and_grads(ref, inputs)
    assert_matches(out, ref_out, dtype, "output")
    for name, g, r in zip(names.split(), grads, ref_grads, strict=True):
        assert_matches(g, r, dtype, f"d{name}")


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize(("case", "seq_q", "seq_k"), SHAPES)
def test_flash_attention_matches_reference(kernels, case, seq_q, seq_k, head_dim):
    check_all(flash_attention, attention_reference, qkv(seq_q, seq_k, head_dim), "q k v", torch.float32)


@pytest.mark.parametrize("head_dim", [24, 128, 160])
def test_flash_attention_other_head_dims(kernels, head_dim):
    """24 (the shapes UNet: padded to 32), 128 (one tile) and 160 (SD 1.5 at 1024 px: 128 + 32)."""
    check_all(flash_attention, attention_reference, qkv(35, 40, head_dim, batch=1), "q k v", torch.float32)


def test_flash_attention_float16(kernels):
    inputs = qkv(37, 77, 40, torch.float16)
    check_all(flash_attention, attention_reference, inputs, "q k v", torch.float16)


@pytest.mark.skipif(DEVICE == "cpu", reason="the Triton interpreter has no bfloat16 (numpy): runs on a CUDA machine")
def test_bfloat16_on_gpu(kernels):
    check_all(flash_attention, attention_reference, qkv(37, 77, 40, torch.bfloat16), "q k v", torch.bfloat16)
    inputs = two_branch_inputs(37, 50, 8, 80, 1, torch.bfloat16)
    check_all(two_branch_attention, two_branch_reference, inputs, "q k1 v1 k2 v2 w1 w2", torch.bfloat16)


def test_key_masks_and_fully_masked_rows(kernels):
    """Boolean padding, diffusers' -10000 bias, and a batch entry with every key masked (zeros, no NaN)."""
    q, k, v = qkv(33, 40, 40)
    keep = torch.ones(2, 1, 40, dtype=torch.bool, device=DEVICE)
    keep[0, :, 29:] = False
    keep[1] = False
    bias = torch.zeros(2, 2, 40, device=DEVICE)
    bias[:, 1, 3:17] = -10000.0
    for key_bias in (keep, bias):
        mask = key_bias.float() if key_bias.dtype != torch.bool else key_bias
        check_all(
            lambda q, k, v, b=key_bias: flash_attention(q, k, v, key_bias=b),
            lambda q, k, v, m=mask: attention_reference(q, k, v, mask=m.unsqueeze(2)),
            (q, k, v),
            "q k v",
            torch.float32,
        )
    out, grads = value_and_grads(lambda q, k, v: flash_attention(q, k, v, key_bias=keep), (q, k, v))
    assert out[1].abs().max() == 0 and grads[0][1].abs().max() == 0
    assert all(torch.isfinite(g).all() for g in grads)


def two_branch_inputs(seq_q, seq_k1, seq_k2, head_dim, weight_heads, dtype=torch.float32, batch=2, heads=2):
    q, k1, v1 = qkv(seq_q, seq_k1, head_dim, dtype, batch, heads, seed=0)
    k2, v2 = (make(batch, seq_k2, heads, head_dim, dtype, seed) for seed in (10, 11))
    g = torch.Generator().manual_seed(20)
    router = torch.randn(batch, seq_q, weight_heads, 2, generator=g).softmax(-1)
    w1, w2 = (router[..., i].to(DEVICE, dtype).requires_grad_() for i in range(2))
    return q, k1, v1, k2, v2, w1, w2


@pytest.mark.parametrize(
    ("head_dim", "seq_k1", "seq_k2", "weight_heads"),
    [(40, 50, 77, 2), (80, 77, 8, 1), (64, 8, 33, 1)],
    ids=["d40-self50+cross77-per-head", "d80-cross77+ip8-shared", "d64-few+33-shared"],
)
def test_two_branch_matches_reference(kernels, head_dim, seq_k1, seq_k2, weight_heads):
    inputs = two_branch_inputs(37, seq_k1, seq_k2, head_dim, weight_heads)
    check_all(two_branch_attention, two_branch_reference, inputs, "q k1 v1 k2 v2 w1 w2", torch.float32)


def test_two_branch_with_key_masks_and_float16(kernels):
    keep = torch.ones(2, 1, 77, dtype=torch.bool, device=DEVICE)
    keep[:, :, 60:] = False
    for dtype in (torch.float32, torch.float16):
        inputs = two_branch_inputs(33, 77, 16, 40, 1, dtype)
        check_all(
            lambda *x: two_branch_attention(*x, key_bias1=keep),
            lambda *x: two_branch_reference(*x, mask1=keep.unsqueeze(2)),
            inputs,
            "q k1 v1 k2 v2 w1 w2",
            dtype,
        )


def test_kernel_variants_agree(kernels):
    """Padded head dim instead of 32 + 16 pieces, and the dK/dV pass split over 3 query ranges."""
    from dataclasses import replace

    inputs = qkv(70, 77, 40)
    scale = 40**-0.5
    default = kernels.kernel_config(40)
    assert (default.block_d, default.block_d2) == (32, 16)
    for config in (kernels.kernel_config(40, split_head_dim=False), replace(default, kv_splits=3)):
        check_all(
            lambda q, k, v, c=config: FlashAttentionFunction.apply(q, k, v, None, scale, c),
            attention_reference,
            inputs,
            "q k v",
            torch.float32,
        )
    two = two_branch_inputs(70, 77, 20, 40, 1)
    config = replace(default, kv_splits=2)
    check_all(
        lambda *x: TwoBranchAttentionFunction.apply(*x, None, None, scale, config),
        two_branch_reference,
        two,
        "q k1 v1 k2 v2 w1 w2",
        torch.float32,
    )


def test_non_contiguous_inputs(kernels):
    """(B, H, L, D) tensors transposed to (B, L, H, D), as a caller holding SDPA's layout would pass them."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, n, 40, generator=g).to(DEVICE).transpose(1, 2).requires_grad_() for n in (33, 77, 77))
    assert not q.is_contiguous()
    check_all(flash_attention, attention_reference, (q, k, v), "q k v", torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_tolerances_catch_a_wrong_scale(kernels, dtype):
    """The table can fail: a kernel run with a 1% wrong softmax scale misses it, in outputs and in dq."""
    inputs = qkv(37, 77, 40, dtype)
    scale = 40**-0.5
    out, grads = value_and_grads(lambda q, k, v: flash_attention(q, k, v, scale * 1.01), inputs)
    ref_out, ref_grads = value_and_grads(lambda q, k, v: attention_reference(q, k, v, scale), inputs)
    with pytest.raises(AssertionError):
        assert_matches(out, ref_out, dtype, "output")
    with pytest.raises(AssertionError):
        assert_matches(grads[0], ref_grads[0], dtype, "dq")


def test_head_dim_pieces_and_key_tiles(kernels):
    assert [kernels.head_dim_blocks(d) for d in (24, 40, 64, 80, 96, 120, 160, 256)] == [
        (32, 0), (32, 16), (64, 0), (64, 16), (64, 32), (128, 0), (128, 32), (256, 0),
    ]  # fmt: skip
    assert kernels.head_dim_blocks(40, split=False) == (64, 0)
    assert [kernels.key_block(n, 64) for n in (77, 4096, 8, 50, 257)] == [16, 64, 16, 64, 16]


def test_fallback_is_logged_once_and_is_the_reference(kernels, monkeypatch, caplog):
    """CPU tensors with the kernels built for a GPU: one log line naming the reason, then the exact reference."""
    import studio.kernels._attention_triton as built

    monkeypatch.setattr(built, "INTERPRETED", False)
    q, k, v = (t.detach().cpu() for t in qkv(9, 7, 40))
    with caplog.at_level(logging.WARNING, logger="studio.kernels.attention"):
        outs = [flash_attention(q, k, v) for _ in range(2)]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "flash_attention" in lines[0] and "CPU" in lines[0] and "PyTorch reference" in lines[0]
    assert torch.equal(outs[0], attention_reference(q, k, v))


def test_unsupported_inputs_say_why(kernels):
    q = torch.zeros(1, 4, 2, 40)
    assert "bfloat16" in triton_unavailable(q.bfloat16())
    assert "head_dim 320" in triton_unavailable(torch.zeros(1, 4, 2, 320))
    assert "requires grad" in triton_unavailable(q, (torch.zeros(1, 1, 4, requires_grad=True),))
    assert "empty" in triton_unavailable(q[:, :0])
    assert triton_unavailable(q) is None


def test_bad_inputs_raise_naming_them():
    q, k, v = (torch.zeros(2, n, 2, 40) for n in (5, 7, 7))
    with pytest.raises(ValueError, match=r"q, k, v must be 4-D .*transpose"):
        flash_attention(q[0], k, v)
    with pytest.raises(ValueError, match=r"k and v must be \(batch, seq_k, heads, head_dim\)"):
        flash_attention(q, k[..., :32], v)
    with pytest.raises(ValueError, match=r"key_bias must be \(batch or 1, heads or 1, seq_k\)"):
        flash_attention(q, k, v, key_bias=torch.zeros(2, 5, 7))
    with pytest.raises(ValueError, match=r"w1 and w2 must both be \(batch, seq_q, heads\)"):
        two_branch_attention(q, k, v, k, v, torch.zeros(2, 5), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"share one dtype"):
        flash_attention(q, k.double(), v)
