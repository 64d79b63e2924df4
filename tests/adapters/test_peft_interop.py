"""PEFT folders: our LoRA/OFT exports load in PeftModel with equal outputs; PEFT LoRA folders import."""

import warnings

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn

from studio.adapters import (
    LoRAConfig,
    OFTConfig,
    adapter_layers,
    add_adapter,
    export_peft_lora,
    export_peft_oft,
    import_peft_lora,
    set_adapter_scale,
)


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 12))


def conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 12, 1, stride=2), nn.ReLU(), nn.Conv2d(12, 8, 3, padding=1))


MODELS = {
    "linear": (linear_model, lambda: torch.randn(3, 16, generator=torch.Generator().manual_seed(1))),
    "conv": (conv_model, lambda: torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(1))),
}


def trained(kit, build, config, scale, targets=("0", "2")):
    model = build()
    add_adapter(model, "style", config, targets=list(targets))
    for layer in adapter_layers(model).values():
        kit.randomize(layer.adapters["style"])
    set_adapter_scale(model, "style", scale)
    return model


def load_peft(build, folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(build(), str(folder))


@pytest.mark.parametrize("model_kind", ["linear", "conv"])
def test_lora_export_loads_in_peft_with_equal_outputs(kit, model_kind, tmp_path):
    build, sample = MODELS[model_kind]
    ours = trained(kit, build, LoRAConfig(rank=3, alpha=6.0), scale=0.5)
    folder = export_peft_lora(ours, "style", tmp_path / "peft", base_model_name_or_path="tiny/base")
    x = sample()
    expected = ours(x)
    assert (load_peft(build, folder)(x) - expected).abs().max().item() <= kit.TOL["peft"]
    assert (expected - build()(x)).abs().max().item() > 1e-2


@pytest.mark.parametrize("model_kind", ["linear", "conv"])
def test_imports_a_peft_lora_folder(kit, model_kind, tmp_path):
    build, sample = MODELS[model_kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_peft_model(build(), PeftLoraConfig(r=2, lora_alpha=5, target_modules=["0", "2"]))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    theirs.save_pretrained(str(tmp_path / "peft"))
    ours = build()
    assert import_peft_lora(ours, tmp_path / "peft", name="imported") == ["0", "2"]
    x = sample()
    expected = theirs(x)
    assert (ours(x) - expected).abs().max().item() <= kit.TOL["peft"]
    assert (expected - build()(x)).abs().max().item() > 1e-2


@pytest.mark.parametrize("model_kind", ["linear", "conv"])
@pytest.mark.parametrize(
    "config",
    [
        OFTConfig(block_size=4),
        OFTConfig(num_blocks=4, cayley="neumann", neumann_terms=5),
        OFTConfig(block_size=4, coft=True, coft_eps=0.2),
    ],
)
def test_oft_export_loads_in_peft_with_equal_outputs(kit, model_kind, config, tmp_path):
    build, sample = MODELS[model_kind]
    targets = ("0", "2") if model_kind == "linear" else ("0",)  # PEFT's k×k conv OFT differs; see the next test
    ours = trained(kit, build, config, scale=0.7, targets=targets)
    if config.cayley == "neumann":
        with torch.no_grad():
            for layer in adapter_layers(ours).values():
                layer.adapters["style"].q.mul_(0.3)  # inside the series' radius of convergence
    folder = export_peft_oft(ours, "style", tmp_path / "peft")
    x = sample()
    expected = ours(x)
    assert (load_peft(build, folder)(x) - expected).abs().max().item() <= kit.TOL["peft"]
    assert (expected - build()(x)).abs().max().item() > 1e-2


def test_exports_refuse_what_peft_cannot_reproduce(kit, tmp_path):
    model = trained(kit, conv_model, OFTConfig(block_size=4), scale=1.0)
    with pytest.raises(ValueError, match=r"layer '2' is a \(3, 3\) conv; PEFT 0.21.2 .*not identity at init"):
        export_peft_oft(model, "style", tmp_path / "oft")
    with pytest.raises(ValueError, match="'style' is oft, not lora"):
        export_peft_lora(model, "style", tmp_path / "lora")
    assert not (tmp_path / "oft").exists()
    short = trained(kit, linear_model, OFTConfig(block_size=4, cayley="neumann", neumann_terms=2), scale=1.0)
    with pytest.raises(ValueError, match="neumann_terms=2 has no PEFT equivalent"):
        export_peft_oft(short, "style", tmp_path / "oft")


def test_import_refuses_other_peft_types(kit, tmp_path):
    ours = trained(kit, linear_model, OFTConfig(block_size=4), scale=1.0)
    export_peft_oft(ours, "style", tmp_path / "oft")
    with pytest.raises(ValueError, match="holds a OFT adapter; this importer reads LORA"):
        import_peft_lora(linear_model(), tmp_path / "oft")
    with pytest.raises(ValueError, match="is not a PEFT folder"):
        import_peft_lora(linear_model(), tmp_path)


def test_import_refuses_dora(kit, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_peft_model(linear_model(), PeftLoraConfig(r=2, target_modules=["0"], use_dora=True))
    theirs.save_pretrained(str(tmp_path / "dora"))
    model = linear_model()
    with pytest.raises(ValueError, match=r"uses \['use_dora'\]"):
        import_peft_lora(model, tmp_path / "dora")
    assert adapter_layers(model) == {}
