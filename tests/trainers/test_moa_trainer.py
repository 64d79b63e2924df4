"""Mixture-of-attention training: the losses on constructed cases, what trains, both modes, files, the CLI."""

import json

import pytest
import torch

from studio.attention.moa import MoA
from studio.cli import main
from studio.config import from_dict
from studio.trainers.moa import (
    MoAConfig,
    MoATrainer,
    localisation_loss,
    masked_diffusion_loss,
    read_subject_folder,
    router_loss,
)
from studio.worlds.concept import Subject, write_subject_folder
from tests.tolerances import assert_close


def config(folder, tmp_path, **overrides) -> MoAConfig:
    settings = {"base": str(folder), "world": "shapes", "out": str(tmp_path / "run"), "batch_size": 4, "lr": 1e-3,
                "image_dim": 16, "mlp_hidden": 32, "grid_steps": 2}  # fmt: skip
    settings.update(overrides)
    return from_dict(MoAConfig, settings)


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("subject") / "heart"
    write_subject_folder(folder, Subject.parse("heart-stripes-red-yellow"), 4, seed=0)
    return folder


# ---- the losses on constructed cases -----------------------------------------------------------------------------
def test_router_loss_counts_background_pixels_not_sent_to_the_prior():
    mask = torch.zeros(1, 4, 4)
    mask[0, :2] = 1  # the subject is the top half
    assert router_loss(torch.ones(1, 4, 4), mask) == 0
    assert router_loss(torch.zeros(1, 4, 4), mask) == pytest.approx(0.5)  # half the pixels are background, error 1
    prior = torch.ones(1, 4, 4)
    prior[0, :2] = 0  # the subject's pixels may go to the personalised branch freely
    assert router_loss(prior, mask) == 0
    prior = torch.full((1, 4, 4), 0.5, requires_grad=True)
    router_loss(prior, mask).backward()
    assert (prior.grad[0, 2:] < 0).all() and (prior.grad[0, :2] == 0).all()  # raise the prior on the background only


def test_localisation_loss_rewards_attention_inside_the_mask():
    mask = torch.zeros(1, 8, 8)
    mask[0, 2:6, 2:6] = 1
    inside = (mask.flatten(1) / mask.sum()).clone()  # attention on the subject only (layer at full size)
    uniform = torch.full((1, 64), 1 / 64)
    assert localisation_loss(inside, mask) == pytest.approx(-1 / 16)
    assert localisation_loss(uniform, mask) == pytest.approx(0, abs=1e-7)
    assert localisation_loss(1 - mask.flatten(1), mask) > 0
    low = torch.rand(2, 16, dtype=torch.float64, requires_grad=True)  # a 4x4 layer: the mask is pooled to it
    assert torch.autograd.gradcheck(lambda a: localisation_loss(a, mask.double().expand(2, -1, -1)), (low,))


def test_masked_diffusion_loss_averages_over_the_mask_when_asked():
    error = torch.zeros(3, 4, 4)
    error[:, :2] = 1.0  # wrong on the top half
    mask = torch.zeros(3, 4, 4)
    mask[:2, :2, :2] = 1  # rows 0, 1: a subject in the top left; row 2: none
    use = torch.tensor([True, False, True])
    expected = (1.0 + 0.5 + 0.5) / 3  # masked mean 1; full-image means 0.5 (row 2's empty mask falls back to it)
    assert masked_diffusion_loss(error, mask, use) == pytest.approx(expected)


# ---- training ----------------------------------------------------------------------------------------------------
def test_encoder_mode_trains_only_the_moa_and_the_router_learns_the_background(tiny_shapes_folder, tmp_path):
    trainer = MoATrainer(config(tiny_shapes_folder, tmp_path, no_subject_fraction=0.5, router_weight=10.0))
    trainer.setup()
    base = {k: v.clone() for k, v in trainer.pipe.unet.state_dict().items()}
    batch = trainer.load_batch(0, [0, 1, 2, 3])
    assert batch["images"].shape == (4, 32, 32, 3) and batch["masks"].shape == (4, 32, 32)
    assert any(s is None for s in batch["starts"]) and any(s is not None for s in batch["starts"])
    first = None
    for _ in range(25):
        loss, metrics = trainer.train_step(batch)
        first = first or metrics
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    assert set(metrics) == {"diffusion", "router", "pers_inside", "pers_outside", "localisation"}
    assert metrics["router"] < 0.5 * first["router"], (first, metrics)
    assert metrics["pers_outside"] < first["pers_outside"] - 0.1
    assert all(torch.equal(v, trainer.pipe.unet.state_dict()[k]) for k, v in base.items())
    assert set(trainer.trainable_state()) == set(trainer.moa.state_dict())


def test_a_run_exports_a_moa_that_generate_loads(tiny_shapes_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--quiet", "train", "moa-shapes", "--out", str(out), "--set", f"base={tiny_shapes_folder}",
            "--set", "world=shapes", "--set", "max_steps=2", "--set", "batch_size=2", "--set", "image_dim=16",
            "--set", "grid_steps=2", "--set", "max_minutes=none"]  # fmt: skip
    assert main(args) == 0
    card = json.loads((out / "moa.json").read_text())
    assert card["mode"] == "encoder" and card["metrics"]["steps"] == 2
    assert list((out / "samples").glob("step-*.png"))
    write_subject_folder(tmp_path / "subject", Subject.parse("drop-dots-blue-pink"), 1)
    reference = tmp_path / "subject" / "reference" / "reference.png"
    gen = ["--quiet", "generate", "image", "a sks shape on a navy background", "--model", str(tiny_shapes_folder),
           "--moa", str(out), "--subject", str(reference), "--steps", "2", "-n", "2",
           "--out", str(tmp_path / "g")]  # fmt: skip
    assert main(gen) == 0
    assert len(list((tmp_path / "g" / "router").glob("*.png"))) == 2
    assert (tmp_path / "g" / "router_grid.png").is_file()
    capsys.readouterr()
    no_subject = [*[a for a in gen if a not in ("--subject", str(reference))][:-1], str(tmp_path / "h")]
    assert main(no_subject) == 2  # no --subject for an encoder run
    assert "add --subject REF.png" in capsys.readouterr().err
    shapes = ["--quiet", "generate", "image", "a sks shape", "--moa", str(out), "--subject", str(reference),
              "--out", str(tmp_path / "i")]  # fmt: skip
    assert main(shapes) == 2  # the tiny model's MoA on the shipped shapes model
    assert "made for another UNet" in capsys.readouterr().err and not (tmp_path / "i").exists()


def test_subject_mode_learns_one_subject_from_an_encoder_run(tiny_shapes_folder, tmp_path, subject_dir):
    encoder = MoATrainer(config(tiny_shapes_folder, tmp_path / "enc", max_steps=1))
    encoder.fit()
    cfg = config(tiny_shapes_folder, tmp_path, mode="subject", data={"dir": str(subject_dir)},
                 init=str(tmp_path / "enc" / "run"), max_steps=3)  # fmt: skip
    trainer = MoATrainer(cfg)
    trainer.setup()
    started = MoA.load(tmp_path / "enc" / "run", trainer.pipe.unet)
    assert trainer.moa.settings.mode == "subject"
    assert_close(trainer.moa.branches[0].to_q.weight, started.branches[0].to_q.weight, atol=0.0, what="init")
    assert not any(p.requires_grad for p in trainer.moa.encoder.parameters())
    with torch.no_grad():
        images = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1 for a in trainer.images])
        assert_close(trainer.moa.subject_code, started.encoder(images).mean(0), atol=1e-5, what="code from encoder")
    batch = trainer.load_batch(0, [0, 1, 2, 3])
    texts = [t for t, s in zip(batch["texts"], batch["starts"], strict=True) if s is not None]
    assert texts and set(texts) == {"a shape"}
    trainer.fit()
    assert MoA.load(tmp_path / "run" / "moa.safetensors").settings.mode == "subject"


def test_subject_mode_needs_masks_and_an_identifier(tiny_shapes_folder, tmp_path, subject_dir):
    images, masks = read_subject_folder(subject_dir, 32)
    assert len(images) == len(masks) == 4 and masks[0].max() == pytest.approx(1.0) and masks[0].min() == 0
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "a.png").write_bytes((subject_dir / "subject-00.png").read_bytes())
    with pytest.raises(ValueError, match="has no mask"):
        read_subject_folder(bare, 32)
    with pytest.raises(ValueError, match="must name the subject with 'sks'"):
        config(
            tiny_shapes_folder, tmp_path, mode="subject", data={"dir": str(subject_dir), "instance_prompt": "a shape"}
        )
    for field, value, error in [("router_weight", -1.0, "router_weight must be >= 0"),
                                ("mask_probability", 2.0, "mask_probability must be in"),
                                ("mode", "both", "mode must be one of")]:  # fmt: skip
        with pytest.raises(ValueError, match=error):
            config(tiny_shapes_folder, tmp_path, **{field: value})


def test_a_moa_trained_with_nan_weights_is_never_written(tiny_shapes_folder, tmp_path):
    trainer = MoATrainer(config(tiny_shapes_folder, tmp_path, max_steps=1))
    trainer.setup()
    with torch.no_grad():
        trainer.moa.branches[0].router.net[0].weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        trainer.export({})
    assert not (tmp_path / "run" / "moa.safetensors").exists()
