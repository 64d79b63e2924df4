"""LoRA specifics: the update is (alpha / r) · B A and equals PEFT's LoRA on identical parameters."""

import copy
import warnings

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model
from torch import nn

from studio.adapters import AdapterLayer, LoRAConfig


class Holder(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def test_delta_weight_is_scaled_product(kit):
    layer = AdapterLayer(kit.make_layer("linear"))
    adapter = layer.add_adapter("a", LoRAConfig(rank=4, alpha=2.0))
    kit.randomize(adapter)
    expected = 0.5 * 0.7 * adapter.B.detach() @ adapter.A.detach()
    assert (adapter.delta_weight(0.7) - expected).abs().max().item() <= kit.TOL["linearity"]
    assert LoRAConfig(rank=4).alpha is None and layer.add_adapter("b", LoRAConfig(rank=4)).scaling == 1.0


def test_equals_peft_lora(kit, kind):
    config = kit.CONFIGS["lora"]
    ours = AdapterLayer(kit.make_layer(kind))
    adapter = ours.add_adapter("a", config)
    kit.randomize(adapter)
    ours.set_scale("a", 0.6)
    peft_config = PeftLoraConfig(r=config.rank, lora_alpha=config.alpha * 0.6, target_modules=["layer"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = inject_adapter_in_model(peft_config, Holder(copy.deepcopy(ours.base_layer)))
    with torch.no_grad():
        lora_a, lora_b = theirs.layer.lora_A["default"].weight, theirs.layer.lora_B["default"].weight
        lora_a.copy_(adapter.A.reshape(lora_a.shape))
        lora_b.copy_(adapter.B.reshape(lora_b.shape))
    x = kit.make_input(kind)
    expected = ours(x)
    assert (theirs(x) - expected).abs().max().item() <= kit.TOL["peft"]
    assert (expected - ours.base_layer(x)).abs().max().item() > 1e-2
