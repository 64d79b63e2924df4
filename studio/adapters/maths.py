"""The maths behind the adapters, as small pure tensor functions.

Conventions shared by every function here:

* Vectors are rows. A batch ``x`` of shape ``(..., d)`` is transformed as ``x @ M``; this is the layout
  ``nn.Linear`` uses, so the same function transforms activations and the rows of a weight.
* Batched square blocks have shape ``(n, b, b)``; ``blockdiag(blocks)`` is the ``(n*b, n*b)`` matrix with
  ``blocks[k]`` on the diagonal.

Each docstring names the paper and writes out the equation it implements; the worked examples are checked by
``tests/adapters/test_maths.py``.
"""

from __future__ import annotations

import math

import torch


def skew_from_triu(vec: torch.Tensor, size: int) -> torch.Tensor:
    """Build skew-symmetric matrices from their strict upper triangles.

    OFT (Qiu et al. 2023, arXiv 2306.07280, Sec. 3, Cayley parameterisation) learns a skew matrix ``Q = -Qᵀ``;
    only the ``b(b-1)/2`` entries above the diagonal are free, so only those are stored.

    Args:
        vec: ``(..., size*(size-1)//2)`` entries in ``torch.triu_indices(size, size, 1)`` order (row by row).
        size: the block size ``b``.

    Returns:
        ``(..., size, size)`` with ``Q[i, j] = vec[k]`` and ``Q[j, i] = -vec[k]`` for the k-th pair ``i < j``.

    Example:
        ``skew_from_triu(tensor([1., 2., 3.]), 3)`` is ``[[0, 1, 2], [-1, 0, 3], [-2, -3, 0]]``.
    """
    n_free = size * (size - 1) // 2
    if vec.shape[-1] != n_free:
        raise ValueError(f"vec has {vec.shape[-1]} entries in its last dim; a {size}x{size} skew block needs {n_free}")
    rows, cols = torch.triu_indices(size, size, 1, device=vec.device)
    upper = vec.new_zeros(*vec.shape[:-1], size, size)
    upper[..., rows, cols] = vec
    return upper - upper.transpose(-1, -2)


def cayley(q: torch.Tensor) -> torch.Tensor:
    """Exact Cayley transform ``R = (I + Q)(I - Q)^{-1}`` of skew-symmetric ``Q``.

    OFT (Qiu et al. 2023, arXiv 2306.07280, Sec. 3, Cayley parameterisation). ``R`` is orthogonal with
    ``det R = +1`` for every skew ``Q``, and ``I - Q`` is always invertible (its eigenvalues are ``1 - iλ``), so
    ``cayley(s * Q)`` is a rotation for every real strength ``s``. ``(I + Q)`` and ``(I - Q)^{-1}`` commute, so
    one linear solve gives ``R``.

    Args:
        q: ``(..., b, b)`` skew-symmetric.

    Returns:
        ``(..., b, b)`` orthogonal.

    Example:
        For ``Q = [[0, t], [-t, 0]]``, ``R = [[1 - t², 2t], [-2t, 1 - t²]] / (1 + t²)``; ``t = 1`` gives
        ``[[0, 1], [-1, 0]]``.
    """
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    return torch.linalg.solve(eye - q, eye + q)


def cayley_neumann(q: torch.Tensor, terms: int) -> torch.Tensor:
    """Cayley transform with ``(I - Q)^{-1}`` replaced by a truncated Neumann series.

    OFTv2 (Qiu et al. 2025, "Orthogonal Finetuning Made Scalable", Cayley-Neumann parameterisation):
    ``R ≈ (I + Q) · Σ_{k=0}^{terms-1} Q^k``. Matrix products only, no solve; accurate when ``‖Q‖ < 1`` and only
    approximately orthogonal (error ``O(‖Q‖^terms)``). PEFT's ``num_cayley_neumann_terms = T`` computes the same
    polynomial as ``terms = T - 1`` here, for ``T >= 4``.

    Args:
        q: ``(..., b, b)`` skew-symmetric.
        terms: number of series terms, ``>= 1`` (``terms = 1`` gives ``I + Q``).

    Returns:
        ``(..., b, b)``, approximately orthogonal.

    Example:
        ``terms = 2`` gives ``(I + Q)(I + Q) = I + 2Q + Q²``, the first-order expansion of ``cayley(Q)``.
    """
    if terms < 1:
        raise ValueError(f"terms={terms} is invalid; use terms >= 1")
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device).expand_as(q)
    series, power = eye, eye
    for _ in range(terms - 1):
        power = power @ q
        series = series + power
    return (eye + q) @ series


def project_frobenius_ball(q: torch.Tensor, eps: float) -> torch.Tensor:
    """Project each block of ``q`` into the Frobenius ball ``‖Q‖_F <= eps`` (COFT's radius constraint).

    COFT (Qiu et al. 2023, arXiv 2306.07280, Sec. 3, constrained OFT) bounds ``‖Q‖`` so that ``R`` stays near
    ``I``. Blocks already inside the ball are returned unchanged; others are rescaled onto its surface. The map is
    differentiable (also at ``Q = 0``), so it is applied in the forward pass instead of mutating parameters.

    Args:
        q: ``(..., b, b)`` blocks.
        eps: the radius, ``> 0``.

    Returns:
        ``(..., b, b)`` blocks with ``‖Q‖_F <= eps``.

    Example:
        ``[[0, 3], [-3, 0]]`` has ``‖Q‖_F = 3√2``; with ``eps = √2`` it becomes ``[[0, 1], [-1, 0]]``.
    """
    norm = torch.linalg.matrix_norm(q, keepdim=True)
    factor = torch.clamp(eps / norm.clamp_min(torch.finfo(q.dtype).tiny), max=1.0)
    return q * factor


def block_diagonal_matmul(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Compute ``x @ blockdiag(blocks)`` without building the block-diagonal matrix.

    Args:
        x: ``(..., n*b)``.
        blocks: ``(n, b, b)``.

    Returns:
        ``(..., n*b)``; the k-th chunk of ``b`` features is ``x_k @ blocks[k]``.

    Example:
        ``block_diagonal_matmul(tensor([1., 2., 3., 4.]), stack([I2, 2*I2]))`` is ``[1, 2, 6, 8]``.
    """
    n, b, _ = blocks.shape
    chunks = x.reshape(*x.shape[:-1], n, b)
    return torch.einsum("...nk,nkc->...nc", chunks, blocks).reshape(x.shape)


def butterfly_permutation(dim: int, block_size: int, level: int) -> torch.Tensor:
    """The permutation that makes level ``level`` of a block butterfly block-diagonal.

    BOFT (Liu et al. 2024, arXiv 2311.06243, Sec. 4, butterfly factorisation) writes ``R = B_m ⋯ B_1`` with
    ``B_l = P_l · blockdiag(R_l1, ...) · P_lᵀ``. Level ``l`` (0-based) splits the features into groups of
    ``block_size * 2**l`` and each group into half-blocks of ``block_size // 2``; half-block ``j`` is paired with
    half-block ``j + 2**l`` into one ``block_size`` block, as in an FFT butterfly. Level 0 is the identity, so a
    one-factor BOFT is exactly OFT, and ``log2(dim / block_size) + 1`` levels connect every feature to every other.

    Args:
        dim: number of features, divisible by ``block_size * 2**level``.
        block_size: ``b``, even when ``level > 0``.
        level: ``l >= 0``.

    Returns:
        ``(dim,)`` long tensor ``perm``; ``x[..., perm]`` gathers each block contiguously (``x @ P_l``).

    Example:
        ``butterfly_permutation(8, 2, 1)`` is ``[0, 2, 1, 3, 4, 6, 5, 7]`` and ``butterfly_permutation(8, 2, 2)``
        is ``[0, 4, 1, 5, 2, 6, 3, 7]``.
    """
    group = block_size * 2**level
    if level < 0 or dim % group or (level > 0 and block_size % 2):
        raise ValueError(
            f"butterfly level {level} with block_size {block_size} needs an even block size and dim divisible by "
            f"{group}; got dim={dim}"
        )
    if level == 0:
        return torch.arange(dim)
    half, pairs = block_size // 2, 2**level
    order = [j + k for j in range(pairs) for k in (0, pairs)]  # half-blocks j and j + 2**l side by side
    within = torch.cat([torch.arange(h * half, (h + 1) * half) for h in order])
    return torch.cat([start + within for start in range(0, dim, group)])


def givens_stages(dim: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``dim - 1`` rotation planes of GOFT, grouped into ``ceil(log2 dim)`` parallel stages.

    GOFT (Ma et al. 2024, arXiv 2404.04316, Sec. 3): any unit vector can be turned into any other by ``d - 1``
    Givens rotations ``G(i, j, θ)``, and arranging them as a binary tree makes them ``O(log d)`` stages of
    disjoint (hence commuting) rotations. Stage ``l`` pairs feature ``i`` with ``i + 2**l`` for every ``i`` that is a
    multiple of ``2**(l+1)``.

    Args:
        dim: number of features ``d >= 2``.

    Returns:
        One ``(i, j)`` pair of long tensors per stage; within a stage all indices are distinct.

    Example:
        ``givens_stages(5)`` pairs ``(0,1), (2,3)`` then ``(0,2)`` then ``(0,4)``: 4 rotations in 3 stages.
    """
    if dim < 2:
        raise ValueError(f"Givens rotations need dim >= 2; got dim={dim}")
    stages = []
    for level in range(math.ceil(math.log2(dim))):
        i = torch.arange(0, dim, 2 ** (level + 1))
        j = i + 2**level
        keep = j < dim
        stages.append((i[keep], j[keep]))
    return stages


def apply_pair_stages(
    x: torch.Tensor, stages: list[tuple[torch.Tensor, torch.Tensor]], mats: list[torch.Tensor], transpose: bool
) -> torch.Tensor:
    """Compute ``x @ R`` (or ``x @ Rᵀ``) for ``R = G_L ⋯ G_1``, a product of stages of disjoint 2x2 blocks.

    GOFT (Ma et al. 2024, arXiv 2404.04316, Sec. 3, Givens product; qGOFT relaxes each 2x2 block). Stage ``G_l``
    is the identity except on its planes ``(i, j)``, where it acts on column vectors as the 2x2 matrix ``M``.
    Each stage costs ``O(d)``; ``R`` is never built. Works for any disjoint planes; GOFT's own tree runs through
    :func:`apply_givens_tree`, which is tested against this.

    Args:
        x: ``(..., d)``.
        stages: from :func:`givens_stages`.
        mats: per stage, ``(n_pairs, 2, 2)`` blocks.
        transpose: compute ``x @ Rᵀ`` instead of ``x @ R``.

    Returns:
        ``(..., d)``.

    Example:
        With one stage, plane ``(0, 1)`` and ``M = [[0, -1], [1, 0]]`` (a quarter turn),
        ``[1, 0] @ R = [0, -1]`` and ``[1, 0] @ Rᵀ = [0, 1]``.
    """
    # x @ R applies the last stage first; x @ Rᵀ = x @ G_1ᵀ ⋯ G_Lᵀ applies the first stage first.
    order = range(len(stages)) if transpose else reversed(range(len(stages)))
    for level in order:
        i, j = stages[level]
        # x @ G touches only columns i and j: [x_i, x_j] -> [x_i, x_j] @ M (row pair times the block).
        m = mats[level].transpose(-1, -2) if transpose else mats[level]
        xi, xj = x[..., i], x[..., j]
        new_i = m[:, 0, 0] * xi + m[:, 1, 0] * xj
        new_j = m[:, 0, 1] * xi + m[:, 1, 1] * xj
        x = x.index_copy(-1, i.to(x.device), new_i).index_copy(-1, j.to(x.device), new_j)
    return x


def apply_givens_tree(x: torch.Tensor, mats: list[torch.Tensor], transpose: bool) -> torch.Tensor:
    """:func:`apply_pair_stages` for the planes of :func:`givens_stages` in ``O(d)`` work per row.

    Stage ``l`` of the tree only touches the multiples of ``2**l``, and pairs *consecutive* ones among them, so
    it acts on a strided view with ``d / 2**l`` entries: stage 0 on all features, stage 1 on the even ones, and
    so on. Recursing on the even half touches ``2d`` entries in all, against ``2d`` per stage for index copies
    over the whole row (``log2 d`` times as much; 11× at ``d = 1280``).

    Args:
        x: ``(..., d)``.
        mats: per stage of ``givens_stages(d)``, its ``(n_pairs, 2, 2)`` blocks.
        transpose: compute ``x @ Rᵀ`` (first stage first) instead of ``x @ R`` (last stage first).

    Returns:
        ``(..., d)``, equal to ``apply_pair_stages(x, givens_stages(d), mats, transpose)``.
    """
    return _givens_level(x, mats, 0, transpose)


def _givens_level(y: torch.Tensor, mats: list[torch.Tensor], level: int, transpose: bool) -> torch.Tensor:
    """Stages ``level`` and up on the active features ``y`` (the multiples of ``2**level``, in order)."""
    n = y.shape[-1]
    if n < 2:
        return y
    pairs = n // 2
    m = mats[level].transpose(-1, -2) if transpose else mats[level]
    odd, tail = y[..., 1 : 2 * pairs : 2], y[..., 2 * pairs :]  # tail: an unpaired last feature (n odd)

    def rotate(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return m[:, 0, 0] * a + m[:, 1, 0] * b, m[:, 0, 1] * a + m[:, 1, 1] * b

    if transpose:  # this stage, then the higher ones on the even half
        even, odd = rotate(y[..., 0 : 2 * pairs : 2], odd)
        evens = _givens_level(torch.cat([even, tail], -1), mats, level + 1, transpose)
    else:  # the higher stages on the even half, then this one
        evens = _givens_level(y[..., 0::2], mats, level + 1, transpose)
        even, odd = rotate(evens[..., :pairs], odd)
        evens = torch.cat([even, evens[..., pairs:]], -1)
    woven = torch.stack([evens[..., :pairs], odd], -1).flatten(-2)
    return torch.cat([woven, evens[..., pairs:]], -1) if n % 2 else woven


def rotation_2x2(theta: torch.Tensor) -> torch.Tensor:
    """Givens blocks ``[[cos θ, -sin θ], [sin θ, cos θ]]`` (counter-clockwise on column vectors).

    Args:
        theta: ``(n,)`` angles.

    Returns:
        ``(n, 2, 2)``.

    Example:
        ``rotation_2x2(tensor([pi / 2]))`` is ``[[[0, -1], [1, 0]]]``.
    """
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def householder(u: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Block Householder reflection ``H = I - 2ûûᵀ``, and its strength path ``H(s) = I - (1 - cos πs)ûûᵀ``.

    ETHER (Bini et al. 2024, arXiv 2405.20271, Sec. 3): ``H = I - 2uuᵀ/‖u‖²`` is a reflection, so
    ``‖H - I‖ = 2`` whatever ``u`` is. A reflection (``det = -1``) lies on no real one-parameter group through
    ``I``; ``H(s)`` is the real part of the unitary power ``H^s = I + (e^{iπs} - 1)ûûᵀ``. It equals ``H^s`` at every
    integer ``s`` (``I`` for even, ``H`` for odd ``s``), is symmetric with eigenvalues ``1`` and ``cos πs`` (so
    ``‖H(s)‖₂ <= 1`` and ``‖H(s) - I‖₂ = 1 - cos πs <= 2``), and is orthogonal only at integer ``s``.

    Args:
        u: ``(..., b)`` reflection normals (any non-zero length).
        strength: ``s``.

    Returns:
        ``(..., b, b)``.

    Example:
        ``householder(tensor([1., 0.]))`` is ``[[-1, 0], [0, 1]]``; with ``strength=0.5`` it is
        ``[[0, 0], [0, 1]]``.
    """
    unit = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    eye = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device)
    return eye - (1.0 - math.cos(math.pi * strength)) * unit.unsqueeze(-1) * unit.unsqueeze(-2)


def kron_matvec(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Compute ``x @ (A ⊗ B)ᵀ`` without building the Kronecker product.

    DiffuseKronA (Marjit et al. 2024, arXiv 2402.17412, Sec. 3): ``(A ⊗ B) vec(X) = vec(B X Aᵀ)`` with column-major
    ``vec``. With the row-major flattening torch uses (``x[i*b2 + j] = X[i, j]``, ``X`` of shape ``(a2, b2)``)
    the same identity reads ``(A ⊗ B) x = flatten(A X Bᵀ)``, which costs ``a1·a2·b1 + a2·b1·b2`` per row instead of
    ``a1·a2·b1·b2``.

    Args:
        x: ``(..., a2*b2)``.
        a: ``(a1, a2)``.
        b: ``(b1, b2)``.

    Returns:
        ``(..., a1*b1)``, equal to ``x @ torch.kron(a, b).T``.

    Example:
        ``a = [[2.]]``, ``b = [[1., 1.]]``, ``x = [3., 4.]``: ``(A ⊗ B) = [[2, 2]]`` and the result is ``[14.]``.
    """
    (a1, a2), (b1, b2) = a.shape, b.shape
    grid = x.reshape(*x.shape[:-1], a2, b2)
    out = a @ (grid @ b.transpose(0, 1))  # (a1, a2) @ (..., a2, b1)
    return out.reshape(*x.shape[:-1], a1 * b1)


def factorize(dim: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dim = m * n`` into two factors, the LyCORIS/PEFT LoKr rule.

    LoKr (Yeh et al. 2024, arXiv 2309.14859, Sec. 3.2, Kronecker factor shapes): if ``factor`` divides ``dim``, use
    ``(factor, dim // factor)``; otherwise ``m`` is the largest divisor of ``dim`` that is at most ``sqrt(dim)`` and
    at most ``factor`` (``factor = -1``: no cap), so the two factors are as balanced as allowed.

    Args:
        dim: ``>= 1``.
        factor: a preferred factor, or ``-1``.

    Returns:
        ``(m, n)`` with ``m * n == dim``.

    Example:
        ``factorize(128)`` is ``(8, 16)``, ``factorize(128, 4)`` is ``(4, 32)``, ``factorize(127)`` is ``(1, 127)``.
    """
    if factor > 0 and dim % factor == 0:
        return factor, dim // factor
    cap = dim if factor == -1 else factor
    m = max(d for d in range(1, math.isqrt(dim) + 1) if dim % d == 0 and d <= cap)
    return m, dim // m


def divisors(n: int) -> list[int]:
    """All positive divisors of ``n``, ascending (for error messages that list valid sizes)."""
    return [d for d in range(1, n + 1) if n % d == 0]
