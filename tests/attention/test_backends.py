"""The backend dict and ``attention()``: names, constraints, masks, and the logged fallback to sdpa."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from studio.attention import BACKENDS, FALLBACK, attention, available_backends, get_attention_backend
from studio.kernels import TOLERANCES

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels fixture compiles on CUDA, else interprets


def qkv(seq_q: int = 21, seq_k: int = 77, heads: int = 2, head_dim: int = 40, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, n, heads, head_dim, generator=g).to(DEVICE, dtype) for n in (seq_q, seq_k, seq_k))


def assert_close(actual, expected, dtype=torch.float32):
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol.atol, rtol=tol.rtol)


def key_padding(seq_k: int = 77, keep: tuple[int, int] = (77, 50)) -> torch.Tensor:
    return torch.arange(seq_k, device=DEVICE)[None, :] < torch.tensor(keep, device=DEVICE)[:, None]


def test_the_dict_names_every_backend():
    assert list(BACKENDS) == ["sdpa", "triton", "xformers", "reference"]
    assert FALLBACK == "sdpa"
    for name, backend in BACKENDS.items():
        assert backend.name == name and backend.constraints.summary
    assert available_backends("cpu")["sdpa"] is None


def test_unknown_names_list_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown attention backend 'flash'; use one of \['reference', 'sdpa'"):
        attention(*qkv(), backend="flash")
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_attention_backend("SDPA")


@pytest.mark.parametrize("mask_kind", [None, "key-padding", "per-query"])
def test_reference_equals_sdpa(mask_kind):
    q, k, v = qkv()
    mask = None
    if mask_kind == "key-padding":
        mask = key_padding()  # (B, Lk) boolean
    elif mask_kind == "per-query":
        mask = torch.randn(2, 21, 77, generator=torch.Generator().manual_seed(1)).to(DEVICE)  # (B, Lq, Lk) additive
    assert_close(attention(q, k, v, "reference", mask), attention(q, k, v, "sdpa", mask))


def test_triton_backend_equals_sdpa(kernels):
    q, k, v = qkv()
    assert_close(attention(q, k, v, "triton", key_padding()), attention(q, k, v, "sdpa", key_padding()))
    bias = torch.zeros(2, 1, 1, 77, device=DEVICE)
    bias[1, ..., 40:] = -10000.0  # diffusers' encoder_attention_mask bias
    assert_close(attention(q, k, v, "triton", bias, scale=0.1), attention(q, k, v, "sdpa", bias, scale=0.1))


def test_a_backend_that_cannot_run_falls_back_to_sdpa_with_one_line(kernels, monkeypatch, caplog):
    """A per-query mask is beyond the triton kernels: sdpa runs (spied), and the reason is logged once."""
    calls = []
    sdpa = BACKENDS["sdpa"]
    monkeypatch.setattr(sdpa, "run", lambda *a, run=sdpa.run: calls.append(1) or run(*a), raising=False)
    q, k, v = qkv()
    mask = torch.zeros(2, 21, 77, device=DEVICE)
    with caplog.at_level(logging.WARNING, logger="studio.attention.backends"):
        out = [attention(q, k, v, "triton", mask) for _ in range(2)]
    assert len(calls) == 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "'triton' cannot run" in lines[0] and "varies over queries" in lines[0] and "'sdpa'" in lines[0]
    assert torch.equal(out[0], out[1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_xformers_says_why_it_cannot_run_here(caplog):
    q, k, v = qkv()
    reason = BACKENDS["xformers"].check(q, k, v, None)
    assert reason in ("xformers is not installed", "xformers needs CUDA tensors")
    with caplog.at_level(logging.WARNING, logger="studio.attention.backends"):
        out = attention(q, k, v, "xformers")
    assert torch.equal(out, attention(q, k, v, "sdpa"))
    assert any(reason in r.getMessage() for r in caplog.records)


def test_constraints_name_what_failed(kernels):
    q, k, v = qkv(head_dim=320)
    assert "head_dim 320 > 256" in BACKENDS["triton"].check(q, k, v, None)
    assert BACKENDS["sdpa"].check(q, k, v, None) is None
    q, k, v = qkv(dtype=torch.float64)
    assert "dtype torch.float64" in BACKENDS["triton"].check(q, k, v, None)


def test_bad_masks_and_shapes_raise():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"mask \(2, 5\) does not broadcast to \(batch, heads, seq_q, seq_k\)"):
        attention(q, k, v, mask=torch.ones(2, 5, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="must be 4-D"):
        attention(q.flatten(2), k, v)


def test_importing_studio_attention_imports_neither_triton_nor_diffusers_attention():
    code = "import sys, studio.attention; print(sorted(m for m in ('triton', 'diffusers') if m in sys.modules))"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
