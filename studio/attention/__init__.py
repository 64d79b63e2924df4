"""Attention that reaches the UNet: named backends and the processor that dispatches to them.

    import studio.attention
    studio.attention.set_backend(pipe, "triton")   # every attention layer of pipe.unet
    studio.attention.get_backend(pipe)             # "triton"

``set_backend`` installs :class:`StudioAttnProcessor` in place of diffusers' stock processors
(``AttnProcessor2_0``, ``AttnProcessor``) or switches the backend of studio processors already installed; any
other processor (IP-Adapter, added-KV, a custom one) is left as it is and named in one log line. Importing this
package does not import triton or diffusers' attention modules.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from torch import nn

from studio.attention.backends import (
    BACKENDS,
    FALLBACK,
    AttentionBackend,
    Constraints,
    attention,
    available_backends,
    get_attention_backend,
    normalize_mask,
)
from studio.attention.processor import StudioAttnProcessor

logger = logging.getLogger(__name__)

#: diffusers processors whose recipe :class:`StudioAttnProcessor` reproduces, so it may replace them.
REPLACEABLE_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor")


def _model(pipe_or_model: Any) -> nn.Module:
    """A pipeline's UNet, or the model itself."""
    if isinstance(pipe_or_model, nn.Module):
        return pipe_or_model
    unet = getattr(pipe_or_model, "unet", None)
    if isinstance(unet, nn.Module):
        return unet
    raise ValueError(
        f"expected a diffusers pipeline with a `unet` or a torch.nn.Module; got {type(pipe_or_model).__name__} "
        "(for another component pass the model itself, e.g. set_backend(pipe.vae, 'sdpa'))"
    )


def _attention_layers(model: nn.Module) -> list[nn.Module]:
    from diffusers.models.attention_processor import Attention

    return [m for m in model.modules() if isinstance(m, Attention)]


def set_backend(pipe_or_model: Any, name: str) -> int:
    """Send every attention layer of a pipeline's UNet (or of a model) through the backend ``name``.

    Args:
        pipe_or_model: a diffusers pipeline with a ``unet``, or any ``nn.Module`` holding diffusers ``Attention``
            layers (a UNet, a VAE, one block).
        name: a key of :data:`BACKENDS`.

    Returns:
        The number of attention layers that now use ``name``.

    Raises:
        ValueError: for an unknown name (the message lists the allowed ones), or a model without attention layers.
    """
    get_attention_backend(name)
    model = _model(pipe_or_model)
    layers = _attention_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no diffusers Attention layers to send through {name!r}")
    switched, kept = 0, Counter()
    for layer in layers:
        processor = layer.processor
        if isinstance(processor, StudioAttnProcessor):
            processor.backend = name
            processor._attention_backend = None  # the studio name wins after set_backend
        elif type(processor).__name__ in REPLACEABLE_PROCESSORS:
            layer.set_processor(StudioAttnProcessor(name))
        else:
            kept[type(processor).__name__] += 1
            continue
        switched += 1
    if kept:
        logger.warning(
            "set_backend(%r): %d attention layers kept their own processors (%s)",
            name,
            sum(kept.values()),
            ", ".join(f"{n} x{c}" for n, c in sorted(kept.items())),
        )
    return switched


def get_backend(pipe_or_model: Any) -> str | None:
    """The backend name the studio processors of a pipeline's UNet (or a model) use.

    Returns:
        The studio name (``"triton"``), ``"diffusers:<name>"`` while diffusers' ``set_attention_backend`` overrides
        it, or None when no studio processor is installed.

    Raises:
        ValueError: if the layers use different backends.
    """
    names = set()
    for layer in _attention_layers(_model(pipe_or_model)):
        processor = layer.processor
        if isinstance(processor, StudioAttnProcessor):
            override = getattr(processor._attention_backend, "value", processor._attention_backend)
            names.add(processor.backend if override is None else f"diffusers:{override}")
    if len(names) > 1:
        raise ValueError(f"attention layers use different backends {sorted(names)}; call set_backend(model, name)")
    return names.pop() if names else None


__all__ = [
    "BACKENDS",
    "FALLBACK",
    "REPLACEABLE_PROCESSORS",
    "AttentionBackend",
    "Constraints",
    "StudioAttnProcessor",
    "attention",
    "available_backends",
    "get_attention_backend",
    "get_backend",
    "normalize_mask",
    "set_backend",
]
