from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from studio.config import apply_overrides, from_dict, load_json, save_json, to_dict


@dataclass(kw_only=True)
class Inner:
    method: Literal["lora", "oft"] = "lora"
    rank: int = 4
    targets: tuple[str, ...] = ("to_q", "to_k")


@dataclass(kw_only=True)
class Outer:
    steps: int = 10
    lr: float = 1e-3
    ema: bool = False
    out: Path = Path("runs/x")
    seed: int | None = None
    adapter: Inner = field(default_factory=Inner)


def test_overrides_parse_by_field_type_and_reach_nested_configs():
    c = apply_overrides(
        Outer(),
        [
            "steps=20",
            "lr=0.5",
            "ema=true",
            "out=/tmp/y",
            "seed=none",
            "adapter.method=oft",
            "adapter.rank=8",
            "adapter.targets=to_v, to_out.0",
        ],
    )
    assert c == Outer(
        steps=20,
        lr=0.5,
        ema=True,
        out=Path("/tmp/y"),
        seed=None,
        adapter=Inner(method="oft", rank=8, targets=("to_v", "to_out.0")),
    )
    assert apply_overrides(Outer(), ["seed=3"]).seed == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("steps", "not key=value"),
        ("nope=1", "unknown config key 'nope'"),
        ("steps=ten", "expected int"),
        ("ema=maybe", "expected true or false"),
        ("adapter.method=boft", "allowed values"),
        ("steps.x=1", "not a nested config"),
    ],
)
def test_bad_overrides_raise_one_clear_error(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(Outer(), [override])


def test_json_round_trip(tmp_path):
    c = Outer(steps=3, out=Path("a/b"), adapter=Inner(method="oft", targets=("x",)))
    assert from_dict(Outer, to_dict(c)) == c
    save_json(c, tmp_path / "c.json")
    assert load_json(Outer, tmp_path / "c.json") == c
    with pytest.raises(ValueError, match="no fields"):
        from_dict(Outer, {"stepz": 1})


@dataclass(kw_only=True)
class WithOptions:
    options: dict = field(default_factory=lambda: {"method": "lora", "rank": 4})


def test_options_dict_values_stay_text_for_the_config_that_owns_them():
    c = apply_overrides(WithOptions(), ["options.method=oft", "options.block_size=8"])
    assert c.options == {"method": "oft", "rank": 4, "block_size": "8"}
    assert WithOptions().options == {"method": "lora", "rank": 4}  # the default is not mutated
    with pytest.raises(ValueError, match="not a nested config"):
        apply_overrides(WithOptions(), ["options.rank.x=1"])


def test_adapter_options_are_parsed_by_the_methods_field_types_not_guessed():
    from studio.recipes import get_recipe

    cfg = apply_overrides(get_recipe("finetune"), ["adapter.method=oft", "adapter.block_size=8", "adapter.coft=true"])
    assert cfg.adapter == {"method": "oft", "block_size": 8, "coft": True}
    lokr = apply_overrides(get_recipe("finetune"), ["adapter.method=lokr", "adapter.alpha=8", "adapter.a1=none"])
    assert lokr.adapter == {"method": "lokr", "alpha": 8.0, "a1": None} and isinstance(lokr.adapter["alpha"], float)
    with pytest.raises(ValueError, match=r"adapter\.block_size=eight: expected int"):
        apply_overrides(get_recipe("finetune"), ["adapter.method=oft", "adapter.block_size=eight"])
    with pytest.raises(ValueError, match=r"OFTConfig has no fields \['rank'\]"):
        apply_overrides(get_recipe("finetune"), ["adapter.method=oft", "adapter.rank=8"])


@dataclass(kw_only=True)
class Bounded:
    total: int = 10
    part: int = 10

    def __post_init__(self) -> None:
        if self.part > self.total:
            raise ValueError(f"part {self.part} exceeds total {self.total}")


@dataclass(kw_only=True)
class HoldsBounded:
    bounded: Bounded = field(default_factory=Bounded)


def test_overrides_are_validated_together_not_one_at_a_time():
    """Lowering both fields is valid in either order, though lowering ``total`` alone is not."""
    assert apply_overrides(Bounded(), ["total=3", "part=3"]) == Bounded(total=3, part=3)
    assert apply_overrides(Bounded(), ["part=3", "total=3"]) == Bounded(total=3, part=3)
    nested = apply_overrides(HoldsBounded(), ["bounded.total=2", "bounded.part=1"])
    assert nested.bounded == Bounded(total=2, part=1)
    with pytest.raises(ValueError, match="part 10 exceeds total 3"):
        apply_overrides(Bounded(), ["total=3"])
    with pytest.raises(ValueError, match="conflicts with an earlier override"):
        apply_overrides(Outer(), ["adapter.rank=2", "adapter.rank.x=1"])
