"""Which domain and network should the multi-source diffusion model (MSDM) train in on a CPU? Step times.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_msdm_domain.py [--batch 8] [--repeats 3] [--only NAME ...]

For each candidate (a domain where the mixture is the sum of the stems, and a diffusers UNet over the three stacked
stems of a 2.048 s, 16 kHz synth clip) it times one forward + backward pass of the denoiser at ``--batch`` on the
threads ``OMP_NUM_THREADS`` allows, and prints the best of ``--repeats`` after a warm-up, the parameter count and
the UNet's input shape. Candidates:

- ``stft256-p2``: tight STFT, n_fft 256 (6 × 128 × 256 images), 2×2 patches → 24 × 64 × 128, UNet2DCondition;
- ``stft256-p4``: the same with 4×4 patches → 96 × 32 × 64;
- ``stft256-p4-narrow``: the same with levels of 32, 64, 128 channels instead of 64, 128, 128;
- ``stft512-p4``: tight STFT, n_fft 512 (6 × 256 × 128), 4×4 patches → 96 × 64 × 32 (and ``-narrow``);
- ``wave-p16-2d``: the waveform, 16 samples per patch → 48 × 1 × 2048, UNet2DCondition (height 1; and ``-narrow``);
- ``wave-p16-1d``: the same through diffusers' ``UNet1DModel`` (dance-diffusion blocks; no text conditioning; and
  ``-narrow``).

Every 2D candidate uses cross-attention to 16 text tokens at its two lowest-resolution levels.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import UNet1DModel
from torch.nn import functional as F

from studio.models.unet import build_unet
from studio.separation.stft import tight_stft

SAMPLES, STEMS, TOKENS, TEXT_DIM = 32768, 3, 16, 384


def stft_candidate(n_fft: int, patch: int, channels: tuple[int, ...]):
    unet = build_unet(in_channels=2 * STEMS * patch * patch, sample_size=64, channels=channels,
                      attention_levels=(len(channels) - 2, len(channels) - 1))  # fmt: skip

    def run(x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        spec = tight_stft(x, n_fft).flatten(1, 2)  # (B, 6, F, frames)
        out = unet(F.pixel_unshuffle(spec, patch), torch.zeros(len(x)), encoder_hidden_states=text).sample
        return F.pixel_shuffle(out, patch)

    return unet, run, (2 * STEMS * patch * patch, n_fft // 2 // patch, SAMPLES // (n_fft // 2) // patch)


def wave_2d_candidate(patch: int, channels: tuple[int, ...]):
    unet = build_unet(in_channels=STEMS * patch, sample_size=64, channels=channels,
                      attention_levels=(len(channels) - 2, len(channels) - 1))  # fmt: skip

    def run(x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        folded = x.unflatten(-1, (-1, patch)).transpose(-1, -2).flatten(1, 2)[:, :, None]  # (B, 48, 1, 2048)
        return unet(folded, torch.zeros(len(x)), encoder_hidden_states=text).sample

    return unet, run, (STEMS * patch, 1, SAMPLES // patch)


def wave_1d_candidate(patch: int, channels: tuple[int, ...]):
    unet = UNet1DModel(
        sample_size=SAMPLES // patch, in_channels=STEMS * patch, out_channels=STEMS * patch, extra_in_channels=16,
        time_embedding_type="fourier", time_embedding_dim=16, use_timestep_embedding=False,
        block_out_channels=channels, down_block_types=("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D"),
        up_block_types=("AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"), mid_block_type="UNetMidBlock1D",
    )  # fmt: skip

    def run(x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        folded = x.unflatten(-1, (-1, patch)).transpose(-1, -2).flatten(1, 2)  # (B, 48, 2048)
        return unet(folded, torch.zeros(len(x))).sample

    return unet, run, (STEMS * patch, SAMPLES // patch)


CANDIDATES = {
    "stft256-p2": lambda: stft_candidate(256, 2, (64, 128, 128, 128)),
    "stft256-p4": lambda: stft_candidate(256, 4, (64, 128, 128)),
    "stft256-p4-narrow": lambda: stft_candidate(256, 4, (32, 64, 128)),
    "stft512-p4": lambda: stft_candidate(512, 4, (64, 128, 128)),
    "stft512-p4-narrow": lambda: stft_candidate(512, 4, (32, 64, 128)),
    "wave-p16-2d": lambda: wave_2d_candidate(16, (64, 128, 128, 128)),
    "wave-p16-2d-narrow": lambda: wave_2d_candidate(16, (32, 64, 128)),
    "wave-p16-1d": lambda: wave_1d_candidate(16, (64, 128, 128)),
    "wave-p16-1d-narrow": lambda: wave_1d_candidate(16, (32, 64, 128)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", default=list(CANDIDATES))
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, batch {args.batch}")
    print(f"{'candidate':<12} {'params':>10} {'UNet input':>16} {'fwd+bwd s':>10}")
    for name in args.only:
        torch.manual_seed(0)
        unet, run, shape = CANDIDATES[name]()
        x, text = torch.randn(args.batch, STEMS, SAMPLES) * 0.1, torch.randn(args.batch, TOKENS, TEXT_DIM)
        best = float("inf")
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            run(x, text).square().mean().backward()
            unet.zero_grad(set_to_none=True)
            if i > 0:  # the first pass is a warm-up
                best = min(best, time.perf_counter() - start)
        params = sum(p.numel() for p in unet.parameters())
        print(f"{name:<12} {params:>10,} {'x'.join(map(str, shape)):>16} {best:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
