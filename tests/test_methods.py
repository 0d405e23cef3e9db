"""The method registry: one spec per method, asked by everything that needs to know a method."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from slem.errors import SlemError
from slem.train import TrainConfig
from slem.train.methods import METHODS, MethodSpec, get_method, method_names, register

SRC = Path(__file__).resolve().parents[1] / "src" / "slem"


def test_every_method_is_registered_once_with_a_consistent_spec() -> None:
    names = method_names()
    assert len(names) == len(set(names)) >= 20
    for name in names:
        spec = get_method(name)
        assert spec.name == name and spec.summary
        if spec.meta_step is not None:
            assert spec.is_meta, name
        if spec.engine or spec.meta_set == "objective":
            assert spec.is_meta, name
    assert set(method_names("regression")) == {"mse", "l1", "huber", "hwnet"}
    assert get_method("apply").frozen_artifact and get_method("apply").target is None


def test_registering_a_name_twice_is_refused() -> None:
    spec = get_method("erm")
    with pytest.raises(ValueError, match="registered twice"):
        register(MethodSpec("erm", spec.summary, "classification", spec.build))
    assert METHODS["erm"] is spec


def test_unknown_method_is_one_line_listing_the_methods() -> None:
    with pytest.raises(SlemError, match=r"does not exist .*; use one of erm, gce"):
        get_method("mw-net")
    with pytest.raises(SlemError, match=r"method: Input should be 'erm', 'gce'.*'apply'"):
        TrainConfig(method="mw-net")


def test_meta_set_needs_come_from_the_registry() -> None:
    assert TrainConfig(method="finetune").needs_meta_set == "method finetune needs a clean meta set"
    assert TrainConfig(method="mwnet").needs_meta_set is not None
    assert TrainConfig(method="mwnet", meta={"objective": "dac"}).needs_meta_set is None
    assert TrainConfig(method="erm").needs_meta_set is None


def test_no_module_outside_the_registry_compares_method_names() -> None:
    """A method's behaviour comes from its spec: no `method == "x"`, `method in (...)` or
    method-name tuples outside slem.train.methods and builtin_methods."""
    pattern = re.compile(
        r"""(\bmethod\s*(==|!=)\s*["']|\bmethod\s+(not\s+)?in\s+\(|_METHODS\s*=\s*\()"""
    )
    allowed = {"methods.py", "builtin_methods.py"}
    offenders = []
    for path in (SRC / "train").rglob("*.py"):
        if path.name in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and "hypergrad" not in line:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    for path in (SRC / "cli").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bmethod\s*(==|!=)\s*[\"']", line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_cli_lists_the_registry() -> None:
    from typer.testing import CliRunner

    from slem.cli.app import app

    result = CliRunner().invoke(app, ["methods", "--target", "regression"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert all(m in result.stdout for m in ("mse", "huber", "hwnet", "apply"))
    assert "mwnet" not in result.stdout
    narrow = CliRunner().invoke(app, ["methods", "--target", "regression"], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0 and "…" not in narrow.stdout  # one block per method, whole
    assert "hwnet  " in narrow.stdout and "    config sections: meta, hwnet" in narrow.stdout
    bad = CliRunner().invoke(app, ["methods", "--target", "images"])
    assert bad.exit_code == 2 and "--target must be classification or regression" in bad.stderr


def test_a_method_typo_suggests_the_method() -> None:
    with pytest.raises(SlemError, match="did you mean 'mwnet'"):
        TrainConfig(method="mwnett")
    with pytest.raises(SlemError, match="did you mean 'hwnet'"):
        get_method("hw-net")


def test_an_artifact_no_training_method_applies_says_where_it_is_used(tmp_path: Path) -> None:
    from slem.methodology import RNNBlackBoxOptimizer, load_frozen
    from slem.methodology.weighting import MWNet
    from slem.train.methods import spec_applying

    bbo = RNNBlackBoxOptimizer(dim=2, hidden=4)
    with pytest.raises(SlemError, match=r"'learned_bbo'.*slem bbo run"):
        spec_applying(bbo)
    MWNet(hidden=4).save(tmp_path / "rule")
    assert load_frozen(tmp_path / "rule", kinds=("mwnet", "cmwnet")).kind == "mwnet"
    with pytest.raises(SlemError, match="holds a 'mwnet' methodology; this needs one of lr_sch"):
        load_frozen(tmp_path / "rule", kinds=("lr_schedule",))
