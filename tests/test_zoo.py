"""The pretrained-methodology zoo (issue 16): shipped entries, their model cards, ``zoo:NAME``
wherever a methodology path is accepted, ``slem zoo list/show``."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from slem import zoo
from slem.cli.app import app
from slem.data.family import RESERVED
from slem.errors import SlemError
from slem.methodology import load_frozen, load_methodology, read_artifact_info
from slem.train import parse_train_config
from slem.train.config import load_yaml
from slem.train.cross_task import parse_cross_task_config
from slem.zoo.cards import REQUIRED, missing_fields, render_markdown, summary_row

ROOT = Path(__file__).resolve().parents[1]
NAMES = zoo.names()


def test_the_issue_s_entries_are_shipped() -> None:
    assert {"label-noise", "class-imbalance"} <= set(NAMES)
    purposes = {zoo.card(n)["purpose"] for n in NAMES}
    assert {"label noise", "class imbalance"} <= purposes


@pytest.mark.parametrize("name", NAMES)
def test_entry_loads_and_its_card_is_complete_and_matches_the_artifact(name: str) -> None:
    card = zoo.card(name)
    assert not missing_fields(card), missing_fields(card)
    entry = zoo.path(f"zoo:{name}")
    assert entry == zoo.path(name) == zoo.ZOO_DIR / name
    net, meta = load_methodology(f"zoo:{name}")
    assert net.kind == card["kind"] == meta["kind"]
    assert list(net.observed_inputs()) == card["inputs"] == meta["input_features"]
    assert card["methodology_config"] == meta["config"] == net.config()
    weights = entry / card["weights"]["file"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card["weights"]["sha256"]
    assert weights.stat().st_size == card["weights"]["bytes"]
    assert card["slem_version"] == meta["slem_version"]
    assert card["rebuild"].startswith(f"python benchmarks/zoo_build.py {name}")
    frozen = load_frozen(f"zoo:{name}")
    assert not any(p.requires_grad for p in frozen.parameters())
    # kilobytes: every file of the entry (the learning-rate schedule's three LSTM snapshots
    # are the largest, 28 KB)
    for f in entry.iterdir():
        assert f.stat().st_size < 32_000, f
    # README is the card rendered; one place for each fact
    assert (entry / zoo.README_FILE).read_text() == render_markdown(card)
    assert set(summary_row(card)) and card["name"] == name


@pytest.mark.parametrize("name", NAMES)
def test_entry_config_is_the_family_on_the_card_and_never_holds_digits(name: str) -> None:
    card = zoo.card(name)
    cfg = parse_cross_task_config(load_yaml(zoo.path(name) / zoo.CONFIG_FILE))
    family = card["family"]
    assert family["datasets"] == list(cfg.tasks.datasets)
    assert not set(RESERVED) & set(family["datasets"])
    assert family["noise"] == [str(n) if n is not None else "none" for n in cfg.tasks.noise]
    assert family["imbalance"] == list(cfg.tasks.imbalance)
    assert card["distinct_tasks"] == cfg.tasks.n_distinct
    assert card["meta_steps"] == cfg.steps and card["seed"] == cfg.train.seed
    assert card["episodes"]["finished"] <= card["episodes"]["started"]
    info = read_artifact_info(f"zoo:{name}")
    assert info["meta_trained_on"]["meta_steps"] == cfg.steps
    assert info["training_config"]["method"] == cfg.train.method


def test_every_entry_file_is_package_data() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["slem.zoo"]
    for name in NAMES:
        for f in (zoo.ZOO_DIR / name).iterdir():
            rel = f"{name}/{f.name}"
            assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel


def test_unknown_name_is_one_line_listing_the_available_names() -> None:
    with pytest.raises(SlemError, match="available: zoo:") as info:
        load_methodology("zoo:nope")
    assert "\n" not in str(info.value) and all(f"zoo:{n}" in str(info.value) for n in NAMES)
    with pytest.raises(SlemError, match="unknown zoo methodology 'zoo:nope'"):
        parse_train_config({"method": "apply", "methodology": "zoo:nope", "data": {"name": "wine"}})
    with pytest.raises(SlemError, match="unknown zoo"):
        zoo.card("nope")


def test_cli_unknown_name_exits_2_with_one_line() -> None:
    result = CliRunner().invoke(app, ["apply", "zoo:nope", "--data", "wine"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown zoo methodology 'zoo:nope'")
    assert "zoo:label-noise" in lines[0]
    result = CliRunner().invoke(app, ["zoo", "show", "nope"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_zoo_list_and_show() -> None:
    result = CliRunner().invoke(app, ["zoo", "list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in NAMES:
        assert f"zoo:{name}" in result.stdout
    assert "label noise" in result.stdout and "class imbalance" in result.stdout
    result = CliRunner().invoke(app, ["zoo", "show", "label-noise"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "zoo:label-noise" in result.stdout and "Held-out results" in result.stdout
    result = CliRunner().invoke(app, ["zoo", "show", "zoo:label-noise", "--json"])
    assert json.loads(result.stdout) == zoo.card("label-noise")


def test_slem_apply_zoo_name_trains_a_tiny_task(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "apply",
            "zoo:label-noise",
            "--data",
            "wine",
            "--noise",
            "symmetric:0.4",
            "--epochs",
            "2",
            "--threads",
            "1",
            "--quiet",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "apply" and summary["dataset"] == "wine"
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["methodology"] == "zoo:label-noise"  # the name, not an install path
    applied = read_artifact_info(out / "methodology")
    assert applied["meta_trained_on"] == read_artifact_info("zoo:label-noise")["meta_trained_on"]


def test_methodology_zoo_name_in_a_train_config(tmp_path: Path) -> None:
    from slem.train import apply_config

    cfg = apply_config("zoo:class-imbalance", "wine", epochs=1)
    assert cfg.methodology == "zoo:class-imbalance" and cfg.method == "apply"
    assert cfg.optim.epochs == 1


# ---------------------------------------------------------------------- the builder's reader


@pytest.fixture()
def zoo_build() -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import zoo_build

        yield zoo_build
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_held_out_is_not_measured_without_transfer_results(zoo_build: Any, tmp_path: Path) -> None:
    assert zoo_build.held_out("label-noise", tmp_path / "absent.json")["rows"] == []
    (tmp_path / "transfer.json").write_text(json.dumps({"summary": [], "targets": {"x": []}}))
    assert zoo_build.held_out("label-noise", tmp_path / "transfer.json")["headline"] is None


def test_held_out_reads_the_rule_s_rows_and_targets(zoo_build: Any, tmp_path: Path) -> None:
    """The card quotes transfer.json's own targets for the entry's rule (one place for the
    numbers), whichever of NAME and zoo:NAME the benchmark named it."""
    rows = [
        {"regime": "short", "task": "t", "corruption": "sym40", "method": "erm", "seeds": 3},
        {"regime": "short", "task": "t", "corruption": "sym40", "method": "rule:zoo:label-noise",
         "seeds": 3},
    ]  # fmt: skip
    checks = [
        {"target": "(a) rule - ERM, memorization, 40% noise", "value": 7.5, "cells": 12},
        {"target": "(a) rule - ERM, short, 40% noise", "value": 2.25, "cells": 12},
        {"target": "(c) collapses: runs with rule < ERM - 1 point", "value": 4, "cells": 96},
    ]
    doc = {"summary": rows, "targets": {"zoo:label-noise": checks}}
    (tmp_path / "transfer.json").write_text(json.dumps(doc))
    held = zoo_build.held_out("label-noise", tmp_path / "transfer.json")
    assert held["rows"] == rows[1:] and held["seeds"] == [3]
    assert held["headline"].startswith("+7.5 points vs ERM when ERM memorizes, +2.2 in the short")
    assert held["headline"].endswith("4 of 96 runs more than 1 point below ERM")
    card = {**zoo.card("label-noise"), "held_out": held}
    assert "+7.5 points" in render_markdown(card) and "+7.5" in summary_row(card)["held-out result"]


def test_held_out_of_a_rule_not_for_label_noise_is_its_long_tail_gain(
    zoo_build: Any, tmp_path: Path
) -> None:
    def row(regime: str, method: str, acc: float) -> dict[str, Any]:
        return {"regime": regime, "task": "t", "corruption": "lt10", "method": method,
                "seeds": 3, "test_accuracy": acc}  # fmt: skip

    rule = "rule:class-imbalance"
    rows = [row("short", "erm", 0.5), row("short", rule, 0.6),
            row("memorization", "erm", 0.7), row("memorization", rule, 0.65)]  # fmt: skip
    doc = {
        "summary": rows,
        "targets": {"class-imbalance": []},
        "rules_info": {"class-imbalance": {"family": "3 datasets; noise clean; imbalance 10"}},
    }
    (tmp_path / "transfer.json").write_text(json.dumps(doc))
    held = zoo_build.held_out("class-imbalance", tmp_path / "transfer.json")
    assert held["headline"].startswith(
        "on clean 1:10 long tails +10.0 points vs ERM in the short regime, -5.0 in the long one"
    )


def test_required_fields_are_documented_in_the_docs_page() -> None:
    assert "card.json" in (ROOT / "docs" / "zoo.md").read_text()
    assert "rebuild" in REQUIRED
