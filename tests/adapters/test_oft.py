"""OFT specifics: Neumann vs exact Cayley, COFT, block sharing, and equality with PEFT's OFT after the mapping."""

import copy
import warnings

import pytest
import torch
from peft import OFTConfig as PeftOFTConfig
from peft import inject_adapter_in_model
from torch import nn

from studio.adapters import AdapterLayer, OFTConfig
from studio.adapters.maths import skew_from_triu


class Holder(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def oft_layer(kit, kind, config, seed=2):
    layer = AdapterLayer(kit.make_layer(kind))
    kit.randomize(layer.add_adapter("a", config), seed=seed)
    return layer


def test_neumann_close_to_exact_for_small_generators(kit):
    exact = oft_layer(kit, "linear", OFTConfig(block_size=4))
    neumann = oft_layer(kit, "linear", OFTConfig(block_size=4, cayley="neumann", neumann_terms=4))
    for layer in (exact, neumann):
        with torch.no_grad():
            layer.adapters["a"].q.mul_(0.02)
    eye = torch.eye(16)
    for scale in (1.0, -0.5):
        r_exact, r_neumann = exact.adapters["a"].transform(scale), neumann.adapters["a"].transform(scale)
        assert (r_exact - r_neumann).abs().max().item() <= kit.TOL["neumann"]
        assert (r_exact - eye).abs().max().item() > 1e-3
    assert not neumann.adapters["a"].orthogonal(1.0)


def test_neumann_merge_restores_from_the_kept_copy(kit):
    layer = oft_layer(kit, "linear", OFTConfig(block_size=4, cayley="neumann", neumann_terms=2))
    original = layer.base_layer.weight.detach().clone()
    layer.merge()
    layer.unmerge()
    assert torch.equal(layer.base_layer.weight, original)  # non-orthogonal R: exact copy, not an inverse


def test_coft_keeps_every_generator_inside_the_ball(kit):
    eps = 0.05
    layer = oft_layer(kit, "linear", OFTConfig(block_size=4, coft=True, coft_eps=eps))
    adapter = layer.adapters["a"]
    skew = skew_from_triu(adapter.q.detach(), 4)
    assert torch.linalg.matrix_norm(skew).min().item() > eps  # randomised far outside
    # Cayley(Q) with ‖Q‖_F <= eps stays within ‖R - I‖_F <= 2 eps / (1 - eps) of the identity.
    deviation = torch.linalg.matrix_norm(adapter.blocks(1.0) - torch.eye(4))
    assert deviation.max().item() <= 2 * eps / (1 - eps) + 1e-6
    unconstrained = oft_layer(kit, "linear", OFTConfig(block_size=4))
    assert torch.linalg.matrix_norm(unconstrained.adapters["a"].blocks(1.0) - torch.eye(4)).max().item() > 0.2


def test_block_share_uses_one_block_everywhere(kit):
    layer = oft_layer(kit, "linear", OFTConfig(block_size=4, block_share=True))
    adapter = layer.adapters["a"]
    assert sum(p.numel() for p in adapter.parameters()) == 6
    blocks = adapter.blocks(0.7)
    assert blocks.shape == (4, 4, 4) and all(torch.equal(blocks[0], b) for b in blocks)


def test_num_blocks_sets_the_block_size(kit):
    layer = oft_layer(kit, "conv3x3", OFTConfig(num_blocks=6))
    assert layer.adapters["a"].block_size == 12
    with pytest.raises(ValueError, match="mutually exclusive"):
        OFTConfig(block_size=4, num_blocks=4)


@pytest.mark.parametrize("kind", ["linear", "conv1x1"])
@pytest.mark.parametrize("cayley", ["exact", "neumann"])
def test_equals_peft_oft_after_mapping(kit, kind, cayley):
    """Same input-side convention; PEFT exact = Cayley(-Q), PEFT Neumann terms T = ours + 1."""
    scale, terms = 0.7, 4
    ours = oft_layer(kit, kind, OFTConfig(block_size=4, cayley=cayley, neumann_terms=terms))
    ours.set_scale("a", scale)
    if cayley == "neumann":
        with torch.no_grad():
            ours.adapters["a"].q.mul_(0.3)  # keep ‖sQ‖ < 1 where the series converges
    peft_config = PeftOFTConfig(
        r=0,
        oft_block_size=4,
        target_modules=["layer"],
        use_cayley_neumann=cayley == "neumann",
        num_cayley_neumann_terms=terms + 1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = inject_adapter_in_model(peft_config, Holder(copy.deepcopy(ours.base_layer)))
    sign = -1.0 if cayley == "exact" else 1.0
    with torch.no_grad():
        theirs.layer.oft_R["default"].weight.copy_(sign * scale * ours.adapters["a"].q)
    x = kit.make_input(kind)
    expected = ours(x)
    assert (theirs(x) - expected).abs().max().item() <= kit.TOL["peft"]
    assert (expected - ours.base_layer(x)).abs().max().item() > 1e-2
