"""Kronecker specifics: the factored forward equals torch.kron, merge adds that operator, LoKr equals PEFT."""

import copy
import warnings

import pytest
import torch
from peft import LoKrConfig as PeftLoKrConfig
from peft import inject_adapter_in_model
from torch import nn

from studio.adapters import AdapterLayer, DiffuseKronAConfig, LoKrConfig


class Holder(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def kron_layer(kit, kind, config):
    layer = AdapterLayer(kit.make_layer(kind))
    adapter = layer.add_adapter("a", config, generator=torch.Generator().manual_seed(0))
    kit.randomize(adapter)
    return layer, adapter


@pytest.mark.parametrize("kind", ["linear", "conv1x1"])
@pytest.mark.parametrize("config", [DiffuseKronAConfig(a1=2, a2=4), LoKrConfig(rank=1, alpha=3.0)])
def test_factored_forward_equals_torch_kron_and_never_builds_it(kit, kind, config, monkeypatch):
    layer, adapter = kron_layer(kit, kind, config)
    if config.method == "diffusekrona":
        a, b, c = adapter.A.detach(), adapter.B.detach(), 1.0
    else:
        (a, b), c = (f.detach() for f in adapter.factors()), adapter.scaling
    operator = c * torch.kron(a, b)
    x = kit.make_input(kind)
    base = layer.base_layer
    expected = base(x) + (
        x @ operator.T if kind == "linear" else nn.functional.conv2d(x, operator[..., None, None], None, 2, 1)
    )
    with monkeypatch.context() as patch:
        patch.setattr(torch, "kron", lambda *args: pytest.fail("forward built the Kronecker product"))
        out = layer(x)
    assert (out - expected).abs().max().item() <= kit.TOL["kron"]
    original = base.weight.detach().clone()
    layer.merge()  # merging adds exactly the operator the forward pass applied
    delta = (base.weight.detach() - original).reshape(operator.shape)
    assert (delta - operator).abs().max().item() <= kit.TOL["kron"]


def test_diffusekrona_refuses_sizes_that_do_not_divide(kit):
    layer = AdapterLayer(kit.make_layer("conv3x3"))
    with pytest.raises(ValueError, match=r"a2=5 .* \(C_in·kh·kw for convs\) \(72\); use one of \[1, 2, 3, 4"):
        layer.add_adapter("a", DiffuseKronAConfig(a1=2, a2=5))
    with pytest.raises(ValueError, match=r"a1=4 .* output features \(6\); use one of \[1, 2, 3, 6\]"):
        layer.add_adapter("a", DiffuseKronAConfig(a1=4, a2=4))
    adapter = layer.add_adapter("a", DiffuseKronAConfig(a1=3, a2=8))
    assert adapter.A.shape == (3, 8) and adapter.B.shape == (2, 9)


@pytest.mark.parametrize(
    "config",
    [
        LoKrConfig(rank=2, alpha=4.0),  # full w2 on every kind
        LoKrConfig(rank=1, alpha=3.0),  # low-rank w2
        LoKrConfig(rank=1, alpha=3.0, factor=2, decompose_both=True),  # low-rank w1 and w2 where the rule allows
    ],
)
def test_lokr_equals_peft_lokr(kit, kind, config):
    ours, adapter = kron_layer(kit, kind, config)
    ours.set_scale("a", 0.6)
    peft_config = PeftLoKrConfig(
        r=config.rank,
        alpha=config.alpha * 0.6,  # PEFT has no strength; scale its alpha instead
        decompose_factor=config.factor,
        decompose_both=config.decompose_both,
        target_modules=["layer"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = inject_adapter_in_model(peft_config, Holder(copy.deepcopy(ours.base_layer)))
    peft_params = {n.split(".")[0]: p for n, p in theirs.layer.named_parameters() if n.startswith("lokr_")}
    ours_params = dict(adapter.named_parameters())
    assert sorted(peft_params) == sorted(f"lokr_{n}" for n in ours_params)  # same structure chosen
    with torch.no_grad():
        for name, value in ours_params.items():
            peft_params[f"lokr_{name}"].copy_(value.reshape(peft_params[f"lokr_{name}"].shape))
    x = kit.make_input(kind)
    expected = ours(x)
    assert (theirs(x) - expected).abs().max().item() <= kit.TOL["peft"]
    assert (expected - ours.base_layer(x)).abs().max().item() > 1e-2
