"""Published protocols: presets with cited settings, MW-Net's uniform noise, data.train_size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from slem.cli.app import app
from slem.data import DataConfig, build_task
from slem.data.config import parse_data_config
from slem.data.corruption import uniform_noise, uniform_transition
from slem.errors import SlemError
from slem.train.config import TrainConfig, apply_overrides, parse_train_config
from slem.train.meta_step import make_meta_optimizer
from slem.train.presets import PRESETS, apply_preset, get_preset, markdown_table

DATA = {"name": "digits", "meta_per_class": 5}


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_validates_and_cites_every_setting(name: str) -> None:
    preset = PRESETS[name]
    cfg = parse_train_config({"preset": name, "data": DATA})
    assert cfg.preset == name
    for s in preset.settings:
        assert s.source.strip(), f"{name}: {s.key} has no source"
        section, _, field = s.key.partition(".")
        value = getattr(getattr(cfg, section), field) if field else getattr(cfg, section)
        assert value == s.value, (name, s.key, value)
    for s in preset.recommended:
        assert s.source.strip()


def test_mwnet_noise_preset_is_the_official_script() -> None:
    cfg = parse_train_config({"preset": "mwnet-noise", "data": DATA})
    assert cfg.method == "mwnet"
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.nesterov) == (0.1, 0.9, False)
    assert (cfg.optim.weight_decay, cfg.optim.batch_size, cfg.optim.epochs) == (5e-4, 100, 120)
    assert cfg.optim.schedule == "step" and cfg.optim.milestones == [80 / 120, 100 / 120]
    assert cfg.meta.warmup_epochs == 0  # default is 1
    assert cfg.meta.normalize_weights == "none"  # default is auto
    assert (cfg.meta.optimizer, cfg.meta.lr, cfg.meta.weight_decay) == ("adam", 1e-3, 1e-4)
    assert cfg.meta.virtual_step == "sgd"
    imb = parse_train_config({"preset": "mwnet-imbalance", "data": DATA})
    assert imb.meta.normalize_weights == "batch"  # only this script normalizes by the sum
    assert (imb.meta.optimizer, imb.meta.lr, imb.meta.nesterov) == ("sgd", 1e-5, True)
    cm = parse_train_config({"preset": "cmwnet-imbalance", "data": DATA})
    assert (cm.method, cm.meta.warmup_epochs, cm.optim.epochs, cm.optim.gamma) == (
        "cmwnet",
        160,
        200,
        0.01,
    )
    assert cm.meta.amsgrad is True


def test_user_values_and_set_win_over_the_preset() -> None:
    values = {"preset": "mwnet_noise", "data": DATA, "optim": {"lr": 0.05}, "meta": {"lr": 0.01}}
    cfg = parse_train_config(apply_overrides(values, ["optim.epochs=7", "meta.warmup_epochs=2"]))
    assert cfg.preset == "mwnet-noise"  # '_' and '-' both accepted
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.meta.lr, cfg.meta.warmup_epochs) == (
        0.05,
        7,
        0.01,
        2,
    )
    assert cfg.optim.batch_size == 100 and cfg.meta.virtual_step == "sgd"  # rest from preset
    # an explicitly given default also wins
    cfg = parse_train_config({"preset": "mwnet-noise", "data": DATA, "meta": {"warmup_epochs": 1}})
    assert cfg.meta.warmup_epochs == 1
    # without a preset nothing changes
    plain = {"method": "erm", "data": DATA}
    assert apply_preset(plain) is plain
    assert parse_train_config(plain).optim.lr == TrainConfig.model_fields["optim"].default.lr


def test_unknown_preset_is_a_one_line_error() -> None:
    with pytest.raises(SlemError, match="preset 'nope' is unknown; use one of mwnet-noise"):
        get_preset("nope")
    with pytest.raises(SlemError, match="preset 'nope' is unknown"):
        parse_train_config({"preset": "nope", "data": DATA})


def test_meta_optimizer_follows_the_config() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = make_meta_optimizer(params, get_config("mwnet-imbalance").meta)
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (
        1e-5,
        0.9,
        True,
        5e-4,
    )
    adam = make_meta_optimizer(params, get_config("cmwnet-imbalance").meta)
    assert isinstance(adam, torch.optim.Adam)
    assert (adam.param_groups[0]["amsgrad"], adam.param_groups[0]["weight_decay"]) == (True, 1e-5)


def get_config(name: str) -> TrainConfig:
    return parse_train_config({"preset": name, "data": DATA})


def test_cli_lists_shows_and_applies_presets(tmp_path: object) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["presets"])
    assert listed.exit_code == 0
    for name in PRESETS:
        assert name in listed.output
    shown = runner.invoke(app, ["presets", "mwnet-noise"], env={"COLUMNS": "200"})
    assert (
        shown.exit_code == 0
        and "meta.virtual_step" in shown.output
        and "MW-Net.py:210" in (shown.output)
    )
    md = runner.invoke(app, ["presets", "--markdown"], env={"COLUMNS": "300"})
    assert md.exit_code == 0 and md.output.startswith("| preset | setting | value | source |")
    bad = runner.invoke(app, ["presets", "nope"])
    assert bad.exit_code == 2 and "error: preset 'nope' is unknown" in bad.output


def test_train_preset_option_reaches_the_config(tmp_path: object, monkeypatch: object) -> None:
    import pathlib

    from slem.cli import train_cmd

    seen: list[TrainConfig] = []
    monkeypatch.setattr(train_cmd, "run_and_report", lambda cfg, *a, **k: seen.append(cfg))  # type: ignore[attr-defined]
    path = pathlib.Path(str(tmp_path)) / "c.yaml"
    path.write_text("method: erm\ndata: {name: digits, meta_per_class: 5}\noptim: {epochs: 3}\n")
    result = CliRunner().invoke(
        app, ["train", str(path), "--preset", "mwnet-noise", "--set", "optim.lr=0.2"]
    )
    assert result.exit_code == 0, result.output
    cfg = seen[0]
    assert (cfg.preset, cfg.method, cfg.optim.epochs, cfg.optim.lr) == (
        "mwnet-noise",
        "erm",
        3,
        0.2,
    )
    assert cfg.optim.batch_size == 100
    # the preset's meta-learning fields are left out: method erm does not read them
    assert "meta" not in cfg.model_fields_set and cfg.meta.warmup_epochs == 1


def test_markdown_table_has_a_row_per_setting() -> None:
    table = markdown_table()
    n = sum(len(p.settings) + len(p.recommended) for p in PRESETS.values())
    assert len(table.splitlines()) == n + 2


# ---------------------------------------------------------------- uniform noise


def test_uniform_noise_realized_rate_and_transition() -> None:
    labels = np.repeat(np.arange(10), 2000)
    result = uniform_noise(labels, 0.4, 10, np.random.default_rng(0))
    assert result.kind == "uniform"
    # redrawn: exactly 40% of each class; of those, 1/10 land on the true class
    assert abs(result.realized_rate - 0.4 * 9 / 10) < 0.01
    expected = uniform_transition(0.4, 10)
    assert np.allclose(np.diag(expected), 0.64) and np.isclose(expected[0, 1], 0.04)
    assert np.allclose(expected.sum(axis=1), 1.0)
    assert np.abs(result.realized_transition() - expected).max() < 0.015
    # seeded: same generator seed, same labels; another seed, other labels
    again = uniform_noise(labels, 0.4, 10, np.random.default_rng(0))
    other = uniform_noise(labels, 0.4, 10, np.random.default_rng(1))
    assert np.array_equal(result.labels, again.labels)
    assert not np.array_equal(result.labels, other.labels)


def test_uniform_noise_in_a_task_exposes_its_transition() -> None:
    cfg = parse_data_config({"name": "mnist1d", "noise": "uniform:0.4", "seed": 3})
    assert str(cfg.noise) == "uniform:0.4" and cfg.noise is not None
    assert cfg.noise.is_label_noise
    task = build_task(cfg)
    assert task.transition is not None
    assert np.allclose(task.transition, uniform_transition(0.4, 10))
    assert 0.32 < task.train.noise_rate < 0.40  # 0.36 expected
    sym = build_task(DataConfig(name="mnist1d", noise="symmetric:0.4", seed=3))
    assert abs(sym.train.noise_rate - 0.4) < 0.01  # symmetric flips to the other classes
    with pytest.raises(SlemError, match="noise rate"):
        uniform_noise(np.zeros(4, dtype=np.int64), 1.2, 10, np.random.default_rng(0))


def test_uniform_noise_drives_the_forward_oracle() -> None:
    cfg = parse_train_config(
        {
            "method": "forward",
            "data": {"name": "digits", "noise": "uniform:0.4"},
            "loss": {"forward_transition": "true"},
        }
    )
    task = build_task(cfg.data)
    assert task.transition is not None and np.isclose(task.transition[0, 0], 0.64)


# ---------------------------------------------------------------- train_size


@pytest.mark.parametrize(
    ("name", "train_size", "extra"),
    [
        ("mnist1d", 3000, {"meta_per_class": 10}),
        ("mnist1d", 20000, {}),  # more than the default 10,000 generated samples hold
        ("digits", 1000, {"meta_per_class": 5}),
        ("digits", 777, {}),
    ],
)
def test_train_size_is_exact(name: str, train_size: int, extra: dict[str, int]) -> None:
    task = build_task(DataConfig(name=name, train_size=train_size, **extra))
    assert task.features.n_train == len(task.train.y) == train_size
    n_val = task.features.n_val
    assert abs(n_val / (n_val + train_size) - 0.1) < 0.01  # val_fraction of train + val
    counts = np.bincount(task.train.y_true, minlength=10)
    assert counts.max() - counts.min() <= 0.1 * counts.mean() + 2  # stratified
    if "meta_per_class" in extra:
        assert task.features.n_meta == 10 * extra["meta_per_class"]
    # disjoint splits
    assert not set(task.train.index) & set(task.val.index)


def test_train_size_errors() -> None:
    with pytest.raises(SlemError, match=r"data\.size .* or data\.train_size .*not both"):
        parse_data_config({"name": "digits", "size": 1000, "train_size": 800})
    with pytest.raises(SlemError, match=r"data\.train_size fixes the balanced training set"):
        parse_data_config({"name": "digits", "train_size": 800, "imbalance": 10})
    with pytest.raises(SlemError, match=r"train_size 1500 .*at most 1250 training samples") as e:
        build_task(DataConfig(name="digits", train_size=1500, meta_per_class=5))
    assert "\n" not in str(e.value)
    # the named maximum works
    assert (
        build_task(DataConfig(name="digits", train_size=1250, meta_per_class=5)).features.n_train
        == 1250
    )
