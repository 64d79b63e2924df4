"""Triton kernels of fused (one- or two-branch) flash attention, forward and backward.

The host side (tile choice, launch plans, forward/backward drivers) is :mod:`studio.kernels._attention_launch`;
the autograd Functions and public functions are :mod:`studio.kernels.attention`, which imports both lazily.
Tensors are ``(batch, seq, heads, head_dim)`` with a contiguous last dimension.

Where the ideas come from:
- The online softmax in base 2 with the scale folded into one multiply (``exp2``, ``qk_scale = scale·log2 e``),
  the log-sum-exp kept per row for the backward, the ``delta = rowsum(dO·O)`` pre-pass, and the split of the
  backward into a dK/dV program per key tile and a dQ program per query tile: Triton's fused-attention tutorial
  (``python/tutorials/06-fused-attention.py``) and FlashAttention-2.
- Masked loads for ragged sequence tails and head dims, the key-padding ("vector") bias, and the
  (batch, seq, heads, dim) stride layout: ``flash_attn/flash_attn_triton.py`` (Dao-AILab/flash-attention).
- Our own: head dims as two power-of-two pieces (40 = 32 + 16, 80 = 64 + 16, 160 = 128 + 32) instead of one
  padded tile (64, 128, 256); the key tile picked per branch to pad the fewest keys (77 keys run as 5 tiles of
  16, not 2 of 64); a second key/value branch in the same program with a per-token weighted epilogue (Q read
  once, one output written); partial dK/dV over query splits summed on the host for few-key cross-attention;
  fully masked rows give zeros, not NaN.

Nothing here was timed: this session had no GPU. ``benchmarks/bench_attention.py`` measures it.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Whether the kernels below were built for the Triton interpreter (``TRITON_INTERPRET=1`` is read when
#: ``@triton.jit`` runs, i.e. when this module is first imported). Interpreted kernels run on CPU tensors.
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

LOG2E = 1.4426950408889634

# Only Triton builtins below. tl.zeros, tl.max and tl.sum are themselves @triton.jit functions, built for the GPU
# or for the interpreter once, when triton is first imported (diffusers imports it, via torch._dynamo, before any
# test can set TRITON_INTERPRET). tl.full and tl.reduce are builtins, and the interpreter runs reductions over
# these two combine functions (the ones tl.max and tl.sum use) with numpy, so studio.kernels.load_kernels can
# build these kernels for the interpreter in any process. The compiled code is the same as tl.max / tl.sum.
_MAX_COMBINE = tl.standard._elementwise_max
_SUM_COMBINE = tl.standard._sum_combine


# ---------------------------------------------------------------------------------------------------------------
# Tile helpers: a (rows, BLOCK) tile of a (seq, head_dim) slice starting at column col0, masked at both edges.
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _load_rows(base, rows, stride_row, row_ok, col0, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    cols = col0 + tl.arange(0, BLOCK)
    ptrs = base + rows[:, None] * stride_row + cols[None, :]
    return tl.load(ptrs, mask=row_ok[:, None] & (cols[None, :] < HEAD_DIM), other=0.0)


@triton.jit
def _load_cols(base, rows, stride_row, row_ok, col0, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """The transposed tile ``(BLOCK, len(rows))``."""
    cols = col0 + tl.arange(0, BLOCK)
    ptrs = base + cols[:, None] + rows[None, :] * stride_row
    return tl.load(ptrs, mask=(cols[:, None] < HEAD_DIM) & row_ok[None, :], other=0.0)


@triton.jit
def _store_rows(base, rows, stride_row, row_ok, col0, tile, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    cols = col0 + tl.arange(0, BLOCK)
    ptrs = base + rows[:, None] * stride_row + cols[None, :]
    tl.store(ptrs, tile.to(base.dtype.element_ty), mask=row_ok[:, None] & (cols[None, :] < HEAD_DIM))


@triton.jit
def _second_piece(base, rows, stride_row, row_ok, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_D2: tl.constexpr, TRANSPOSED: tl.constexpr):  # fmt: skip
    """Columns ``BLOCK_D:BLOCK_D + BLOCK_D2`` of a tile, or an unused 1-column placeholder when BLOCK_D2 == 0.

    One return statement: the compiler type-checks every return, even in branches a constexpr rules out.
    """
    if BLOCK_D2 == 0:
        if TRANSPOSED:
            tile = tl.full([1, rows.shape[0]], 0.0, dtype=base.dtype.element_ty)
        else:
            tile = tl.full([rows.shape[0], 1], 0.0, dtype=base.dtype.element_ty)
    elif TRANSPOSED:
        tile = _load_cols(base, rows, stride_row, row_ok, BLOCK_D, HEAD_DIM, BLOCK_D2)
    else:
        tile = _load_rows(base, rows, stride_row, row_ok, BLOCK_D, HEAD_DIM, BLOCK_D2)
    return tile


@triton.jit
def _row_max(x):
    return tl.reduce(x, 1, _MAX_COMBINE)


@triton.jit
def _row_sum(x):
    return tl.reduce(x, 1, _SUM_COMBINE)


@triton.jit
def _zeros_second(ROWS: tl.constexpr, BLOCK_D2: tl.constexpr):
    """A float32 accumulator for the second head-dim piece (a 1-column placeholder when there is none)."""
    if BLOCK_D2 == 0:
        acc = tl.full([ROWS, 1], 0.0, dtype=tl.float32)
    else:
        acc = tl.full([ROWS, BLOCK_D2], 0.0, dtype=tl.float32)
    return acc


@triton.jit
def _dot2(a, a2, b, b2, BLOCK_D2: tl.constexpr, PRECISION: tl.constexpr):
    """``a @ b`` over the whole head dim: the first piece plus, when there is one, the second."""
    out = tl.dot(a, b, input_precision=PRECISION)
    if BLOCK_D2 > 0:
        out += tl.dot(a2, b2, input_precision=PRECISION)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _fwd_branch(q, q2, K, V, Bias, seq_k, stride_kn, stride_vn, qk_scale,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_D2: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """Online softmax of one query tile over one branch's keys: unnormalised output, running max and sum (base 2).

    ``K``, ``V`` and ``Bias`` point at this (batch, head)'s first key.
    """
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)
    acc2 = _zeros_second(BLOCK_M, BLOCK_D2)
    for start_n in range(0, seq_k, BLOCK_N):
        keys = start_n + offs_n
        key_ok = keys < seq_k
        k_t = _load_cols(K, keys, stride_kn, key_ok, 0, HEAD_DIM, BLOCK_D)
        k2_t = _second_piece(K, keys, stride_kn, key_ok, HEAD_DIM, BLOCK_D, BLOCK_D2, True)
        s = _dot2(q, q2, k_t, k2_t, BLOCK_D2, PRECISION) * qk_scale
        if HAS_BIAS:
            s += tl.load(Bias + keys, mask=key_ok, other=0.0)[None, :] * 1.4426950408889634
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, _row_max(s))
        # a row with every key so far masked keeps m = -inf; subtracting 0 instead keeps exp2 at 0, not NaN
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + _row_sum(p)
        p_in = p.to(V.dtype.element_ty)
        v = _load_rows(V, keys, stride_vn, key_ok, 0, HEAD_DIM, BLOCK_D)
        acc = acc * alpha[:, None] + tl.dot(p_in, v, input_precision=PRECISION)
        if BLOCK_D2 > 0:
            v2 = _load_rows(V, keys, stride_vn, key_ok, BLOCK_D, HEAD_DIM, BLOCK_D2)
            acc2 = acc2 * alpha[:, None] + tl.dot(p_in, v2, input_precision=PRECISION)
        m_i = m_new
    return acc, acc2, m_i, l_i


@triton.jit
def _normalise(acc, acc2, m_i, l_i):
    """Divide by the softmax sum; return the output pieces and the base-2 log-sum-exp (+inf for empty rows)."""
    empty = l_i == 0.0
    inv = 1.0 / tl.where(empty, 1.0, l_i)
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    return acc * inv[:, None], acc2 * inv[:, None], lse


@triton.jit
def _fwd_kernel(
    Q, K1, V1, Bias1, K2, V2, Bias2, W, Out, Branches, Lse,
    qk_scale,
    stride_qb, stride_qm, stride_qh,
    stride_k1b, stride_k1n, stride_k1h, stride_v1b, stride_v1n, stride_v1h, stride_b1b, stride_b1h,
    stride_k2b, stride_k2n, stride_k2h, stride_v2b, stride_v2n, stride_v2h, stride_b2b, stride_b2h,
    stride_wi, stride_wb, stride_wm, stride_wh,
    stride_ob, stride_om, stride_oh, stride_branch,
    stride_li,
    H, seq_q, seq_k1, seq_k2,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N1: tl.constexpr, BLOCK_N2: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr,
    HAS_BIAS1: tl.constexpr, HAS_BIAS2: tl.constexpr, TWO_BRANCH: tl.constexpr, STORE_BRANCHES: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """One query tile of one (batch, head): ``Out = attn1`` or ``Out = w1·attn1 + w2·attn2``.

    Lse ``(branches, B·H, seq_q)`` keeps each branch's base-2 log-sum-exp; with STORE_BRANCHES, Branches
    ``(2, B, seq_q, H, D)`` keeps each branch's normalised output for the weights' gradient.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_q

    q_base = Q + b * stride_qb + h * stride_qh
    q = _load_rows(q_base, rows, stride_qm, row_ok, 0, HEAD_DIM, BLOCK_D)
    q2 = _second_piece(q_base, rows, stride_qm, row_ok, HEAD_DIM, BLOCK_D, BLOCK_D2, False)

    acc, acc2, m_i, l_i = _fwd_branch(
        q, q2, K1 + b * stride_k1b + h * stride_k1h, V1 + b * stride_v1b + h * stride_v1h,
        Bias1 + b * stride_b1b + h * stride_b1h, seq_k1, stride_k1n, stride_v1n, qk_scale,
        HEAD_DIM, BLOCK_M, BLOCK_N1, BLOCK_D, BLOCK_D2, HAS_BIAS1, PRECISION,
    )  # fmt: skip
    o, o2, lse = _normalise(acc, acc2, m_i, l_i)
    tl.store(Lse + pid_bh * seq_q + rows, lse, mask=row_ok)

    out_base = b * stride_ob + h * stride_oh
    if TWO_BRANCH:
        acc, acc2, m_i, l_i = _fwd_branch(
            q, q2, K2 + b * stride_k2b + h * stride_k2h, V2 + b * stride_v2b + h * stride_v2h,
            Bias2 + b * stride_b2b + h * stride_b2h, seq_k2, stride_k2n, stride_v2n, qk_scale,
            HEAD_DIM, BLOCK_M, BLOCK_N2, BLOCK_D, BLOCK_D2, HAS_BIAS2, PRECISION,
        )  # fmt: skip
        ob, ob2, lse_b = _normalise(acc, acc2, m_i, l_i)
        tl.store(Lse + stride_li + pid_bh * seq_q + rows, lse_b, mask=row_ok)
        if STORE_BRANCHES:
            first = Branches + out_base
            second = first + stride_branch
            _store_rows(first, rows, stride_om, row_ok, 0, o, HEAD_DIM, BLOCK_D)
            _store_rows(second, rows, stride_om, row_ok, 0, ob, HEAD_DIM, BLOCK_D)
            if BLOCK_D2 > 0:
                _store_rows(first, rows, stride_om, row_ok, BLOCK_D, o2, HEAD_DIM, BLOCK_D2)
                _store_rows(second, rows, stride_om, row_ok, BLOCK_D, ob2, HEAD_DIM, BLOCK_D2)
        # the epilogue: per-token weights mix the two normalised outputs
        w_ptrs = W + b * stride_wb + h * stride_wh + rows * stride_wm
        w1 = tl.load(w_ptrs, mask=row_ok, other=0.0)[:, None]
        w2 = tl.load(w_ptrs + stride_wi, mask=row_ok, other=0.0)[:, None]
        o = w1 * o + w2 * ob
        o2 = w1 * o2 + w2 * ob2
    _store_rows(Out + out_base, rows, stride_om, row_ok, 0, o, HEAD_DIM, BLOCK_D)
    if BLOCK_D2 > 0:
        _store_rows(Out + out_base, rows, stride_om, row_ok, BLOCK_D, o2, HEAD_DIM, BLOCK_D2)


# ---------------------------------------------------------------------------------------------------------------
# Backward: delta (and the weights' gradient), then dK/dV per key tile and branch, then dQ per query tile.
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _bwd_preprocess_kernel(
    DO, Out, Branches, W, Delta, DW,
    stride_ob, stride_om, stride_oh, stride_branch,
    stride_wi, stride_wb, stride_wm, stride_wh,
    stride_li,
    H, seq_q,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DP: tl.constexpr, TWO_BRANCH: tl.constexpr,
):  # fmt: skip
    """``delta_i = rowsum(dO_i · O_i)`` with ``dO_i = w_i·dO``; two branches also give ``dW_i = rowsum(dO · O_i)``.

    DO, Out and Branches share Out's strides; DW ``(2, B, seq_q, H)`` is float32 and contiguous.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_q
    base = b * stride_ob + h * stride_oh
    do = _load_rows(DO + base, rows, stride_om, row_ok, 0, HEAD_DIM, BLOCK_DP).to(tl.float32)
    delta_ptrs = Delta + pid_bh * seq_q + rows
    if TWO_BRANCH:
        o1 = _load_rows(Branches + base, rows, stride_om, row_ok, 0, HEAD_DIM, BLOCK_DP).to(tl.float32)
        o2 = _load_rows(Branches + stride_branch + base, rows, stride_om, row_ok, 0, HEAD_DIM, BLOCK_DP)
        dw1 = _row_sum(do * o1)
        dw2 = _row_sum(do * o2.to(tl.float32))
        w_ptrs = W + b * stride_wb + h * stride_wh + rows * stride_wm
        w1 = tl.load(w_ptrs, mask=row_ok, other=0.0)
        w2 = tl.load(w_ptrs + stride_wi, mask=row_ok, other=0.0)
        tl.store(delta_ptrs, w1 * dw1, mask=row_ok)
        tl.store(delta_ptrs + stride_li, w2 * dw2, mask=row_ok)
        dw_ptrs = DW + (b * seq_q + rows) * H + h
        tl.store(dw_ptrs, dw1, mask=row_ok)
        tl.store(dw_ptrs + tl.num_programs(1) * seq_q, dw2, mask=row_ok)
    else:
        o = _load_rows(Out + base, rows, stride_om, row_ok, 0, HEAD_DIM, BLOCK_DP).to(tl.float32)
        tl.store(delta_ptrs, _row_sum(do * o), mask=row_ok)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, Bias, DO, W, Lse, Delta, DK, DV,
    qk_scale, scale,
    stride_qb, stride_qm, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
    stride_bb, stride_bh, stride_dob, stride_dom, stride_doh,
    stride_wb, stride_wm, stride_wh,
    stride_gs, stride_gb, stride_gn, stride_gh,
    H, seq_q, seq_k, rows_per_split,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_D2: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_W: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """dK, dV of one key tile of one branch over the queries of split ``program_id(2)``.

    With several splits DK/DV are float32 partials ``(splits, B, seq_k, H, D)`` that the host sums.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = keys < seq_k
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    k = _load_rows(k_base, keys, stride_kn, key_ok, 0, HEAD_DIM, BLOCK_D)
    k2 = _second_piece(k_base, keys, stride_kn, key_ok, HEAD_DIM, BLOCK_D, BLOCK_D2, False)
    v = _load_rows(v_base, keys, stride_vn, key_ok, 0, HEAD_DIM, BLOCK_D)
    v2 = _second_piece(v_base, keys, stride_vn, key_ok, HEAD_DIM, BLOCK_D, BLOCK_D2, False)
    bias = tl.full([BLOCK_N], 0.0, dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(Bias + b * stride_bb + h * stride_bh + keys, mask=key_ok, other=0.0) * 1.4426950408889634

    dk = tl.full([BLOCK_N, BLOCK_D], 0.0, dtype=tl.float32)
    dv = tl.full([BLOCK_N, BLOCK_D], 0.0, dtype=tl.float32)
    dk2 = _zeros_second(BLOCK_N, BLOCK_D2)
    dv2 = _zeros_second(BLOCK_N, BLOCK_D2)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    start = pid_s * rows_per_split
    stop = tl.minimum(start + rows_per_split, seq_q)
    for start_m in range(start, stop, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        row_ok = rows < stop
        q_t = _load_cols(q_base, rows, stride_qm, row_ok, 0, HEAD_DIM, BLOCK_D)
        q2_t = _second_piece(q_base, rows, stride_qm, row_ok, HEAD_DIM, BLOCK_D, BLOCK_D2, True)
        s_t = _dot2(k, k2, q_t, q2_t, BLOCK_D2, PRECISION) * qk_scale + bias[:, None]
        lse = tl.load(Lse + pid_bh * seq_q + rows, mask=row_ok, other=float("inf"))
        p_t = tl.math.exp2(s_t - lse[None, :])  # (BLOCK_N, BLOCK_M); 0 for masked or empty rows
        do = _load_rows(do_base, rows, stride_dom, row_ok, 0, HEAD_DIM, BLOCK_D)
        do2 = _second_piece(do_base, rows, stride_dom, row_ok, HEAD_DIM, BLOCK_D, BLOCK_D2, False)
        dp_t = _dot2(v, v2, tl.trans(do), tl.trans(do2), BLOCK_D2, PRECISION)
        pw_t = p_t
        if HAS_W:  # this branch's output gradient is w·dO: scale P for dV and dP for dS
            w = tl.load(W + b * stride_wb + h * stride_wh + rows * stride_wm, mask=row_ok, other=0.0)
            pw_t = p_t * w[None, :]
            dp_t = dp_t * w[None, :]
        pw_in = pw_t.to(DO.dtype.element_ty)
        dv += tl.dot(pw_in, do, input_precision=PRECISION)
        delta = tl.load(Delta + pid_bh * seq_q + rows, mask=row_ok, other=0.0)
        ds_in = (p_t * (dp_t - delta[None, :])).to(Q.dtype.element_ty)
        dk += tl.dot(ds_in, tl.trans(q_t), input_precision=PRECISION)
        if BLOCK_D2 > 0:
            dv2 += tl.dot(pw_in, do2, input_precision=PRECISION)
            dk2 += tl.dot(ds_in, tl.trans(q2_t), input_precision=PRECISION)

    g_base = pid_s.to(tl.int64) * stride_gs + b * stride_gb + h * stride_gh
    _store_rows(DK + g_base, keys, stride_gn, key_ok, 0, dk * scale, HEAD_DIM, BLOCK_D)
    _store_rows(DV + g_base, keys, stride_gn, key_ok, 0, dv, HEAD_DIM, BLOCK_D)
    if BLOCK_D2 > 0:
        _store_rows(DK + g_base, keys, stride_gn, key_ok, BLOCK_D, dk2 * scale, HEAD_DIM, BLOCK_D2)
        _store_rows(DV + g_base, keys, stride_gn, key_ok, BLOCK_D, dv2, HEAD_DIM, BLOCK_D2)


@triton.jit
def _dq_branch(dq, dq2, q, q2, do, do2, K, V, Bias, lse, delta, w, seq_k, stride_kn, stride_vn, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr,
               HAS_BIAS: tl.constexpr, HAS_W: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """Accumulate one branch's ``dS @ K`` into dq (unscaled) over all its keys."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(0, seq_k, BLOCK_N):
        keys = start_n + offs_n
        key_ok = keys < seq_k
        k_t = _load_cols(K, keys, stride_kn, key_ok, 0, HEAD_DIM, BLOCK_D)
        k2_t = _second_piece(K, keys, stride_kn, key_ok, HEAD_DIM, BLOCK_D, BLOCK_D2, True)
        s = _dot2(q, q2, k_t, k2_t, BLOCK_D2, PRECISION) * qk_scale
        if HAS_BIAS:
            s += tl.load(Bias + keys, mask=key_ok, other=0.0)[None, :] * 1.4426950408889634
        s = tl.where(key_ok[None, :], s, float("-inf"))
        p = tl.math.exp2(s - lse[:, None])
        v_t = _load_cols(V, keys, stride_vn, key_ok, 0, HEAD_DIM, BLOCK_D)
        v2_t = _second_piece(V, keys, stride_vn, key_ok, HEAD_DIM, BLOCK_D, BLOCK_D2, True)
        dp = _dot2(do, do2, v_t, v2_t, BLOCK_D2, PRECISION)
        if HAS_W:
            dp = dp * w[:, None]
        ds_in = (p * (dp - delta[:, None])).to(K.dtype.element_ty)
        dq += tl.dot(ds_in, tl.trans(k_t), input_precision=PRECISION)
        if BLOCK_D2 > 0:
            dq2 += tl.dot(ds_in, tl.trans(k2_t), input_precision=PRECISION)
    return dq, dq2


@triton.jit
def _bwd_dq_kernel(
    Q, DO, DQ, K1, V1, Bias1, K2, V2, Bias2, W, Lse, Delta,
    qk_scale, scale,
    stride_qb, stride_qm, stride_qh, stride_dob, stride_dom, stride_doh, stride_gb, stride_gm, stride_gh,
    stride_k1b, stride_k1n, stride_k1h, stride_v1b, stride_v1n, stride_v1h, stride_b1b, stride_b1h,
    stride_k2b, stride_k2n, stride_k2h, stride_v2b, stride_v2n, stride_v2h, stride_b2b, stride_b2h,
    stride_wi, stride_wb, stride_wm, stride_wh,
    stride_li,
    H, seq_q, seq_k1, seq_k2,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N1: tl.constexpr, BLOCK_N2: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr,
    HAS_BIAS1: tl.constexpr, HAS_BIAS2: tl.constexpr, TWO_BRANCH: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """dQ of one query tile: Q and dO are read once and both branches' keys stream past them."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_q
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    q = _load_rows(q_base, rows, stride_qm, row_ok, 0, HEAD_DIM, BLOCK_D)
    q2 = _second_piece(q_base, rows, stride_qm, row_ok, HEAD_DIM, BLOCK_D, BLOCK_D2, False)
    do = _load_rows(do_base, rows, stride_dom, row_ok, 0, HEAD_DIM, BLOCK_D)
    do2 = _second_piece(do_base, rows, stride_dom, row_ok, HEAD_DIM, BLOCK_D, BLOCK_D2, False)
    row_stats = pid_bh * seq_q + rows
    w_ptrs = W + b * stride_wb + h * stride_wh + rows * stride_wm
    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)
    dq2 = _zeros_second(BLOCK_M, BLOCK_D2)

    lse = tl.load(Lse + row_stats, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + row_stats, mask=row_ok, other=0.0)
    w = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    if TWO_BRANCH:
        w = tl.load(w_ptrs, mask=row_ok, other=0.0)
    dq, dq2 = _dq_branch(
        dq, dq2, q, q2, do, do2, K1 + b * stride_k1b + h * stride_k1h, V1 + b * stride_v1b + h * stride_v1h,
        Bias1 + b * stride_b1b + h * stride_b1h, lse, delta, w, seq_k1, stride_k1n, stride_v1n, qk_scale,
        HEAD_DIM, BLOCK_N1, BLOCK_D, BLOCK_D2, HAS_BIAS1, TWO_BRANCH, PRECISION,
    )  # fmt: skip
    if TWO_BRANCH:
        lse = tl.load(Lse + stride_li + row_stats, mask=row_ok, other=float("inf"))
        delta = tl.load(Delta + stride_li + row_stats, mask=row_ok, other=0.0)
        w = tl.load(w_ptrs + stride_wi, mask=row_ok, other=0.0)
        dq, dq2 = _dq_branch(
            dq, dq2, q, q2, do, do2, K2 + b * stride_k2b + h * stride_k2h, V2 + b * stride_v2b + h * stride_v2h,
            Bias2 + b * stride_b2b + h * stride_b2h, lse, delta, w, seq_k2, stride_k2n, stride_v2n, qk_scale,
            HEAD_DIM, BLOCK_N2, BLOCK_D, BLOCK_D2, HAS_BIAS2, True, PRECISION,
        )  # fmt: skip
    g_base = DQ + b * stride_gb + h * stride_gh
    _store_rows(g_base, rows, stride_gm, row_ok, 0, dq * scale, HEAD_DIM, BLOCK_D)
    if BLOCK_D2 > 0:
        _store_rows(g_base, rows, stride_gm, row_ok, BLOCK_D, dq2 * scale, HEAD_DIM, BLOCK_D2)
