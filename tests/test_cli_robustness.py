"""Issue 14, parts 4-6: run directories are never corrupted, what slem prints is true and
readable, and every bad input is one line on stderr with exit code 2 (nothing silently
ignored). Each test covers a *kind* of input, parametrized over the commands that take it."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from slem.cli.app import app
from slem.errors import SlemError
from slem.rundir import lock_run_dir
from slem.train.config import parse_train_config
from slem.train.run import train_run

#: a tiny meta-learning run (iris, one epoch): writes config, checkpoint and an artifact
TINY: dict[str, Any] = {
    "method": "mwnet",
    "data": {"name": "iris", "noise": "symmetric:0.4", "meta_per_class": 5},
    "model": {"width": 8},
    "optim": {"epochs": 1, "batch_size": 32},
    "meta": {"warmup_epochs": 0},
    "threads": 1,
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "mw"
    train_run(parse_train_config(TINY), run, progress=False)
    return run


@pytest.fixture()
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run that a test may damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "copy"))


@pytest.fixture()
def erm_config(tmp_path: Path) -> Path:
    path = tmp_path / "erm.yaml"
    erm = {k: v for k, v in TINY.items() if k != "meta"}  # MW-Net's section: ERM reads none
    path.write_text(yaml.safe_dump({**erm, "method": "erm", "data": {"name": "iris"}}))
    return path


def one_line_error(result: Any, *fragments: str) -> str:
    """The run failed with exit 2 and exactly one ``error: ...`` line holding ``fragments``."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return str(lines[0])


# ---------------------------------------------------------------- user text is printed literally


@pytest.mark.parametrize(
    "args",
    [
        ["train", "conf[/x].yaml"],
        ["train", "--resume", "run[/x]"],
        ["apply", "art[/x]", "--data", "iris"],
        ["apply", "--resume", "run[/x]"],
        ["bbo", "train", "conf[/x].yaml"],
        ["bbo", "train", "--resume", "run[/x]"],
        ["bbo", "run", "art[/x]"],
        ["data", "show", "data[/x].csv", "--target", "y"],
        ["data", "show", "[bold]nope[/bold]"],
    ],
)
def test_user_text_with_brackets_is_printed_literally(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    line = one_line_error(runner.invoke(app, args))
    assert "[/x]" in line or "[bold]nope[/bold]" in line


def test_tables_and_notes_print_bracketed_names_literally(
    runner: CliRunner, tmp_path: Path
) -> None:
    csv = tmp_path / "t[bold]x[red].csv"
    rows = [f"{'a[/b]' if i % 2 else 'c[bold]'},{i * 0.5}" for i in range(60)]
    csv.write_text("y[red],x[/i]\n" + "\n".join(rows) + "\n")
    result = runner.invoke(app, ["data", "show", str(csv), "--target", "y[red]"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"t[bold]x[red].csv  classification  (user file {csv})")
    assert "a[/b]" in result.stdout and "c[bold]" in result.stdout  # class names in the table
    assert "encoded target 'y[red]' as 0=a[/b], 1=c[bold]" in result.stdout  # a note


# ---------------------------------------------------------------- run directories


def test_unmakeable_out_is_one_line(runner: CliRunner, tmp_path: Path, erm_config: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    for args in (
        ["train", str(erm_config), "--out", str(blocker / "x")],
        ["demo", "--out", str(blocker / "x"), "--epochs", "1"],
        ["bbo", "train", "--iterations", "1", "--out", str(blocker / "x")],
    ):
        one_line_error(runner.invoke(app, [*args, "--quiet"]), "cannot create run directory")


@pytest.mark.parametrize(
    "override",
    ["device=cuda", "data.name=no-such-data", "data.noise=symmetric:2", "optim.epochs=0"],
)
def test_nothing_is_written_before_config_device_and_data_are_valid(
    runner: CliRunner, tmp_path: Path, erm_config: Path, override: str
) -> None:
    if override == "device=cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(erm_config), "--out", str(out), "--set", override])
    one_line_error(result)
    assert not out.exists()


def test_apply_with_a_bad_artifact_writes_nothing(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "applied"
    result = runner.invoke(app, ["apply", str(tmp_path), "--data", "iris", "--out", str(out)])
    one_line_error(result, "not a methodology artifact")
    assert not out.exists()


def test_a_method_that_does_not_fit_the_task_writes_nothing(
    runner: CliRunner, tmp_path: Path, erm_config: Path, trained_run: Path
) -> None:
    """Refused before a byte is written (the method's targets, the artifact's targets), and
    the same --out can then be used for a run that fits."""
    out = tmp_path / "run"
    wrong = runner.invoke(app, ["train", str(erm_config), "--out", str(out), "--set", "method=mse"])
    one_line_error(wrong, "is for regression targets")
    assert not out.exists()
    applied = runner.invoke(
        app, ["apply", str(trained_run), "--data", "diabetes", "--out", str(out)]
    )
    one_line_error(applied, "'mwnet' methodology applies to classification tasks", "--data")
    assert not out.exists()
    fits = runner.invoke(app, ["train", str(erm_config), "--out", str(out)])
    assert fits.exit_code == 0, fits.stderr


def test_a_refusal_after_the_config_is_written_leaves_no_run(tmp_path: Path) -> None:
    """A method refused once the trainer is built (here an HWnet whose clean meta set has a
    single sample) removes the config it wrote: the directory holds no run to resume."""
    out = tmp_path / "run"
    cfg = parse_train_config(
        {**TINY, "method": "hwnet", "data": {"name": "diabetes", "meta_size": 1}}
    )
    with pytest.raises(SlemError, match="at least 2 samples"):
        train_run(cfg, out, progress=False)
    assert not out.exists()


def test_a_run_directory_being_written_is_locked_for_every_writer(
    runner: CliRunner, tmp_path: Path, erm_config: Path, trained_run: Path
) -> None:
    out = tmp_path / "busy"
    attempts = {
        "train": ["train", str(erm_config), "--out", str(out)],
        "apply": ["apply", str(trained_run), "--data", "iris", "--out", str(out)],
        "bbo": ["bbo", "train", "--iterations", "1", "--out", str(out)],
        "train --resume": ["train", "--resume", str(out)],
    }
    with lock_run_dir(out):
        (out / "config.yaml").write_text(trained_run.joinpath("config.yaml").read_text())
        before = sorted(p.name for p in out.iterdir())
        for args in attempts.values():
            one_line_error(runner.invoke(app, [*args, "--quiet"]), "being written by another")
        assert sorted(p.name for p in out.iterdir()) == before


def test_a_finished_run_directory_is_not_overwritten(
    runner: CliRunner, run_copy: Path, erm_config: Path
) -> None:
    config = (run_copy / "config.yaml").read_text()
    for args in (
        ["train", str(erm_config), "--out", str(run_copy)],
        ["apply", str(run_copy), "--data", "iris", "--out", str(run_copy)],
    ):
        one_line_error(runner.invoke(app, [*args, "--quiet"]), "already holds a run", "--resume")
    assert (run_copy / "config.yaml").read_text() == config


def test_apply_finds_the_methodology_of_a_run_directory(
    runner: CliRunner, trained_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "applied"
    result = runner.invoke(
        app,
        ["apply", str(trained_run), "--data", "wine", "--epochs", "1", "--out", str(out)],
    )
    assert result.exit_code == 0, result.stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["methodology"] == str(trained_run / "methodology")
    assert config["optim"]["epochs"] == 1
    assert (out / ".lock").is_file() and (out / "methodology" / "methodology.json").is_file()
    assert not list(out.rglob("*.tmp"))
    # the settings it inherited, then outside a terminal one plain line per epoch, the result
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model: mlp width ") and lines[1].startswith("optim: ")
    assert lines[2].startswith("apply wine  epoch 1/1  train loss ")
    assert "val acc" in lines[2] and "ETA 0:00:00" in lines[2]


# ---------------------------------------------------------------- damaged files


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


DAMAGED = {
    "artifact weights": ("methodology/methodology.safetensors", _truncate),
    "artifact json": ("methodology/methodology.json", _truncate),
    "artifact json list": ("methodology/methodology.json", lambda p: p.write_text("[1]")),
    "checkpoint": ("checkpoint.pt", _truncate),
    "checkpoint empty": ("checkpoint.pt", lambda p: p.write_bytes(b"")),
    "checkpoint foreign": ("checkpoint.pt", lambda p: torch.save([1, 2], p)),
    "config yaml": ("config.yaml", lambda p: p.write_text("method: [erm\n")),
    "config list": ("config.yaml", lambda p: p.write_text("- erm\n")),
    "config fields": ("config.yaml", lambda p: p.write_text("method: erm\n")),
}
READERS = {
    "methodology": [["apply", "{run}", "--data", "iris"], ["bbo", "run", "{run}/methodology"]],
    "checkpoint.pt": [["train", "--resume", "{run}"]],
    "config.yaml": [["train", "--resume", "{run}"], ["apply", "--resume", "{run}"]],
}


@pytest.mark.parametrize("kind", list(DAMAGED))
def test_a_damaged_file_is_one_line_naming_it(
    runner: CliRunner, run_copy: Path, tmp_path: Path, kind: str
) -> None:
    name, damage = DAMAGED[kind]
    damage(run_copy / name)
    for template in READERS[name.split("/")[0]]:
        args = [a.replace("{run}", str(run_copy)) for a in template]
        if args[0] == "apply" and "--resume" not in args:
            args += ["--out", str(tmp_path / "applied")]
        line = one_line_error(runner.invoke(app, args), str(run_copy / name))
        assert "restore" in line or "re-create" in line or "delete" in line
    assert not (tmp_path / "applied").exists()


def test_a_damaged_bbo_checkpoint_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    run = tmp_path / "bbo"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"iterations": 2, "batch_size": 2}))
    (run / "meta_checkpoint.pt").write_bytes(b"PK\x03\x04 not really")
    result = runner.invoke(app, ["bbo", "train", "--resume", str(run), "--quiet"])
    one_line_error(result, str(run / "meta_checkpoint.pt"), "delete meta_checkpoint.pt")


# ---------------------------------------------------------------- numbers, conflicts, paths


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["apply", "{run}", "--data", "iris", "--epochs", "0"], "optim.epochs"),
        (["apply", "{run}", "--data", "iris", "--size", "0"], "size"),
        (["apply", "{run}", "--data", "iris", "--imbalance", "0.5"], "imbalance"),
        (["apply", "{run}", "--data", "iris", "--threads", "0"], "threads"),
        (["train", "{config}", "--threads", "0"], "threads"),
        (["demo", "--epochs", "0"], "optim.epochs"),
        (["demo", "--threads", "0"], "threads"),
        (["bbo", "train", "--dim", "0"], "dim"),
        (["bbo", "train", "--iterations", "0"], "iterations"),
        (["bbo", "train", "--steps", "1"], "steps"),
        (["bbo", "train", "--threads", "0"], "threads"),
        (["bbo", "run", "{run}", "--budget", "1"], "--budget"),
        (["bbo", "run", "{run}", "--repeats", "0"], "--repeats"),
        (["bbo", "run", "{run}", "--threads", "0"], "threads"),
        (["data", "show", "iris", "--size", "0"], "size"),
        (["data", "show", "iris", "--meta-per-class", "0"], "meta_per_class"),
        (["data", "show", "diabetes", "--meta-size", "0"], "meta_size"),
        (["data", "show", "iris", "--min-class-size", "0"], "min_class_size"),
        (["data", "show", "iris", "--imbalance", "0"], "imbalance"),
    ],
)
def test_every_zero_or_out_of_range_number_is_an_error(
    runner: CliRunner,
    trained_run: Path,
    erm_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    fragment: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{run}", str(trained_run)).replace("{config}", str(erm_config)) for a in args]
    one_line_error(runner.invoke(app, args), fragment)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["train", "{config}", "--resume", "{run}"], "CONFIG"),
        (["train", "--resume", "{run}", "--set", "optim.epochs=5"], "--set"),
        (["train", "--resume", "{run}", "--out", "elsewhere"], "--out"),
        (["apply", "{run}", "--resume", "{run}"], "ARTIFACT"),
        (["apply", "--resume", "{run}", "--data", "wine"], "--data"),
        (["apply", "--resume", "{run}", "--epochs", "3"], "--epochs"),
        (["apply", "--resume", "{run}", "--seed", "0"], "--seed"),
        (["bbo", "train", "--resume", "{run}", "--dim", "3"], "--dim"),
        (["bbo", "train", "{config}", "--resume", "{run}"], "CONFIG"),
    ],
)
def test_arguments_that_conflict_with_resume_are_an_error(
    runner: CliRunner,
    run_copy: Path,
    erm_config: Path,
    args: list[str],
    named: str,
) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in run_copy.iterdir()}
    args = [a.replace("{run}", str(run_copy)).replace("{config}", str(erm_config)) for a in args]
    one_line_error(runner.invoke(app, [*args, "--quiet"]), "--resume", named)
    assert {p.name: p.stat().st_mtime_ns for p in run_copy.iterdir()} == before


@pytest.mark.parametrize(
    "args",
    [
        ["data", "show", "fashion-mnist", "--data-dir", "{missing}"],
        ["data", "show", "fashion-mnist", "--data-dir", "{empty}"],
        ["data", "show", "digits", "--data-dir", "{empty}"],
        ["apply", "{run}", "--data", "fashion-mnist", "--data-dir", "{missing}"],
        ["apply", "{run}", "--data", "fashion-mnist", "--data-dir", "{empty}"],
        ["train", "{config}", "--set", "data.data_dir={missing}"],
    ],
)
def test_a_named_data_dir_must_exist_and_be_used(
    runner: CliRunner, trained_run: Path, erm_config: Path, tmp_path: Path, args: list[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    subs = {
        "{missing}": str(tmp_path / "missing"),
        "{empty}": str(empty),
        "{run}": str(trained_run),
        "{config}": str(erm_config),
    }
    for key, value in subs.items():
        args = [a.replace(key, value) for a in args]
    out = tmp_path / "out"
    if args[0] != "data":
        args += ["--out", str(out), "--quiet"]
    one_line_error(runner.invoke(app, args), "--data-dir")
    assert not out.exists()


def test_fashion_mnist_data_dir_is_used(runner: CliRunner, tiny_fashion_dir: Path) -> None:
    result = runner.invoke(
        app, ["data", "show", "fashion-mnist", "--data-dir", str(tiny_fashion_dir), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["n_test"] == 50


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity"])
def test_infinite_feature_values_are_a_data_error_naming_the_column(
    runner: CliRunner, tmp_path: Path, value: str
) -> None:
    csv = tmp_path / "t.csv"
    rows = [f"{i % 2},{i},{value if i == 7 else i / 2}" for i in range(40)]
    csv.write_text("y,ok,bad col\n" + "\n".join(rows) + "\n")
    result = runner.invoke(app, ["data", "show", str(csv), "--target", "y"])
    one_line_error(result, "infinite feature values", "bad col")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"method": "erm", "data": {"name": str(csv), "target": "y"}}))
    result = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run")])
    one_line_error(result, "infinite feature values", "bad col")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- what slem prints


def test_non_finite_stop_names_the_value_and_says_no_checkpoint_exists(
    runner: CliRunner, tmp_path: Path, erm_config: Path
) -> None:
    out = tmp_path / "run"
    args = ["train", str(erm_config), "--out", str(out), "--quiet"]
    blow_up = ["--set", "optim.lr=1e30", "--set", "optim.batch_size=4", "--set", "optim.epochs=2"]
    line = one_line_error(runner.invoke(app, [*args, *blow_up]), "epoch 1,")
    assert "no checkpoint was written yet" in line and "start again" in line
    assert "became nan" in line or "became inf" in line or "non-finite" in line
    assert "became 0.0" not in line and not (out / "checkpoint.pt").exists()

    out2 = tmp_path / "run2"
    args = ["train", str(erm_config), "--out", str(out2), "--quiet", "--set", "checkpoint_every=1"]
    line = one_line_error(runner.invoke(app, [*args, *blow_up]))
    assert f"is kept ({out2 / 'checkpoint.pt'})" in line and (out2 / "checkpoint.pt").is_file()


def test_first_non_finite_reports_the_offending_entry() -> None:
    from slem.train.guard import first_non_finite as _first_non_finite

    assert _first_non_finite(torch.tensor(float("inf"))) == "inf"
    shown = _first_non_finite(torch.tensor([[1.0, 2.0], [float("nan"), float("-inf")]]))
    assert shown == "nan at entry 2 of 4, 2 non-finite"


def _tiny_trainer(name: str, noise: str | None, epochs: int, callbacks: list[Any]) -> Any:
    from slem.data import build_task
    from slem.train import make_trainer

    method = "mse" if name == "diabetes" else "erm"
    cfg = parse_train_config(
        {
            "method": method,
            "data": {"name": name, "noise": noise},
            "model": {"width": 8},
            "optim": {"epochs": epochs, "batch_size": 64},
        }
    )
    return make_trainer(cfg, build_task(cfg.data), callbacks=callbacks)


@pytest.mark.parametrize(
    ("name", "noise", "label"),
    [
        ("iris", "symmetric:0.4", "noisy val acc"),
        ("iris", None, "val acc"),
        ("diabetes", "gaussian:0.5", "noisy val MAE"),
    ],
)
def test_progress_in_a_terminal_shows_the_last_epoch_and_says_noisy(
    name: str, noise: str | None, label: str
) -> None:
    from rich.console import Console

    from slem.train.callbacks import ProgressBar, validation_text

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=250, color_system=None)
    bar = ProgressBar("erm [/x]", console=console)
    trainer = _tiny_trainer(name, noise, 3, [bar])
    trainer.fit()
    text = buffer.getvalue()
    last = validation_text(trainer, trainer.progress.history[-1])
    assert last.startswith(label + " ") and last in text
    assert "epoch 3/3" in text and "erm [/x]" in text and "nan" not in text
    assert (label == "val acc") == (not last.startswith("noisy"))


def test_progress_outside_a_terminal_is_one_plain_line_per_epoch() -> None:
    from rich.console import Console

    from slem.train.callbacks import ProgressBar

    buffer = io.StringIO()
    bar = ProgressBar("erm iris", console=Console(file=buffer, width=40))
    trainer = _tiny_trainer("iris", "symmetric:0.4", 3, [bar])
    trainer.fit()
    lines = buffer.getvalue().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    final = trainer.progress.history[-1]["val_accuracy"]
    assert f"noisy val acc {final:.3f}" in lines[-1] and "…" not in buffer.getvalue()


# ---------------------------------------------------------------- threads


def test_threads_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from slem.errors import SlemError
    from slem.train import threads

    before = torch.get_num_threads()
    try:
        assert threads.set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        monkeypatch.setattr(threads, "available_cores", lambda: 16)
        assert threads.default_threads() == 4
        monkeypatch.setattr(threads, "available_cores", lambda: 2)
        assert threads.default_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert threads.default_threads() is None
        assert threads.set_threads(None) == 1  # OMP_NUM_THREADS set: left as it is
        with pytest.raises(SlemError, match="threads must be at least 1"):
            threads.set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_threads_option_is_recorded_and_applied(
    runner: CliRunner, tmp_path: Path, erm_config: Path
) -> None:
    before = torch.get_num_threads()
    try:
        out = tmp_path / "run"
        result = runner.invoke(app, ["train", str(erm_config), "--out", str(out), "--threads", "2"])
        assert result.exit_code == 0, result.stderr
        assert yaml.safe_load((out / "config.yaml").read_text())["threads"] == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("command", [["train"], ["bbo", "train"], ["apply"]])
@pytest.mark.parametrize(
    ("kind", "fragment"), [("dir", "is a directory"), ("binary", "could not be read")]
)
def test_a_config_that_is_no_yaml_text_is_one_line(
    runner: CliRunner, tmp_path: Path, command: list[str], kind: str, fragment: str
) -> None:
    binary = tmp_path / "conf.yaml"
    binary.write_bytes(b"\xd0\xff\x00\x01 not text")
    path = tmp_path if kind == "dir" else binary
    if command == ["apply"]:  # apply reads an artifact directory, not a YAML file
        args = ["apply", str(path), "--data", "iris"]
        fragment = "not a methodology artifact" if kind == "dir" else "does not exist"
    else:
        args = [*command, str(path)]
    one_line_error(runner.invoke(app, [*args, "--out", str(tmp_path / "o")]), fragment)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("reason", ["interrupted", "aborted", "terminated"])
def test_a_stop_says_whether_a_checkpoint_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reason: str
) -> None:
    import typer

    from slem.cli.train_cmd import report_stopped
    from slem.train.guard import TrainingStopped

    for has_checkpoint in (False, True):
        if has_checkpoint:
            (tmp_path / "checkpoint.pt").write_bytes(b"x")
        with pytest.raises(typer.Exit) as exit_info:
            report_stopped(TrainingStopped(reason), tmp_path, "slem train")
        assert exit_info.value.exit_code == (143 if reason == "terminated" else 130)
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        if has_checkpoint:
            assert "no checkpoint" not in err and f"--resume {tmp_path}" in err
        else:
            assert "no checkpoint was written yet" in err and "from the beginning" in err


def test_meta_training_progress_outside_a_terminal_is_ten_plain_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A meta-trainer runs in the same Loop as every trainer: outside a terminal its
    progress is one plain line per tenth of the iterations, with the mean meta loss."""
    from slem.train import ProgressBar
    from slem.train.bbo import BBOMetaTrainer
    from slem.train.config import BBOConfig

    cfg = BBOConfig(dim=2, iterations=20, batch_size=4, steps=4)
    meta = BBOMetaTrainer(cfg, [ProgressBar("meta-training [x]")])
    meta.fit()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10, lines
    assert lines[-1].startswith("meta-training [x]  iteration 20/20  meta loss ")
    assert "ETA 0:00:00" in lines[-1]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "x.yaml", "--threads", "abc"], "--threads"),
        (["train", "--bogus"], "No such option: --bogus"),
        (["data", "show"], "Missing argument"),
        (["hpo", "--workers", "0", "x.yaml"], "--workers"),
    ],
)
def test_usage_errors_of_the_installed_command_are_one_line(args: list[str], fragment: str) -> None:
    """Typer's own usage errors (wrong type, unknown option, missing argument) follow the
    same rule as slem's: one line naming the command's --help, exit code 2."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "slem.cli.app", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert "--help" in lines[0] and "Traceback" not in done.stderr
