"""The contract every separator follows: a diffusers model that maps mixtures to per-source estimates.

A separator is an ``nn.Module`` that is also a diffusers ``ModelMixin`` + ``ConfigMixin``, so
``save_pretrained``/``from_pretrained`` round-trip it as ``config.json`` + safetensors (no pickles). Its
config always holds four fields, exposed as attributes:

- ``sources``: the names of the estimated stems, in output order (``["drums", "bass", "lead"]``);
- ``sample_rate``: the rate the model works at (inputs at other rates go through
  :func:`studio.separation.apply.separate`, which resamples);
- ``audio_channels``: 1 for a mono model, 2 for a stereo one;
- ``segment_samples``: the length the model was trained on, the default chunk of overlap-add.

``forward(mix (B, C, T)) -> (B, S, C, T)`` returns the estimates at any length ``T >= 1``. Model families
live one per file (:mod:`~studio.separation.bsrnn`, :mod:`~studio.separation.hdemucs`,
:mod:`~studio.separation.blend`); ``studio.separation.SEPARATORS`` names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin

#: The stems of the ``synth`` world, in the order its separators output them.
SYNTH_SOURCES = ("drums", "bass", "lead")


class Separator(ModelMixin, ConfigMixin):
    """Base class of separators: ``forward(mix (B, C, T)) -> estimates (B, S, C, T)``.

    Subclasses register ``sources``, ``sample_rate``, ``audio_channels`` and ``segment_samples`` (plus their own
    architecture fields) with ``@register_to_config``, call :func:`check_contract` on them, and implement
    :meth:`forward`, calling :meth:`check_mix` first.
    """

    config_name = "config.json"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> Separator:
        """diffusers' ``from_pretrained``, building the model on real tensors rather than the meta device.

        torchaudio's HDemucs computes on tensors while it initialises (a smoothed frequency embedding), which
        fails on meta tensors; separators are small, so the saving of a meta initialisation is not worth it.
        """
        kwargs.setdefault("low_cpu_mem_usage", False)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def sources(self) -> list[str]:
        """The stem names, in the order of the output's source axis."""
        return list(self.config.sources)

    @property
    def sample_rate(self) -> int:
        """The sample rate in Hz the model works at."""
        return int(self.config.sample_rate)

    @property
    def audio_channels(self) -> int:
        """Channels the model takes and returns (1: mono, 2: stereo)."""
        return int(self.config.audio_channels)

    @property
    def segment_samples(self) -> int:
        """The training segment length in samples (the default overlap-add chunk)."""
        return int(self.config.segment_samples)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate ``mix`` ``(B, C, T)`` into estimates ``(B, S, C, T)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def check_mix(self, mix: torch.Tensor) -> None:
        """Refuse a batch that is not ``(B, audio_channels, T)`` floating point with ``T >= 1``.

        Raises:
            ValueError: naming the shape received and the one expected.
        """
        if mix.ndim != 3 or mix.shape[1] != self.audio_channels or mix.shape[-1] < 1 or not mix.is_floating_point():
            raise ValueError(
                f"{type(self).__name__} takes float mixtures (batch, {self.audio_channels} channels, samples); got "
                f"{mix.dtype} {tuple(mix.shape)}. For any length, channel count or rate use "
                "studio.separation.separate(model, audio, sample_rate)"
            )


def check_contract(sources: Sequence[str], sample_rate: int, audio_channels: int, segment_samples: int) -> None:
    """Validate the four contract fields of a separator's config.

    Raises:
        ValueError: for no sources, repeated or empty names, a rate outside [1 kHz, 384 kHz], a channel count
            outside [1, 8] or a non-positive segment.
    """
    names = list(sources)
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"sources must be distinct non-empty names, got {names}; e.g. {list(SYNTH_SOURCES)}")
    if not 1_000 <= int(sample_rate) <= 384_000:
        raise ValueError(f"sample_rate must be in [1000, 384000] Hz, got {sample_rate}")
    if not 1 <= int(audio_channels) <= 8:
        raise ValueError(f"audio_channels must be in [1, 8] (1 mono, 2 stereo), got {audio_channels}")
    if int(segment_samples) <= 0:
        raise ValueError(f"segment_samples must be positive, got {segment_samples}")
