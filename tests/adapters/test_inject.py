"""Injection into a tiny diffusers Attention: target matching, freezing, gradients and model-wide helpers."""

import pytest
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from studio.adapters import (
    AdapterLayer,
    DiffuseKronAConfig,
    LoRAConfig,
    OFTConfig,
    adapter_layers,
    adapter_state_dict,
    adapter_targets,
    add_adapter,
    bake_adapters,
    delete_adapter,
    disable_adapters,
    enable_adapters,
    merge_adapters,
    set_adapter_scale,
    trainable_parameters,
    unmerge_adapters,
)
from studio.adapters.inject import matches

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def tiny_attention() -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=16, heads=2, dim_head=8)


def hidden() -> torch.Tensor:
    return torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))


def test_wraps_default_targets_and_starts_at_the_base_output(kit, method):
    attn, x = tiny_attention(), hidden()
    before = attn(x)
    wrapped = add_adapter(attn, "a", kit.CONFIGS[method], generator=torch.Generator().manual_seed(0))
    assert wrapped == TARGETS
    assert all(isinstance(attn.get_submodule(name), AdapterLayer) for name in TARGETS)
    err = (attn(x) - before).abs().max().item()
    assert err > 1e-3 if method == "ether" else err <= kit.TOL["init"]  # ETHER starts as a reflection


def test_only_adapter_parameters_train(kit, method):
    attn = tiny_attention()
    add_adapter(attn, "a", kit.CONFIGS[method])
    for layer in adapter_layers(attn).values():
        kit.randomize(layer.adapters["a"])
    attn(hidden()).square().sum().backward()
    adapter_params = [p for layer in adapter_layers(attn).values() for p in layer.adapters.parameters()]
    base_params = [p for n, p in attn.named_parameters() if ".adapters." not in n]
    assert base_params and all(not p.requires_grad and p.grad is None for p in base_params)
    assert all(p.requires_grad and p.grad is not None for p in adapter_params)
    assert sum(p.grad.abs().sum().item() for p in adapter_params) > 0
    assert {id(p) for p in trainable_parameters(attn)} == {id(p) for p in adapter_params}


def test_target_patterns():
    assert matches("down.0.attn1.to_q", "to_q") and matches("to_q", "to_q")
    assert not matches("attn1.add_to_q", "to_q") and not matches("to_out.0", "out.0")
    assert matches("attn1.to_k", "re:.*to_[qk]") and not matches("attn1.to_v", "re:.*to_[qk]")
    attn = tiny_attention()
    assert add_adapter(attn, "a", LoRAConfig(), targets=["re:to_[qk]"]) == ["to_q", "to_k"]
    assert add_adapter(attn, "b", LoRAConfig(), targets=["to_q", "to_v"]) == ["to_q", "to_v"]
    assert list(attn.to_q.adapters) == ["a", "b"]  # a second adapter stacks on the wrapped layer


def test_refuses_targets_that_match_nothing_or_the_wrong_type():
    attn = tiny_attention()
    with pytest.raises(ValueError, match=r"no module matches targets \['to_z'\]; .*'to_q'"):
        add_adapter(attn, "a", LoRAConfig(), targets=["to_z"])
    with pytest.raises(ValueError, match=r"'to_out' .* is a ModuleList"):
        add_adapter(attn, "a", LoRAConfig(), targets=["to_out"])
    with pytest.raises(TypeError, match="not the string"):
        add_adapter(attn, "a", LoRAConfig(), targets="to_q")
    assert adapter_layers(attn) == {}


def test_failed_injection_leaves_the_model_as_it_was():
    attn = tiny_attention()
    add_adapter(attn, "keep", LoRAConfig(), targets=["to_q"])
    with pytest.raises(ValueError, match="a1=3"):
        add_adapter(attn, "a", DiffuseKronAConfig(a1=3, a2=4))  # 16 output features: 3 does not divide
    assert list(adapter_layers(attn)) == ["to_q"] and list(attn.to_q.adapters) == ["keep"]
    assert isinstance(attn.to_k, nn.Linear)


def test_model_level_helpers(kit):
    attn, x = tiny_attention(), hidden()
    base_out = attn(x)
    add_adapter(attn, "a", OFTConfig(block_size=4), targets=["to_q", "to_v"])
    add_adapter(attn, "b", LoRAConfig(rank=2), targets=["to_v"])
    for layer in adapter_layers(attn).values():
        for adapter in layer.adapters.values():
            kit.randomize(adapter)
    assert adapter_targets(attn, "a") == ["to_q", "to_v"]
    assert sorted(adapter_state_dict(attn, "b")) == ["to_v.A", "to_v.B"]
    adapted = attn(x)
    set_adapter_scale(attn, "a", 0.0)
    set_adapter_scale(attn, "b", 0.0)
    assert (attn(x) - base_out).abs().max().item() <= kit.TOL["init"]
    set_adapter_scale(attn, "a", 1.0)
    set_adapter_scale(attn, "b", 1.0)
    assert attn.to_v.weight is attn.to_v.base_layer.weight  # code reading layer.weight keeps working
    with pytest.raises(ValueError, match="no adapter named 'zzz'"):
        merge_adapters(attn, ["zzz"])
    merge_adapters(attn)
    assert attn.to_v.merged_names == ["a", "b"]
    assert (attn(x) - adapted).abs().max().item() <= kit.TOL["merge"]
    unmerge_adapters(attn)
    disable_adapters(attn)
    assert (attn(x) - base_out).abs().max().item() <= kit.TOL["init"]
    enable_adapters(attn)
    delete_adapter(attn, "a")
    assert isinstance(attn.to_q, nn.Linear) and list(attn.to_v.adapters) == ["b"]
    with pytest.raises(ValueError, match="no adapter named 'a'"):
        set_adapter_scale(attn, "a", 1.0)


def test_bake_adapters_leaves_plain_layers_that_compute_the_adapted_model(kit, method):
    attn, x = tiny_attention(), hidden()
    add_adapter(attn, "a", kit.CONFIGS[method])
    add_adapter(attn, "b", LoRAConfig(rank=2), targets=["to_v"])
    for layer in adapter_layers(attn).values():
        for adapter in layer.adapters.values():
            kit.randomize(adapter)
    set_adapter_scale(attn, "a", 0.6)
    adapted = attn(x)
    assert sorted(bake_adapters(attn)) == sorted(TARGETS)
    assert adapter_layers(attn) == {} and all(type(attn.get_submodule(t)) is nn.Linear for t in TARGETS)
    assert (attn(x) - adapted).abs().max().item() <= kit.TOL["merge"]
    assert not any(".adapters." in name for name in attn.state_dict())
