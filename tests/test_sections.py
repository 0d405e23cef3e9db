"""Each method owns its config sections: the registry names the method-specific sections a
method reads (``MethodSpec.sections``), and a section the chosen method does not read is
refused when it is set to a value of its own (one line naming the section, the method, what it
reads and the methods that read the section); configs slem writes keep loading."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any, get_args

import optuna
import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from slem.automl.config import parse_hpo_config
from slem.automl.objectives import TrainTrial, conditioned_on_method
from slem.automl.space import SearchSpace
from slem.automl.study import work
from slem.cli.app import app
from slem.data import LoadOptions, load_dataset, make_task
from slem.data.task import Task
from slem.errors import SlemError
from slem.methodology import freeze
from slem.train import make_trainer, parse_train_config
from slem.train.config import (
    METHOD_SECTIONS,
    Component,
    TrainConfig,
    load_yaml,
    without_unread_sections,
)
from slem.train.meta_test import apply_config
from slem.train.methods import get_method, markdown, method_names, methods_reading
from slem.train.run import read_run_config, write_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CLASSIFICATION = {"name": "mnist1d", "noise": "symmetric:0.4", "meta_per_class": 5, "size": 400}
REGRESSION = {"name": "diabetes", "noise": "mixture:0.3", "meta_size": 20}
#: a value of its own (not the default) for every method-specific section
OWN_VALUE: dict[str, Any] = {
    "meta": {"lr": 0.01},
    "loss": {"gce_q": 0.5},
    "schedule": {"hidden": 8},
    "hypergradient": {"horizon": 5},
    "learned_optimizer": {"hidden": 8},
    "adjuster": {"hidden": 8},
    "transition": {"hidden": 8},
    "hwnet": {"hidden": 8},
    "joint": {"components": ["mwnet"]},
    "methodology": "runs/x/methodology",
}


def base(method: str) -> dict[str, Any]:
    """A valid config of ``method`` that sets no method-specific section (apply: its
    artifact)."""
    regression = get_method(method).target == "regression"
    values: dict[str, Any] = {
        "method": method,
        "data": dict(REGRESSION if regression else CLASSIFICATION),
        "optim": {"epochs": 8, "batch_size": 64},
        "model": {"width": 8},
    }
    if get_method(method).frozen_artifact:
        values["methodology"] = "runs/x/methodology"
    return values


# ---------------------------------------------------------------------- the registry


def test_every_method_section_is_named_by_the_registry() -> None:
    named = {s for n in method_names() for s in get_method(n).sections}
    assert named == set(METHOD_SECTIONS)  # each is read by some method; no other key is
    common = {"data", "model", "optim", "seed", "device", "threads", "preset", "method"}
    assert not common & set(METHOD_SECTIONS)
    assert set(METHOD_SECTIONS) <= set(TrainConfig.model_fields)
    assert get_method("erm").sections == () and get_method("mse").sections == ()
    assert get_method("mwnet").sections == ("meta",)
    assert get_method("gce").sections == ("loss",) and get_method("huber").sections == ("loss",)
    assert get_method("lr_schedule").sections == ("meta", "schedule")
    assert get_method("learned_optimizer").sections == ("learned_optimizer",)
    assert methods_reading("schedule") == ["lr_schedule", "joint", "apply"]
    assert methods_reading("methodology") == ["apply"]


def test_joint_reads_its_own_sections_and_those_of_its_components() -> None:
    spec = get_method("joint")
    parts = get_args(Component)
    seen: set[str] = set()
    for k in range(1, len(parts) + 1):
        for components in itertools.combinations(parts, k):
            if {"mwnet", "cmwnet"} <= set(components):
                continue
            cfg = TrainConfig(method="joint", joint={"components": list(components)})
            reads = spec.sections_of(cfg)
            assert set(reads) <= set(spec.sections)
            assert {"joint", "meta"} <= set(reads)
            for c in components:  # each component's sections, as a method of its own
                assert set(get_method(c).sections) <= set(reads)
            seen |= set(reads)
    assert seen == set(spec.sections)
    only_mwnet = TrainConfig(method="joint", joint={"components": ["mwnet"]})
    assert spec.sections_of(only_mwnet) == ("joint", "meta")


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    mnist = load_dataset("mnist1d", LoadOptions(size=400))
    return {
        "classification": make_task(mnist, noise="symmetric:0.4", meta_per_class=5, seed=0),
        "regression": make_task(load_dataset("diabetes"), noise="mixture:0.3", meta_size=20),
    }


class Spy:
    """A TrainConfig that records which method-specific sections a trainer reads: a field of
    a section (or the ``methodology`` field) read, with the file that read it."""

    def __init__(self, config: TrainConfig) -> None:
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "read", set())

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._config, name)
        if name not in METHOD_SECTIONS:
            return value
        if not isinstance(value, BaseModel):
            self.read.add((name, Path(sys._getframe(1).f_code.co_filename).name))
            return value
        return _SectionSpy(value, name, self.read)


class _SectionSpy:
    def __init__(self, section: BaseModel, name: str, read: set[tuple[str, str]]) -> None:
        object.__setattr__(self, "_section", section)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_read", read)

    def __getattr__(self, field: str) -> Any:
        if field in type(self._section).model_fields:
            self._read.add((self._name, Path(sys._getframe(1).f_code.co_filename).name))
        return getattr(self._section, field)


#: reads that are no method's input: the validity table's check of the meta options (those
#: of a method without a meta step are unused)
NOT_INPUT = {("meta", "validity.py")}


def _sections_read(config: TrainConfig, task: Task, methodology: Any = None) -> set[str]:
    """The sections a trainer of ``config`` on ``task`` reads while built and trained."""
    spy = Spy(config)
    trainer = make_trainer(spy, task, methodology=methodology)  # type: ignore[arg-type]
    trainer.fit(progress=False)
    return {name for name, where in spy.read if (name, where) not in NOT_INPUT}


def test_the_registry_names_what_each_trainer_reads(tasks: dict[str, Task]) -> None:
    """Every method trains for two epochs on a config whose method-specific sections are
    watched: the trainer reads exactly the sections the registry names (apply: a subset, per
    artifact kind), so the registry's sections are derived from the code, not declared."""
    small: dict[str, Any] = {
        "meta": {"warmup_epochs": 0, "hidden": 4, "batch_size": 16},
        "learned_optimizer": {
            "datasets": ["digits"],
            "dataset_size": 200,
            "widths": [4],
            "activations": ["relu"],
            "depths": [1],
            "horizon": 4,
            "unroll": 2,
            "iterations": 2,
            "hidden": 4,
            "layers": 1,
        },
        "loss": {"forward_warmup_epochs": 1, "finetune_epochs": 1},
        "schedule": {"hidden": 4},
        "adjuster": {"hidden": 4},
        "transition": {"hidden": 4},
        "hwnet": {"hidden": 4},
        "joint": {"components": ["mwnet", "loss_adjuster", "transition", "lr_schedule"]},
    }
    applied: dict[str, set[str]] = {}
    for method in method_names():
        spec = get_method(method)
        if spec.frozen_artifact:
            continue
        values = base(method)
        values["optim"]["epochs"] = 2
        for name in spec.sections:
            if name in small:
                values[name] = small[name]
        cfg = parse_train_config(values)
        task = tasks[spec.target or "classification"]
        spy = Spy(cfg)
        trainer = make_trainer(spy, task)  # type: ignore[arg-type]
        trainer.fit(progress=False)
        read = {name for name, where in spy.read if (name, where) not in NOT_INPUT}
        assert read == set(spec.sections_of(cfg)), (method, spy.read)
        if trainer.methodology is not None:
            config = parse_train_config({**base("apply"), "data": values["data"]})
            frozen = freeze(trainer.methodology)
            applied[method] = _sections_read(config, task, frozen)
    apply = set(get_method("apply").sections)
    for method, read in applied.items():
        assert read <= apply, method
    assert set().union(*applied.values()) == apply - {"methodology"}  # read by the run writer


# ---------------------------------------------------------------------- the refusal


@pytest.mark.parametrize("method", method_names())
def test_a_section_the_method_does_not_read_is_refused_in_one_line(method: str) -> None:
    spec = get_method(method)
    cfg = parse_train_config(base(method))
    for name in METHOD_SECTIONS:
        if name in spec.sections:
            continue
        with pytest.raises(SlemError) as err:
            parse_train_config({**base(method), name: OWN_VALUE[name]})
        message = str(err.value)
        reads = ", ".join(spec.sections_of(cfg)) or "none"
        assert message.startswith(f"{name}: method '{method}' does not read this "), message
        assert f"(it reads: {reads})" in message or f"it reads {reads}" in message, message
        assert message.endswith(f"use a method that does: {', '.join(methods_reading(name))}")
        assert "\n" not in message


def test_the_refusal_names_what_the_method_reads() -> None:
    with pytest.raises(SlemError) as err:
        parse_train_config({**base("mwnet"), "schedule": {"hidden": 8}})
    assert str(err.value) == (
        "schedule: method 'mwnet' does not read this section (it reads: meta); remove it, or "
        "use a method that does: lr_schedule, joint, apply"
    )
    with pytest.raises(SlemError, match=r"^meta: method 'erm' does not read this section \(it "):
        TrainConfig(method="erm", meta={"lr": 0.01})  # the constructor refuses the same way
    with pytest.raises(SlemError) as err:
        parse_train_config({**base("mwnet"), "methodology": "runs/x"})
    assert str(err.value).startswith("methodology: method 'mwnet' does not read this field")


def test_joint_refuses_the_section_of_a_component_it_leaves_out() -> None:
    values = {**base("joint"), "joint": {"components": ["mwnet", "lr_schedule"]}}
    parse_train_config({**values, "schedule": {"hidden": 8}})
    with pytest.raises(SlemError) as err:
        parse_train_config({**values, "adjuster": {"hidden": 8}})
    assert str(err.value) == (
        "adjuster: method 'joint' with joint.components [mwnet, lr_schedule] does not read this "
        "section (it reads: joint, meta, schedule); remove it, or add loss_adjuster to "
        "joint.components"
    )


def test_a_section_at_its_defaults_is_accepted() -> None:
    """Saved configs hold every section; a section equal to its defaults changes nothing."""
    cfg = parse_train_config({**base("erm"), "meta": {"lr": 1e-3}, "schedule": {}})
    assert cfg.method == "erm" and {"meta", "schedule"} <= cfg.model_fields_set
    for method in method_names():
        cfg = parse_train_config(base(method))
        dumped = cfg.model_dump(mode="json")
        assert set(METHOD_SECTIONS) <= set(dumped)
        assert parse_train_config(dumped) == cfg


def test_cli_refuses_an_unread_section_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "erm.yaml"
    path.write_text(yaml.safe_dump({**base("erm"), "schedule": {"hidden": 8}}))
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: schedule: method 'erm' does not read")
    assert not (tmp_path / "run").exists()  # refused before anything is written
    set_ = ["--set", "meta.lr=0.01", "--out", str(tmp_path / "run2")]
    result = CliRunner().invoke(app, ["train", str(EXAMPLES / "erm_mnist1d.yaml"), *set_])
    assert result.exit_code == 2 and "meta: method 'erm' does not read" in result.stderr


def test_cli_methods_shows_each_methods_sections() -> None:
    result = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    assert "config sections" in result.stdout
    line = next(x for x in result.stdout.splitlines() if "│ lr_schedule " in x)
    assert "meta, schedule" in line
    md = CliRunner().invoke(app, ["methods", "--markdown"], env={"COLUMNS": "300"})
    assert md.exit_code == 0 and md.stdout.strip() == markdown()
    assert "| hwnet | regression | meta, hwnet |" in md.stdout


def test_docs_method_table_is_generated_from_the_registry() -> None:
    assert markdown() in (ROOT / "docs" / "runs.md").read_text()


# ---------------------------------------------------------------------- configs that exist


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path: Path) -> None:
    values = load_yaml(path)
    if "tasks" in values:  # slem meta-train over a task family
        from slem.train.cross_task import parse_cross_task_config

        cross = parse_cross_task_config(values)
        assert cross.tasks.n_distinct > 1, path.name
        return
    if "learner" in values:  # slem fewshot train
        from slem.train.few_shot import parse_few_shot_config

        parse_few_shot_config(values)
        return
    if "search" in values:  # slem nas search
        from slem.automl.nas_run import parse_nas_config

        parse_nas_config(values)
        with pytest.raises(SlemError, match="slem nas search FILE"):
            parse_train_config(values)
        return
    if "objective" in values:  # an HPO study, read as slem hpo reads it
        from slem.automl.config import TrainObjective
        from slem.automl.load import load_study_config

        config = load_study_config(path)  # objective.base: relative to the study config
        if isinstance(config.objective, TrainObjective):
            TrainTrial(config.objective)
        return
    cfg = parse_train_config(values)
    assert set(values) & set(METHOD_SECTIONS) <= set(cfg.spec.sections_of(cfg)), path.name


def test_every_method_with_an_example_keeps_it_and_the_documented_method_swaps() -> None:
    methods = {load_yaml(p).get("method") for p in EXAMPLES.glob("*.yaml")}
    assert {"mwnet", "cmwnet", "cmwnet_sl", "erm", "forward", "huber", "hwnet", "joint"} <= methods
    assert {"learned_optimizer", "loss_adjuster", "lr_schedule", "transition"} <= methods
    # huber_diabetes.yaml: "--set method=mse" (its loss.huber_delta is the default 1.0)
    huber = load_yaml(EXAMPLES / "huber_diabetes.yaml")
    assert parse_train_config({**huber, "method": "mse"}).method == "mse"
    # erm_mnist1d.yaml is "mwnet_mnist1d.yaml but the method name": its meta section writes
    # out the defaults, so it changes nothing for ERM and is accepted
    mwnet = load_yaml(EXAMPLES / "mwnet_mnist1d.yaml")
    assert parse_train_config({**mwnet, "method": "erm"}).method == "erm"
    # dacmr_mnist1d.yaml's meta section is MW-Net's own (a DAC-MR objective): refused for ERM
    dacmr = load_yaml(EXAMPLES / "dacmr_mnist1d.yaml")
    with pytest.raises(SlemError, match=r"^meta: method 'erm' does not read this section"):
        parse_train_config({**dacmr, "method": "erm"})


def test_presets_fill_meta_only_for_a_method_that_reads_it() -> None:
    cfg = parse_train_config({"preset": "mwnet-noise", "data": CLASSIFICATION})
    assert cfg.method == "mwnet" and cfg.meta.virtual_step == "sgd"
    erm = parse_train_config({"preset": "mwnet-noise", "method": "erm", "data": CLASSIFICATION})
    assert erm.optim == cfg.optim and "meta" not in erm.model_fields_set
    cmw = parse_train_config({"preset": "mwnet-noise", "method": "cmwnet", "data": CLASSIFICATION})
    assert cmw.meta == cfg.meta
    with pytest.raises(SlemError, match=r"^meta: method 'erm' does not read"):  # the user's own
        parse_train_config(
            {"preset": "mwnet-noise", "method": "erm", "data": CLASSIFICATION, "meta": {"lr": 1}}
        )


def test_a_saved_run_config_round_trips_and_an_older_one_still_resumes(tmp_path: Path) -> None:
    for method in ("erm", "gce", "mwnet", "joint", "hwnet", "apply"):
        cfg = parse_train_config(base(method))
        run = tmp_path / method
        run.mkdir()
        write_config(run, cfg)
        assert read_run_config(run) == cfg
    # written before unread sections were refused: the run ignored them, and still does
    old = tmp_path / "old"
    old.mkdir()
    values = {**base("erm"), "meta": {"lr": 0.01}, "loss": {"gce_q": 0.5}, "provenance": {}}
    (old / "config.yaml").write_text(yaml.safe_dump(values))
    resumed = read_run_config(old)
    assert resumed.method == "erm" and resumed.meta.lr == 1e-3  # the default, as it ran
    gce = {**values, "method": "gce"}
    (old / "config.yaml").write_text(yaml.safe_dump(gce))
    assert read_run_config(old).loss.gce_q == 0.5  # a section the method reads is kept


def test_apply_takes_only_the_sections_apply_reads_from_the_artifact(tmp_path: Path) -> None:
    from slem.methodology.weighting import MWNet
    from slem.train.artifacts import save_methodology

    training = parse_train_config({**base("mwnet"), "meta": {"normalize_weights": "batch"}})
    values = training.model_dump(mode="json")
    values["loss"] = {"gce_q": 0.3}  # an older artifact: a section its run ignored
    save_methodology(MWNet(hidden=4), tmp_path / "artifact", values)
    cfg = apply_config(tmp_path / "artifact", "mnist1d")
    assert cfg.method == "apply" and cfg.meta.normalize_weights == "batch"
    assert cfg.loss.gce_q == 0.7  # apply does not read loss: not carried over
    with pytest.raises(SlemError, match=r"^loss: method 'apply' does not read this section"):
        apply_config(tmp_path / "artifact", "mnist1d", overrides={"loss.gce_q": 0.5})


def test_without_unread_sections_keeps_what_the_method_reads() -> None:
    values = {
        **base("joint"),
        "joint": {"components": ["mwnet"]},
        "meta": {"lr": 0.01},
        "adjuster": {"hidden": 8},
        "loss": {"gce_q": 0.5},
    }
    kept = without_unread_sections(values)
    assert "adjuster" not in kept and "loss" not in kept and kept["meta"] == {"lr": 0.01}
    assert without_unread_sections({"method": "nope", "meta": {}}) == {"method": "nope", "meta": {}}


# ---------------------------------------------------------------------- HPO


def test_hpo_space_params_of_a_section_are_conditioned_on_the_methods_that_read_it() -> None:
    space = SearchSpace.from_mapping(
        {
            "method": ["erm", "gce", "mwnet"],
            "optim.lr": {"low": 0.01, "high": 0.1},
            "meta.lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "loss.gce_q": {"low": 0.3, "high": 0.9},
        }
    )
    conditioned = {p.name: p for p in conditioned_on_method(space).params}
    assert conditioned["optim.lr"].when == {}
    assert conditioned["meta.lr"].when == {"method": ("mwnet",)}
    assert conditioned["loss.gce_q"].when == {"method": ("gce",)}
    with pytest.raises(SlemError, match=r"'meta.lr' is read only by method mwnet: list method"):
        conditioned_on_method(
            SearchSpace.from_mapping({"meta.lr": [1e-3], "method": ["erm", "mwnet"]})
        )
    with pytest.raises(SlemError, match=r"'meta.lr': method erm, gce does not read the meta"):
        conditioned_on_method(SearchSpace.from_mapping({"method": ["erm", "gce"], "meta.lr": [1]}))
    with pytest.raises(SlemError, match=r"'meta.lr': method erm does not read the meta section"):
        conditioned_on_method(SearchSpace.from_mapping({"meta.lr": [1e-3]}), "erm")
    with pytest.raises(SlemError, match=r"^search space param 'method': method 'mwnett' does"):
        conditioned_on_method(SearchSpace.from_mapping({"method": ["erm", "mwnett"]}))
    own = {"method": ["erm", "mwnet"], "meta.lr": {"choices": [1e-3], "when": {"method": "erm"}}}
    with pytest.raises(SlemError, match=r"'meta.lr': method erm does not read the meta section"):
        conditioned_on_method(SearchSpace.from_mapping(own))


def test_hpo_with_a_method_choice_runs_trials_of_a_method_that_does_not_read_a_section() -> None:
    hpo = parse_hpo_config(
        {
            "study": {"sampler": "grid"},
            "objective": {
                "kind": "train",
                "base": {
                    "method": "mwnet",
                    "data": CLASSIFICATION,
                    "model": {"width": 8},
                    "optim": {"epochs": 1, "batch_size": 64},
                    "meta": {"warmup_epochs": 0, "hidden": 4},  # MW-Net's, not ERM's
                },
                "space": {"method": ["erm", "mwnet"], "meta.lr": [1e-3, 1e-2]},
            },
        }
    )
    objective = TrainTrial(hpo.objective)  # type: ignore[arg-type]
    assert objective.space.finite_size() == 3  # erm once, mwnet at each meta.lr
    erm = parse_train_config(objective.values_for({"method": "erm"}))
    assert erm.method == "erm" and "meta" not in erm.model_fields_set
    mwnet = parse_train_config(objective.values_for({"method": "mwnet", "meta.lr": 1e-2}))
    assert (mwnet.meta.lr, mwnet.meta.hidden) == (1e-2, 4)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"method": "erm"})
    work(study, objective, total=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial
    assert trial.params == {"method": "erm"}
