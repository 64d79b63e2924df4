"""BOFT specifics: one factor is OFT, the butterfly product, the output scale, and PEFT's BOFT (one factor)."""

import copy
import warnings

import peft.tuners.boft.layer as peft_boft_layer
import pytest
import torch
from peft import BOFTConfig as PeftBOFTConfig
from peft import inject_adapter_in_model
from torch import nn

from studio.adapters import AdapterLayer, BOFTConfig, OFTConfig
from studio.adapters.maths import butterfly_permutation, skew_from_triu


class Holder(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def test_one_factor_equals_oft_on_the_same_parameters(kit, kind):
    oft = AdapterLayer(kit.make_layer(kind))
    kit.randomize(oft.add_adapter("a", OFTConfig(block_size=4)))
    boft = AdapterLayer(kit.make_layer(kind))
    boft_adapter = boft.add_adapter("a", BOFTConfig(block_size=4, factors=1))
    with torch.no_grad():
        boft_adapter.q.copy_(oft.adapters["a"].q[None])
    x = kit.make_input(kind)
    for scale in (1.0, -0.5):
        oft.set_scale("a", scale)
        boft.set_scale("a", scale)
        assert (boft(x) - oft(x)).abs().max().item() <= kit.TOL["merge"]
        assert torch.allclose(boft_adapter.transform(scale), oft.adapters["a"].transform(scale), atol=1e-6)
    assert (oft(x) - oft.base_layer(x)).abs().max().item() > 1e-2


@pytest.mark.parametrize("factors", [2, 3])
def test_butterfly_product_matches_dense_factors(kit, factors):
    """The composed blocks (spans of 8 or 16 features) are the dense product of the permuted factors."""
    layer = AdapterLayer(kit.make_layer("linear"))
    adapter = layer.add_adapter("a", BOFTConfig(block_size=4, factors=factors))  # 16 features
    kit.randomize(adapter)
    blocks = adapter.factor_blocks(0.6)
    dense = torch.eye(16)
    for level in range(factors):
        perm = butterfly_permutation(16, 4, level)
        p = torch.eye(16)[:, perm]  # x @ p == x[..., perm]
        dense = (p @ torch.block_diag(*blocks[level]) @ p.T) @ dense  # R = B_{M-1} ⋯ B_0
    composed = adapter.composed_blocks(0.6)
    assert composed.shape == (16 // (4 * 2 ** (factors - 1)), 4 * 2 ** (factors - 1), 4 * 2 ** (factors - 1))
    assert (torch.block_diag(*composed) - dense).abs().max().item() <= kit.TOL["orthogonal"]
    assert (adapter.transform(0.6) - dense).abs().max().item() <= kit.TOL["orthogonal"]
    assert (dense - torch.eye(16)).abs().max().item() > 1e-2


@pytest.mark.parametrize("factors", [2, 6])
def test_composed_blocks_and_factor_by_factor_agree_in_value_and_gradient(factors):
    """Short butterflies run as composed blocks, long ones (span 64 > 2·M·b = 24) factor by factor."""
    layer = AdapterLayer(nn.Linear(64, 8))
    adapter = layer.add_adapter("a", BOFTConfig(block_size=2, factors=factors))
    assert adapter.composes == (factors == 2)
    with torch.no_grad():
        adapter.q.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 64, dtype=torch.float64, requires_grad=True)
    layer.double()
    for transpose in (False, True):
        composed = adapter.composed_blocks(0.8)
        composed = composed.transpose(-1, -2) if transpose else composed
        via_blocks = torch.cat([x[:, k * len(b) : (k + 1) * len(b)] @ b for k, b in enumerate(composed)], dim=-1)
        one_by_one = adapter._through_factors(x, adapter.factor_blocks(0.8), transpose)
        assert torch.allclose(via_blocks, one_by_one, atol=1e-12)
        assert torch.allclose(adapter.rotate_input(x, 0.8, transpose), one_by_one, atol=1e-12)
        grads = [torch.autograd.grad(y.square().sum(), [x, adapter.q]) for y in (via_blocks, one_by_one)]
        for a, b in zip(*grads, strict=True):
            assert torch.allclose(a, b, atol=1e-10)
    assert (via_blocks - x).abs().max().item() > 1e-2


def test_output_scale_moves_linearly_and_leaves_bias_alone(kit):
    layer = AdapterLayer(kit.make_layer("linear"))
    adapter = layer.add_adapter("a", BOFTConfig(block_size=4))
    with torch.no_grad():
        adapter.magnitude.copy_(torch.linspace(0.5, 2.0, 12))
    x = kit.make_input("linear")
    base = layer.base_layer
    for scale in (1.0, 0.5, -1.0):
        layer.set_scale("a", scale)
        m = 1 + scale * (adapter.magnitude - 1)
        expected = (x @ base.weight.T) * m + base.bias
        assert (layer(x) - expected).abs().max().item() <= kit.TOL["merge"]


def test_refuses_factor_counts_the_width_cannot_take(kit):
    layer = AdapterLayer(kit.make_layer("linear"))
    with pytest.raises(ValueError, match=r"factors=4 .* divisible by b·2\^\(factors-1\) = 32"):
        layer.add_adapter("a", BOFTConfig(block_size=4, factors=4))


def test_equals_peft_boft_with_one_factor(kit, kind, monkeypatch):
    """PEFT builds Cayley(-S) from S = (data - dataᵀ)/2, so data = -s·Q; its boft_s is our m(s)."""
    monkeypatch.setattr(peft_boft_layer, "get_fbd_cuda", lambda: None)  # never compile PEFT's CUDA extension
    scale = 0.7
    ours = AdapterLayer(kit.make_layer(kind))
    adapter = ours.add_adapter("a", BOFTConfig(block_size=4, factors=1))
    kit.randomize(adapter)
    ours.set_scale("a", scale)
    peft_config = PeftBOFTConfig(boft_block_size=4, boft_n_butterfly_factor=1, target_modules=["layer"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = inject_adapter_in_model(peft_config, Holder(copy.deepcopy(ours.base_layer)))
    q = skew_from_triu(adapter.q.detach()[0], 4)
    with torch.no_grad():
        theirs.layer.boft_R["default"].copy_(-scale * q[None])
        magnitude = adapter.output_scale(scale).detach()
        theirs.layer.boft_s["default"].copy_(magnitude.reshape(theirs.layer.boft_s["default"].shape))
    x = kit.make_input(kind)
    assert (theirs(x) - ours(x)).abs().max().item() <= kit.TOL["peft"]
