"""Adapter finetuning: prior preservation data, adapter-only training and checkpoints, export → generate."""

import json

import numpy as np
import pytest
import torch

from studio.cli import main
from studio.io import read_image, write_png
from studio.trainers.finetune import FinetuneConfig, FinetuneTrainer
from studio.worlds import get_world


@pytest.fixture(scope="module")
def concept_dir(tmp_path_factory):
    """Four 32-px images of one world sample family (stand-ins for a user's concept photos)."""
    folder = tmp_path_factory.mktemp("concept")
    world = get_world("shapes")
    for i in range(4):
        sample = world.sample(10_000 + i, fixed={"shape": "star", "colour": "pink", "background": "navy"})
        write_png(folder / f"{i}.png", sample.data)
    return folder


def config(folder, concept_dir, tmp_path, **overrides) -> FinetuneConfig:
    settings = {
        "base": str(folder),
        "world": "shapes",
        "out": tmp_path / "run",
        "batch_size": 2,
        "lr": 1e-2,
        "class_samples": 3,
        "sample_prompts": ("a sks shape",),
        "data": {"dir": concept_dir},
    }
    settings.update(overrides)
    from studio.config import from_dict

    return from_dict(FinetuneConfig, {k: (str(v) if k in ("base", "out") else v) for k, v in settings.items()})


@pytest.mark.parametrize("method", [{"method": "lora", "rank": 2}, {"method": "oft", "block_size": 8}])
def test_only_adapter_parameters_train_and_the_loss_falls(tiny_shapes_folder, concept_dir, tmp_path, method):
    trainer = FinetuneTrainer(config(tiny_shapes_folder, concept_dir, tmp_path, adapter=method))
    trainer.setup()
    base = {k: v.clone() for k, v in trainer.pipe.unet.state_dict().items() if "adapters" not in k}
    assert trainer.classes.shape == (3, 3, 32, 32) and len(list((tmp_path / "run" / "class_samples").iterdir())) == 3
    first = None
    for _ in range(30):
        loss, metrics = trainer.train_step([0, 1])
        first = metrics["instance_mse"] if first is None else first
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    assert set(metrics) == {"instance_mse", "prior_mse"}
    assert metrics["instance_mse"] < 0.92 * first, (first, metrics)  # 30 steps on one fixed batch
    after = trainer.pipe.unet.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in base.items())  # base weights untouched
    state = trainer.trainable_state()  # what checkpoints hold: exactly the trained parameters
    trained = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert state and sum(v.numel() for v in state.values()) == sum(p.numel() for p in trained)
    assert all(p.requires_grad for p in trained) and not any("base_layer" in k for k in state)


def test_a_shared_class_folder_keeps_its_files_and_is_only_topped_up(tiny_shapes_folder, concept_dir, tmp_path):
    shared = tmp_path / "classes"
    shared.mkdir()
    mine = np.full((32, 32, 3), 7, np.uint8)
    write_png(shared / "mine.png", mine)  # a user's own class image: used, never overwritten
    first = FinetuneTrainer(config(tiny_shapes_folder, concept_dir, tmp_path, class_dir=str(shared)))
    first.setup()
    assert sorted(p.name for p in shared.iterdir()) == ["class-0001.png", "class-0002.png", "mine.png"]
    assert np.array_equal(read_image(shared / "mine.png"), mine)
    assert not (tmp_path / "run" / "class_samples").exists()
    stamp = {p.name: p.stat().st_mtime_ns for p in shared.iterdir()}
    second = FinetuneTrainer(config(tiny_shapes_folder, concept_dir, tmp_path / "b", class_dir=str(shared)))
    second.setup()  # a second run of the same class prompt generates nothing
    assert {p.name: p.stat().st_mtime_ns for p in shared.iterdir()} == stamp
    assert torch.equal(first.classes, second.classes)


def test_resume_is_exact_and_checkpoints_hold_only_the_adapter(tiny_shapes_folder, concept_dir, tmp_path):
    """2 steps + save + load + 1 step equals 3 uninterrupted steps (same schedule: max_steps is the same)."""

    def trainer(out):
        t = FinetuneTrainer(config(tiny_shapes_folder, concept_dir, out, max_steps=10, ema_decay=0.9))
        t.setup()
        return t

    def run(t, steps):
        return [t.optimizer_step()["loss"] for _ in range(steps)]

    straight = trainer(tmp_path / "a")
    losses_a = run(straight, 3)
    first = trainer(tmp_path / "b")
    losses_b = run(first, 2)
    path = first.save_checkpoint()
    assert {p.name for p in path.iterdir()} >= {"model.safetensors", "extra.safetensors", "trainer_state.json"}
    resumed = trainer(tmp_path / "b")
    assert resumed.step == 2
    losses_b += run(resumed, 1)

    assert losses_a == pytest.approx(losses_b, rel=1e-6)
    a, b = straight.trainable_state(), resumed.trainable_state()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)
    for k, v in straight.ema.state_dict().items():
        torch.testing.assert_close(resumed.ema.state_dict()[k], v, rtol=1e-6, atol=1e-7)


def test_exported_adapter_applies_through_generate(tiny_shapes_folder, concept_dir, tmp_path, capsys):
    cfg = config(tiny_shapes_folder, concept_dir, tmp_path, max_steps=3, adapter={"method": "lora", "rank": 2})
    trainer = FinetuneTrainer(cfg)
    trainer.fit()
    adapter = tmp_path / "run" / "adapter.safetensors"
    assert adapter.is_file() and (tmp_path / "run" / "samples" / "step-00000003.png").is_file()
    assert json.loads((tmp_path / "run" / "adapter.json").read_text())["metrics"]["steps"] == 3

    def generate(out, *extra):
        args = ["--quiet", "generate", "image", "a sks shape", "-n", "1", "--steps", "2", "--world", "shapes"]
        assert main([*args, "--model", str(tiny_shapes_folder), "--out", str(out), *extra]) == 0
        return read_image(out / "0000.png").astype(int)

    plain = generate(tmp_path / "plain")
    zero = generate(tmp_path / "zero", "--adapter", str(adapter), "--adapter-scale", "0")
    full = generate(tmp_path / "full", "--adapter", str(adapter))
    assert np.array_equal(plain, zero)  # strength 0 is the base model
    assert np.abs(full - plain).max() > 0
    assert main(["--quiet", "generate", "image", "x", "--adapter", str(tmp_path / "nope.safetensors"),
                 "--out", str(tmp_path / "bad")]) == 2  # fmt: skip
    assert "--adapter" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"adapter": {"rank": 4}}, "needs a method"),
        ({"adapter": {"method": "dora"}}, "unknown"),
        ({"prior_weight": -1.0}, "prior_weight"),
        ({"base": "my-model"}, "set world"),
    ],
)
def test_config_rejects_bad_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**overrides)


def test_missing_concept_folder_is_a_clear_error(tiny_shapes_folder, tmp_path):
    trainer = FinetuneTrainer(config(tiny_shapes_folder, tmp_path / "none", tmp_path))
    with pytest.raises(ValueError, match=r"data.dir .* is not a folder"):
        trainer.setup()


def test_switching_the_adapter_method_by_override_leaves_no_stale_options():
    from studio.config import apply_overrides
    from studio.recipes import get_recipe

    cfg = apply_overrides(get_recipe("finetune"), ["adapter.method=oft", "adapter.block_size=8"])
    assert cfg.adapter == {"method": "oft", "block_size": 8}
