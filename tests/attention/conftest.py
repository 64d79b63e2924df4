"""The attention kernels for this folder's tests: compiled on a CUDA machine, else built for the Triton interpreter.

``load_kernels`` sets TRITON_INTERPRET only while it (re-)imports studio's kernel modules and then restores it, so
the variable leaks into nothing else (triton's own library keeps the mode it was imported in).
"""

import importlib.util

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # compiled kernels on CUDA, else the interpreter


@pytest.fixture(scope="session")
def kernels():
    """The host-side kernel module (``studio.kernels._attention_launch``) built for ``DEVICE``."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    from studio.kernels import load_kernels

    yield load_kernels(interpret=DEVICE == "cpu")
    load_kernels(interpret=False)
