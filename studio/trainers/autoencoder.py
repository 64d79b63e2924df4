"""A small ``AutoencoderKL`` for an image world, so the base model can diffuse in latent space.

``mixstudio train vae-shapes`` trains it; ``pretrain-shapes`` then trains its UNet on the latents
(``--set vae=runs/vae-shapes/model``). The exported folder is a standard diffusers ``AutoencoderKL``
whose ``scaling_factor`` brings the latents to unit variance, as Stable Diffusion's does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL

from studio.io import write_png
from studio.models.unet import norm_groups
from studio.trainers.base import Trainer
from studio.trainers.config import TrainerConfig, sample_generator
from studio.trainers.launch import training_hardware
from studio.worlds import get_world, sample_seed
from studio.worlds.base import to_array, to_tensor

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class AutoencoderConfig(TrainerConfig):
    """Training a KL autoencoder on a world's images.

    Attributes:
        world: the image world.
        data_seed: base seed of the training sample stream (held-out samples use ``data_seed + 1``).
        channels: encoder/decoder channels per level; each level after the first halves the resolution.
        latent_channels: channels of the latent image.
        layers_per_block: ResNet blocks per level.
        kl_weight: weight of the KL term against the per-pixel L1 reconstruction loss (small, as in SD's
            VAE: it only keeps the latent's scale in check, and ``scaling_factor`` normalises it).
        sample_posterior: decode a posterior sample rather than its mean. Off by default: the diffusion
            model only ever sees the mean, and a sample (std 1 at init against a latent std of ~2) gives
            the decoder noisier inputs to learn from.
        eval_samples: held-out images for the reconstruction metrics and the scaling factor.
    """

    world: Literal["shapes"] = "shapes"
    data_seed: int = 4321
    channels: tuple[int, ...] = (32, 64, 128)
    latent_channels: int = 4
    layers_per_block: int = 1
    kl_weight: float = 1e-6
    sample_posterior: bool = False
    eval_samples: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl_weight < 0 or self.latent_channels <= 0 or self.eval_samples <= 0:
            raise ValueError("kl_weight must be >= 0, latent_channels and eval_samples positive")


def build_autoencoder(channels: tuple[int, ...], latent_channels: int, layers_per_block: int) -> AutoencoderKL:
    """An ``AutoencoderKL`` with ``len(channels) − 1`` halvings of resolution."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=tuple(channels),
        latent_channels=latent_channels,
        layers_per_block=layers_per_block,
        norm_num_groups=norm_groups(tuple(channels)),
    )


class AutoencoderTrainer(Trainer):
    """Trains :func:`build_autoencoder` on fresh world renders (see :class:`AutoencoderConfig`)."""

    config: AutoencoderConfig

    def build(self) -> None:
        cfg = self.config
        self.world = get_world(cfg.world)
        if self.world.modality != "image":
            raise ValueError(f"world {cfg.world!r} is not an image world; the autoencoder takes images")
        self.vae = build_autoencoder(cfg.channels, cfg.latent_channels, cfg.layers_per_block)
        self.model = _Reconstruction(self.vae, cfg.sample_posterior)
        side = self.world.sample(0).data.shape[0] // 2 ** (len(cfg.channels) - 1)
        self.latent_shape = (cfg.latent_channels, side, side)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def images(self, indices: list[int], data_seed: int) -> tuple[torch.Tensor, list]:
        samples = [self.world.sample(sample_seed(data_seed, i)) for i in indices]
        return torch.stack([to_tensor(s.data) for s in samples]), samples

    def load_batch(self, step: int, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """World images and their reparameterisation noise (per image, from the (seed, step, index) generators)."""
        x, _ = self.images(indices, self.config.data_seed)
        gens = [sample_generator(self.config.seed, step, i) for i in indices]
        return x, torch.stack([torch.randn(self.latent_shape, generator=g) for g in gens])

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x, eps = (t.to(self.accelerator.device) for t in batch)
        recon, kl = self.model(x, eps)
        l1 = (recon - x).abs().mean()
        return l1 + self.config.kl_weight * kl, {"l1": l1.item(), "kl": kl.item()}

    @torch.no_grad()
    def measure(self) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """Held-out reconstruction metrics, the held-out images and their reconstructions (mean latents)."""
        from studio.judges import load_judge
        from studio.judges.metrics import prompt_adherence

        model = self.vae.eval()
        x, samples = self.images(list(range(self.config.eval_samples)), self.config.data_seed + 1)
        latents = torch.cat([model.encode(chunk.to(model.device)).latent_dist.mean for chunk in x.split(64)])
        recon = torch.cat([model.decode(chunk).sample.cpu() for chunk in latents.split(64)]).clamp(-1, 1)
        mse = (recon - x).square().flatten(1).mean(1)
        metrics = {
            "psnr": float((10 * torch.log10(4 / mse)).mean()),  # peak-to-peak 2 on [-1, 1]
            "latent_std": float(latents.std()),
        }
        try:
            judged, _ = load_judge(self.world.name, "eval").predict(recon)
        except ValueError as err:  # before the judges exist
            logger.warning("%s; reconstructions are not judged", err)
        else:
            adherence = prompt_adherence(judged, [s.labels for s in samples])
            metrics |= {f"judge_{k}": v for k, v in adherence.per_attribute.items()}
        return metrics, x, recon

    def evaluate(self) -> dict[str, float]:
        metrics, x, recon = self.measure()
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        n = min(16, len(x)) // 4 * 4  # originals beside reconstructions, 8 images a row
        pairs = torch.stack([x[:n], recon[:n]], dim=1).reshape(2 * n // 8, 8, *x.shape[1:])
        grid = pairs.permute(2, 0, 3, 1, 4).reshape(3, 2 * n // 8 * x.shape[2], 8 * x.shape[3])
        write_png(self.out / "samples" / f"step-{self.step:08d}.png", to_array(grid))
        logger.info("step %d: %s", self.step, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        return metrics

    def export(self, metrics: dict[str, float]) -> Path:
        """Write the autoencoder to ``out/model`` with ``scaling_factor = 1 / latent std`` and a card."""
        model = self.vae
        model.register_to_config(scaling_factor=1.0 / metrics["latent_std"])
        return self.write_model(model.save_pretrained, metrics, self.model_card(metrics))

    def model_card(self, metrics: dict[str, float]) -> str:
        cfg = self.config
        judged = ", ".join(f"{k.removeprefix('judge_')} {v:.3f}" for k, v in metrics.items() if k.startswith("judge_"))
        side = self.latent_shape[1]
        return f"""# Autoencoder of the `{cfg.world}` world

A diffusers `AutoencoderKL` ({sum(p.numel() for p in self.vae.parameters()):,} parameters, channels
{list(cfg.channels)}): 32x32 RGB <-> {side}x{side}x{cfg.latent_channels} latents, scaling factor
{1 / metrics["latent_std"]:.4f} (unit-variance latents). L1 reconstruction + {cfg.kl_weight:g} x KL.

- Made by: `{self.command or "mixstudio train vae-" + cfg.world}`
- Steps: {metrics["steps"]} at batch {cfg.batch_size} (lr {cfg.lr}); wall time {metrics["train_minutes"]:.1f} min
  on {training_hardware(self.accelerator.device, self.accelerator.num_processes)}
- Held-out reconstructions ({cfg.eval_samples} renders): PSNR {metrics["psnr"]:.2f} dB; eval judge on the
  reconstructions: {judged or "not judged"}
"""


class _Reconstruction(torch.nn.Module):
    """Encode, take the posterior mean (or a sample with the given noise), decode.

    One module with one forward, so a data-parallel wrapper sees every parameter used.
    """

    def __init__(self, vae: AutoencoderKL, sample_posterior: bool):
        super().__init__()
        self.vae = vae
        self.sample_posterior = sample_posterior

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * eps if self.sample_posterior else posterior.mean
        recon = self.vae.decode(z).sample
        return recon, posterior.kl().mean() / x[0].numel()  # KL per pixel value, like the L1 term
