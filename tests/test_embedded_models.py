"""The shipped models (assets/models): small, carded, and they sample through the public loader."""

import json

import pytest
import torch

from studio.models.zoo import EMBEDDED, model_dir, slider_pairs
from studio.pipelines import load_pipeline

MAX_MB = 20


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_model_is_small_and_its_card_names_the_command_and_the_steps(name):
    folder = model_dir(name)
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    assert size_mb <= MAX_MB, f"{name} is {size_mb:.1f} MB"
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt")), "weights must be safetensors"
    card = (folder / "README.md").read_text()
    metrics = json.loads((folder / "train_metrics.json").read_text())
    recipe = " ".join(EMBEDDED[name].command.split()[:3])  # `mixstudio train RECIPE`
    assert recipe in card and f"Steps: {metrics['steps']}" in card
    assert metrics["train_minutes"] <= 65  # the one-hour budget (and its checkpoint/export tail)


@pytest.mark.parametrize(("name", "modality"), [("shapes", "image"), ("synth", "audio")])
def test_embedded_model_samples_by_name_reproducibly(name, modality):
    pipe = load_pipeline(name, modality)
    prompt = "a red circle" if name == "shapes" else "a fast minor tune"

    def sample():
        out = pipe(
            prompt,
            num_inference_steps=2,
            guidance_scale=4.0,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
        )
        return out.images if modality == "image" else out.audios

    first, again = sample(), sample()
    assert torch.isfinite(first).all()
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    if modality == "image":
        assert first.shape == (1, 3, 32, 32)
    else:
        frames = pipe.unet.config.sample_size[1]
        assert first.shape[0] == 1 and first.shape[-1] == frames * pipe.codec.config.hop_length  # ~2 s


def test_every_world_ships_a_quality_diversity_pair_of_its_base_models_architecture():
    assert set(slider_pairs()) == {"shapes", "synth"}
    for world, students in slider_pairs().items():
        base = unet_config(world)
        for name in students:
            assert EMBEDDED[name].world == world and EMBEDDED[name].modality == EMBEDDED[world].modality
            assert unet_config(name) == base


def unet_config(name: str) -> dict:
    config = json.loads((model_dir(name) / "unet" / "config.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}
