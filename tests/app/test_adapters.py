"""Adapters in the app: listed from runs/, applied on generation at a strength, merged by strength, saved baked."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from studio.adapters import DEFAULT_TARGETS, LoRAConfig, OFTConfig, adapter_layers, add_adapter, save_adapter
from studio.app.handlers import NO_ADAPTER, Handlers
from studio.app.service import Studio
from studio.generation import generate
from studio.guidance import DEFAULT_GUIDANCE
from studio.io import read_image
from studio.merging import adapted_pipeline, merge_state_dicts
from studio.pipelines import load_pipeline

SETTINGS = {"prompt": "a red circle", "seed": 3, "steps": 2}


def write_adapter(runs, model: str, path: str, config, seed: int, base_id: str | None = None):
    """A trained-looking adapter (random non-zero parameters) of ``runs/<model>`` at ``runs/<path>``."""
    pipe = load_pipeline(runs / model)
    add_adapter(pipe.unet, "x", config, DEFAULT_TARGETS, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in adapter_layers(pipe.unet).values():
            for p in layer.adapters["x"].parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    (runs / path).parent.mkdir(parents=True, exist_ok=True)
    save_adapter(pipe.unet, "x", runs / path, base_model_id=base_id or str(runs / model))


@pytest.fixture
def studio(workdir, no_embedded):
    runs = workdir / "runs"
    write_adapter(runs, "a", "ft-lora/adapter.safetensors", LoRAConfig(rank=2), 0)
    write_adapter(runs, "a", "ft-lora2/adapter.safetensors", LoRAConfig(rank=2), 1, base_id="runs/a")
    write_adapter(runs, "a", "ft-oft/adapter.safetensors", OFTConfig(block_size=4), 2)
    write_adapter(runs, "b", "ft-b/adapter.safetensors", LoRAConfig(rank=2), 3)
    write_adapter(runs, "a", "lost/adapter.safetensors", LoRAConfig(rank=2), 4, base_id="somewhere-else")
    write_adapter(runs, "a", "ft-te/adapter.text_encoder.safetensors", LoRAConfig(rank=2), 5)
    save_file({"w": torch.zeros(2)}, str(runs / "ft-lora" / "not-an-adapter.safetensors"))
    service = Studio(workdir)
    yield service
    service.close()


def test_adapters_under_runs_are_listed_with_the_model_they_belong_to(studio):
    listed = {a.name: (a.method, a.base) for a in studio.list_adapters()}
    assert listed == {
        "runs/ft-b/adapter.safetensors": ("lora", "runs/b"),
        "runs/ft-lora/adapter.safetensors": ("lora", "runs/a"),
        "runs/ft-lora2/adapter.safetensors": ("lora", "runs/a"),  # base named "runs/a", not by path
        "runs/ft-oft/adapter.safetensors": ("oft", "runs/a"),
    }  # unknown base, text-encoder adapter and plain safetensors are left out
    assert [a.name for a in studio.list_adapters("runs/b")] == ["runs/ft-b/adapter.safetensors"]
    assert studio.list_adapters("runs/music") == []


def test_generate_with_an_adapter_applies_it_at_its_strength_and_leaves_the_cached_model_clean(studio):
    plain = read_image(studio.generate_image("runs/a", "a red circle", steps=2, seed=3).files[0])
    lora = "runs/ft-lora/adapter.safetensors"
    off = studio.generate_image("runs/a", "a red circle", steps=2, seed=3, adapter=lora, adapter_scale=0.0)
    assert np.abs(read_image(off.files[0]).astype(int) - plain).max() <= 1  # strength 0 is the base model
    on = studio.generate_image("runs/a", "a red circle", steps=2, seed=3, adapter=lora, adapter_scale=1.5)
    image = read_image(on.files[0])
    assert np.abs(image.astype(int) - plain).max() > 8
    baked = adapted_pipeline(load_pipeline(studio.runs_dir / "a"), [(studio.runs_dir / lora[5:], 1.5)])
    direct = generate(baked, "a red circle", seed=3, num_inference_steps=2, guidance_scale=DEFAULT_GUIDANCE).data[0]
    assert np.abs(image.astype(int) - direct).max() <= 1
    assert adapter_layers(studio.models.pipeline("runs/a").unet) == {}  # removed after sampling
    meta = json.loads(on.manifest.read_text())["meta"]
    assert meta["adapter"].endswith("ft-lora/adapter.safetensors") and meta["adapter_scale"] == 1.5


@pytest.mark.parametrize(
    ("model", "adapter", "scale", "message"),
    [
        ("runs/b", "runs/ft-lora/adapter.safetensors", 1.0, "was trained on 'runs/a', not 'runs/b'; pick that model"),
        ("runs/a", "runs/lost/adapter.safetensors", 1.0, "unknown adapter 'runs/lost/adapter.safetensors'"),
        ("runs/a", "/etc/passwd", 1.0, "unknown adapter '/etc/passwd'"),
        ("runs/a", "runs/ft-lora/adapter.safetensors", 3.5, "adapter strength must be a number from -3 to 3"),
        ("runs/a", "runs/ft-lora/adapter.safetensors", float("nan"), "adapter strength must be a number"),
    ],
)
def test_generate_refuses_a_bad_adapter_and_writes_nothing(studio, model, adapter, scale, message):
    with pytest.raises(ValueError, match=message):
        studio.generate_image(model, "a red circle", steps=1, adapter=adapter, adapter_scale=scale)
    assert not (studio.workdir / "outputs").exists()


def test_merging_additive_adapters_is_the_weight_space_merge_of_the_adapted_models(studio):
    runs = studio.runs_dir
    pair = ["runs/ft-lora/adapter.safetensors", "runs/ft-lora2/adapter.safetensors"]
    preview = studio.merge_preview(pair, [0.3, 0.7], **SETTINGS)
    assert preview.base == "runs/a" and preview.weights == pytest.approx([0.3, 0.7])
    base = load_pipeline(runs / "a")
    adapted = [adapted_pipeline(base, [(runs / name[5:], 1.0)]).unet.state_dict() for name in pair]
    base.unet.load_state_dict(merge_state_dicts(adapted, [0.3, 0.7]))  # 0.3·(W + ΔW₁) + 0.7·(W + ΔW₂)
    direct = generate(base, "a red circle", seed=3, num_inference_steps=2, guidance_scale=DEFAULT_GUIDANCE).data[0]
    assert np.abs(preview.image.astype(int) - direct).max() <= 1
    one = studio.merge_preview(pair, [1.0, 0.0], normalize=False, **SETTINGS)
    alone = studio.generate_image("runs/a", "a red circle", steps=2, seed=3, adapter=pair[0])
    assert np.abs(one.image.astype(int) - read_image(alone.files[0])).max() <= 1
    assert adapter_layers(studio.models.pipeline("runs/a").unet) == {}


def test_a_merge_with_an_orthogonal_adapter_stays_a_rotation_at_any_strength(studio):
    runs = studio.runs_dir
    base = load_pipeline(runs / "a")
    for strength in (-0.5, 0.4, 1.7):
        pairs = [(runs / "ft-oft/adapter.safetensors", strength), (runs / "ft-lora/adapter.safetensors", 0.0)]
        baked = adapted_pipeline(base, pairs).unet
        for name, module in base.unet.named_modules():
            if name.endswith("attn1.to_q"):
                w, w2 = module.weight.double(), baked.get_submodule(name).weight.double()
                assert not torch.allclose(w, w2, atol=1e-3)  # the rotation acts
                torch.testing.assert_close(w2 @ w2.T, w @ w.T, atol=1e-5, rtol=1e-5)  # W·Rᵀ·R·Wᵀ = W·Wᵀ


def test_save_merge_of_adapters_writes_a_plain_pipeline_that_reproduces_the_preview(studio):
    pair = ["runs/ft-lora/adapter.safetensors", "runs/ft-oft/adapter.safetensors"]
    preview = studio.merge_preview(pair, [0.8, 1.2], normalize=False, **SETTINGS)
    info = studio.save_merge(pair, [0.8, 1.2], "tuned", normalize=False)
    assert info.name == "runs/tuned"
    again = studio.generate_image("runs/tuned", "a red circle", steps=2, seed=3)
    assert np.abs(read_image(again.files[0]).astype(int) - preview.image).max() <= 1
    keys = set(load_pipeline(studio.runs_dir / "tuned").unet.state_dict())
    assert keys == set(load_pipeline(studio.runs_dir / "a").unet.state_dict())  # adapters baked in, none left
    record = json.loads((studio.runs_dir / "tuned" / "merge.json").read_text())
    assert record["base"] == "runs/a" and record["adapters"] == pair and record["strengths"] == [0.8, 1.2]


@pytest.mark.parametrize(
    ("items", "weights", "message"),
    [
        (["runs/a", "runs/ft-lora/adapter.safetensors"], [0.5, 0.5], "'runs/a' is a model and the other picks"),
        (
            ["runs/ft-lora/adapter.safetensors", "runs/ft-b/adapter.safetensors"],
            [0.5, 0.5],
            r"different models \['runs/a', 'runs/b'\]",
        ),
        (["runs/ft-lora/adapter.safetensors", "runs/ft-oft/adapter.safetensors"], [4.0, 1.0], "from -3 to 3"),
    ],
)
def test_adapter_merges_refuse(studio, items, weights, message):
    with pytest.raises(ValueError, match=message):
        studio.merge_preview(items, weights, normalize=False, **SETTINGS)


def test_handlers_offer_adapters_in_the_pickers_and_pass_the_strength(studio):
    h = Handlers(studio)
    assert [v for _, v in h.adapter_choices("runs/a")] == [
        NO_ADAPTER,
        "runs/ft-lora/adapter.safetensors",
        "runs/ft-lora2/adapter.safetensors",
        "runs/ft-oft/adapter.safetensors",
    ]
    assert h.adapter_dropdown("runs/b", "runs/ft-lora/adapter.safetensors").value == NO_ADAPTER  # not b's
    merge = dict((v, label) for label, v in h.choices("merge"))
    assert merge["runs/ft-oft/adapter.safetensors"].endswith("oft adapter of runs/a") and "runs/a" in merge
    table = h.models_table().set_index("name")
    assert table.loc["runs/ft-oft/adapter.safetensors", "kind"] == "oft adapter of runs/a"
    assert table.loc["runs/a", "kind"] == "run"
    gallery, _, _ = h.generate_image(
        "runs/a", "a red circle", "", 2, 4.0, 3, 1, "saved", "runs/ft-lora/adapter.safetensors", 1.5
    )
    direct = studio.generate_image(
        "runs/a", "a red circle", steps=2, guidance=4.0, seed=3, adapter="runs/ft-lora/adapter.safetensors",
        adapter_scale=1.5,
    )  # fmt: skip
    np.testing.assert_array_equal(read_image(gallery[0][0]), read_image(direct.files[0]))
    image, _, line = h.merge_preview(
        2, "a red circle", 3, 2, 4.0, False, "runs/ft-lora/adapter.safetensors", "runs/ft-oft/adapter.safetensors",
        None, None, 0.5, -0.5, 0.5, 0.5,
    )  # fmt: skip
    assert line.startswith("`runs/a` with adapters 0.5·`runs/ft-lora/adapter.safetensors`")
    assert image.shape == (32, 32, 3)
