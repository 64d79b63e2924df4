"""GOFT and qGOFT specifics: the Givens product, angle scaling, the qGOFT strength and penalty."""

import math

import torch

from studio.adapters import AdapterLayer, GOFTConfig, QGOFTConfig, orthogonality_penalty
from studio.adapters.givens import scaled_quasi_rotation
from studio.adapters.maths import givens_stages, rotation_2x2


def dense_givens(dim, angles):
    """R = G_L ⋯ G_1 built from explicit d×d Givens matrices, stage by stage."""
    r, offset = torch.eye(dim, dtype=angles.dtype), 0
    for i, j in givens_stages(dim):
        g = torch.eye(dim, dtype=angles.dtype)
        for a, b in zip(i.tolist(), j.tolist(), strict=True):
            c, s = torch.cos(angles[offset]), torch.sin(angles[offset])
            g[a, a], g[a, b], g[b, a], g[b, b] = c, -s, s, c
            offset += 1
        r = g @ r
    return r


def test_goft_transform_is_the_product_of_givens_rotations(kit):
    layer = AdapterLayer(kit.make_layer("conv1x1"))
    adapter = layer.add_adapter("a", GOFTConfig())
    kit.randomize(adapter)
    for scale in (1.0, -0.5, 1.7):
        expected = dense_givens(8, scale * adapter.angles.detach())
        assert (adapter.transform(scale) - expected).abs().max().item() <= kit.TOL["orthogonal"]


def test_goft_negative_scale_inverts_a_single_stage(kit):
    layer = AdapterLayer(torch.nn.Linear(2, 3))  # d = 2: one rotation, so R(-s) = R(s)ᵀ exactly
    adapter = layer.add_adapter("a", GOFTConfig())
    with torch.no_grad():
        adapter.angles.fill_(0.4)
    torch.testing.assert_close(adapter.transform(-1.0), adapter.transform(1.0).T)


def test_qgoft_scaling_keeps_exact_rotations_exact(kit):
    angles = torch.tensor([0.3, -1.1, 2.5], dtype=torch.float64)
    blocks = rotation_2x2(angles)
    eye = torch.eye(2, dtype=torch.float64)
    for scale in (0.0, 0.3, 1.0, 1.7, -0.5):
        scaled = scaled_quasi_rotation(blocks, scale)
        torch.testing.assert_close(scaled, rotation_2x2(scale * angles), atol=kit.TOL["float64"], rtol=0)
        torch.testing.assert_close(scaled.mT @ scaled, eye.expand(3, 2, 2), atol=kit.TOL["float64"], rtol=0)


def test_qgoft_scaling_endpoints_for_free_blocks(kit):
    blocks = torch.eye(2) + 0.3 * torch.randn(5, 2, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(scaled_quasi_rotation(blocks, 1.0), blocks, atol=kit.TOL["orthogonal"], rtol=0)
    assert torch.equal(scaled_quasi_rotation(blocks, 0.0), torch.eye(2).expand(5, 2, 2))


def test_qgoft_penalty_is_zero_iff_orthogonal_and_has_gradients(kit):
    layer = AdapterLayer(kit.make_layer("linear"))
    adapter = layer.add_adapter("a", QGOFTConfig(penalty_weight=0.5))
    assert adapter.orthogonality_penalty().item() == 0.0
    with torch.no_grad():
        adapter.blocks.copy_(rotation_2x2(torch.linspace(-2, 2, 15)))
    assert adapter.orthogonality_penalty().item() <= 1e-10  # rotations are free of penalty
    kit.randomize(adapter)
    penalty = adapter.orthogonality_penalty()
    assert penalty.item() > 1e-2
    penalty.backward()
    assert adapter.blocks.grad.abs().sum().item() > 0
    torch.testing.assert_close(orthogonality_penalty(layer), 0.5 * penalty.detach())


def test_qgoft_is_not_orthogonal_after_training(kit):
    layer = AdapterLayer(kit.make_layer("linear"))
    adapter = layer.add_adapter("a", QGOFTConfig())
    kit.randomize(adapter)
    r = adapter.transform(1.0)
    assert (r.T @ r - torch.eye(16)).abs().max().item() > 1e-2
    assert not adapter.orthogonal(1.0)
    assert math.isclose(adapter.transform(0.0).trace().item(), 16.0)
