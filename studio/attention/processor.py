"""``StudioAttnProcessor``: the diffusers attention processor that sends a UNet's attention through a backend.

diffusers 0.42's ``UNet2DConditionModel`` runs ``AttnProcessor2_0``, which calls
``F.scaled_dot_product_attention`` directly and has no ``_attention_backend``: ``unet.set_attention_backend``
skips it without a word. This processor does what ``AttnProcessor2_0`` does (spatial norm, 4-D inputs, masks,
group norm, cross-attention norm, q/k norms, output projection, residual, ``rescale_output_factor``) but keeps
the tensors ``(batch, seq, heads, head_dim)`` and dispatches them, following ``DreamLiteAttnProcessor2_0``.

Two names can pick the backend, and the later call wins:
- ``processor.backend``, a studio name in :data:`studio.attention.BACKENDS` (``sdpa`` by default), set by
  :func:`studio.attention.set_backend`, which also clears the diffusers name below;
- ``processor._attention_backend``, a diffusers ``AttentionBackendName`` set by diffusers' own
  ``unet.set_attention_backend("flash")``: while it is set, calls go through ``dispatch_attention_fn`` with
  it (diffusers' checks and fallbacks apply) and the studio name is ignored; ``unet.reset_attention_backend()``
  clears it.
"""

from __future__ import annotations

from typing import Any

import torch

from studio.attention.backends import attention, get_attention_backend


class StudioAttnProcessor:
    """Self- and cross-attention of a diffusers ``Attention`` layer through a named backend.

    Args:
        backend: a studio backend name (``sdpa``, ``triton``, ``xformers``, ``reference``).
    """

    # read and written by diffusers' ModelMixin.set_attention_backend / reset_attention_backend
    _attention_backend: Any = None
    _parallel_config: Any = None

    def __init__(self, backend: str = "sdpa") -> None:
        get_attention_backend(backend)
        self.backend = backend

    def __repr__(self) -> str:
        diffusers_name = getattr(self._attention_backend, "value", self._attention_backend)
        suffix = f", diffusers backend={diffusers_name!r}" if diffusers_name is not None else ""
        return f"{type(self).__name__}(backend={self.backend!r}{suffix})"

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        """``(B, L, H, D)`` attention through the diffusers backend if one is set, else the studio backend."""
        if self._attention_backend is not None:
            from diffusers.models.attention_dispatch import dispatch_attention_fn

            return dispatch_attention_fn(
                query,
                key,
                value,
                attn_mask=mask,
                scale=scale,
                backend=self._attention_backend,
                parallel_config=self._parallel_config,
            )
        return attention(query, key, value, backend=self.backend, mask=mask, scale=scale)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The ``AttnProcessor2_0`` recipe with the attention itself dispatched.

        Args:
            attn: the diffusers ``Attention`` module (weights, norms, flags).
            hidden_states: ``(B, Lq, C)`` or ``(B, C, H, W)``.
            encoder_hidden_states: ``(B, Lk, C_text)`` for cross-attention, None for self-attention.
            attention_mask: diffusers' additive mask ``(B, 1, Lk)`` (from ``encoder_attention_mask``) or
                ``(B, Lq, Lk)``.
            temb: the time embedding, read by a spatial norm.

        Returns:
            The layer's output, shaped like ``hidden_states``.
        """
        residual = hidden_states
        hidden_states, shape, context, mask = self.prepare(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb
        )
        out = self.branch(attn, attn, hidden_states, context, mask)
        return self.finish(attn, out, shape, residual)

    def prepare(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[int, ...], torch.Tensor, torch.Tensor | None]:
        """Norms and reshapes before the projections.

        Returns:
            ``(hidden (B, Lq, C), input shape, context (B, Lk, C_ctx), mask (B, heads, ·, Lk) or None)``; the
            context is the (normed) text for cross-attention and ``hidden`` itself for self-attention.
        """
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        shape = tuple(hidden_states.shape)
        if hidden_states.ndim == 4:
            batch, channels, height, width = shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch, seq_k = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[:2]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_k, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        return hidden_states, shape, encoder_hidden_states, attention_mask

    def branch(
        self, attn: Any, proj: Any, hidden_states: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """One attention ``(B, Lq, C)`` with the projections ``proj.to_q/to_k/to_v/to_out`` (``attn``'s own, or a copy)
        and ``attn``'s norms, heads and scale."""
        query, key = self.query_key(attn, proj, hidden_states, context)
        value = proj.to_v(context).view(*key.shape)
        out = self.attend(query, key, value, mask, attn.scale).flatten(2, 3).to(query.dtype)
        return proj.to_out[1](proj.to_out[0](out))  # linear, dropout

    @staticmethod
    def query_key(
        attn: Any, proj: Any, hidden_states: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys ``(B, L, heads, head_dim)`` from ``proj``'s projections, with ``attn``'s q/k norms."""
        batch = hidden_states.shape[0]
        query, key = proj.to_q(hidden_states), proj.to_k(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim)
        key = key.view(batch, -1, attn.heads, head_dim)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        return query, key

    def finish(self, attn: Any, out: torch.Tensor, shape: tuple[int, ...], residual: torch.Tensor) -> torch.Tensor:
        """Back to the input's layout, plus the residual and ``rescale_output_factor``."""
        if len(shape) == 4:
            out = out.transpose(-1, -2).reshape(shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
