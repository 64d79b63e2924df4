"""Configs: the METHODS table, validation messages that name the field, and JSON round trips."""

import json

import pytest

from studio.adapters import (
    METHODS,
    BOFTConfig,
    DiffuseKronAConfig,
    ETHERConfig,
    LoKrConfig,
    LoRAConfig,
    OFTConfig,
    QGOFTConfig,
    config_from_dict,
    config_to_dict,
)
from studio.adapters.registry import adapter_class


def test_methods_table_maps_names_to_config_and_adapter_classes():
    assert list(METHODS) == [
        "lora",
        "oft",
        "boft",
        "goft",
        "qgoft",
        "ether",
        "etherplus",
        "diffusekrona",
        "lokr",
        "dense",
    ]
    for name, (config_cls, adapter_cls) in METHODS.items():
        assert config_cls.method == name
        assert adapter_cls.__name__.endswith("Adapter")


def test_round_trip_through_json(kit, method):
    config = kit.CONFIGS[method]
    params = json.loads(json.dumps(config_to_dict(config)))
    assert config_from_dict(method, params) == config
    assert adapter_class(config) is METHODS[method][1]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: LoRAConfig(rank=0), r"LoRAConfig.rank=0 is invalid: need an int >= 1; pass e.g. rank=4"),
        (lambda: LoRAConfig(alpha="big"), r"LoRAConfig.alpha='big' is invalid"),
        (lambda: OFTConfig(block_size=4, num_blocks=2), r"OFTConfig.block_size=4 .* mutually exclusive"),
        (lambda: OFTConfig(cayley="fast"), r"OFTConfig.cayley='fast' is invalid: allowed: exact, neumann"),
        (lambda: OFTConfig(coft_eps=0.0), r"OFTConfig.coft_eps=0.0 is invalid: need > 0"),
        (lambda: BOFTConfig(factors=0), r"BOFTConfig.factors=0 is invalid"),
        (lambda: QGOFTConfig(penalty_weight=-1.0), r"QGOFTConfig.penalty_weight=-1.0 is invalid: need >= 0"),
        (lambda: ETHERConfig(num_blocks=True), r"ETHERConfig.num_blocks=True is invalid"),
        (lambda: DiffuseKronAConfig(a1=0, a2=4), r"DiffuseKronAConfig.a1=0 is invalid"),
        (lambda: LoKrConfig(factor=0), r"LoKrConfig.factor=0 is invalid: need -1 or an int >= 1"),
        (lambda: LoKrConfig(a1=4), r"LoKrConfig.a1=4 is invalid: a1 and a2 \(=None\) must be given together"),
    ],
)
def test_validation_names_field_value_and_fix(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_configs_are_keyword_only_and_diffusekrona_sizes_are_required():
    with pytest.raises(TypeError):
        LoRAConfig(4)
    with pytest.raises(TypeError):
        DiffuseKronAConfig()


def test_from_dict_refuses_unknown_methods_and_fields():
    with pytest.raises(ValueError, match=r"method='dora' is unknown; allowed: \['boft'"):
        config_from_dict("dora", {})
    with pytest.raises(ValueError, match=r"LoRAConfig has no fields \['dropout'\]"):
        config_from_dict("lora", {"rank": 2, "dropout": 0.1})
    with pytest.raises(TypeError, match="not an adapter config"):
        adapter_class(object())
