"""Every recipe builds a valid config that round-trips through JSON (what checkpoints and run folders store)."""

import pytest

from studio.config import from_dict, to_dict
from studio.recipes import RECIPES, get_recipe, run_config


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_config_round_trips(name):
    config = get_recipe(name)
    assert from_dict(type(config), to_dict(config)) == config
    assert str(config.out).startswith("runs/")


def test_every_recipe_config_type_has_a_trainer():
    class Unknown:
        pass

    with pytest.raises(ValueError, match="no trainer for config type Unknown"):
        run_config(Unknown())
