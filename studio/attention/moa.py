"""Mixture-of-attention (MoA) personalisation: a frozen prior and a personalised branch in every attention layer.

Wang et al., "MoA: Mixture-of-Attention for Subject-Context Disentanglement in Personalized Image Generation"
(SIGGRAPH Asia 2024, arXiv 2404.11565). Every self- and cross-attention layer of a UNet keeps its own weights as
the *prior* branch and gets a *personalised* copy; a per-pixel router mixes them::

    out = R_prior ⊙ Attn_prior(x) + R_pers ⊙ Attn_pers(x),    (R_prior, R_pers) = softmax(router(x))

Only the personalised cross-attention sees the subject: the subject token's text state is replaced by an MLP over
``[image embedding of the subject; the class word's state; timestep; layer]``. Trained with a router loss that sends
background pixels to the prior, the image keeps the base model's layout and context, with the subject in it.

Identity at initialisation is exact: the personalised projections are copies of the prior's and the subject MLP
is a residual whose last layer is zero, so both branches compute the same thing and any router mix of them is the
base layer. Strength ``s`` multiplies the personalised branch's router odds (adds ``log s`` to its logit): ``s = 0``
skips the branch (the base model, exactly), ``s = 1`` is the model as trained, ``s > 1`` pushes more pixels to the
subject. That is the adapters' merge contract (``0`` the base, ``1`` as trained) on the router.

Usage::

    moa = MoA.load("runs/moa-shapes")            # or MoA.create(pipe.unet, MoASettings())
    with moa.applied(pipe.unet):                 # installs the processors, restores the old ones after
        with moa.conditioned(token_index, moa.encode_subject(reference)):
            images = pipe(prompt=["a shape on a navy background"]).images

``studio.generate(..., moa=..., subject=...)`` does this for prompts written with an identifier (``"a sks shape on
navy"``: ``sks`` marks the word after it as the subject; the prior branch reads the prompt without ``sks``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from studio.attention.processor import StudioAttnProcessor

#: ``__metadata__["format"]`` of a saved MoA file.
FORMAT = "mixstudio-moa"
FILE = "moa.safetensors"
#: The word that marks the next word of a prompt as the subject.
IDENTIFIER = "sks"
MAX_STRENGTH = 10.0
MODES = ("encoder", "subject")


@dataclass(kw_only=True)
class MoASettings:
    """The shape of a MoA model (saved with its weights).

    Attributes:
        mode: ``encoder`` (a subject comes as a reference image through the image encoder) or ``subject`` (one
            subject, its embedding learnt as a free vector).
        image_dim: width of the subject's image embedding.
        router_hidden: hidden width of each layer's router MLP.
        mlp_hidden: hidden width of the subject MLP.
        time_dim, layer_dim: widths of the timestep and layer features the subject MLP reads.
        base: the base model the branches were copied from (the app lists the run under it; ``load`` checks the
            layers' names and widths, not the weights).
        layers: the attention layers, by module name (filled by :meth:`MoA.create`).
        channels: each layer's hidden width.
        cross: whether each layer is a cross-attention layer.
    """

    mode: str = "encoder"
    image_dim: int = 256
    router_hidden: int = 32
    mlp_hidden: int = 384
    time_dim: int = 32
    layer_dim: int = 32
    base: str = ""
    layers: list[str] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)
    cross: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("image_dim", "router_hidden", "mlp_hidden", "time_dim", "layer_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096:
                raise ValueError(f"{name} must be an integer in 1..4096, got {value!r}")
        if self.time_dim % 2:
            raise ValueError(f"time_dim must be even (sin and cos pairs), got {self.time_dim}")


class SubjectEncoder(nn.Module):
    """Reference image ``(B, 3, H, W)`` in [-1, 1] → embedding ``(B, dim)``: four convolutions and a linear head."""

    def __init__(self, dim: int, size: int = 32):
        super().__init__()
        widths = (32, 64, 128, 128)
        layers: list[nn.Module] = []
        previous = 3
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(previous, width, 3, stride=1 if i == 0 else 2, padding=1), nn.SiLU()]
            previous = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(previous * 16, dim), nn.LayerNorm(dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class SubjectEmbedding(nn.Module):
    """The personalised branch's subject token: ``class_state + MLP([image; class_state; t; layer])``.

    The last layer starts at zero, so at initialisation the subject token is the class word's own state.
    """

    def __init__(self, settings: MoASettings, text_dim: int, num_layers: int):
        super().__init__()
        self.time_dim = settings.time_dim
        self.layer = nn.Embedding(num_layers, settings.layer_dim)
        width = settings.image_dim + text_dim + settings.time_dim + settings.layer_dim
        self.mlp = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, settings.mlp_hidden),
            nn.SiLU(),
            nn.Linear(settings.mlp_hidden, text_dim),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, image: torch.Tensor, class_state: torch.Tensor, t: torch.Tensor, layer: int) -> torch.Tensor:
        """``image (N, image_dim)``, ``class_state (N, text_dim)``, ``t (N,)`` → ``(N, text_dim)``."""
        layer_feature = self.layer.weight[layer].expand(len(image), -1)
        x = torch.cat([image, class_state, timestep_features(t, self.time_dim).to(image), layer_feature], dim=-1)
        return class_state + self.mlp(x.to(class_state.dtype) if x.dtype != class_state.dtype else x)


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features ``(N, dim)`` of diffusion timesteps ``t (N,)`` on the 0..1000 scale."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Router(nn.Module):
    """Per-pixel two-way router: hidden state ``(B, L, C)`` → logits ``(B, L, 2)`` (prior, personalised).

    The last layer starts at zero: an even split that the router loss and the diffusion loss then move.
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, 2))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden)


class PersonalisedBranch(nn.Module):
    """Trainable copies of one attention layer's projections (``to_q, to_k, to_v, to_out``) and its router."""

    def __init__(self, attn: nn.Module, router_hidden: int, cross: bool):
        super().__init__()
        self.to_q = copy.deepcopy(attn.to_q)
        self.to_k = copy.deepcopy(attn.to_k)
        self.to_v = copy.deepcopy(attn.to_v)
        self.to_out = copy.deepcopy(attn.to_out)
        self.router = Router(attn.to_q.in_features, router_hidden)
        self.cross = cross
        for p in self.parameters():
            p.requires_grad_(True)


@dataclass
class MoAState:
    """What the processors read and write during one UNet call (shared by all layers of one :class:`MoA`).

    Attributes:
        token_index: ``(B,)`` the subject token of each conditional row, ``-1`` for none (None: no row has one).
        subject: ``(B, image_dim)`` subject embeddings of those rows.
        timestep: ``(n,)`` the UNet call's timesteps (set by a forward pre-hook).
        strength: multiplies the personalised branch's router odds; 0 skips it.
        record_attention: names of cross-attention layers whose subject-token attention to keep (training).
        router: layer name → ``(n, L)`` personalised router weight of the last call.
        token_attention: layer name → ``(n, L)`` the subject token's attention probability (head mean).
    """

    token_index: torch.Tensor | None = None
    subject: torch.Tensor | None = None
    timestep: torch.Tensor | None = None
    strength: float = 1.0
    record_attention: frozenset[str] = frozenset()
    router: dict[str, torch.Tensor] = field(default_factory=dict)
    token_attention: dict[str, torch.Tensor] = field(default_factory=dict)

    def rows(self, n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Subject token index and embedding for a call with ``n`` rows: ``B`` conditional rows, or ``2B`` rows
        ``[unconditional; conditional]`` under classifier-free guidance (no subject in the unconditional half)."""
        if self.token_index is None:
            return None, None
        b = len(self.token_index)
        if n == b:
            return self.token_index, self.subject
        if n == 2 * b:
            index = torch.cat([torch.full_like(self.token_index, -1), self.token_index])
            return index, torch.cat([torch.zeros_like(self.subject), self.subject])
        raise ValueError(f"MoA conditioning holds {b} rows but the UNet was called with {n}")


class MoAProcessor(StudioAttnProcessor):
    """One layer's two branches and router; through the studio attention dispatch like :class:`StudioAttnProcessor`."""

    def __init__(self, moa: MoA, name: str, index: int, backend: str = "sdpa"):
        super().__init__(backend)
        self.moa, self.name, self.index = moa, name, index

    def __repr__(self) -> str:
        return f"MoAProcessor({self.name!r}, backend={self.backend!r})"

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        state, branch = self.moa.state, self.moa.branches[self.index]
        residual = hidden_states
        hidden, shape, context, mask = self.prepare(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        prior = self.branch(attn, attn, hidden, context, mask)
        if state.strength == 0:
            return self.finish(attn, prior, shape, residual)
        if branch.cross:
            context = self.moa.subject_context(context, self.index, state)
        pers = self.branch(attn, branch, hidden, context, mask)
        logits = branch.router(hidden)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if state.strength != 1:
            logits = logits + torch.tensor([0.0, math.log(state.strength)], device=logits.device)
        weight = logits.softmax(-1).to(prior.dtype)
        state.router[self.name] = weight[..., 1]
        if self.name in state.record_attention:
            state.token_attention[self.name] = self.subject_attention(attn, branch, hidden, context, mask, state)
        return self.finish(attn, weight[..., :1] * prior + weight[..., 1:] * pers, shape, residual)

    def subject_attention(
        self, attn: Any, branch: PersonalisedBranch, hidden: torch.Tensor, context: torch.Tensor,
        mask: torch.Tensor | None, state: MoAState,
    ) -> torch.Tensor:  # fmt: skip
        """The personalised branch's attention probability on each row's subject token, head mean ``(n, L)``."""
        n = hidden.shape[0]
        query, key = (x.transpose(1, 2) for x in self.query_key(attn, branch, hidden, context))
        logits = query @ key.transpose(-1, -2) * attn.scale
        if mask is not None:
            logits = logits + mask
        probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1).mean(1)  # (n, L, Lk)
        index, _ = state.rows(n)
        if index is None:
            return probs.new_zeros(probs.shape[:2])
        picked = probs.gather(2, index.clamp(min=0).view(n, 1, 1).expand(-1, probs.shape[1], 1)).squeeze(2)
        return picked * (index >= 0).view(n, 1)


class MoA(nn.Module):
    """The personalised branches, routers, subject MLP and image encoder of one UNet.

    Build one with :meth:`create` (branches copied from ``unet``) or :meth:`load`; it holds no reference to the
    UNet until :meth:`applied`/:meth:`install` puts its processors there.
    """

    def __init__(self, settings: MoASettings, text_dim: int):
        super().__init__()
        self.settings = settings
        self.text_dim = text_dim
        self.branches = nn.ModuleList()
        self.cross_layers = [i for i, c in enumerate(settings.cross) if c]
        self.subject_mlp = SubjectEmbedding(settings, text_dim, max(1, len(self.cross_layers)))
        self.encoder = SubjectEncoder(settings.image_dim)
        self.subject_code = nn.Parameter(torch.zeros(settings.image_dim)) if settings.mode == "subject" else None
        self.state = MoAState()
        self._installed: tuple[nn.Module, dict[str, Any], Any] | None = None

    # ---- construction and files --------------------------------------------------------------------------------
    @classmethod
    def create(cls, unet: nn.Module, settings: MoASettings | None = None) -> MoA:
        """A MoA whose personalised branches are copies of ``unet``'s attention layers (identity at init)."""
        settings = copy.deepcopy(settings or MoASettings())
        attns = attention_layers(unet)
        if not attns:
            raise ValueError("this UNet has no attention layers; MoA needs self- or cross-attention")
        settings.layers = list(attns)
        settings.cross = cross = [bool(a.is_cross_attention) for a in attns.values()]
        settings.channels = [a.to_q.in_features for a in attns.values()]
        text_dims = {a.to_k.in_features for a in attns.values() if a.is_cross_attention}
        if len(text_dims) != 1:
            raise ValueError(f"MoA needs one text width across cross-attention layers, found {sorted(text_dims)}")
        moa = cls(settings, text_dims.pop())
        for attn, is_cross in zip(attns.values(), cross, strict=True):
            moa.branches.append(PersonalisedBranch(attn, settings.router_hidden, is_cross))
        return moa.to(next(unet.parameters()).device)

    def save(self, path: str | Path) -> Path:
        """Write the weights and settings as one safetensors file, atomically (a folder → ``folder/moa.safetensors``).

        Raises:
            ValueError: for weights that are not finite (nothing is written).
        """
        from safetensors.torch import save

        from studio.guards import check_finite
        from studio.io import atomic_write_bytes

        path = Path(path)
        path = path / FILE if path.is_dir() or not path.suffix else path
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        check_finite(tensors, "the MoA weights", "training diverged; nothing was saved (lower the learning rate)")
        meta = {"format": FORMAT, "settings": json.dumps(asdict(self.settings)), "text_dim": str(self.text_dim)}
        atomic_write_bytes(path, save(tensors, metadata=meta))
        return path

    @classmethod
    def load(cls, path: str | Path, unet: nn.Module | None = None) -> MoA:
        """A saved MoA (a run folder or its ``moa.safetensors``), checked against ``unet`` when given.

        Raises:
            ValueError: for a missing or damaged file, one of another format, or one made for another UNet.
        """
        from safetensors.torch import load_file

        from studio.guards import check_finite

        file = resolve_file(path)
        settings, text_dim = _read_header(file)
        tensors = load_file(str(file))
        channels, cross = settings.channels, settings.cross
        if (
            not len(channels) == len(cross) == len(settings.layers)
            or f"branches.{len(channels) - 1}.to_q.weight" not in tensors
        ):
            raise ValueError(f"--moa {str(path)!r} does not list its layers consistently; the file is damaged")
        check_finite(tensors, f"--moa {str(path)!r}", "it was saved from a diverged run; train it again")
        if unet is not None:
            check_matches(settings, channels, attention_layers(unet), str(path))
        moa = cls(settings, text_dim)
        for i, attn_in in enumerate(channels):
            moa.branches.append(_empty_branch(attn_in, tensors, i, settings.router_hidden, cross[i]))
        missing, unexpected = moa.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"--moa {str(path)!r} does not match its own settings (missing {missing[:2]}, unexpected "
                f"{unexpected[:2]}); the file is damaged"
            )
        return moa

    # ---- installation ------------------------------------------------------------------------------------------
    def install(self, unet: nn.Module, backend: str | None = None) -> None:
        """Put the MoA processors on ``unet`` (its own processors are kept for :meth:`remove`)."""
        if self._installed is not None:
            raise RuntimeError("this MoA is already installed on a UNet; remove it first")
        attns = attention_layers(unet)
        check_matches(self.settings, self.settings.channels, attns, "this MoA")
        old = unet.attn_processors
        if backend is None:
            backend = next((p.backend for p in old.values() if isinstance(p, StudioAttnProcessor)), "sdpa")
        unet.set_attn_processor(
            {f"{name}.processor": MoAProcessor(self, name, i, backend) for i, name in enumerate(self.settings.layers)}
        )
        hook = unet.register_forward_pre_hook(self._read_timestep, with_kwargs=True)
        self._installed = (unet, old, hook)

    def remove(self) -> None:
        """Give the UNet its own processors back."""
        if self._installed is None:
            return
        unet, old, hook = self._installed
        hook.remove()
        unet.set_attn_processor(old)
        self._installed = None

    @contextlib.contextmanager
    def applied(self, unet: nn.Module, backend: str | None = None) -> Iterator[MoA]:
        """Context: the MoA processors on ``unet``, its own processors back after (a no-op if already there)."""
        if self._installed is not None and self._installed[0] is unet:
            yield self
            return
        self.install(unet, backend)
        try:
            yield self
        finally:
            self.remove()

    def _read_timestep(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        t = torch.as_tensor(t, device=sample.device)
        self.state.timestep = t.expand(sample.shape[0]) if t.ndim == 0 else t
        self.state.router.clear()
        self.state.token_attention.clear()

    # ---- conditioning ------------------------------------------------------------------------------------------
    def encode_subject(self, references: torch.Tensor | None, count: int | None = None) -> torch.Tensor:
        """Subject embeddings ``(B, image_dim)``: the encoder's for reference images ``(B, 3, H, W)`` in [-1, 1], or
        (subject mode) the learnt code repeated ``count`` times."""
        if self.subject_code is not None:
            n = count if count is not None else (len(references) if references is not None else 1)
            return self.subject_code.expand(n, -1)
        if references is None:
            raise ValueError(
                "this MoA was trained on many subjects: give a reference image of the subject (--subject)"
            )
        return self.encoder(references.to(self.subject_mlp.layer.weight))

    @contextlib.contextmanager
    def conditioned(
        self, token_index: torch.Tensor | Sequence[int] | None, subject: torch.Tensor | None = None,
        strength: float = 1.0, record_attention: Sequence[str] = (),
    ) -> Iterator[MoAState]:  # fmt: skip
        """Context: UNet calls see these subject tokens (``-1``: none) and embeddings, at this strength."""
        check_strength(strength)
        index = None if token_index is None else torch.as_tensor(token_index, dtype=torch.long)
        if index is not None and subject is None and bool((index >= 0).any()):
            raise ValueError("subject tokens given without subject embeddings (MoA.encode_subject)")
        if index is not None:
            device = self.subject_mlp.layer.weight.device
            index = index.to(device)
            if subject is None:
                subject = torch.zeros(len(index), self.settings.image_dim, device=device)
            elif len(subject) != len(index):
                raise ValueError(f"{len(subject)} subject embeddings for {len(index)} rows")
        state, fields = self.state, ("token_index", "subject", "strength", "record_attention")
        previous = {name: getattr(state, name) for name in fields}
        state.token_index, state.subject, state.strength = index, subject, float(strength)
        state.record_attention = frozenset(record_attention)
        try:
            yield state
        finally:
            for name, value in previous.items():
                setattr(state, name, value)

    def subject_context(self, context: torch.Tensor, layer_index: int, state: MoAState) -> torch.Tensor:
        """``context (n, Lk, D)`` with each conditional row's subject token replaced by its subject embedding."""
        index, subject = state.rows(len(context))
        if index is None or not bool((index >= 0).any()):
            return context
        rows = torch.nonzero(index >= 0).squeeze(1)
        tokens = index[rows]
        class_state = context[rows, tokens]
        t = state.timestep if state.timestep is not None else torch.zeros(len(context), device=context.device)
        layer = self.cross_layers.index(layer_index)
        replaced = self.subject_mlp(subject[rows].to(context.dtype), class_state, t[rows], layer)
        out = context.clone()
        out[rows, tokens] = replaced.to(context.dtype)
        return out

    # ---- router maps -------------------------------------------------------------------------------------------
    def prior_weight(self, size: tuple[int, int]) -> torch.Tensor:
        """``R̄_prior``: the prior branch's weight averaged over the last call's layers, ``(n, *size)``."""
        return 1 - self.router_map(size)

    def router_map(self, size: tuple[int, int], layers: Sequence[str] | None = None) -> torch.Tensor:
        """The personalised branch's router weight of the last UNet call, each layer's map resized (bilinear) to
        ``size`` and averaged over ``layers`` (default: every layer), ``(n, *size)``."""
        names = list(layers) if layers is not None else list(self.state.router)
        if not names:
            raise ValueError("no router maps: run the UNet with the MoA installed first")
        maps = [to_grid(self.state.router[name], size) for name in names]
        return torch.stack(maps).mean(0)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def to_grid(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-pixel values ``(n, L)`` of a square layer (``L = h·w``, ``h == w``) resized to ``size``, ``(n, *size)``."""
    side = math.isqrt(values.shape[1])
    if side * side != values.shape[1]:
        raise ValueError(f"router map of {values.shape[1]} pixels is not square")
    grid = values.float().view(-1, 1, side, side)
    if (side, side) != tuple(size):
        grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
    return grid[:, 0]


def attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """The UNet's attention modules by processor name without ``.processor``, in ``attn_processors`` order."""
    modules = dict(unet.named_modules())
    return {name.removesuffix(".processor"): modules[name.removesuffix(".processor")] for name in unet.attn_processors}


def check_matches(settings: MoASettings, channels: Sequence[int], attns: dict[str, nn.Module], what: str) -> None:
    """Refuse a MoA made for another UNet (other layer names or widths)."""
    if list(attns) != list(settings.layers):
        raise ValueError(
            f"{what} was made for another UNet ({len(settings.layers)} attention layers, this one has {len(attns)}); "
            f"use the base model it was trained on ({settings.base or 'unknown'})"
        )
    widths = [a.to_q.in_features for a in attns.values()]
    if widths != list(channels):
        raise ValueError(f"{what} was made for a UNet of other widths; use its base model ({settings.base})")


def check_strength(strength: float) -> None:
    if not (isinstance(strength, int | float) and math.isfinite(strength) and 0 <= strength <= MAX_STRENGTH):
        raise ValueError(f"MoA strength must be a number in 0..{MAX_STRENGTH:g} (1 = as trained), got {strength!r}")


def resolve_file(path: str | Path) -> Path:
    """``path`` itself if a file, else ``path/moa.safetensors``.

    Raises:
        ValueError: naming the path when there is no such file.
    """
    path = Path(path)
    file = path / FILE if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"--moa {str(path)!r} has no {FILE}; pass a MoA run folder (`mixstudio train moa-shapes`)")
    return file


def _empty_branch(channels: int, tensors: dict, i: int, router_hidden: int, cross: bool) -> PersonalisedBranch:
    """A branch of the right shapes (weights come from ``load_state_dict``)."""
    holder = nn.Module()
    kv_in = tensors[f"branches.{i}.to_k.weight"].shape[1]
    inner = tensors[f"branches.{i}.to_q.weight"].shape[0]
    out = tensors[f"branches.{i}.to_out.0.weight"].shape[0]
    holder.to_q = nn.Linear(channels, inner, bias=f"branches.{i}.to_q.bias" in tensors)
    holder.to_k = nn.Linear(kv_in, inner, bias=f"branches.{i}.to_k.bias" in tensors)
    holder.to_v = nn.Linear(kv_in, inner, bias=f"branches.{i}.to_v.bias" in tensors)
    holder.to_out = nn.ModuleList([nn.Linear(inner, out), nn.Dropout(0.0)])
    return PersonalisedBranch(holder, router_hidden, cross)


def read_moa_settings(path: str | Path) -> MoASettings:
    """The settings in a MoA file's header, without reading its weights.

    Raises:
        ValueError: for a file that is not a readable MoA file.
    """
    return _read_header(Path(path))[0]


def _read_header(path: Path) -> tuple[MoASettings, int]:
    """``(settings, text_dim)`` from a MoA file's header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise ValueError(f"--moa {str(path)!r} is not a readable safetensors file ({exc}); train it again") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"--moa {str(path)!r} is not a MoA file (format {meta.get('format')!r}); pass a MoA run")
    try:
        return MoASettings(**json.loads(meta["settings"])), int(meta["text_dim"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"--moa {str(path)!r} has unreadable settings ({exc}); the file is damaged") from exc


# ---- prompts with an identifier ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubjectPrompt:
    """A prompt split for MoA: the text both branches read and where the subject word starts in it.

    Attributes:
        text: the prompt without the identifier (``"a shape on navy"`` for ``"a sks shape on navy"``).
        start: character offset of the subject word in ``text`` (None: no subject in this prompt).
    """

    text: str
    start: int | None


def split_prompt(prompt: str, identifier: str = IDENTIFIER) -> SubjectPrompt:
    """Find ``identifier word`` in ``prompt``: drop the identifier, remember where ``word`` starts.

    Raises:
        ValueError: for an identifier with no word after it, or more than one identifier.
    """
    matches = list(re.finditer(rf"\b{re.escape(identifier)}\b", prompt))
    if not matches:
        return SubjectPrompt(prompt, None)
    if len(matches) > 1:
        raise ValueError(f"prompt {prompt!r} names the subject ({identifier!r}) twice; MoA places one subject")
    m = matches[0]
    rest = prompt[m.end() :].lstrip()
    if not re.match(r"\w", rest):
        raise ValueError(
            f"prompt {prompt!r}: {identifier!r} must come before the class word, e.g. 'a {identifier} shape'"
        )
    head = prompt[: m.start()]
    return SubjectPrompt(head + rest, len(head))


def subject_token_index(tokenizer: Any, prompts: Sequence[SubjectPrompt], max_length: int | None = None) -> list[int]:
    """The token index of each prompt's subject word in ``tokenizer``'s encoding of ``prompt.text`` (-1: none).

    Raises:
        ValueError: for a subject word the tokenizer cuts off (the prompt is longer than the text encoder reads).
    """
    enc = tokenizer(
        [p.text for p in prompts],
        padding="max_length" if max_length else True,
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_offsets_mapping=True,
    )
    out = []
    for p, offsets in zip(prompts, enc["offset_mapping"], strict=True):
        if p.start is None:
            out.append(-1)
            continue
        hit = next((k for k, (a, b) in enumerate(offsets) if b > a and a <= p.start < b), None)
        if hit is None:
            raise ValueError(f"prompt {p.text!r}: the subject word falls past what the text encoder reads; shorten it")
        out.append(hit)
    return out


def overlay(image: np.ndarray, router: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """``image (H, W, 3)`` uint8 with the personalised router weight ``(h, w)`` in [0, 1] laid over it in magenta,
    scaled so that the map's largest weight is fully tinted (the router's weights are small where it is trained
    to keep the prior: the map shows where it drew the subject, not how much)."""
    h, w = image.shape[:2]
    weight = torch.as_tensor(router, dtype=torch.float32)[None, None]
    weight = F.interpolate(weight, size=(h, w), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
    weight = (weight / weight.max().clamp(min=1e-6)).numpy()
    tint = np.array([255.0, 0.0, 255.0], np.float32)
    out = image.astype(np.float32) * (1 - alpha * weight[..., None]) + tint * alpha * weight[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class SubjectSampling:
    """The MoA side of one ``studio.generate`` call: prompts split at the identifier, the subject embedded once,
    and the personalised router weight of each sample averaged over the sampler's steps (``maps``).

    Args:
        moa: the MoA, installed on ``pipe.unet``.
        pipe: the image pipeline.
        texts: one prompt per sample, the subject marked with :data:`IDENTIFIER` (prompts without it sample as
            the base model's prompt through both branches).
        subject: the reference image ``(H, W, 3)`` uint8 (encoder mode); None for a subject-mode MoA.
        strength: the personalised branch's strength (0: the base model; 1: as trained).
    """

    def __init__(self, moa: MoA, pipe: Any, texts: Sequence[str], subject: np.ndarray | None, strength: float):
        check_strength(strength)
        parsed = [split_prompt(t) for t in texts]
        self.moa, self.unet, self.strength = moa, pipe.unet, strength
        self.texts = [p.text for p in parsed]
        self.index = subject_token_index(pipe.tokenizer, parsed)
        self.size = (pipe.default_size, pipe.default_size)
        reference = None
        if subject is not None:
            reference = torch.from_numpy(np.array(subject, copy=True)).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            self.embedding = moa.encode_subject(reference, count=1)[:1]
        self.maps: list[np.ndarray] = []

    @contextlib.contextmanager
    def batch(self, start: int, stop: int) -> Iterator[None]:
        """Context: the pipeline call for samples ``start:stop`` sees their subject tokens; their maps are kept."""
        n, steps = stop - start, []

        def record(module: nn.Module, args: Any, output: Any) -> None:
            if self.moa.state.router:
                steps.append(self.moa.router_map(self.size)[-n:].detach())

        handle = self.unet.register_forward_hook(record)
        try:
            with self.moa.conditioned(self.index[start:stop], self.embedding.expand(n, -1), self.strength):
                yield
        finally:
            handle.remove()
        mean = torch.stack(steps).mean(0) if steps else torch.zeros(n, *self.size)
        self.maps += list(mean.float().cpu().numpy())
