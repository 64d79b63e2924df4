"""Training a separator (BSRNN or HDemucs) on the ``synth`` world's stems.

Data: each training clip is a fresh ``synth`` render (seed ``sample_seed(data_seed, i)``) whose drums, bass and
lead stems are augmented as demucs does (:mod:`studio.separation.augment`: remix across clips, varispeed crop,
random EQ, gain, sign flip) and summed into the mixture, so the model learns to separate rather than to
recognise the world's exact timbres. Validation clips come from seeds ``2**32 + sample_seed(val_seed, i)``,
above every 32-bit training seed, so the two sets are disjoint by construction, and are scored untouched.

Loss, for both families, per the BSRNN paper (Luo & Yu 2022): L1 between the real and imaginary parts of the
estimated and true stems' STFTs, plus L1 between the waveforms, each weighted (``spec_loss_weight``,
``wave_loss_weight``). ``evaluate`` reports BSS-eval v4 SDR (museval's convention), MDX "new SDR", SI-SDR and
SI-SDRi per stem, next to the oracle ideal-ratio-mask and mixture-as-estimate baselines on the same clips.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from studio.evaluation.separation import ideal_ratio_mask, mixture_as_estimate, separation_scores
from studio.separation import SEPARATORS, SYNTH_SOURCES, Separator
from studio.separation.augment import augment_stems, check_remix_batch, remix_groups
from studio.separation.families import MEMBERS
from studio.trainers.base import Trainer
from studio.trainers.config import TrainerConfig, sample_generator
from studio.trainers.launch import training_hardware
from studio.worlds import SynthWorld, get_world, sample_seed

logger = logging.getLogger(__name__)

#: Validation seeds start here; training seeds are 32-bit (``sample_seed``), so the sets never meet.
VAL_SEED_OFFSET = 2**32
CLIP_SECONDS = SynthWorld.NUM_SAMPLES / SynthWorld.SAMPLE_RATE


@dataclass(kw_only=True)
class SeparateConfig(TrainerConfig):
    """Training a separator on the ``synth`` world's stems.

    Attributes:
        model: the separator family, ``bsrnn`` (band-split RNN) or ``hdemucs`` (torchaudio's Hybrid Demucs).
        world: the world whose stems are separated (only ``synth`` has stems).
        data_seed: base seed of the training clip stream.
        val_seed: base seed of the validation clips (offset by 2**32, so disjoint from training seeds).
        val_mixtures: held-out clips scored by :meth:`SeparateTrainer.evaluate`.
        eval_batch_size: clips per forward pass when evaluating.
        segment_seconds: training segment length; also the model's default overlap-add chunk. With
            ``max_speed_change`` it must fit in a 2.048 s synth clip.
        bsrnn_features: BSRNN per-band feature size N (the paper: 128).
        bsrnn_hidden: BSRNN BLSTM hidden size per direction.
        bsrnn_layers: BSRNN band + sequence layer pairs (the paper: 12).
        bsrnn_mask_hidden: hidden width of BSRNN's per-band mask MLPs (the paper: 4N = 512).
        hdemucs_channels: HDemucs first-level channels (torchaudio's default: 48).
        hdemucs_depth: HDemucs levels (5 brings 1024-point STFT bins down to 1).
        spec_loss_weight: weight of the L1 loss on the STFT's real and imaginary parts.
        wave_loss_weight: weight of the waveform L1 loss.
        loss_n_fft: STFT size of the spectrogram loss (Hann window).
        loss_hop_length: STFT hop of the spectrogram loss.
        remix: re-deal stems across the clips of each group of ``remix_group`` (demucs' ``Remix``).
        remix_group: clips per remix group; must divide each process's share of the batch.
        gain_range: per-stem random gain range (demucs' ``Scale``: 0.25-1.25).
        flip_sign: flip each stem's sign with probability 1/2.
        max_speed_change: largest varispeed change (0.04: ±4%, about ±0.7 semitone and ±4% tempo); 0 turns it off.
        eq_max_db: largest gain of the random EQ curve in dB; 0 turns it off.
        export: also write the exported separator here (e.g. ``assets/models/synth-sep``).
    """

    out: Path = Path("runs/separate-synth")
    max_steps: int = 4000
    batch_size: int = 16
    lr: float = 1e-3
    lr_warmup_steps: int = 100
    grad_clip: float | None = 5.0
    model: Literal["bsrnn", "hdemucs"] = "bsrnn"
    world: Literal["synth"] = "synth"
    data_seed: int = 2718
    val_seed: int = 3141
    val_mixtures: int = 64
    eval_batch_size: int = 16
    segment_seconds: float = 1.5
    bsrnn_features: int = 64
    bsrnn_hidden: int = 32
    bsrnn_layers: int = 4
    bsrnn_mask_hidden: int = 64
    hdemucs_channels: int = 16
    hdemucs_depth: int = 5
    spec_loss_weight: float = 1.0
    wave_loss_weight: float = 1.0
    loss_n_fft: int = 1024
    loss_hop_length: int = 256
    remix: bool = True
    remix_group: int = 4
    gain_range: tuple[float, float] = (0.25, 1.25)
    flip_sign: bool = True
    max_speed_change: float = 0.04
    eq_max_db: float = 6.0
    export: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model not in MEMBERS:  # the blend and multi-source diffusion train elsewhere
            raise ValueError(f"model must be 'bsrnn' or 'hdemucs', got {self.model!r}")
        sizes = ("val_mixtures", "eval_batch_size", "bsrnn_features", "bsrnn_hidden", "bsrnn_layers",
                 "bsrnn_mask_hidden", "hdemucs_channels", "hdemucs_depth", "remix_group", "loss_n_fft",
                 "loss_hop_length")  # fmt: skip
        for name in sizes:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.max_speed_change < 0.5:
            raise ValueError(f"max_speed_change must be in [0, 0.5), got {self.max_speed_change}; 0.04 is ±4%")
        longest = self.segment_seconds * (1 + round(100 * self.max_speed_change) / 100)
        if self.segment_seconds <= 0 or longest > CLIP_SECONDS:
            raise ValueError(
                f"segment_seconds {self.segment_seconds} at up to {1 + self.max_speed_change:g}x speed needs "
                f"{longest:.3f} s of a {CLIP_SECONDS} s clip; lower segment_seconds or max_speed_change"
            )
        if (
            self.spec_loss_weight < 0
            or self.wave_loss_weight < 0
            or self.spec_loss_weight + self.wave_loss_weight == 0
        ):
            raise ValueError("spec_loss_weight and wave_loss_weight must be >= 0 and not both 0")
        low, high = self.gain_range
        if not 0 < low <= high:
            raise ValueError(f"gain_range must be (low, high) with 0 < low <= high, got {self.gain_range}")
        if self.eq_max_db < 0:
            raise ValueError(f"eq_max_db must be >= 0 (0 turns the EQ off), got {self.eq_max_db}")
        if self.remix and self.batch_size % self.remix_group:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of remix_group {self.remix_group}")

    @property
    def segment_samples(self) -> int:
        """The training segment in samples at the world's rate."""
        return round(self.segment_seconds * SynthWorld.SAMPLE_RATE)


def build_separator(config: SeparateConfig) -> Separator:
    """A fresh (randomly initialised) separator of ``config.model`` sized by the config."""
    common = {
        "sources": SYNTH_SOURCES,
        "sample_rate": SynthWorld.SAMPLE_RATE,
        "audio_channels": 1,
        "segment_samples": config.segment_samples,
    }
    if config.model == "bsrnn":
        size = {"features": config.bsrnn_features, "hidden": config.bsrnn_hidden, "layers": config.bsrnn_layers}
        size["mask_hidden"] = config.bsrnn_mask_hidden
    else:
        size = {"channels": config.hdemucs_channels, "depth": config.hdemucs_depth}
    return SEPARATORS[config.model](**common, **size)


class SeparateTrainer(Trainer):
    """Trains :func:`build_separator` on augmented synth stems (see :class:`SeparateConfig`)."""

    config: SeparateConfig

    def build(self) -> None:
        cfg = self.config
        if cfg.remix:
            check_remix_batch(cfg.batch_size, self.accelerator.num_processes, cfg.remix_group)
        self.world = get_world(cfg.world)
        self.separator = build_separator(cfg)
        self.model = self.separator
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.loss_window = torch.hann_window(cfg.loss_n_fft)
        self._validation: tuple[torch.Tensor, torch.Tensor] | None = None
        self._baselines: dict[str, float] | None = None

    def clips(self, seeds: list[int]) -> torch.Tensor:
        """The stems of world clips ``(N, S, T)`` (drums, bass, lead); their sum is the world's mixture."""
        stems = [self.world.sample(seed).extras["stems"] for seed in seeds]
        return torch.from_numpy(np.stack([[s[name] for name in SYNTH_SOURCES] for s in stems]))

    def load_batch(self, step: int, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented training examples: mixtures ``(n, 1, T)`` and their stems ``(n, S, 1, T)``."""
        cfg = self.config
        clips = self.clips([sample_seed(cfg.data_seed, i) for i in indices])
        if cfg.remix:
            if len(indices) % cfg.remix_group:
                raise ValueError(f"{len(indices)} clips do not split into remix groups of {cfg.remix_group}")
            firsts = indices[:: cfg.remix_group]
            clips = remix_groups(clips, [_stream(cfg.seed, step, first, "remix") for first in firsts])
        stems = torch.stack(
            [
                augment_stems(
                    clip,
                    cfg.segment_samples,
                    sample_generator(cfg.seed, step, i),
                    gain_range=cfg.gain_range,
                    flip_sign=cfg.flip_sign,
                    max_speed_change=cfg.max_speed_change,
                    eq_max_db=cfg.eq_max_db,
                )
                for clip, i in zip(clips, indices)
            ]
        ).unsqueeze(2)
        return stems.sum(1), stems

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        mix, stems = (t.to(self.accelerator.device) for t in batch)
        spec_l1, wave_l1 = self.losses(self.model(mix), stems)
        loss = self.config.spec_loss_weight * spec_l1 + self.config.wave_loss_weight * wave_l1
        return loss, {"spec_l1": spec_l1.item(), "wave_l1": wave_l1.item()}

    def losses(self, estimates: torch.Tensor, stems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BSRNN's loss terms: mean L1 of STFT real/imag parts, and mean waveform L1."""
        cfg = self.config
        window = self.loss_window.to(estimates.device)

        def spec(x: torch.Tensor) -> torch.Tensor:
            s = torch.stft(x.flatten(0, -2).float(), cfg.loss_n_fft, cfg.loss_hop_length, window=window,
                           center=True, pad_mode="constant", return_complex=True)  # fmt: skip
            return torch.view_as_real(s)

        return (spec(estimates) - spec(stems)).abs().mean(), (estimates - stems).abs().mean()

    # ---- evaluation -------------------------------------------------------------------------
    def validation_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out clips, untouched: mixtures ``(N, 1, T)`` and stems ``(N, S, 1, T)`` (cached)."""
        if self._validation is None:
            cfg = self.config
            seeds = [VAL_SEED_OFFSET + sample_seed(cfg.val_seed, i) for i in range(cfg.val_mixtures)]
            stems = self.clips(seeds).unsqueeze(2)
            self._validation = stems.sum(1), stems
        return self._validation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation scores of the model, plus the IRM-oracle and mixture baselines (``irm_*``, ``mixture_*``)."""
        mixes, stems = self.validation_set()
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        device = self.accelerator.device
        estimates = torch.cat([model(m.to(device)).float().cpu() for m in mixes.split(self.config.eval_batch_size)])
        model.train(was_training)
        rate = SynthWorld.SAMPLE_RATE
        metrics = separation_scores(estimates, stems, mixes, rate, SYNTH_SOURCES)
        if self._baselines is None:
            irm = separation_scores(ideal_ratio_mask(stems), stems, mixes, rate, SYNTH_SOURCES)
            mixture = separation_scores(
                mixture_as_estimate(mixes, len(SYNTH_SOURCES)), stems, mixes, rate, SYNTH_SOURCES
            )
            self._baselines = {f"irm_{k}": v for k, v in irm.items()} | {f"mixture_{k}": v for k, v in mixture.items()}
        logger.info("step %d: %s", self.step, ", ".join(f"{k} {metrics[k]:.2f}" for k in ("sdr", "new_sdr", "si_sdr")))
        return metrics | self._baselines

    def export(self, metrics: dict[str, float]) -> Path:
        """Write ``out/model`` (and ``export``): the separator, train_metrics.json, train_config.json and a card."""
        model = self.accelerator.unwrap_model(self.model)
        hardware = training_hardware(self.accelerator.device, self.accelerator.num_processes)
        card = model_card(self.config, metrics, model, self.command, hardware)
        return self.write_model(model.save_pretrained, metrics, card)


def model_card(config: SeparateConfig, metrics: dict[str, Any], model: Separator, command: str, hardware: str) -> str:
    """The README of an exported separator: architecture, the command that made it, validation scores."""
    cfg = config
    params = sum(p.numel() for p in model.parameters())
    family = "band-split RNN (Luo & Yu 2022)" if cfg.model == "bsrnn" else "Hybrid Demucs (torchaudio HDemucs)"
    rows = []
    for label, prefix in (("this model", ""), ("oracle IRM", "irm_"), ("mixture as estimate", "mixture_")):
        cells = [metrics.get(f"{prefix}sdr_{s}", float("nan")) for s in SYNTH_SOURCES]
        cells += [metrics.get(f"{prefix}{k}", float("nan")) for k in ("sdr", "new_sdr", "si_sdr", "si_sdri")]
        rows.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    augment = (
        f"remix {'in groups of ' + str(cfg.remix_group) if cfg.remix else 'off'}, gain {cfg.gain_range}, "
        f"sign flip {'on' if cfg.flip_sign else 'off'}, varispeed ±{cfg.max_speed_change:.0%}, "
        f"EQ ±{cfg.eq_max_db:g} dB"
    )
    return f"""# Separator `{cfg.model}` on the `synth` world

A {family} separating 16 kHz mono into {", ".join(SYNTH_SOURCES)}: {params:,} parameters
({4 * params / 1e6:.1f} MB in float32), trained on {cfg.segment_seconds:g} s segments. Load it with
`studio.separation.load_separator(folder)` and apply it with `studio.separation.separate(model, audio, rate)`.

- Made by: `{command or "mixstudio train separate-synth"}`
- Steps: {metrics.get("steps", "?")} at batch {cfg.batch_size} (lr {cfg.lr}, seed {cfg.seed}); wall time \
{metrics.get("train_minutes", float("nan")):.1f} min on {hardware}
- Loss: {cfg.spec_loss_weight:g} x L1 on STFT re/im ({cfg.loss_n_fft}-point, hop {cfg.loss_hop_length}) + \
{cfg.wave_loss_weight:g} x waveform L1
- Augmentation: {augment}

Validation on {cfg.val_mixtures} held-out synth clips (seeds disjoint from training), in dB. SDR is BSS-eval v4
as museval reports it (median over 1 s frames, then over clips; frames where any stem is silent, e.g. clips
without drums, are not scored: {metrics.get("museval_scored_clips", float("nan")):.0f} clips scored); new SDR is
the MDX definition; SI-SDR(i) are means over clips where the stem sounds.

| | SDR {" | SDR ".join(SYNTH_SOURCES)} | SDR | new SDR | SI-SDR | SI-SDRi |
|---|{"---|" * (len(SYNTH_SOURCES) + 4)}
{chr(10).join(rows)}
"""


def _stream(seed: int, step: int, index: int, purpose: str) -> torch.Generator:
    """A generator for a draw shared by a group of samples (keyed like ``sample_generator``, plus a purpose)."""
    key = int.from_bytes(purpose.encode(), "little")
    state = np.random.SeedSequence([seed, step, index, key]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
