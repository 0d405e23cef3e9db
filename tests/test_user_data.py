"""A user's own data is taken as it is: no silent synthetic corruption, trusted meta and test
files encoded like the training file, metrics that say which labels they used, and run files
written with the user's umask."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from slem.cli.app import app
from slem.data import DataConfig, build_task
from slem.data.config import parse_data_config
from slem.errors import SlemError

CLASSES = np.array(["ant", "bee", "cat", "dog"])


def table(n: int, seed: int, flip: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` rows of two numeric features, a colour and a string label; ``flip`` of the labels
    are replaced by other classes. Returns the table and the true class of each row."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 4, n)
    X = rng.normal(size=(n, 2)) + 2.0 * c[:, None]
    labels = CLASSES[c].copy()
    wrong = rng.random(n) < flip
    labels[wrong] = CLASSES[(c[wrong] + rng.integers(1, 4, wrong.sum())) % 4]
    colour = rng.choice(["red", "blue"], n)
    frame = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "colour": colour, "label": labels})
    return frame, c


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """my.csv: 400 rows, 30% of labels wrong; trusted.csv (80) and test.csv (200): clean, with
    columns in another order."""
    paths = {k: tmp_path / f"{k}.csv" for k in ("my", "trusted", "test")}
    table(400, 0, flip=0.3)[0].to_csv(paths["my"], index=False)
    table(80, 1)[0].to_csv(paths["trusted"], index=False)
    frame = table(200, 2)[0]
    frame[["label", "colour", "b", "a"]].to_csv(paths["test"], index=False)
    return paths


def task_of(path: Path, **fields: object) -> object:
    return build_task(parse_data_config({"name": str(path), "target": "label", **fields}))


# ---------------------------------------------------------------- synthetic corruption


def test_noise_or_imbalance_on_a_user_file_is_a_one_line_error(files: dict[str, Path]) -> None:
    with pytest.raises(SlemError) as info:
        task_of(files["my"], noise="symmetric:0.4")
    message = str(info.value)
    assert "\n" not in message
    assert "data.noise symmetric:0.4 would add synthetic noise to the labels" in message
    assert "data.synthetic_corruption=true" in message
    with pytest.raises(SlemError, match=r"data.imbalance 10 would subsample your own file"):
        task_of(files["my"], imbalance=10)
    # both at once: one line naming both fields
    with pytest.raises(SlemError, match=r"data.noise pairflip:0.2 .*; data.imbalance 5 "):
        task_of(files["my"], noise="pairflip:0.2", imbalance=5)
    # regression targets too
    frame = table(120, 3)[0].assign(label=np.linspace(0, 1, 120))
    frame.to_csv(files["my"].with_name("reg.csv"), index=False)
    with pytest.raises(SlemError, match="synthetic noise to the targets of your own file"):
        task_of(files["my"].with_name("reg.csv"), noise="gaussian:0.3")


def test_no_op_corruption_is_accepted_and_a_user_file_keeps_its_labels(
    files: dict[str, Path],
) -> None:
    task = task_of(files["my"], noise="symmetric:0", imbalance=1)
    raw = pd.read_csv(files["my"])
    assert task.synthetic_corruption is None  # type: ignore[attr-defined]
    for split in (task.train, task.val, task.test):  # type: ignore[attr-defined]
        names = np.array(task.class_names)[split.y]  # type: ignore[attr-defined]
        assert (names == raw["label"].to_numpy()[split.index]).all()
        assert not split.noisy_mask.any()


def test_synthetic_corruption_on_purpose_is_applied_and_reported(files: dict[str, Path]) -> None:
    task = task_of(files["my"], noise="symmetric:0.4", synthetic_corruption=True)
    said = "synthetic noise symmetric:0.4 added to train and val"
    assert task.synthetic_corruption == said  # type: ignore[attr-defined]
    assert abs(task.train.noise_rate - 0.4) < 0.08  # type: ignore[attr-defined]
    summary = task.summary()  # type: ignore[attr-defined]
    assert summary["synthetic_corruption"] == said
    assert said in summary["splits"]["train"] and said in summary["splits"]["val"]
    assert summary["splits"]["test"] == "drawn from my.csv (labels as given, may be noisy)"
    assert any(said in note for note in summary["notes"])


def test_benchmarks_keep_noise_without_the_flag_and_their_labels_are_clean() -> None:
    task = build_task(DataConfig(name="iris", noise="symmetric:0.4", meta_per_class=3))
    assert task.train.noise_rate > 0.2
    summary = task.summary()
    assert summary["test_labels"] == "clean" and summary["meta_labels"] == "clean"
    assert summary["synthetic_corruption"] == "synthetic noise symmetric:0.4 added to train and val"
    assert summary["splits"]["test"] == "drawn from iris (clean labels)"
    clean = build_task(DataConfig(name="iris")).summary()
    assert clean["synthetic_corruption"] is None and clean["meta_labels"] is None


# ---------------------------------------------------------------- where splits come from


def test_splits_drawn_from_a_user_file_say_their_labels_are_as_given(
    files: dict[str, Path],
) -> None:
    task = task_of(files["my"], meta_per_class=5)
    s = task.summary()  # type: ignore[attr-defined]
    assert s["test_labels"] == "as_given" and s["meta_labels"] == "as_given"
    assert s["splits"] == {
        "train": "my.csv (labels as given, may be noisy)",
        "val": "drawn from my.csv (labels as given, may be noisy)",
        "test": "drawn from my.csv (labels as given, may be noisy)",
        "meta": "drawn from my.csv (labels as given, may be noisy)",
    }


def test_meta_and_test_files_are_encoded_like_the_training_file(files: dict[str, Path]) -> None:
    task = task_of(files["my"], meta=str(files["trusted"]), test=str(files["test"]))
    train_raw = pd.read_csv(files["my"])
    test_raw = pd.read_csv(files["test"])
    meta_raw = pd.read_csv(files["trusted"])
    # the whole training file is train + val; meta and test are the files, row for row
    assert len(task.train) + len(task.val) == 400  # type: ignore[attr-defined]
    assert len(task.meta) == 80 and len(task.test) == 200  # type: ignore[attr-defined]
    names = np.array(task.class_names)  # type: ignore[attr-defined]
    assert (names[task.test.y] == test_raw["label"].to_numpy()).all()  # type: ignore[attr-defined]
    assert (names[task.meta.y] == meta_raw["label"].to_numpy()).all()  # type: ignore[attr-defined]
    # inputs: the training file's column order and one-hot levels, standardized with the
    # statistics of the training split (not of the test file)
    norm = task.normalizer  # type: ignore[attr-defined]
    raw = task.test.X * norm.std + norm.mean  # type: ignore[attr-defined]
    np.testing.assert_allclose(raw[:, 0], test_raw["a"], atol=1e-4)
    np.testing.assert_allclose(raw[:, 1], test_raw["b"], atol=1e-4)
    np.testing.assert_allclose(raw[:, 2], test_raw["colour"] == "blue", atol=1e-5)
    np.testing.assert_allclose(raw[:, 3], test_raw["colour"] == "red", atol=1e-5)
    train_a = train_raw["a"].to_numpy()[task.train.index]  # type: ignore[attr-defined]
    assert norm.mean[0] == pytest.approx(train_a.mean(), abs=1e-5)
    assert norm.mean[0] != pytest.approx(test_raw["a"].mean(), abs=1e-3)
    s = task.summary()  # type: ignore[attr-defined]
    assert s["test_labels"] == "trusted_file" and s["meta_labels"] == "trusted_file"
    assert s["splits"]["test"] == f"{files['test']} (trusted file)"
    assert s["splits"]["meta"] == f"{files['trusted']} (trusted file)"
    assert s["n_test"] == 200 and s["n_meta"] == 80


def test_numeric_labels_match_however_the_file_writes_them(tmp_path: Path) -> None:
    frame = table(200, 4)[0]
    frame["label"] = np.searchsorted(CLASSES, frame["label"])  # ints 0..3
    frame.to_csv(tmp_path / "train.csv", index=False)
    test = table(60, 5)[0]
    test["label"] = np.searchsorted(CLASSES, test["label"]).astype(float)  # 0.0 .. 3.0
    test.to_csv(tmp_path / "test.csv", index=False)
    task = task_of(tmp_path / "train.csv", test=str(tmp_path / "test.csv"))
    assert task.class_names == ("0", "1", "2", "3")  # type: ignore[attr-defined]
    np.testing.assert_array_equal(task.test.y, test["label"].astype(int))  # type: ignore[attr-defined]


def test_missing_values_in_a_test_file_get_training_medians_only_with_impute(
    files: dict[str, Path],
) -> None:
    test = pd.read_csv(files["test"])
    test.loc[3, "a"] = np.nan
    test.to_csv(files["test"], index=False)
    with pytest.raises(
        SlemError, match=r"data.test test.csv: missing feature values \(a: 1\); .*impute"
    ):
        task_of(files["my"], test=str(files["test"]))
    task = task_of(files["my"], test=str(files["test"]), impute=True)
    train_a = pd.read_csv(files["my"])["a"].to_numpy()[task.train.index]  # type: ignore[attr-defined]
    norm = task.normalizer  # type: ignore[attr-defined]
    filled = task.test.X[3, 0] * norm.std[0] + norm.mean[0]  # type: ignore[attr-defined]
    assert filled == pytest.approx(np.median(train_a), abs=1e-4)


def test_an_unseen_level_is_zeros_and_reported(files: dict[str, Path]) -> None:
    test = pd.read_csv(files["test"])
    test.loc[:9, "colour"] = "green"
    test.to_csv(files["test"], index=False)
    task = task_of(files["my"], test=str(files["test"]))
    norm = task.normalizer  # type: ignore[attr-defined]
    raw = task.test.X * norm.std + norm.mean  # type: ignore[attr-defined]
    np.testing.assert_allclose(raw[:10, 2:4], 0.0, atol=1e-5)
    assert any(
        "10 rows have levels of 'colour' not seen in my.csv" in n
        for n in task.notes  # type: ignore[attr-defined]
    )


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            lambda f: f.drop(columns=["b"]).assign(z=1.0),
            "test",
            r"columns differ from my.csv "
            r"\(missing b; unexpected z\)",
        ),
        (lambda f: f.assign(label="emu"), "test", "labels that are not classes of my.csv: emu"),
        (lambda f: f.assign(a="unknown"), "meta", "column 'a' holds text .*'unknown'"),
        (lambda f: f.iloc[:0], "meta", "data.meta file .* has no rows"),
    ],
)
def test_meta_or_test_files_that_do_not_match_are_one_line_errors(
    files: dict[str, Path], change: object, field: str, message: str
) -> None:
    path = files["trusted"]
    change(pd.read_csv(path)).to_csv(path, index=False)  # type: ignore[operator]
    with pytest.raises(SlemError, match=message) as info:
        task_of(files["my"], **{field: str(path)})
    assert "\n" not in str(info.value)


def test_meta_and_test_file_misuse_is_named(files: dict[str, Path]) -> None:
    with pytest.raises(
        SlemError, match=r"data.meta .* is the meta set: remove data.meta_per_class"
    ):
        task_of(files["my"], meta=str(files["trusted"]), meta_per_class=5)
    with pytest.raises(SlemError, match=r"data.test .* is for your own data file; 'iris'"):
        build_task(DataConfig(name="iris", test=str(files["test"])))
    with pytest.raises(SlemError, match=r"data.test file '.*nope.csv' does not exist"):
        task_of(files["my"], test=str(files["my"].with_name("nope.csv")))


def test_regression_test_file(tmp_path: Path) -> None:
    for name, n, seed in (("train", 150, 6), ("test", 50, 7)):
        frame = table(n, seed)[0]
        frame["label"] = frame["a"] * 2.0 + 0.5
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    task = task_of(tmp_path / "train.csv", test=str(tmp_path / "test.csv"))
    assert task.task_type == "regression" and task.test_labels == "trusted_file"  # type: ignore[attr-defined]
    expected = pd.read_csv(tmp_path / "test.csv")["label"].to_numpy()
    np.testing.assert_allclose(task.test.y, expected)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- the CLI


@pytest.fixture()
def umask_027() -> Iterator[int]:
    previous = os.umask(0o027)
    yield 0o027
    os.umask(previous)


def write_config(tmp_path: Path, data: dict[str, object], method: str = "erm") -> Path:
    """A tiny config as a user writes one from examples/mwnet_mnist1d.yaml."""
    doc = {
        "method": method,
        "data": data,
        "model": {"width": 8},
        "optim": {"epochs": 2, "batch_size": 64, "lr": 0.05},
        "seed": 0,
    }
    if method == "mwnet":
        doc["meta"] = {"objective": "clean", "hypergrad": "lookahead", "warmup_epochs": 0}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_cli_train_on_a_user_file_with_an_example_noise_field_stops(
    runner: CliRunner, files: dict[str, Path], tmp_path: Path
) -> None:
    data = {"name": str(files["my"]), "target": "label", "noise": "symmetric:0.4"}
    config = write_config(tmp_path, {**data, "meta_per_class": 10})
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.noise symmetric:0.4")
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_cli_train_says_which_labels_the_test_accuracy_used(
    runner: CliRunner, files: dict[str, Path], tmp_path: Path
) -> None:
    data = {"name": str(files["my"]), "target": "label"}
    run = tmp_path / "given"
    result = runner.invoke(
        app, ["train", str(write_config(tmp_path, data)), "--out", str(run), "--quiet"]
    )
    assert result.exit_code == 0, result.stderr
    assert "(no synthetic noise)" in result.stdout
    assert "test labels: as given in my.csv, may be noisy" in result.stdout
    assert "(clean)" not in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_labels"] == "as_given" and summary["synthetic_corruption"] is None
    assert summary["splits"]["test"] == "drawn from my.csv (labels as given, may be noisy)"

    # with a trusted meta file (enough for MW-Net's clean meta objective) and a test file
    trusted = {**data, "meta": str(files["trusted"]), "test": str(files["test"])}
    run = tmp_path / "trusted"
    result = runner.invoke(
        app,
        ["train", str(write_config(tmp_path, trusted, "mwnet")), "--out", str(run), "--quiet"],
    )
    assert result.exit_code == 0, result.stderr
    assert f"test labels: from {files['test']}" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_labels"] == "trusted_file" and summary["meta_labels"] == "trusted_file"
    assert summary["n_meta"] == 80 and summary["splits"]["meta"].startswith(str(files["trusted"]))

    # synthetic noise on purpose is said in the printed line and the summary
    noisy = {**data, "noise": "symmetric:0.4", "synthetic_corruption": True}
    run = tmp_path / "noisy"
    result = runner.invoke(
        app, ["train", str(write_config(tmp_path, noisy)), "--out", str(run), "--quiet"]
    )
    assert result.exit_code == 0, result.stderr
    assert "(synthetic noise symmetric:0.4 added to train and val)" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["synthetic_corruption"].startswith("synthetic noise symmetric:0.4")


def test_cli_benchmark_line_still_says_clean(runner: CliRunner, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"name": "iris", "noise": "symmetric:0.2"})
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert "iris (synthetic noise symmetric:0.2 added to train and val)" in result.stdout
    assert "test labels: clean" in result.stdout


def test_data_show_prints_split_sources_and_takes_the_flags(
    runner: CliRunner, files: dict[str, Path]
) -> None:
    args = ["data", "show", str(files["my"]), "--target", "label"]
    shown = runner.invoke(
        app, [*args, "--test", str(files["test"]), "--meta", str(files["trusted"])]
    )
    assert shown.exit_code == 0, shown.stderr
    assert f"test: {files['test']} (trusted file)" in shown.stdout
    assert "as given count" in shown.stdout
    refused = runner.invoke(app, [*args, "--noise", "symmetric:0.4"])
    assert refused.exit_code == 2 and "--synthetic-corruption" in refused.stderr
    allowed = runner.invoke(app, [*args, "--noise", "symmetric:0.4", "--synthetic-corruption"])
    assert allowed.exit_code == 0, allowed.stderr
    assert "synthetic noise symmetric:0.4 added to train and val" in allowed.stdout


# ---------------------------------------------------------------- file modes


def test_run_files_get_the_users_umask(
    runner: CliRunner, files: dict[str, Path], tmp_path: Path, umask_027: int
) -> None:
    data = {"name": str(files["my"]), "target": "label", "meta": str(files["trusted"])}
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", str(write_config(tmp_path, data, "mwnet")), "--out", str(run), "--quiet"]
    )
    assert result.exit_code == 0, result.stderr
    written = [p for p in run.rglob("*") if p.is_file() and not p.name.startswith(".")]
    names = {p.relative_to(run).as_posix() for p in written}
    assert {"model.safetensors", "methodology/methodology.safetensors", "summary.json"} <= names
    assert any(n.startswith("plots/") for n in names) and "checkpoint.pt" in names
    modes = {p.relative_to(run).as_posix(): oct(p.stat().st_mode & 0o777) for p in written}
    assert modes == dict.fromkeys(names, oct(0o666 & ~umask_027))


def test_methodology_save_uses_the_umask(tmp_path: Path) -> None:
    from slem.methodology import load_methodology
    from slem.methodology.weighting import MWNet

    previous = os.umask(0o002)
    try:
        net = MWNet()
        net.save(tmp_path / "art")
    finally:
        os.umask(previous)
    for name in ("methodology.safetensors", "methodology.json"):
        assert (tmp_path / "art" / name).stat().st_mode & 0o777 == 0o664, name
    loaded, _ = load_methodology(tmp_path / "art")
    for a, b in zip(loaded.state_dict().values(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
