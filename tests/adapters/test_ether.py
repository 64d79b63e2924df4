"""ETHER and ETHER+ specifics: the reflection at init, the strength guarantees, identity at init for ETHER+."""

import math

import pytest
import torch
import torch.nn.functional as F

from studio.adapters import AdapterLayer, ETHERConfig, ETHERPlusConfig
from studio.adapters.maths import householder

SCALES = (0.0, 0.3, 1.0, 1.7, -0.5, 2.0, -1.0)


def ether_adapter(kit, config, kind="linear", randomized=True):
    layer = AdapterLayer(kit.make_layer(kind))
    adapter = layer.add_adapter("a", config, generator=torch.Generator().manual_seed(0))
    if randomized:
        kit.randomize(adapter)
    return layer, adapter


def spectral(m):
    return torch.linalg.matrix_norm(m, ord=2).item()


def test_ether_is_a_block_reflection(kit):
    _, adapter = ether_adapter(kit, ETHERConfig(num_blocks=4), randomized=False)
    expected = torch.block_diag(*householder(adapter.u.detach()))
    h = adapter.transform(1.0)
    assert (h - expected).abs().max().item() <= kit.TOL["orthogonal"]
    assert spectral(h - torch.eye(16)) == pytest.approx(2.0, abs=1e-5)  # ‖H - I‖ = 2 from the start


def test_ether_strength_guarantees(kit):
    _, adapter = ether_adapter(kit, ETHERConfig(num_blocks=2))
    eye, u = torch.eye(16), adapter.u.detach()
    for scale in SCALES:
        h = adapter.transform(scale)
        assert (h - h.T).abs().max().item() <= kit.TOL["orthogonal"]  # symmetric
        assert spectral(h) <= 1 + kit.TOL["orthogonal"]  # never amplifies
        assert spectral(h - eye) == pytest.approx(1 - math.cos(math.pi * scale), abs=1e-5)
        assert (h - torch.block_diag(*householder(u, scale))).abs().max().item() <= kit.TOL["orthogonal"]
        is_integer = float(scale).is_integer()
        assert adapter.orthogonal(scale) == is_integer
        if is_integer:  # H(s) = H^s: orthogonal, I for even s
            assert (h.T @ h - eye).abs().max().item() <= kit.TOL["orthogonal"]
    assert (adapter.transform(2.0) - eye).abs().max().item() <= kit.TOL["orthogonal"]
    assert (adapter.transform(-1.0) - adapter.transform(1.0)).abs().max().item() <= kit.TOL["orthogonal"]
    h = adapter.transform(0.3)
    assert (h.T @ h - eye).abs().max().item() > 0.1  # not orthogonal between integers, as documented


def test_etherplus_is_identity_at_init_for_every_scale(kit, kind):
    layer, adapter = ether_adapter(kit, ETHERPlusConfig(num_blocks=2, two_sided=True), kind, randomized=False)
    assert not torch.equal(adapter.u, torch.zeros_like(adapter.u))
    x = kit.make_input(kind)
    for scale in SCALES:
        layer.set_scale("a", scale)
        assert (layer(x) - layer.base_layer(x)).abs().max().item() <= kit.TOL["init"]


def test_etherplus_strength_stays_in_the_family(kit):
    _, adapter = ether_adapter(kit, ETHERPlusConfig(num_blocks=2))
    eye = torch.eye(16)
    u_hat, v_hat = F.normalize(adapter.u.detach(), dim=-1), F.normalize(adapter.v.detach(), dim=-1)
    full = torch.block_diag(*(torch.eye(8) - u_hat[:, :, None] * u_hat[:, None] + v_hat[:, :, None] * v_hat[:, None]))
    assert (adapter.transform(1.0) - full).abs().max().item() <= kit.TOL["orthogonal"]
    assert (adapter.transform(0.0) - eye).abs().max().item() <= kit.TOL["orthogonal"]
    for scale in SCALES:
        h = adapter.transform(scale)
        assert (h - h.T).abs().max().item() <= kit.TOL["orthogonal"]
        assert spectral(h - eye) <= 1 + kit.TOL["orthogonal"]
        # I - ûûᵀ + ŵŵᵀ has trace d (one direction removed, one added) and rank-2 deviation from I.
        assert h.trace().item() == pytest.approx(16.0, abs=1e-4)
        assert torch.linalg.matrix_rank(h - eye, atol=1e-5).item() <= 2 * 2
    assert spectral(adapter.transform(1.0) - eye) > 0.1


def test_etherplus_two_sided_uses_both_sides(kit):
    layer, adapter = ether_adapter(kit, ETHERPlusConfig(num_blocks=2, two_sided=True))
    x = kit.make_input("linear")
    base = layer.base_layer
    weight = adapter.output_transform(1.0) @ base.weight @ adapter.transform(1.0).T
    assert (layer(x) - (x @ weight.T + base.bias)).abs().max().item() <= kit.TOL["merge"]
    assert sum(p.numel() for p in adapter.parameters()) == 2 * 16 + 2 * 12


def test_refuses_blocks_that_do_not_tile(kit):
    layer = AdapterLayer(kit.make_layer("linear"))
    with pytest.raises(ValueError, match=r"ETHERConfig.num_blocks=3 .* \(16\)"):
        layer.add_adapter("a", ETHERConfig(num_blocks=3))
    with pytest.raises(ValueError, match=r"output features \(two_sided=True\) \(12\)"):
        layer.add_adapter("a", ETHERPlusConfig(num_blocks=8, two_sided=True))
