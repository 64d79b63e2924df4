"""One typed config per adapter method, and ``METHODS``: the one table from method names to classes.

Configs hold hyperparameters only; sizes that depend on the wrapped layer (``d_in``, ``d_out``) are checked when
the adapter is added to a layer. Every config round-trips through JSON with :func:`config_to_dict` and
:func:`config_from_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from studio.adapters.boft import BOFTAdapter
from studio.adapters.ether import ETHERAdapter, ETHERPlusAdapter
from studio.adapters.givens import GOFTAdapter, QGOFTAdapter
from studio.adapters.kron import DiffuseKronAAdapter, LoKrAdapter
from studio.adapters.lora import LoRAAdapter
from studio.adapters.oft import OFTAdapter


def _check(ok: bool, name: str, value: Any, allowed: str, fix: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: {allowed}; {fix}")


def _check_positive_int(name: str, value: Any, fix: str) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, value, "need an int >= 1", fix)


def _check_optional_blocks(owner: str, block_size: int | None, num_blocks: int | None) -> None:
    if block_size is not None:
        _check_positive_int(f"{owner}.block_size", block_size, "pass e.g. block_size=32, or None")
    if num_blocks is not None:
        _check_positive_int(f"{owner}.num_blocks", num_blocks, "pass e.g. num_blocks=4, or None")
    _check(
        block_size is None or num_blocks is None,
        f"{owner}.block_size",
        block_size,
        f"block_size and num_blocks (={num_blocks}) are mutually exclusive",
        "set one of them and leave the other None",
    )


@dataclass(kw_only=True)
class LoRAConfig:
    """LoRA (Hu et al. 2021, arXiv 2106.09685): ``ΔW = (alpha / rank) · B A``, ``A`` random, ``B = 0``."""

    method: ClassVar[str] = "lora"
    rank: int = 4
    """Inner dimension ``r``: ``A`` is ``(r, d_in)``, ``B`` is ``(d_out, r)``."""
    alpha: float | None = None
    """Numerator of the scaling ``alpha / rank``; None means ``alpha = rank`` (scaling 1)."""

    def __post_init__(self) -> None:
        _check_positive_int("LoRAConfig.rank", self.rank, "pass e.g. rank=4")
        _check(
            self.alpha is None or isinstance(self.alpha, int | float),
            "LoRAConfig.alpha",
            self.alpha,
            "need a number or None",
            "pass e.g. alpha=8.0",
        )


@dataclass(kw_only=True)
class OFTConfig:
    """OFT (Qiu et al. 2023, arXiv 2306.07280): ``W' = W Rᵀ``, ``R = blockdiag(Cayley(Q_1), ...)``, ``Q = 0``."""

    method: ClassVar[str] = "oft"
    block_size: int | None = None
    """Size ``b`` of each rotation block; exclusive with ``num_blocks``; neither means 32."""
    num_blocks: int | None = None
    """Number ``r`` of blocks (``b = d_in / r``); exclusive with ``block_size``."""
    cayley: Literal["exact", "neumann"] = "exact"
    """``exact``: a linear solve, orthogonal for every strength. ``neumann``: a truncated series, approximate."""
    neumann_terms: int = 4
    """Series terms for ``cayley="neumann"`` (PEFT's default ``num_cayley_neumann_terms=5`` equals 4 here)."""
    coft: bool = False
    """COFT: project each skew block into the Frobenius ball ``‖Q‖_F <= coft_eps`` in the forward pass."""
    coft_eps: float = 6e-5
    """COFT radius."""
    block_share: bool = False
    """Share one rotation block across all blocks of a layer."""

    def __post_init__(self) -> None:
        _check_optional_blocks("OFTConfig", self.block_size, self.num_blocks)
        _check(self.cayley in ("exact", "neumann"), "OFTConfig.cayley", self.cayley, "allowed: exact, neumann", "")
        _check_positive_int("OFTConfig.neumann_terms", self.neumann_terms, "pass e.g. neumann_terms=4")
        _check(self.coft_eps > 0, "OFTConfig.coft_eps", self.coft_eps, "need > 0", "pass e.g. coft_eps=6e-5")


@dataclass(kw_only=True)
class BOFTConfig:
    """BOFT (Liu et al. 2024, arXiv 2311.06243): ``R = B_m ⋯ B_1`` butterfly factors plus an output scale."""

    method: ClassVar[str] = "boft"
    block_size: int | None = None
    """Size ``b`` of each rotation block in every factor; exclusive with ``num_blocks``; neither means 32."""
    num_blocks: int | None = None
    """Blocks per factor (``b = d_in / num_blocks``); exclusive with ``block_size``."""
    factors: int = 1
    """Number ``m`` of butterfly factors; ``m = 1`` is OFT. Needs ``d_in`` divisible by ``b · 2^(m-1)``."""
    cayley: Literal["exact", "neumann"] = "exact"
    """As in :class:`OFTConfig`."""
    neumann_terms: int = 4
    """As in :class:`OFTConfig`."""

    def __post_init__(self) -> None:
        _check_optional_blocks("BOFTConfig", self.block_size, self.num_blocks)
        _check_positive_int("BOFTConfig.factors", self.factors, "pass e.g. factors=2")
        _check(self.cayley in ("exact", "neumann"), "BOFTConfig.cayley", self.cayley, "allowed: exact, neumann", "")
        _check_positive_int("BOFTConfig.neumann_terms", self.neumann_terms, "pass e.g. neumann_terms=4")


@dataclass(kw_only=True)
class GOFTConfig:
    """GOFT (Ma et al. 2024, arXiv 2404.04316): ``R`` = ``d_in - 1`` Givens rotations in ``⌈log2 d_in⌉`` stages.

    No hyperparameters: the rotation count is fixed by the layer width.
    """

    method: ClassVar[str] = "goft"


@dataclass(kw_only=True)
class QGOFTConfig:
    """qGOFT (Ma et al. 2024): GOFT with each 2x2 rotation relaxed to a free 2x2 matrix, softly orthogonal."""

    method: ClassVar[str] = "qgoft"
    penalty_weight: float = 1.0
    """Multiplier of ``Σ ‖MᵀM - I‖²_F`` in :func:`studio.adapters.orthogonality_penalty`."""

    def __post_init__(self) -> None:
        _check(
            self.penalty_weight >= 0,
            "QGOFTConfig.penalty_weight",
            self.penalty_weight,
            "need >= 0",
            "pass e.g. penalty_weight=1.0",
        )


@dataclass(kw_only=True)
class ETHERConfig:
    """ETHER (Bini et al. 2024, arXiv 2405.20271): one Householder reflection per input-feature block."""

    method: ClassVar[str] = "ether"
    num_blocks: int = 1
    """Number of diagonal blocks over the input features; must divide ``d_in``."""

    def __post_init__(self) -> None:
        _check_positive_int("ETHERConfig.num_blocks", self.num_blocks, "pass e.g. num_blocks=4")


@dataclass(kw_only=True)
class ETHERPlusConfig:
    """ETHER+ (Bini et al. 2024): per block ``I - ûûᵀ + v̂v̂ᵀ``, identity at init (``v = -u``)."""

    method: ClassVar[str] = "etherplus"
    num_blocks: int = 1
    """Number of diagonal blocks; must divide ``d_in`` (and ``d_out`` when two-sided)."""
    two_sided: bool = False
    """Also transform the output features: ``W' = H_out · W · H_inᵀ``."""

    def __post_init__(self) -> None:
        _check_positive_int("ETHERPlusConfig.num_blocks", self.num_blocks, "pass e.g. num_blocks=4")


@dataclass(kw_only=True)
class DiffuseKronAConfig:
    """DiffuseKronA (Marjit et al. 2024, arXiv 2402.17412): ``ΔW = A ⊗ B``, ``A (a1, a2)`` random, ``B = 0``."""

    method: ClassVar[str] = "diffusekrona"
    a1: int
    """Rows of ``A``; must divide ``d_out`` (``b1 = d_out / a1``)."""
    a2: int
    """Columns of ``A``; must divide ``d_in`` (``b2 = d_in / a2``; for convs ``d_in = C_in · kh · kw``)."""

    def __post_init__(self) -> None:
        _check_positive_int("DiffuseKronAConfig.a1", self.a1, "pass e.g. a1=4")
        _check_positive_int("DiffuseKronAConfig.a2", self.a2, "pass e.g. a2=8")


@dataclass(kw_only=True)
class LoKrConfig:
    """LoKr (LyCORIS, arXiv 2309.14859; as in PEFT): ``ΔW = (alpha / rank) · (w1 ⊗ w2)``."""

    method: ClassVar[str] = "lokr"
    rank: int = 8
    """Rank of the low-rank factors; ``w2`` is low-rank when ``rank < max(b1, b2') / 2`` (PEFT's rule)."""
    alpha: float | None = None
    """Numerator of ``alpha / rank``; None means ``alpha = rank``."""
    factor: int = -1
    """Preferred size of the small factor (PEFT ``decompose_factor``); -1 balances the two factors."""
    decompose_both: bool = False
    """Also make ``w1`` low-rank when ``rank < max(a1, a2) / 2``."""
    a1: int | None = None
    """Explicit rows of ``w1`` (with ``a2``); None picks sizes like PEFT."""
    a2: int | None = None
    """Explicit columns of ``w1`` (with ``a1``)."""

    def __post_init__(self) -> None:
        _check_positive_int("LoKrConfig.rank", self.rank, "pass e.g. rank=8")
        _check(
            self.factor == -1 or (isinstance(self.factor, int) and self.factor >= 1),
            "LoKrConfig.factor",
            self.factor,
            "need -1 or an int >= 1",
            "pass factor=-1 to balance the factors",
        )
        _check(
            (self.a1 is None) == (self.a2 is None),
            "LoKrConfig.a1",
            self.a1,
            f"a1 and a2 (={self.a2}) must be given together",
            "pass both or neither",
        )
        for name in ("a1", "a2"):
            if getattr(self, name) is not None:
                _check_positive_int(f"LoKrConfig.{name}", getattr(self, name), "pass e.g. 4")


AdapterConfig = (
    LoRAConfig
    | OFTConfig
    | BOFTConfig
    | GOFTConfig
    | QGOFTConfig
    | ETHERConfig
    | ETHERPlusConfig
    | DiffuseKronAConfig
    | LoKrConfig
)

METHODS: dict[str, tuple[type, type]] = {
    "lora": (LoRAConfig, LoRAAdapter),
    "oft": (OFTConfig, OFTAdapter),
    "boft": (BOFTConfig, BOFTAdapter),
    "goft": (GOFTConfig, GOFTAdapter),
    "qgoft": (QGOFTConfig, QGOFTAdapter),
    "ether": (ETHERConfig, ETHERAdapter),
    "etherplus": (ETHERPlusConfig, ETHERPlusAdapter),
    "diffusekrona": (DiffuseKronAConfig, DiffuseKronAAdapter),
    "lokr": (LoKrConfig, LoKrAdapter),
}


def adapter_class(config: AdapterConfig) -> type:
    """The adapter class for a config instance, looked up in ``METHODS``."""
    method = getattr(config, "method", None)
    if method not in METHODS or not isinstance(config, METHODS[method][0]):
        allowed = [config_cls.__name__ for config_cls, _ in METHODS.values()]
        raise TypeError(f"config {config!r} is not an adapter config; pass one of {allowed}")
    return METHODS[method][1]


def config_to_dict(config: AdapterConfig) -> dict[str, Any]:
    """The JSON-ready hyperparameters of ``config`` (its method name is ``config.method``)."""
    return dataclasses.asdict(config)


def config_from_dict(method: str, params: dict[str, Any]) -> AdapterConfig:
    """Rebuild a config from :func:`config_to_dict` output.

    Raises:
        ValueError: for an unknown method or unknown fields.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; allowed: {sorted(METHODS)}")
    cls = METHODS[method][0]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}; allowed: {sorted(known)}")
    return cls(**params)
