"""Exponential moving average of model weights (the weights a pretraining run exports)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``θ_ema ← d·θ_ema + (1 − d)·θ`` with warm-up ``d = min(decay, (1 + step) / (10 + step))``.

    The warm-up keeps early averages from being dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if self.shadow[k].device != v.device:  # the model moved (to an accelerator) after the EMA was made
                self.shadow[k] = self.shadow[k].to(v.device)
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach().float(), 1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to_new(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` holding the EMA weights (``model`` itself is untouched)."""
        clone = copy.deepcopy(model)
        clone.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})
        return clone

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"ema.{k}": v for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        loaded = {k.removeprefix("ema."): v for k, v in state.items() if k.startswith("ema.")}
        missing = sorted(set(self.shadow) - set(loaded))
        if missing:
            raise ValueError(
                f"EMA state misses {len(missing)} tensors (e.g. {missing[0]}); the checkpoint is from another model"
            )
        self.shadow = {k: v.float() for k, v in loaded.items()}
