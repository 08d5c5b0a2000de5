from __future__ import annotations

import pytest

from renas_db.config import SearchConfig
from renas_db.errors import ConfigError


def test_defaults_are_the_papers():
    c = SearchConfig()
    assert (c.population, c.sample, c.steps, c.blocks, c.cells, c.filters) == \
        (20, 5, 4000, 5, 2, 24)
    assert (c.lr_new, c.lr_inherited, c.momentum) == (0.01, 0.001, 0.9)
    assert (c.controller_hidden, c.temperature, c.tanh_constant, c.entropy_weight) == \
        (100, 5.0, 2.5, 0.1)


def test_json_round_trip():
    c = SearchConfig(population=8, mutator="random", data_dir="/x")
    assert SearchConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("values, needle", [
    ({"population": 1}, "population must be between"),
    ({"population": 4, "sample": 5}, "sample (5) must not exceed population (4)"),
    ({"mutator": "genetic"}, "mutator must be one of renas, random, single"),
    ({"lr_new": "fast"}, "lr_new must be a number"),
    ({"steps": 1.5}, "steps must be an integer"),
    ({"populaton": 3}, "unknown config key 'populaton'"),
    ({"lease_seconds": float("nan")}, "lease_seconds must be a number"),
    ({"checkpoint_root": ""}, "checkpoint_root must not be empty"),
])
def test_bad_values_are_clear_errors(values, needle):
    with pytest.raises(ConfigError) as e:
        SearchConfig.from_dict(values)
    assert needle in str(e.value)


def test_toml_file(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('population = 8\nsample = 3\nmutator = "single"\nlr-new = 0.02\n')
    c = SearchConfig.from_toml(p)
    assert (c.population, c.sample, c.mutator, c.lr_new) == (8, 3, "single", 0.02)
    p.write_text("population = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        SearchConfig.from_toml(p)
    with pytest.raises(ConfigError, match="not found"):
        SearchConfig.from_toml(tmp_path / "missing.toml")
