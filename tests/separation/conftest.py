"""Test doubles for separation: separators whose output is known in closed form, and tiny real models."""

from collections.abc import Sequence

import pytest
import torch
from diffusers.configuration_utils import register_to_config
from torch.nn import functional as F

from studio.separation import BandSplitRNN, HDemucsSeparator, Separator


class GainSeparator(Separator):
    """Source ``s`` is ``gains[s] * mix``: memoryless and linear, so overlap-add must reproduce it exactly."""

    @register_to_config
    def __init__(
        self,
        sources: Sequence[str] = ("a", "b"),
        sample_rate: int = 16_000,
        audio_channels: int = 1,
        segment_samples: int = 4000,
        gains: Sequence[float] = (1.0, 1.0),
    ):
        super().__init__()
        self.register_buffer("gain", torch.tensor(list(gains), dtype=torch.float32))

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        self.check_mix(mix)
        return mix[:, None] * self.gain[None, :, None, None]


class FirSeparator(Separator):
    """Source 0 is the mix through a centred moving average of ``2 * radius + 1`` taps, source 1 the rest.

    Linear and time-invariant with a receptive field of ``radius`` samples either side (zeros beyond the
    input), so a chunk's output equals the whole signal's except within ``radius`` of the chunk's edges.
    """

    @register_to_config
    def __init__(
        self,
        sources: Sequence[str] = ("low", "high"),
        sample_rate: int = 16_000,
        audio_channels: int = 1,
        segment_samples: int = 32_000,
        radius: int = 32,
    ):
        super().__init__()
        taps = 2 * radius + 1
        self.register_buffer("kernel", torch.full((1, 1, taps), 1.0 / taps))

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        self.check_mix(mix)
        batch, channels, length = mix.shape
        low = F.conv1d(mix.reshape(-1, 1, length), self.kernel, padding=self.config.radius).view(batch, channels, -1)
        return torch.stack([low, mix - low], dim=1)


@pytest.fixture
def tiny_bsrnn() -> BandSplitRNN:
    torch.manual_seed(0)
    return BandSplitRNN(
        segment_samples=8000, bands=((1000.0, 250.0), (8000.0, 1000.0)), features=16, hidden=16, layers=1,
        mask_hidden=16,
    ).eval()  # fmt: skip


@pytest.fixture
def tiny_hdemucs() -> HDemucsSeparator:
    torch.manual_seed(0)
    return HDemucsSeparator(segment_samples=8000, channels=4).eval()


@pytest.fixture
def gain_separator() -> type[GainSeparator]:
    """The :class:`GainSeparator` class (a closed-form test double)."""
    return GainSeparator


@pytest.fixture
def fir_separator() -> type[FirSeparator]:
    """The :class:`FirSeparator` class (a closed-form test double)."""
    return FirSeparator
