"""Shared layers, configs, tolerances and helpers for the adapter tests (all tiny: d <= 72, CPU, milliseconds).

Helpers reach the tests through the ``kit`` fixture, so no test module imports this file.
"""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from studio.adapters import (
    BOFTConfig,
    DenseConfig,
    DiffuseKronAConfig,
    ETHERConfig,
    ETHERPlusConfig,
    GOFTConfig,
    LoKrConfig,
    LoRAConfig,
    OFTConfig,
    QGOFTConfig,
)

# The one tolerance table: absolute tolerances (rtol 0) for float32 unless the name says float64. Outputs and
# weights of the tiny layers below are O(1), so these sit a few ulps-times-depth above float32 rounding.
TOL = {
    "init": 1e-6,  # output at init vs base output
    "merge": 2e-5,  # merged vs unmerged outputs
    "restore": 2e-6,  # base weight after merge + unmerge vs the original
    "orthogonal": 2e-6,  # max |RᵀR - I| entry
    "linearity": 1e-5,  # additive: out(s) - base vs s · (out(1) - base)
    "kron": 1e-5,  # factored Kronecker product vs torch.kron
    "neumann": 5e-7,  # Neumann vs exact Cayley for small Q: series error O(‖Q‖^5) is below float32 rounding
    "peft": 1e-5,  # our outputs vs PEFT's on identical parameters
    "float64": 1e-10,  # algebraic identities checked in float64
}

LAYER_KINDS = ("linear", "conv1x1", "conv3x3")

# Sizes: d_in = 16 / 8 / 72 and d_out = 12 / 12 / 6 for the three kinds; every config below fits all three.
CONFIGS = {
    "lora": LoRAConfig(rank=3, alpha=6.0),
    "oft": OFTConfig(block_size=4),
    "boft": BOFTConfig(block_size=4, factors=2),
    "goft": GOFTConfig(),
    "qgoft": QGOFTConfig(),
    "ether": ETHERConfig(num_blocks=2),
    "etherplus": ETHERPlusConfig(num_blocks=2, two_sided=True),
    "diffusekrona": DiffuseKronAConfig(a1=2, a2=4),
    "lokr": LoKrConfig(rank=2, alpha=4.0),
    "dense": DenseConfig(),
}
ADDITIVE = ("lora", "diffusekrona", "lokr", "dense")
ROTATIONS = ("oft", "boft", "goft")  # exactly orthogonal R(s) for every s


def make_layer(kind: str, seed: int = 0) -> nn.Module:
    """A randomly initialised layer of one of ``LAYER_KINDS`` (the 1×1 and 3×3 convs use stride and padding)."""
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Linear(16, 12)
    if kind == "conv1x1":
        return nn.Conv2d(8, 12, 1, stride=2, padding=1)
    if kind == "conv3x3":
        return nn.Conv2d(8, 6, 3, stride=2, padding=1)
    raise ValueError(kind)


def make_input(kind: str, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An input batch for a layer of ``kind``: ``(2, 3, 16)`` or ``(2, 8, 5, 5)``."""
    generator = torch.Generator().manual_seed(seed)
    shape = (2, 3, 16) if kind == "linear" else (2, 8, 5, 5)
    return torch.randn(shape, generator=generator, dtype=dtype)


@torch.no_grad()
def randomize(module: nn.Module, seed: int = 2) -> None:
    """Give every parameter of ``module`` (an adapter) a random non-trivial value.

    BOFT output scales land near 1 and qGOFT blocks near I, as after some training; everything else is N(0, 0.3²).
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        if name.endswith("magnitude"):
            param.copy_(1.0 + 0.2 * noise)
        elif name.endswith("blocks"):
            param.copy_(torch.eye(2, dtype=param.dtype) + 0.2 * noise)
        else:
            param.copy_(0.3 * noise)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize by argument name: ``kind`` (layer kinds), ``method`` (all), ``additive``, ``rotation``."""
    tables = {"kind": LAYER_KINDS, "method": tuple(CONFIGS), "additive": ADDITIVE, "rotation": ROTATIONS}
    explicit = set()  # a test's own @pytest.mark.parametrize wins
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        explicit.update(n.strip() for n in (names.split(",") if isinstance(names, str) else names))
    for argname, values in tables.items():
        if argname in metafunc.fixturenames and argname not in explicit:
            metafunc.parametrize(argname, values)


@pytest.fixture
def kit() -> SimpleNamespace:
    """The shared tables and helpers."""
    return SimpleNamespace(
        TOL=TOL,
        LAYER_KINDS=LAYER_KINDS,
        CONFIGS=CONFIGS,
        ADDITIVE=ADDITIVE,
        ROTATIONS=ROTATIONS,
        make_layer=make_layer,
        make_input=make_input,
        randomize=randomize,
    )
