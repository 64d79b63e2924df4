"""UNet architectures of the embedded base models (standard diffusers ``UNet2DConditionModel``s)."""

from __future__ import annotations

import math

from diffusers import UNet2DConditionModel
from torch import nn

#: Width of the guidance embedding a guidance-conditioned student reads (``time_cond_proj_dim``).
GUIDANCE_EMBED_DIM = 64


def norm_groups(channels: tuple[int, ...], min_group_channels: int = 4) -> int:
    """GroupNorm groups for these level widths: the most (up to 32) that divide every width and leave at
    least ``min_group_channels`` channels per group at the narrowest level.

    One channel per group is instance normalisation: it erases each feature map's mean, which is how a
    flat image says its colour (an autoencoder with 16 groups at width 16 reconstructed held-out shapes in
    the average colour: judge colour accuracy 0.13, chance).
    """
    common = math.gcd(*channels)
    fits = [g for g in range(1, min(32, common) + 1) if common % g == 0 and min(channels) // g >= min_group_channels]
    return max(fits, default=1)


def build_unet(
    *,
    in_channels: int,
    sample_size: int | tuple[int, int],
    channels: tuple[int, ...],
    attention_levels: tuple[int, ...],
    layers_per_block: int = 1,
    cross_attention_dim: int = 384,
    heads: int = 4,
    pooled_text: bool = False,
    groups: int | None = None,
    time_embedding_type: str = "positional",
) -> UNet2DConditionModel:
    """A conditional UNet with cross-attention only at the given levels (0 = highest resolution).

    Keeping attention off the highest-resolution level is what makes CPU training affordable:
    self-attention cost grows with the square of the token count.

    Args:
        in_channels: image channels (3 for RGB pixels, 1 for a mel spectrogram, 4 for SD latents).
        sample_size: training resolution (side, or (height, width)).
        channels: output channels per level; ``len(channels)`` levels, each but the last halving resolution.
        attention_levels: indices of levels that get cross-attention transformer blocks.
        layers_per_block: ResNet blocks per level on the way down.
        cross_attention_dim: the text encoder's hidden size.
        heads: attention heads.
        pooled_text: also add an attention-pooled summary of the prompt to the timestep embedding
            (diffusers' ``addition_embed_type="text"``), so every ResNet block, including those at the
            highest resolution where there is no cross-attention, sees what the prompt asks for.
        groups: GroupNorm groups (default: :func:`norm_groups`).
        time_embedding_type: ``positional`` (sinusoidal, for DDPM timesteps) or ``fourier`` (random Fourier
            features, for continuous noise labels such as EDM's ``ln(σ) / 4``).
    """
    levels = range(len(channels))
    bad = [a for a in attention_levels if a not in levels]
    if bad:
        raise ValueError(f"attention_levels {bad} out of range for {len(channels)} levels")
    down = tuple("CrossAttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in levels)
    up = tuple("CrossAttnUpBlock2D" if i in attention_levels else "UpBlock2D" for i in reversed(levels))
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        layers_per_block=layers_per_block,
        block_out_channels=tuple(channels),
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=heads,
        norm_num_groups=groups or norm_groups(tuple(channels)),
        addition_embed_type="text" if pooled_text else None,
        addition_embed_type_num_heads=8,
        time_embedding_type=time_embedding_type,
    )


def with_guidance_input(unet: UNet2DConditionModel, dim: int = GUIDANCE_EMBED_DIM) -> UNet2DConditionModel:
    """A copy of ``unet`` that also reads a guidance-scale embedding, and equals ``unet`` until trained.

    diffusers' ``time_cond_proj_dim`` adds ``cond_proj(timestep_cond)`` to the sinusoidal timestep features;
    the new projection starts at zero, so every other weight carries over and the output is unchanged for
    any scale. Pipelines see ``time_cond_proj_dim`` in the config and feed the scale instead of running CFG.
    """
    if unet.config.time_cond_proj_dim is not None:
        raise ValueError("this UNet already reads a guidance embedding (time_cond_proj_dim is set)")
    # private keys out: diffusers' `_use_default_values` would reset time_cond_proj_dim to its default
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    student = UNet2DConditionModel.from_config({**config, "time_cond_proj_dim": dim})
    missing, unexpected = student.load_state_dict(unet.state_dict(), strict=False)
    if missing != ["time_embedding.cond_proj.weight"] or unexpected:
        raise ValueError(f"cannot carry the weights over (missing {missing}, unexpected {unexpected})")
    nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student.to(device=unet.device, dtype=unet.dtype)
