"""Adapter formats: ours → each format → the library that reads it gives our outputs; files those libraries write
import with theirs; ours → format → ours is exact; what has no exact mapping is refused, naming what works.

The small model holds the three layer kinds of ``conftest.py`` (Linear, strided 1×1 conv, 3×3 conv) under
diffusers-like names; the diffusers and kohya checks run on the tiny Stable Diffusion pipeline.
"""

import json
import warnings

import peft.tuners.boft.layer as peft_boft_layer
import pytest
import safetensors.torch
import torch
from peft import BOFTConfig as PeftBOFTConfig
from peft import LoKrConfig as PeftLoKrConfig
from peft import LoraConfig as PeftLoraConfig
from peft import OFTConfig as PeftOFTConfig
from peft import PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from torch import nn

from studio.adapters import (
    FORMATS,
    BOFTConfig,
    DiffuseKronAConfig,
    LoKrConfig,
    LoRAConfig,
    OFTConfig,
    adapter_layers,
    add_adapter,
    applied_adapters,
    detect_format,
    export_adapter,
    import_adapter,
    load_adapter,
    read_adapter_header,
    save_adapter,
    set_adapter_scale,
)
from tests.tolerances import TOLERANCES, assert_close

ROUND_TRIP = TOLERANCES["adapter format round trip"]
FOREIGN = TOLERANCES["adapter format foreign library"]
ALL = ["blk.to_q", "blk.pw", "blk.conv"]
#: Configs that each format under test holds (BOFT: PEFT matches one butterfly factor; LyCORIS's own loader
#: rebuilds w1 only as its factor rule makes it, hence a1 = a2 = 2).
PEFT_CONFIGS = {
    "lora": LoRAConfig(rank=3, alpha=6.0),
    "oft": OFTConfig(block_size=4),
    "boft": BOFTConfig(block_size=4, factors=1),
    "lokr": LoKrConfig(rank=1, alpha=3.0),
}
PAIRS = [(fmt, method) for fmt, spec in FORMATS.items() for method in spec.methods]


def build(kit) -> nn.Module:
    model = nn.Module()
    model.blk = nn.Module()
    model.blk.to_q, model.blk.pw, model.blk.conv = (kit.make_layer(k) for k in ("linear", "conv1x1", "conv3x3"))
    return model.eval()


def outputs(kit, model) -> torch.Tensor:
    with torch.no_grad():
        parts = [model.blk.to_q(kit.make_input("linear")), model.blk.pw(kit.make_input("conv1x1"))]
        parts.append(model.blk.conv(kit.make_input("conv3x3")))
    return torch.cat([p.flatten() for p in parts])


def trained(kit, config, targets=ALL, scale=0.7) -> nn.Module:
    model = build(kit)
    add_adapter(model, "style", config, targets=[f"re:{t}" for t in targets])
    for layer in adapter_layers(model).values():
        kit.randomize(layer.adapters["style"], seed=3)
    set_adapter_scale(model, "style", scale)
    return model


def saved(model, tmp_path, name="ours.safetensors"):
    return save_adapter(model, "style", tmp_path / name, base_model_id="tiny/base")


def out_path(tmp_path, fmt, stem="export"):
    return tmp_path / (stem if FORMATS[fmt].folder else f"{stem}.safetensors")


def targets_for(fmt, method):
    return ALL[:2] if (fmt, method) == ("peft", "oft") else ALL  # PEFT's k×k conv OFT differs (refused below)


def config_for(kit, fmt, method):
    if fmt == "peft" and method in PEFT_CONFIGS:
        return PEFT_CONFIGS[method]
    return DiffuseKronAConfig(a1=2, a2=2) if method == "diffusekrona" else kit.CONFIGS[method]


def changed(kit, model) -> float:
    return (outputs(kit, model) - outputs(kit, build(kit))).abs().max().item()


@pytest.mark.parametrize(("fmt", "method"), PAIRS, ids=[f"{f}-{m}" for f, m in PAIRS])
def test_round_trip_through_each_format_is_exact(kit, fmt, method, tmp_path):
    ours = trained(kit, config_for(kit, fmt, method), targets_for(fmt, method))
    exported = export_adapter(saved(ours, tmp_path), fmt, out_path(tmp_path, fmt), base_model=build(kit))
    assert detect_format(exported) == ("kohya" if (fmt, method) == ("lycoris", "lora") else fmt)
    back = import_adapter(exported, tmp_path / "back.safetensors", base_model=build(kit))
    model = build(kit)
    load_adapter(model, back)
    assert_close(outputs(kit, model), outputs(kit, ours), **ROUND_TRIP, what=f"{method} via {fmt}")
    direct = build(kit)
    load_adapter(direct, exported)  # --adapter reads the export itself
    assert_close(outputs(kit, direct), outputs(kit, ours), **ROUND_TRIP, what=f"{method} from {fmt} directly")
    assert changed(kit, ours) > 1e-2


def test_same_format_keeps_the_method_and_config(kit, tmp_path):
    ours = trained(kit, LoKrConfig(rank=1, alpha=3.0))
    back = import_adapter(export_adapter(saved(ours, tmp_path), "peft", tmp_path / "p"), tmp_path / "b.safetensors")
    header = read_adapter_header(back)
    assert header["method"] == "lokr" and header["config"]["rank"] == 1 and header["imported_from"] == "peft"
    assert header["base_model_id"] == "tiny/base"


# ---- PEFT ------------------------------------------------------------------------------------------------------


def load_peft(model, folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(model, str(folder)).eval()


@pytest.mark.parametrize("method", list(PEFT_CONFIGS))
def test_peft_export_loads_in_peft_with_our_outputs(kit, method, tmp_path, monkeypatch):
    monkeypatch.setattr(peft_boft_layer, "get_fbd_cuda", lambda: None)  # never compile PEFT's CUDA extension
    ours = trained(kit, PEFT_CONFIGS[method], targets_for("peft", method))
    folder = export_adapter(saved(ours, tmp_path), "peft", tmp_path / "peft")
    theirs = load_peft(build(kit), folder)
    assert_close(outputs(kit, theirs.base_model.model), outputs(kit, ours), **FOREIGN, what=f"PEFT {method}")
    assert changed(kit, ours) > 1e-2
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\nbase_model: tiny/base\ntags:\n- mixstudio\n")
    assert "license: other\n---\n" in card


def peft_written(kit, config, tmp_path, seed=5):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_peft_model(build(kit), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if any(part in name for part in ("lora_", "oft_R", "boft_R", "lokr_")):
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
            elif "boft_s" in name:
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
    theirs.save_pretrained(str(tmp_path / "theirs"))
    return theirs.eval(), tmp_path / "theirs"


@pytest.mark.parametrize(
    "config",
    [
        PeftLoraConfig(r=2, lora_alpha=5, target_modules=ALL, rank_pattern={"pw": 3}, alpha_pattern={"conv": 7}),
        PeftLoraConfig(r=2, lora_alpha=3, target_modules=ALL[:2], use_rslora=True),
        PeftOFTConfig(oft_block_size=4, r=0, target_modules=ALL[:2]),
        PeftOFTConfig(oft_block_size=4, r=0, target_modules=ALL[:2], use_cayley_neumann=True),
        PeftBOFTConfig(boft_block_size=4, boft_n_butterfly_factor=1, target_modules=ALL),
        PeftLoKrConfig(r=1, alpha=3, target_modules=ALL),
        PeftLoKrConfig(r=2, alpha=3, decompose_factor=2, decompose_both=True, target_modules=ALL[:2]),
    ],
    ids=["lora-patterns", "lora-rslora", "oft", "oft-neumann", "boft", "lokr", "lokr-both"],
)
def test_imports_folders_peft_wrote(kit, config, tmp_path, monkeypatch):
    monkeypatch.setattr(peft_boft_layer, "get_fbd_cuda", lambda: None)
    theirs, folder = peft_written(kit, config, tmp_path)
    if isinstance(config, PeftOFTConfig) and config.use_cayley_neumann:
        with torch.no_grad():  # inside the series' radius, where PEFT's truncation is what we compute
            for name, param in theirs.named_parameters():
                param.mul_(0.3 if "oft_R" in name else 1.0)
        theirs.save_pretrained(str(folder))
    expected = outputs(kit, theirs.base_model.model)
    ours = build(kit)
    load_adapter(ours, folder)
    assert_close(outputs(kit, ours), expected, **FOREIGN, what=type(config).__name__)
    assert changed(kit, ours) > 1e-2


# ---- diffusers and kohya on the tiny Stable Diffusion pipeline ---------------------------------------------------


@pytest.fixture(scope="module")
def sd(tiny_sd_folder):
    from diffusers import StableDiffusionPipeline

    def fresh():
        pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_folder), safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    generator = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(1, 4, 8, 8, generator=generator),
        torch.tensor(10),
        torch.randn(1, 16, 32, generator=generator),
    )
    return fresh, inputs


def unet_out(unet, inputs):
    with torch.no_grad():
        return unet(*inputs).sample


SD_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "time_emb_proj"]


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_diffusers_load_lora_weights_gives_our_unet(kit, sd, fmt, tmp_path):
    fresh, inputs = sd
    ours = fresh().unet
    add_adapter(ours, "style", LoRAConfig(rank=3, alpha=6.0), SD_TARGETS)
    for layer in adapter_layers(ours).values():
        kit.randomize(layer.adapters["style"], seed=3)
    set_adapter_scale(ours, "style", 0.6)
    exported = export_adapter(saved(ours, tmp_path), fmt, out_path(tmp_path, fmt))
    pipe = fresh()
    before = unet_out(pipe.unet, inputs)
    pipe.load_lora_weights(str(exported / "pytorch_lora_weights.safetensors" if fmt == "diffusers" else exported))
    expected = unet_out(ours, inputs)
    assert_close(unet_out(pipe.unet, inputs), expected, **FOREIGN, what=f"diffusers reading {fmt}")
    assert (expected - before).abs().max().item() > 1e-2
    if fmt == "diffusers":
        assert (exported / "README.md").read_text().startswith("---\nlibrary_name: diffusers\n")


def test_imports_a_file_diffusers_wrote(sd, tmp_path):
    from diffusers import StableDiffusionPipeline

    fresh, inputs = sd
    pipe = fresh()
    config = PeftLoraConfig(r=2, lora_alpha=5, target_modules=["to_q", "to_v", "conv1"])
    pipe.unet.add_adapter(config)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    metadata = config.to_dict() | {"target_modules": sorted(config.target_modules)}
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "theirs", unet_lora_layers=get_peft_model_state_dict(pipe.unet), unet_lora_adapter_metadata=metadata
    )
    ours = fresh().unet
    load_adapter(ours, tmp_path / "theirs")
    assert_close(unet_out(ours, inputs), unet_out(pipe.unet, inputs), **FOREIGN, what="diffusers-written LoRA")
    header = read_adapter_header(import_adapter(tmp_path / "theirs", tmp_path / "b.safetensors"))
    assert header["config"] == {"rank": 2, "alpha": 5.0} and "down_blocks.1.resnets.0.conv1" in header["targets"]


# ---- LyCORIS ---------------------------------------------------------------------------------------------------


@pytest.fixture
def lycoris(monkeypatch):
    wrapper = pytest.importorskip("lycoris.wrapper")
    monkeypatch.setattr(wrapper.LycorisNetwork, "LORA_PREFIX", "lora_unet")  # A1111/ComfyUI's prefix
    return wrapper


@pytest.mark.parametrize(
    ("config", "targets"),
    [
        (LoKrConfig(rank=2, alpha=4.0), ALL),  # both factors full: the scale is folded into w1
        (LoKrConfig(rank=1, alpha=3.0), ALL[:2]),  # low-rank w2 (LyCORIS 4.1.3 misreads it on k×k convs)
        (LoKrConfig(rank=1, alpha=3.0, factor=2, decompose_both=True), ALL[:2]),
        (DiffuseKronAConfig(a1=2, a2=2), ALL),
        (LoRAConfig(rank=3, alpha=6.0), ALL),  # LoCon: the kohya layout
    ],
    ids=["lokr-full", "lokr-lowrank", "lokr-both", "diffusekrona", "lora"],
)
def test_lycoris_loads_our_export_with_our_outputs(kit, lycoris, config, targets, tmp_path):
    ours = trained(kit, config, targets)
    exported = export_adapter(saved(ours, tmp_path), "lycoris", tmp_path / "l.safetensors")
    theirs = build(kit)
    network, _ = lycoris.create_lycoris_from_weights(1.0, str(exported), theirs)
    network.apply_to()
    assert len(network.loras) == len(targets)
    assert_close(outputs(kit, theirs), outputs(kit, ours), **FOREIGN, what=f"LyCORIS reading {config}")
    assert changed(kit, ours) > 1e-2


@pytest.mark.parametrize(
    "options",
    [
        {"algo": "lokr", "linear_dim": 2, "linear_alpha": 4.0},
        {"algo": "lokr", "linear_dim": 1, "linear_alpha": 3.0},
        {"algo": "lokr", "linear_dim": 100, "linear_alpha": 1.0, "factor": 2},
        {"algo": "lora", "linear_dim": 3, "linear_alpha": 6.0},
    ],
    ids=["lokr-full", "lokr-lowrank", "lokr-factor", "locon"],
)
def test_imports_files_lycoris_wrote(kit, lycoris, options, tmp_path):
    theirs = build(kit)
    network = lycoris.create_lycoris(theirs, 1.0, **options)
    network.apply_to()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in network.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    network.save_weights(str(tmp_path / "theirs.safetensors"), torch.float32, {})
    ours = build(kit)
    load_adapter(ours, tmp_path / "theirs.safetensors")
    assert_close(outputs(kit, ours), outputs(kit, theirs), **FOREIGN, what=f"LyCORIS-written {options}")
    assert changed(kit, ours) > 1e-2


# ---- several files at once, refusals -------------------------------------------------------------------------------


def test_applied_adapters_take_files_of_any_format_each_at_its_strength(kit, tmp_path):
    lora = trained(kit, LoRAConfig(rank=3, alpha=6.0), scale=1.0)
    kron = trained(kit, LoKrConfig(rank=2, alpha=4.0), scale=1.0)
    files = [
        (export_adapter(saved(lora, tmp_path, "a.safetensors"), "kohya", tmp_path / "a-kohya.safetensors"), 0.5),
        (export_adapter(saved(kron, tmp_path, "b.safetensors"), "peft", tmp_path / "b-peft"), -1.0),
    ]
    expected = build(kit)
    for path, scale in [(tmp_path / "a.safetensors", 0.5), (tmp_path / "b.safetensors", -1.0)]:
        name = path.stem
        load_adapter(expected, path, name=name)
        set_adapter_scale(expected, name, scale)
    model = build(kit)
    with applied_adapters(model, files) as names:
        assert len(names) == 2
        assert_close(outputs(kit, model), outputs(kit, expected), **ROUND_TRIP, what="two formats at once")
    assert adapter_layers(model) == {}


def test_methods_without_an_exact_mapping_are_refused_naming_what_works(kit, tmp_path):
    goft = saved(trained(kit, kit.CONFIGS["goft"]), tmp_path)
    for fmt in ("peft", "diffusers", "kohya", "lycoris"):
        with pytest.raises(ValueError, match=rf"is goft, which {fmt} cannot hold exactly; formats that hold goft: "):
            export_adapter(goft, fmt, out_path(tmp_path, fmt))
    with pytest.raises(ValueError, match=r"needs the base weights \(W' - W\); pass --base MODEL"):
        export_adapter(goft, "dense", tmp_path / "d.safetensors")
    oft = saved(trained(kit, OFTConfig(block_size=4)), tmp_path, "oft.safetensors")
    with pytest.raises(ValueError, match=r"'blk.conv' is a \(3, 3\) conv; PEFT 0.21.2 .*not identity at init"):
        export_adapter(oft, "peft", tmp_path / "peft")
    boft = saved(trained(kit, kit.CONFIGS["boft"]), tmp_path, "boft.safetensors")
    with pytest.raises(ValueError, match=r"BOFT with factors=2, cayley=.exact.; PEFT 0\.21\.2 matches only factors=1"):
        export_adapter(boft, "peft", tmp_path / "peft")
    with pytest.raises(ValueError, match=r"--format 'onnx' is unknown; use one of \['peft', 'diffusers'"):
        export_adapter(oft, "onnx", tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boft.safetensors", "oft.safetensors", "ours.safetensors"]


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"lora_te_text_model_encoder_layers_0_q_proj.lora_down.weight": torch.ones(2, 4)}, "adapts the text encoder"),
        ({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.ones(2, 4)}, "LDM-style kohya names"),
        ({"lora_unet_blk_to_q.hada_w1_a": torch.ones(2, 2)}, "keys match no known adapter format"),
        ({"lora_unet_blk_to_q.lokr_w1": torch.ones(2, 2), "lora_unet_blk_to_q.dora_scale": torch.ones(2)}, "DoRA"),
        ({"blk.to_q.diff": torch.ones(12, 16), "blk.to_q.diff_b": torch.ones(12)}, "also changes biases"),
        (
            {
                "lora_unet_blk_to_q.lora_down.weight": torch.ones(2, 16),
                "lora_unet_blk_to_q.lora_up.weight": torch.ones(6, 2),
            },
            r"has weight shape \(12, 16\) in this model but the file was made for \(6, 16\)",
        ),
        ({"base_model.model.blk.to_q.lora_A.weight": torch.ones(2, 16)}, "holds PEFT weights; pass the folder"),
    ],
    ids=["text-encoder", "ldm-names", "loha", "dora", "bias", "wrong-shape", "bare-peft"],
)
def test_foreign_files_that_cannot_apply_exactly_are_refused(kit, tensors, message, tmp_path):
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(safetensors.torch.save(tensors))
    model = build(kit)
    with pytest.raises(ValueError, match=message):
        load_adapter(model, path)
    assert adapter_layers(model) == {}


def test_export_never_replaces_files_it_did_not_write(kit, tmp_path):
    source = saved(trained(kit, LoRAConfig(rank=3)), tmp_path)
    (tmp_path / "mine.safetensors").write_bytes(b"precious")
    with pytest.raises(ValueError, match="exists and mixstudio did not write it; pick a new name or pass --force"):
        export_adapter(source, "kohya", tmp_path / "mine.safetensors")
    assert (tmp_path / "mine.safetensors").read_bytes() == b"precious"
    export_adapter(source, "kohya", tmp_path / "k.safetensors")
    export_adapter(source, "kohya", tmp_path / "k.safetensors")  # our own export is replaced
    metadata = safetensors.safe_open(str(tmp_path / "k.safetensors"), "pt").metadata()
    assert json.loads(metadata["mixstudio_export"])["method"] == "lora" and metadata["ss_network_dim"] == "3"
