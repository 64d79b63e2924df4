"""Judges: small classifiers that predict every world attribute and expose an embedding.

One class serves both modalities. Images ``(B, 3, H, W)`` in [-1, 1] go straight to a CNN;
waveforms ``(B, T)`` first pass a fixed log-frequency spectrogram (one bin per semitone, so
key and mode are local patterns) plus a chroma summary. The CNN keeps a coarse spatial map
before its embedding (position and rhythm are where-questions, so no global pooling).

A judge is a plain ``nn.Module`` saved as ``config.json`` plus ``diffusion_pytorch_model.safetensors`` (the
layout diffusers' ``save_pretrained`` wrote for the shipped judges), so scoring never imports diffusers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from studio.io import atomic_write_bytes, atomic_write_text

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class JudgeOutput:
    """Per-attribute logits ``{name: (B, n_values)}`` and the penultimate embedding ``(B, D)``."""

    logits: dict[str, torch.Tensor]
    embedding: torch.Tensor


def semitone_filterbank(n_fft: int, sample_rate: int, f_min: float, n_bins: int) -> torch.Tensor:
    """Triangular filters centred on equal-tempered semitones, ``(n_fft // 2 + 1, n_bins)``.

    Filter ``k`` is centred at ``f_min · 2^(k/12)`` and spans its neighbours; filters narrower
    than one FFT bin fall back to linear interpolation of the nearest bins, so no row is empty.
    With ``n_fft=2048`` at 16 kHz (7.8 Hz bins) semitones are resolved above ~100 Hz; below,
    a tone spreads over neighbouring bins (bass pitch is then read from its harmonics).
    """
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    centres = f_min * 2.0 ** (torch.arange(-1, n_bins + 1, dtype=torch.float64) / 12)
    lo, mid, hi = centres[:-2], centres[1:-1], centres[2:]
    bin_width = freqs[1]
    width_lo = torch.maximum(mid - lo, bin_width)
    width_hi = torch.maximum(hi - mid, bin_width)
    f = freqs[:, None]
    up = (f - (mid - width_lo)) / width_lo
    down = ((mid + width_hi) - f) / width_hi
    fb = torch.clamp(torch.minimum(up, down), min=0)
    fb = fb / fb.sum(0, keepdim=True).clamp_min(1e-8)
    fb[:, mid >= sample_rate / 2] = 0
    return fb.float()


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
    )


@dataclass(frozen=True)
class JudgeConfig:
    """The architecture of a :class:`Judge` (``config.json``); see :class:`Judge` for the fields."""

    world: str = "shapes"
    modality: str = "image"
    attributes: dict[str, list[str]] = field(default_factory=dict)
    width: int = 32
    embed_dim: int = 128
    image_size: int = 32
    sample_rate: int = 16_000
    n_fft: int = 2048
    hop_length: int = 256
    f_min: float = 32.70319566
    n_bins: int = 96
    time_pool: int = 1


class Judge(nn.Module):
    """Attribute classifier + embedder for one world.

    Args:
        world: the world's name (``shapes`` or ``synth``).
        modality: ``image`` or ``audio``.
        attributes: ``{attribute: [value, ...]}``, the world's vocabulary (class order).
        width: channels of the first CNN stage (doubles per stage).
        embed_dim: size of the penultimate embedding.
        image_size: image side in pixels (image judges).
        sample_rate, n_fft, hop_length, f_min, n_bins: the audio front-end (audio judges).
        time_pool: average this many spectrogram frames before the CNN (audio; 4 → 64 ms frames at hop 256).
    """

    def __init__(
        self,
        world: str = "shapes",
        modality: str = "image",
        attributes: dict[str, list[str]] | None = None,
        width: int = 32,
        embed_dim: int = 128,
        image_size: int = 32,
        sample_rate: int = 16_000,
        n_fft: int = 2048,
        hop_length: int = 256,
        f_min: float = 32.70319566,
        n_bins: int = 96,
        time_pool: int = 1,
    ):
        super().__init__()
        self.config = JudgeConfig(
            world=world, modality=modality, attributes={k: list(v) for k, v in (attributes or {}).items()},
            width=width, embed_dim=embed_dim, image_size=image_size, sample_rate=sample_rate, n_fft=n_fft,
            hop_length=hop_length, f_min=f_min, n_bins=n_bins, time_pool=time_pool,
        )  # fmt: skip
        if modality not in ("image", "audio"):
            raise ValueError(f"modality must be 'image' or 'audio', got {modality!r}")
        if not attributes:
            raise ValueError("attributes must name at least one attribute and its values")
        c_in = 3 if modality == "image" else 1
        widths = [width, width * 2, width * 4, width * 4]
        stages, prev = [], c_in
        for i, w in enumerate(widths):
            stages.append(conv_block(prev, w))
            if i < len(widths) - 1:
                stages.append(nn.MaxPool2d(2))
            prev = w
        self.trunk = nn.Sequential(*stages)
        # a 4x4 (image) or 3x4 (freq x time) map keeps "where" for position and rhythm
        self.pool = nn.AdaptiveAvgPool2d((4, 4) if modality == "image" else (3, 4))
        pooled = widths[-1] * (16 if modality == "image" else 12)
        extra = 24 if modality == "audio" else 0
        self.embed = nn.Sequential(
            nn.Dropout(0.2),
            nn.Linear(pooled + extra, embed_dim * 2),
            nn.GELU(),
            nn.Linear(embed_dim * 2, embed_dim),
            nn.GELU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(embed_dim, len(values)) for name, values in attributes.items()})
        if modality == "audio":
            fb = semitone_filterbank(n_fft, sample_rate, f_min, n_bins)
            self.register_buffer("filterbank", fb, persistent=False)
            self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    @property
    def attributes(self) -> dict[str, list[str]]:
        return dict(self.config.attributes)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``config.json`` and the weights (safetensors) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": "Judge", **asdict(self.config)}
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(folder / WEIGHTS_NAME, safetensors_bytes(state, metadata={"format": "pt"}))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Judge:
        """Read a judge written by :meth:`save_pretrained` (safetensors only; nothing is unpickled).

        Raises:
            ValueError: for a folder without a readable config or weights that do not fit it.
        """
        folder = Path(folder)
        try:
            config = json.loads((folder / CONFIG_NAME).read_text())
            state = load_file(folder / WEIGHTS_NAME)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"judge folder {str(folder)!r} is not readable ({err}); re-train or re-copy it") from None
        known = set(JudgeConfig.__dataclass_fields__)
        judge = cls(**{k: v for k, v in config.items() if k in known})
        try:
            judge.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise ValueError(f"judge weights in {str(folder)!r} do not fit its config.json ({first})") from None
        return judge

    def spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """Semitone power spectrogram ``(B, n_bins, frames)`` of waveforms ``(B, T)``."""
        spec = (
            torch.stft(
                audio.float(), self.config.n_fft, self.config.hop_length, window=self.window, return_complex=True
            )
            .abs()
            .pow(2)
        )
        return torch.einsum("bft,fk->bkt", spec, self.filterbank)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CNN input ``(B, C, H, W)`` and, for audio, chroma features ``(B, 24)``."""
        if self.config.modality == "image":
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"image judge expects (B, 3, H, W) in [-1, 1], got {tuple(x.shape)}")
            return x, None
        if x.ndim != 2:
            raise ValueError(f"audio judge expects waveforms (B, T), got {tuple(x.shape)}")
        power = self.spectrogram(x)
        logspec = torch.log(power + 1e-6)
        # loudness-invariant: a judge should not read the mix level
        logspec = logspec - logspec.amax(dim=(1, 2), keepdim=True)
        logspec = (logspec.clamp_min(-12.0) + 6.0) / 3.0
        if self.config.time_pool > 1:
            logspec = F.avg_pool2d(logspec[:, None], (1, self.config.time_pool))[:, 0]
        energy = power.mean(-1)  # (B, n_bins)
        n = energy.shape[1] // 12 * 12
        chroma = energy[:, :n].reshape(energy.shape[0], -1, 12).sum(1)
        bass = energy[:, :36].reshape(energy.shape[0], 3, 12).sum(1)
        chroma = torch.cat([chroma, bass], dim=1).add(1e-8).log()
        chroma = chroma - chroma.amax(dim=1, keepdim=True)
        return logspec[:, None], chroma.clamp_min(-12.0) / 4.0

    def forward(self, x: torch.Tensor) -> JudgeOutput:
        """Judge a batch.

        Args:
            x: images ``(B, 3, H, W)`` in [-1, 1], or waveforms ``(B, T)`` at ``sample_rate``.

        Returns:
            JudgeOutput with logits per attribute and the embedding ``(B, embed_dim)``.
        """
        inputs, chroma = self.features(x)
        h = self.pool(self.trunk(inputs)).flatten(1)
        if chroma is not None:
            h = torch.cat([h, chroma], dim=1)
        emb = self.embed(h)
        return JudgeOutput(logits={name: head(emb) for name, head in self.heads.items()}, embedding=emb)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 256) -> tuple[list[dict[str, str]], torch.Tensor]:
        """Predicted labels per sample and the embeddings ``(B, D)``, in eval mode and batches."""
        was_training = self.training
        self.eval()
        labels: list[dict[str, str]] = []
        embeddings = []
        for start in range(0, len(x), batch_size):
            out = self(x[start : start + batch_size].to(self.device))
            idx = {name: logit.argmax(-1).tolist() for name, logit in out.logits.items()}
            n = len(next(iter(idx.values())))
            labels += [{name: self.attributes[name][idx[name][i]] for name in idx} for i in range(n)]
            embeddings.append(out.embedding.float().cpu())
        self.train(was_training)
        return labels, torch.cat(embeddings)


def judge_loss(output: JudgeOutput, targets: dict[str, torch.Tensor], label_smoothing: float = 0.05) -> torch.Tensor:
    """Mean cross-entropy over attributes; ``targets`` maps names to class indices ``(B,)``."""
    losses = [F.cross_entropy(output.logits[name], t, label_smoothing=label_smoothing) for name, t in targets.items()]
    return torch.stack(losses).mean()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
