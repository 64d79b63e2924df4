"""The pure maths helpers: their worked examples and the identities the adapters rely on."""

import math

import pytest
import torch
from peft.tuners.lokr.layer import factorization as peft_factorization

from studio.adapters.maths import (
    apply_givens_tree,
    apply_pair_stages,
    block_diagonal_matmul,
    butterfly_permutation,
    cayley,
    cayley_neumann,
    factorize,
    givens_stages,
    householder,
    kron_matvec,
    project_frobenius_ball,
    rotation_2x2,
    skew_from_triu,
)

D = torch.float64


def test_skew_from_triu_worked_example():
    expected = torch.tensor([[0.0, 1, 2], [-1, 0, 3], [-2, -3, 0]])
    assert torch.equal(skew_from_triu(torch.tensor([1.0, 2, 3]), 3), expected)
    with pytest.raises(ValueError, match="needs 3"):
        skew_from_triu(torch.zeros(4), 3)


def test_cayley_worked_example_and_orthogonality(kit):
    t = 0.5
    q = torch.tensor([[0.0, t], [-t, 0.0]], dtype=D)
    expected = torch.tensor([[1 - t * t, 2 * t], [-2 * t, 1 - t * t]], dtype=D) / (1 + t * t)
    torch.testing.assert_close(cayley(q), expected, atol=kit.TOL["float64"], rtol=0)
    torch.testing.assert_close(cayley(q / t), torch.tensor([[0.0, 1], [-1, 0]], dtype=D), atol=1e-12, rtol=0)
    big = skew_from_triu(torch.randn(3, 15, generator=torch.Generator().manual_seed(0), dtype=D) * 5, 6)
    r = cayley(big)
    torch.testing.assert_close(r.transpose(-1, -2) @ r, torch.eye(6, dtype=D).expand(3, 6, 6), atol=1e-10, rtol=0)
    assert torch.allclose(torch.linalg.det(r), torch.ones(3, dtype=D))


def test_neumann_close_to_exact_for_small_q_and_matches_its_formula(kit):
    q = skew_from_triu(torch.randn(2, 6, generator=torch.Generator().manual_seed(0)), 4)
    small = q * (0.01 / torch.linalg.matrix_norm(q).max())
    assert (cayley_neumann(small, 4) - cayley(small)).abs().max().item() <= kit.TOL["neumann"]
    assert (cayley_neumann(q, 4) - cayley(q)).abs().max().item() > 1e-3  # only close when Q is small
    eye = torch.eye(4)
    torch.testing.assert_close(cayley_neumann(q, 1), eye + q)
    torch.testing.assert_close(cayley_neumann(q, 2), eye + 2 * q + q @ q)
    with pytest.raises(ValueError, match="terms=0"):
        cayley_neumann(q, 0)


def test_project_frobenius_ball_worked_example():
    q = torch.tensor([[[0.0, 3.0], [-3.0, 0.0]], [[0.0, 0.1], [-0.1, 0.0]]])
    out = project_frobenius_ball(q, math.sqrt(2))
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
    assert torch.equal(out[1], q[1])  # inside the ball: untouched
    zero = torch.zeros(1, 2, 2, requires_grad=True)
    project_frobenius_ball(zero, 0.1).sum().backward()
    assert torch.isfinite(zero.grad).all()


def test_block_diagonal_matmul_worked_example_and_dense_equivalent():
    eye = torch.eye(2)
    out = block_diagonal_matmul(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.stack([eye, 2 * eye]))
    assert torch.equal(out, torch.tensor([1.0, 2.0, 6.0, 8.0]))
    blocks = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=D)
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1), dtype=D)
    torch.testing.assert_close(block_diagonal_matmul(x, blocks), x @ torch.block_diag(*blocks))


def test_butterfly_permutation_examples_and_structure():
    assert butterfly_permutation(8, 2, 0).tolist() == list(range(8))
    assert butterfly_permutation(8, 2, 1).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert butterfly_permutation(8, 2, 2).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert butterfly_permutation(16, 4, 2).tolist() == [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15]
    for level in range(3):
        assert sorted(butterfly_permutation(32, 4, level).tolist()) == list(range(32))
    with pytest.raises(ValueError, match="divisible by 16"):
        butterfly_permutation(24, 4, 2)
    with pytest.raises(ValueError, match="even block size"):
        butterfly_permutation(24, 3, 1)


def test_butterfly_levels_connect_every_feature():
    dim, size = 16, 4
    reach = torch.eye(dim, dtype=torch.bool)
    for level in range(3):  # log2(16 / 4) + 1 levels
        perm = butterfly_permutation(dim, size, level)
        mix = torch.zeros(dim, dim, dtype=torch.bool)
        for start in range(0, dim, size):
            block = perm[start : start + size]
            mix[block[:, None], block[None, :]] = True
        reach = (reach.float() @ mix.float()) > 0
    assert reach.all()


def test_givens_stages_worked_example_and_counts():
    stages = givens_stages(5)
    pairs = [list(zip(i.tolist(), j.tolist(), strict=True)) for i, j in stages]
    assert pairs == [[(0, 1), (2, 3)], [(0, 2)], [(0, 4)]]
    for dim in (2, 3, 8, 16, 17, 72):
        stages = givens_stages(dim)
        assert len(stages) == math.ceil(math.log2(dim))
        assert sum(len(i) for i, _ in stages) == dim - 1
        for i, j in stages:
            touched = torch.cat([i, j])
            assert len(set(touched.tolist())) == len(touched)  # disjoint within a stage
    with pytest.raises(ValueError, match="dim >= 2"):
        givens_stages(1)


def dense_stage(dim, i, j, mats):
    g = torch.eye(dim, dtype=mats.dtype)
    for k in range(len(i)):
        a, b = int(i[k]), int(j[k])
        g[a, a], g[a, b], g[b, a], g[b, b] = mats[k, 0, 0], mats[k, 0, 1], mats[k, 1, 0], mats[k, 1, 1]
    return g


def test_apply_pair_stages_matches_dense_product(kit):
    dim = 7
    stages = givens_stages(dim)
    gen = torch.Generator().manual_seed(0)
    mats = [torch.randn(len(i), 2, 2, generator=gen, dtype=D) for i, _ in stages]
    r = torch.eye(dim, dtype=D)
    for (i, j), m in zip(stages, mats, strict=True):
        r = dense_stage(dim, i, j, m) @ r  # R = G_L ⋯ G_1
    x = torch.randn(4, dim, generator=gen, dtype=D)
    tol = kit.TOL["float64"]
    torch.testing.assert_close(apply_pair_stages(x, stages, mats, transpose=False), x @ r, atol=tol, rtol=0)
    torch.testing.assert_close(apply_pair_stages(x, stages, mats, transpose=True), x @ r.T, atol=tol, rtol=0)
    quarter = [rotation_2x2(torch.tensor([math.pi / 2], dtype=D))]
    one = [(torch.tensor([0]), torch.tensor([1]))]
    e0 = torch.tensor([1.0, 0.0], dtype=D)
    torch.testing.assert_close(apply_pair_stages(e0, one, quarter, False), torch.tensor([0.0, -1.0], dtype=D))
    torch.testing.assert_close(apply_pair_stages(e0, one, quarter, True), torch.tensor([0.0, 1.0], dtype=D))


@pytest.mark.parametrize("dim", [2, 3, 5, 8, 12, 33, 96])
def test_the_givens_tree_equals_the_stage_by_stage_product_with_its_gradients(kit, dim):
    stages = givens_stages(dim)
    gen = torch.Generator().manual_seed(dim)
    mats = [torch.randn(len(i), 2, 2, generator=gen, dtype=D, requires_grad=True) for i, _ in stages]
    x = torch.randn(3, 2, dim, generator=gen, dtype=D, requires_grad=True)
    for transpose in (False, True):
        ref = apply_pair_stages(x, stages, mats, transpose)
        tree = apply_givens_tree(x, mats, transpose)
        torch.testing.assert_close(tree, ref, atol=kit.TOL["float64"], rtol=0)
        probe = torch.randn(ref.shape, generator=gen, dtype=D)
        for g_ref, g_tree in zip(
            torch.autograd.grad((ref * probe).sum(), [x, *mats]),
            torch.autograd.grad((tree * probe).sum(), [x, *mats]),
            strict=True,
        ):
            torch.testing.assert_close(g_tree, g_ref, atol=kit.TOL["float64"], rtol=0)
    leaves = [m.detach().clone().requires_grad_() for m in mats]
    assert torch.autograd.gradcheck(lambda v, *m: apply_givens_tree(v, list(m), True), (x[:1, :1], *leaves))


def test_householder_worked_example_and_strength_path(kit):
    torch.testing.assert_close(householder(torch.tensor([1.0, 0.0])), torch.tensor([[-1.0, 0.0], [0.0, 1.0]]))
    half = householder(torch.tensor([1.0, 0.0]), 0.5)
    torch.testing.assert_close(half, torch.tensor([[0.0, 0.0], [0.0, 1.0]]), atol=1e-7, rtol=0)
    u = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=D)
    h = householder(u)
    eye = torch.eye(5, dtype=D).expand(3, 5, 5)
    torch.testing.assert_close(h @ h, eye)  # a reflection is an involution
    torch.testing.assert_close(torch.linalg.matrix_norm(h - eye, ord=2), torch.full((3,), 2.0, dtype=D))
    for s in (0.3, 1.7, -0.5):
        eig = torch.linalg.eigvalsh(householder(u, s))
        expected = torch.tensor([math.cos(math.pi * s)] + [1.0] * 4, dtype=D).sort().values
        torch.testing.assert_close(eig, expected.expand(3, 5), atol=kit.TOL["float64"], rtol=0)


def test_kron_matvec_worked_example_and_equals_torch_kron(kit):
    out = kron_matvec(torch.tensor([3.0, 4.0]), torch.tensor([[2.0]]), torch.tensor([[1.0, 1.0]]))
    assert torch.equal(out, torch.tensor([14.0]))
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, generator=gen), torch.randn(5, 2, generator=gen)
    x = torch.randn(2, 6, 8, generator=gen)
    assert (kron_matvec(x, a, b) - x @ torch.kron(a, b).T).abs().max().item() <= kit.TOL["kron"]


def test_factorize_matches_peft_rule():
    assert factorize(128) == (8, 16) and factorize(128, 4) == (4, 32) and factorize(127) == (1, 127)
    for dim in range(1, 200):
        for factor in (-1, 1, 2, 3, 4, 5, 8, 16):
            assert factorize(dim, factor) == peft_factorization(dim, factor), (dim, factor)
