"""save_adapter / load_adapter: one safetensors file with a JSON header, checked on load."""

import pytest
import safetensors.torch
import torch
from torch import nn

import studio
from studio.adapters import (
    LoRAConfig,
    OFTConfig,
    adapter_layers,
    add_adapter,
    load_adapter,
    read_adapter_header,
    save_adapter,
    set_adapter_scale,
)


def linear_model(hidden: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 12))


def conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 12, 1), nn.ReLU(), nn.Conv2d(12, 6, 3, stride=2, padding=1))


def trained(kit, model, config, targets=("0", "2")):
    add_adapter(model, "style", config, targets=list(targets))
    for layer in adapter_layers(model).values():
        kit.randomize(layer.adapters["style"])
    set_adapter_scale(model, "style", 0.7)
    return model


def test_round_trip_gives_identical_outputs_and_a_full_header(kit, method, tmp_path):
    source = trained(kit, linear_model(), kit.CONFIGS[method])
    path = save_adapter(source, "style", tmp_path / "style.safetensors", base_model_id="tiny/base")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["style.safetensors"]  # no temporary files left
    header = read_adapter_header(path)
    assert header["method"] == method and header["name"] == "style"
    assert header["targets"] == ["0", "2"] and header["base_model_id"] == "tiny/base"
    assert header["library_version"] == studio.__version__ and header["scale"] == 0.7
    assert header["config"] == {k: v for k, v in vars(kit.CONFIGS[method]).items()}
    target = linear_model()
    assert load_adapter(target, path, base_model_id="tiny/base") == ["0", "2"]
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(target(x), source(x))
    assert target[0].scales == {"style": 0.7}


@pytest.mark.parametrize("config", [OFTConfig(block_size=4), LoRAConfig(rank=2)])
def test_round_trip_on_convs(kit, config, tmp_path):
    source = trained(kit, conv_model(), config)
    path = save_adapter(source, "style", tmp_path / "conv.safetensors")
    target = conv_model()
    load_adapter(target, path, name="renamed")
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(target(x), source(x))
    assert list(target[2].adapters) == ["renamed"]


def test_refuses_a_different_base_model(kit, tmp_path):
    path = save_adapter(
        trained(kit, linear_model(), LoRAConfig()), "style", tmp_path / "a.safetensors", base_model_id="tiny/base"
    )
    target = linear_model()
    with pytest.raises(ValueError, match="trained on base model 'tiny/base', not 'other/base'"):
        load_adapter(target, path, base_model_id="other/base")
    assert adapter_layers(target) == {}


def test_a_base_folder_matches_however_its_path_is_written(kit, tmp_path, monkeypatch):
    base = str(tmp_path / "runs" / "base")
    model = trained(kit, linear_model(), LoRAConfig())
    path = save_adapter(model, "style", tmp_path / "a.safetensors", base_model_id=base)
    monkeypatch.chdir(tmp_path)
    load_adapter(linear_model(), path, base_model_id="runs/base")  # relative to here: the same folder
    with pytest.raises(ValueError, match="trained on base model"):
        load_adapter(linear_model(), path, base_model_id="runs/other")


def test_refuses_missing_targets_and_shape_mismatches(kit, tmp_path):
    path = save_adapter(trained(kit, linear_model(), LoRAConfig()), "style", tmp_path / "a.safetensors")
    renamed = nn.Sequential()
    renamed.add_module("first", nn.Linear(16, 16))
    with pytest.raises(ValueError, match=r"targets 2 modules missing from this model .* e\.g\. \['0', '2'\]"):
        load_adapter(renamed, path)
    wider = linear_model(hidden=20)
    with pytest.raises(ValueError, match=r"tensor 0\.B has shape \(16, 4\) but this model's layer needs \(20, 4\)"):
        load_adapter(wider, path)
    assert adapter_layers(wider) == {} and all(p.requires_grad for p in wider.parameters())


def test_refuses_files_that_are_not_adapters(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_adapter_header(garbage)
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="no 'studio_adapter' header"):
        load_adapter(linear_model(), plain)
    with pytest.raises(ValueError, match="does not exist"):
        load_adapter(linear_model(), tmp_path / "missing.safetensors")
