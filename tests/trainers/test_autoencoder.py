import json

import pytest
import torch
from diffusers import AutoencoderKL

from studio.trainers.autoencoder import AutoencoderConfig, AutoencoderTrainer
from studio.trainers.pretrain import PretrainConfig, PretrainTrainer


def tiny_config(out, **overrides) -> AutoencoderConfig:
    fields = {"out": out, "channels": (8, 16), "latent_channels": 4, "batch_size": 4, "max_steps": 2, "lr": 2e-3}
    fields |= {"eval_samples": 8, "checkpoint_every": 100, "seed": 5}
    return AutoencoderConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("vae")
    metrics = AutoencoderTrainer(tiny_config(out), command="mixstudio train vae-shapes").fit()
    return out / "model", metrics


def test_exported_autoencoder_normalises_its_latents_and_reports_reconstruction(tiny_vae):
    folder, metrics = tiny_vae
    vae = AutoencoderKL.from_pretrained(folder)
    assert vae.config.scaling_factor == pytest.approx(1 / metrics["latent_std"])
    assert {"psnr", "judge_shape", "judge_colour"} <= set(metrics)
    # the factor brings held-out latents to unit scale, the convention the diffusion schedule assumes
    trainer = AutoencoderTrainer(tiny_config(folder.parent / "again", max_steps=1))
    trainer.build()
    x, _ = trainer.images(list(range(8)), trainer.config.data_seed + 1)
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    assert latents.shape == (8, 4, 16, 16)
    assert 0.5 < float(latents.std()) < 2.0
    assert json.loads((folder / "train_metrics.json").read_text())["steps"] == 2


def test_training_lowers_the_reconstruction_loss_with_gradients_in_the_autoencoder(tmp_path):
    trainer = AutoencoderTrainer(tiny_config(tmp_path, lr=3e-3))
    trainer.setup()
    first = trainer.optimizer_step()["l1"]
    for _ in range(15):
        trainer.step = 0  # the same batch and noise again
        last = trainer.optimizer_step()["l1"]
    assert last < 0.8 * first
    loss, _ = trainer.train_step(trainer.load_batch(0, [0, 1]))
    loss.backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in trainer.vae.parameters() if p.requires_grad
    )


def test_resume_replays_exactly(tmp_path):
    straight = AutoencoderTrainer(tiny_config(tmp_path / "a", max_steps=3))
    straight.setup()
    for _ in range(3):
        straight.optimizer_step()
    first = AutoencoderTrainer(tiny_config(tmp_path / "b", max_steps=3))
    first.setup()
    for _ in range(2):
        first.optimizer_step()
    first.save_checkpoint()
    resumed = AutoencoderTrainer(tiny_config(tmp_path / "b", max_steps=3))
    resumed.setup()
    assert resumed.step == 2
    resumed.optimizer_step()
    for k, v in straight.trainable_state().items():
        torch.testing.assert_close(resumed.trainable_state()[k], v, rtol=0, atol=0)


def test_pretraining_on_latents_exports_a_latent_pipeline_that_decodes_to_world_size(tiny_vae, tmp_path):
    from studio.pipelines import StudioImagePipeline

    folder, _ = tiny_vae
    config = PretrainConfig(
        world="shapes", out=tmp_path, vae=folder, channels=(16, 32), attention_levels=(1,), batch_size=2,
        max_steps=2, lr=1e-3, checkpoint_every=100, sample_prompts=1, prediction_type="v_prediction", snr_gamma=None,
    )  # fmt: skip
    trainer = PretrainTrainer(config)
    trainer.setup()
    assert trainer.encode_data([0]).shape == (1, 4, 16, 16)
    assert not trainer.noise_scheduler.config.clip_sample  # latents are not bounded like pixels
    losses = [trainer.optimizer_step()["loss"] for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    trainer.export({"steps": 2, "train_minutes": 0.1})
    pipe = StudioImagePipeline.from_pretrained(tmp_path / "model")
    assert pipe.vae is not None and "AutoencoderKL" in (tmp_path / "model" / "README.md").read_text()
    out = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (1, 3, 32, 32)


def test_latent_pretraining_refuses_a_folder_that_is_not_an_autoencoder(tmp_path):
    config = PretrainConfig(
        world="shapes", out=tmp_path / "run", vae=tmp_path, channels=(16, 32), attention_levels=(1,)
    )
    with pytest.raises(ValueError, match="not an AutoencoderKL folder"):
        PretrainTrainer(config).setup()
