"""Tolerances of the numerical tests, in one table, and a compare helper that says where and by how much.

Each entry names what is compared; a test asks for its entry instead of writing numbers inline, so a loosened
tolerance is one visible change here. Every value is tight enough to fail: the tests that use it also check that
a deliberate change (another seed, a wrong scale) lands far outside it.
"""

from __future__ import annotations

import numpy as np
import torch

TOLERANCES: dict[str, dict[str, float]] = {
    # samples of a shipped model against fingerprints recorded before a refactor (pooled values in [0, 1])
    "shipped fingerprint": {"atol": 2e-3, "rtol": 0.0},
    # float32 maths against a float64 or library reference
    "fp32": {"atol": 1e-5, "rtol": 1e-5},
    # a scored folder against the same samples scored in memory
    "scores": {"atol": 1e-9, "rtol": 0.0},
    # outputs (O(1)) of an adapter exported to a format and read back, against the original's: float rounding of
    # folded scales and of W' - W (measured <= 1e-6, docs/FORMATS.md)
    "adapter format round trip": {"atol": 2e-6, "rtol": 0.0},
    # outputs (O(1-10)) of our adapter against PEFT's, diffusers' and LyCORIS's reading of the same file: those
    # libraries merge or order the products differently (measured <= 4e-6, docs/FORMATS.md)
    "adapter format foreign library": {"atol": 1e-5, "rtol": 1e-6},
}


def assert_close(actual, expected, *, atol: float, rtol: float = 0.0, what: str = "values") -> None:
    """Like ``torch.testing.assert_close``, for numpy or torch, naming the worst element and the tolerance."""
    a = torch.as_tensor(np.asarray(actual, dtype=np.float64) if not torch.is_tensor(actual) else actual).double()
    e = torch.as_tensor(np.asarray(expected, dtype=np.float64) if not torch.is_tensor(expected) else expected).double()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    error = (a - e).abs()
    allowed = atol + rtol * e.abs()
    bad = error > allowed
    if bad.any():
        worst = int((error - allowed).flatten().argmax())
        index = np.unravel_index(worst, tuple(a.shape)) if a.ndim else ()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} elements differ beyond atol={atol:g} rtol={rtol:g}; "
            f"worst at {tuple(int(i) for i in index)}: {a.flatten()[worst].item():.6g} vs "
            f"{e.flatten()[worst].item():.6g} (|diff| {error.flatten()[worst].item():.3g}); "
            f"max |diff| {error.max().item():.3g}"
        )
