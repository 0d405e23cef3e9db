"""The plug-in API: meta-learned weighting in one's own loop (MetaWeighting, equal to
MetaTrainer bit for bit), a frozen rule in three lines, Task.from_arrays, a config without a
data section, progress by default, slem.train.apply, one artifact writer and provenance on
every record; the runnable examples in examples/python are executed here."""

from __future__ import annotations

import copy
import json
import re
import runpy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from slem.bilevel import from_torch
from slem.cli.app import app
from slem.data import Task, build_task, task_from_arrays
from slem.errors import SlemError
from slem.methodology import CMWNet, MWNet, load_frozen, normalize_weights
from slem.train import (
    Callback,
    MetaWeighting,
    ProgressBar,
    TrainConfig,
    TrainingStopped,
    apply,
    apply_config,
    make_trainer,
    parse_train_config,
    read_run_config,
    save_methodology,
    train_run,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "python"
ARTIFACTS = ROOT / "src" / "slem" / "train" / "artifacts.py"


def example(name: str) -> Callable[[list[str]], dict[str, Any]]:
    """The ``main`` of an example script, run as a file (as a user runs it)."""
    main: Callable[[list[str]], dict[str, Any]] = runpy.run_path(
        str(EXAMPLES / f"{name}.py"), run_name=name
    )["main"]
    return main


def blobs(n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    fn: Any = runpy.run_path(str(EXAMPLES / "own_loop.py"), run_name="own_loop")["noisy_blobs"]
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = fn(n, noise, seed)
    return out


@pytest.fixture(scope="module")
def rule(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """own_loop.py, small: the rule it learns and its printed result."""
    path = tmp_path_factory.mktemp("rule") / "rule"
    result = example("own_loop")(["--epochs", "5", "--n", "2000", "--save", str(path)])
    return path, result


@pytest.fixture(scope="module")
def task() -> Task:
    x, y, y_true = blobs(1000, 0.4, 0)
    xm, ym, _ = blobs(40, 0.0, 1)
    xt, yt, _ = blobs(500, 0.0, 2)
    return Task.from_arrays(x, y, x_meta=xm, y_meta=ym, x_test=xt, y_test=yt, y_true=y_true)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))


# ---------------------------------------------------------------------- the examples


def test_own_loop_example_learns_to_down_weight_flipped_labels(
    rule: tuple[Path, dict[str, Any]],
) -> None:
    path, result = rule
    assert result["weight_flipped"] < 0.5 * result["weight_clean"]
    assert result["test_accuracy"] > 0.7  # 4 classes: chance is 0.25
    info = json.loads((path / "methodology.json").read_text())
    assert info["kind"] == "mwnet" and info["training_config"]["optim"]["lr"] == 0.05
    assert info["meta_trained_on"]["dataset"] == "noisy blobs"
    assert info["meta_trained_on"]["meta_steps"] == 5 * 20
    assert info["provenance"]["git_revision"]


def test_frozen_rule_example_transfers_to_a_new_task(rule: tuple[Path, dict[str, Any]]) -> None:
    result = example("frozen_rule")(["--rule", str(rule[0]), "--epochs", "4", "--n", "1000"])
    assert result["weight_flipped"] < 0.5 * result["weight_clean"]
    assert result["test_accuracy"] > 0.7


def test_own_tensors_example_writes_a_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = example("own_tensors")(["--epochs", "4", "--n", "1000", "--out", str(out), "--quiet"])
    assert summary["weight_auc"] > 0.8 and summary["test_accuracy"] > 0.7
    assert summary["dataset"] == "noisy blobs" and summary["test_labels"] == "trusted_file"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"] is None and config["provenance"]["git_revision"]
    info = json.loads((out / "methodology" / "methodology.json").read_text())
    assert info["training_config"]["method"] == "mwnet"
    assert info["meta_trained_on"]["dataset"] == "noisy blobs"
    assert info["meta_trained_on"]["epochs"] == 4
    assert (out / "plots" / "weight_vs_loss.png").is_file()


# ---------------------------------------------------------------------- MetaWeighting


@pytest.mark.parametrize(
    ("optimizer", "scope"), [("sgd", "model"), ("adam", "model"), ("sgd", "head")]
)
def test_meta_weighting_equals_meta_trainer_bit_for_bit(
    task: Task, optimizer: str, scope: str
) -> None:
    """The same model, batches and optimizer: MetaWeighting in a plain loop and MetaTrainer
    reach the same parameters and the same weighting net exactly (a frozen layer included),
    in the exact and the fast mode (``scope``)."""
    lr = 0.05 if optimizer == "sgd" else 1e-3
    config = TrainConfig(
        method="mwnet",
        optim={"epochs": 1, "schedule": "constant", "optimizer": optimizer, "lr": lr},
        meta={"warmup_epochs": 0, "normalize_weights": "batch", "scope": scope},
    )
    torch.manual_seed(1)
    model = mlp()
    model[0].bias.requires_grad_(False)  # only trainable parameters are inner parameters
    mine = copy.deepcopy(model)
    trainer = make_trainer(config, task, model=model)
    trainer.fit(progress=False)

    opt: torch.optim.Optimizer = (
        torch.optim.SGD(mine.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        if optimizer == "sgd"
        else torch.optim.Adam(mine.parameters(), lr=lr, weight_decay=5e-4)
    )
    assert task.meta is not None
    weighting = MetaWeighting(
        mine, opt, (task.meta.X, task.meta.y), normalize_weights="batch", scope=scope
    )
    x, y = task.train.tensors()
    bs = trainer.plan.batch_size
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # epoch 0, seed 0
    for i in range(trainer.plan.steps_per_epoch):
        idx = perm[i * bs : (i + 1) * bs]
        loss = weighting.step(x[idx], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert weighting.meta_steps == trainer.progress.global_step == len(y) // bs
    for a, b in zip(trainer.model.parameters(), mine.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(model[0].bias, mine[0].bias)
    assert trainer.methodology is not None
    for a, b in zip(
        trainer.methodology.parameters(), weighting.methodology.parameters(), strict=True
    ):
        assert torch.equal(a, b)


def _steps(weighting: MetaWeighting, opt: torch.optim.Optimizer, x: Any, y: Any, k: int) -> None:
    for i in range(k):
        loss = weighting.step(x[i * 50 : (i + 1) * 50], y[i * 50 : (i + 1) * 50])
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_meta_weighting_state_dict_resumes_exactly() -> None:
    x, y, _ = blobs(400, 0.4, 0)
    xm, ym, _ = blobs(40, 0.0, 1)
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    weighting = MetaWeighting(model, opt, (xm, ym), batch_size=16, interval=2)
    _steps(weighting, opt, x, y, 3)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), weighting.state_dict()))
    _steps(weighting, opt, x[150:], y[150:], 4)

    again = mlp()
    again.load_state_dict(saved[0])
    opt2 = torch.optim.SGD(again.parameters(), lr=0.05, momentum=0.9)
    opt2.load_state_dict(saved[1])
    resumed = MetaWeighting(again, opt2, (xm, ym), batch_size=16, interval=2, seed=5)
    resumed.load_state_dict(saved[2])
    _steps(resumed, opt2, x[150:], y[150:], 4)
    assert resumed.steps == weighting.steps == 7 and resumed.meta_steps == 4
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_meta_weighting_takes_a_data_loader_and_other_settings() -> None:
    x, y, _ = blobs(200, 0.4, 0)
    xm, ym, _ = blobs(40, 0.0, 1)
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    meta = DataLoader(TensorDataset(xm, ym), batch_size=8, shuffle=True)
    counts = torch.bincount(y, minlength=4).tolist()
    weighting = MetaWeighting(
        model, opt, meta, "cmwnet", class_counts=counts, hypergrad="unrolled", lr=1e-2
    )
    assert isinstance(weighting.methodology, CMWNet) and weighting.normalization == "class"
    before = [p.clone() for p in weighting.methodology.parameters()]
    for _ in range(7):  # more meta steps than the loader has batches: it is cycled
        loss = weighting.step(x[:50], y[:50])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert weighting.weights is not None and weighting.weights.shape == (50,)
    for c in range(4):  # class normalization: mean weight 1 within each label of the batch
        assert float(weighting.weights[y[:50] == c].mean()) == pytest.approx(1.0, abs=1e-5)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(before, weighting.methodology.parameters(), strict=True)
    ]
    assert any(moved) and weighting.meta_loss is not None and np.isfinite(weighting.meta_loss)
    rmsprop = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    MetaWeighting(model, rmsprop, (xm, ym), virtual_step="sgd").step(x[:20], y[:20])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr_meta": 1}, "meta.lr_meta: Extra inputs are not permitted"),
        ({"lr": -1}, "meta.lr: Input should be greater than 0"),
        ({"hypergrad": "first_order"}, "first_order cannot learn method mwnet"),
        ({"methodology": "cmwnet_sl"}, "cmwnet_sl needs a teacher model"),
        ({"objective": "dac"}, "drop objective"),
        ({"normalize_weights": "class"}, "needs class_counts"),
        ({"optimizer": "rmsprop"}, "use one of them, or virtual_step='sgd'"),
        ({"meta": 3}, "meta must be (x_meta, y_meta)"),
        ({"meta": (torch.zeros(3, 20), torch.zeros(2))}, "x_meta has 3 rows and y_meta 2"),
    ],
)
def test_meta_weighting_refuses_bad_settings_in_one_line(
    kwargs: dict[str, Any], message: str
) -> None:
    model = mlp()
    opt_name = kwargs.pop("optimizer", "sgd")
    opt = (
        torch.optim.RMSprop(model.parameters(), lr=0.1)
        if opt_name == "rmsprop"
        else torch.optim.SGD(model.parameters(), lr=0.1)
    )
    meta = kwargs.pop("meta", (torch.zeros(4, 20), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(SlemError) as exc:
        MetaWeighting(model, opt, meta, **kwargs)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_meta_weighting_checks_the_meta_set_against_the_training_batch() -> None:
    """A meta set unlike the training data is one line at the first meta step (not an error
    inside torch); float class indices, as numpy and pandas give them, are taken as they are
    meant, with the same result as integer labels."""
    x, y, _ = blobs(64, 0.4, 0)
    xm, ym, _ = blobs(16, 0.0, 1)

    def first_weights(meta: tuple[Any, Any]) -> Tensor:
        torch.manual_seed(0)
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        weighting = MetaWeighting(model, opt, meta)
        weighting.step(x[:32], y[:32])
        assert weighting.weights is not None
        return weighting.weights

    torch.testing.assert_close(
        first_weights((xm.numpy(), ym.numpy().astype(np.float64))), first_weights((xm, ym))
    )
    for meta, message in [
        (
            (xm[:, :10], ym),
            "meta: inputs of shape (10,) per row, but the training batch's are (20,)",
        ),
        ((xm, ym.float() + 0.5), "meta: labels are fractional"),
        ((xm, torch.nn.functional.one_hot(ym, 4)), "labels like the training labels"),
    ]:
        with pytest.raises(SlemError) as exc:
            first_weights(meta)
        assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam", "adamw"])
def test_from_torch_takes_the_step_the_torch_optimizer_takes(kind: str) -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, 3))
    opts: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "sgd": lambda: torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.01, dampening=0.1),
        "nesterov": lambda: torch.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=True),
        "adam": lambda: torch.optim.Adam([w], lr=0.01, betas=(0.8, 0.9), weight_decay=0.01),
        "adamw": lambda: torch.optim.AdamW([w], lr=0.01, weight_decay=0.1),
    }
    opt = opts[kind]()
    for _ in range(2):  # some state to carry over
        w.grad = torch.randn(5, 3)
        opt.step()
    grad = torch.randn(5, 3)
    inner, state = from_torch(opt, {"w": w})
    virtual, _ = inner.update({"w": w.detach()}, {"w": grad}, state, {})
    w.grad = grad
    opt.step()
    torch.testing.assert_close(virtual["w"], w.detach(), rtol=1e-6, atol=1e-7)


def test_from_torch_refuses_what_it_cannot_follow() -> None:
    w = nn.Parameter(torch.zeros(2))
    for opt, word in (
        (torch.optim.RMSprop([w], lr=0.1), "RMSprop"),
        (torch.optim.Adam([w], amsgrad=True), "amsgrad"),
    ):
        with pytest.raises(SlemError, match=word):
            from_torch(opt, {"w": w})


# ---------------------------------------------------------------------- the frozen rule


def test_a_frozen_rule_reads_loss_values_only() -> None:
    """``(rule(losses) * losses).mean()`` is MW-Net's weighted loss: no gradient flows
    through the weights into the model, whatever graph ``losses`` carries."""
    torch.manual_seed(0)
    rule = MWNet().eval()
    theta = torch.randn(8, requires_grad=True)
    losses = (theta**2).exp()
    (g,) = torch.autograd.grad((rule(losses) * losses).mean(), theta, retain_graph=True)
    (expected,) = torch.autograd.grad((rule(losses.detach()) * losses).mean(), theta)
    assert torch.equal(g, expected)
    cmw = CMWNet(n_groups=2)
    assert cmw(losses).shape == (8,)  # groups optional: every sample in group 0
    torch.testing.assert_close(cmw(losses), cmw(losses, torch.zeros(8, dtype=torch.long)))


def test_normalize_weights_modes() -> None:
    w = torch.tensor([0.1, 0.3, 0.2, 0.6])
    labels = torch.tensor([0, 0, 1, 1])
    assert float(normalize_weights(w).mean()) == pytest.approx(1.0)
    per_class = normalize_weights(w, "class", labels, 2)
    torch.testing.assert_close(per_class, torch.tensor([0.5, 1.5, 0.5, 1.5]))
    assert torch.equal(normalize_weights(w, "none"), w)
    with pytest.raises(ValueError, match="batch, class or none"):
        normalize_weights(w, "mean")


def test_load_frozen_gives_a_frozen_rule(rule: tuple[Path, dict[str, Any]]) -> None:
    frozen = load_frozen(rule[0])
    assert isinstance(frozen, MWNet) and not frozen.training
    assert not any(p.requires_grad for p in frozen.parameters())
    weights = frozen(torch.tensor([0.05, 3.0]))
    assert float(weights[0]) > float(weights[1])  # a low loss is trusted more


# ---------------------------------------------------------------------- Task.from_arrays


def test_task_from_arrays_takes_numpy_and_torch_alike() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    a = Task.from_arrays(x, y, meta_per_class=5, seed=3)
    b = task_from_arrays(torch.from_numpy(x), torch.from_numpy(y), meta_per_class=5, seed=3)
    np.testing.assert_array_equal(a.train.X, b.train.X)
    np.testing.assert_array_equal(a.train.y, b.train.y)
    assert a.is_classification and a.n_classes == 2 and a.meta is not None and len(a.meta) == 10
    np.testing.assert_array_equal(a.train.X, x[a.train.index])  # inputs as given
    assert a.features.n_train + a.features.n_val + len(a.test) + 10 == 300
    standardized = Task.from_arrays(x, y, normalize=True)
    assert abs(float(standardized.train.X.mean())) < 1e-5 and standardized.normalizer is not None

    reg = Task.from_arrays(x, x[:, 1] * 2.0)
    assert reg.task_type == "regression" and reg.train.y.dtype == np.float32
    as_classes = Task.from_arrays(x, y.astype(np.float32), task_type="classification")
    assert as_classes.is_classification and as_classes.n_classes == 2
    words = Task.from_arrays(x, np.where(y == 1, "cat", "dog"))
    assert words.class_names == ("cat", "dog")
    np.testing.assert_array_equal(words.train.y, 1 - y[words.train.index])


def test_task_from_arrays_keeps_given_splits_and_the_true_labels() -> None:
    x, y, y_true = blobs(600, 0.4, 0)
    xm, ym, _ = blobs(20, 0.0, 1)
    task = Task.from_arrays(x, y, x_meta=xm, y_meta=ym, y_true=y_true, name="mine")
    assert task.meta is not None and len(task.meta) == 20
    assert task.meta_labels == "trusted_file" and task.test_labels == "as_given"
    assert abs(task.train.noise_rate - 0.4) < 0.06
    flipped = (y != y_true).numpy()
    np.testing.assert_array_equal(task.train.noisy_mask, flipped[task.train.index])
    assert task.summary()["dataset"] == "mine"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((np.zeros(10), np.zeros(10, dtype=int)), {}, "x has shape (10,); it needs one row"),
        ((np.zeros((10, 2)), np.zeros(9, dtype=int)), {}, "x has 10 rows but y has 9"),
        ((np.zeros((10, 2)), np.zeros((10, 3))), {}, "one-hot labels: y.argmax(1)"),
        ((np.zeros((10, 2)), np.arange(10) % 2), {"x_meta": np.zeros((2, 2))}, "together"),
        (
            (np.zeros((10, 2)), np.arange(10) % 2),
            {"x_test": np.zeros((4, 3)), "y_test": np.zeros(4, dtype=int)},
            "x_test has samples of shape (3,) but x has (2,)",
        ),
        ((np.zeros((10, 2)), np.arange(10) % 2 * 2), {}, "class '1' has 0 sample(s)"),
        ((np.zeros((10, 2)), np.arange(10) % 2 + 0.5), {"task_type": "classification"}, "whole"),
        ((np.zeros((10, 2)), np.arange(10) % 2), {"val_fraction": 0.9}, "val_fraction"),
        ((np.zeros((10, 2)), np.arange(10) % 2), {"class_names": ["a"]}, "1 names"),
    ],
)
def test_task_from_arrays_names_what_does_not_fit(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(SlemError) as exc:
        Task.from_arrays(*args, **kwargs)
    assert message in str(exc.value) and "\n" not in str(exc.value)


# ---------------------------------------------------------------------- config and fit


def test_a_config_without_data_trains_on_a_given_task(
    task: Task, capsys: pytest.CaptureFixture[str]
) -> None:
    config = TrainConfig(method="erm", optim={"epochs": 5, "batch_size": 50})
    assert config.data is None
    result = make_trainer(config, task, model=mlp()).fit()
    assert result.summary["test_accuracy"] > 0.6 and result.summary["dataset"] == "arrays"
    err = capsys.readouterr().err  # progress by default, on stderr
    assert "erm arrays" in err and "epoch 5/5" in err
    make_trainer(config, task, model=mlp()).fit(progress=False)
    assert capsys.readouterr().err == ""
    bar = ProgressBar("mine")
    make_trainer(config, task, model=mlp(), callbacks=[bar]).fit()
    out = capsys.readouterr()
    assert "mine" in out.out and "erm arrays" not in out.err  # never two bars


def test_data_is_required_only_when_no_task_is_given(
    task: Task, tmp_path: Path, runner: CliRunner
) -> None:
    with pytest.raises(SlemError, match=r"^data: required when no task is given"):
        build_task(parse_train_config({"method": "erm"}).data)
    with pytest.raises(SlemError, match="data: required when no task is given"):
        train_run(TrainConfig(method="erm"), tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()
    config = tmp_path / "no_data.yaml"
    config.write_text("method: erm\n")
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2 and "data: required when no task is given" in result.stderr
    # a given task still needs the meta set its method needs
    bare = Task.from_arrays(*blobs(200, 0.0, 0)[:2])
    with pytest.raises(SlemError, match=r"needs a clean meta set and task 'arrays' has none"):
        make_trainer(TrainConfig(method="mwnet"), bare)
    with pytest.raises(SlemError, match=r"set data\.meta_per_class"):  # with data: as before
        parse_train_config({"method": "mwnet", "data": {"name": "mnist1d"}})


# ---------------------------------------------------------------------- apply


def test_apply_from_python_on_a_given_task(
    rule: tuple[Path, dict[str, Any]], task: Task, tmp_path: Path
) -> None:
    config = apply_config(rule[0], overrides={"optim.epochs": 3, "optim.batch_size": 100})
    assert config.method == "apply" and config.optim.lr == 0.05  # from the artifact
    assert config.data is None and config.meta.objective == "selected"
    assert apply_config(rule[0], overrides=["optim.epochs=4"]).optim.epochs == 4
    result = apply(rule[0], task, config=config, model=mlp(), progress=False)
    s = result.summary
    assert s["method"] == "apply" and s["test_accuracy"] > 0.7 and s["weight_auc"] > 0.8

    run = tmp_path / "applied"
    apply(rule[0], task, epochs=2, run_dir=run, model=mlp(), progress=False)
    info = json.loads((run / "methodology" / "methodology.json").read_text())
    assert info["meta_trained_on"]["dataset"] == "noisy blobs"  # the source's
    assert info["applied_to"]["dataset"] == "arrays" and info["applied_to"]["epochs"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["method"] == "apply"

    in_memory = MWNet()
    apply(in_memory, task, epochs=1, model=mlp(), progress=False)
    assert not any(p.requires_grad for p in in_memory.parameters())
    with pytest.raises(SlemError, match="apply needs the new task"):
        apply(rule[0])


# ---------------------------------------------------------------------- one artifact writer


def test_every_artifact_is_written_by_one_function() -> None:
    """No module of src/ or benchmarks/ assembles artifact metadata itself: ``meta_trained_on``
    and ``training_config`` are written only by slem.train.artifacts.save_methodology."""
    writers = []
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        text = path.read_text()
        if re.search(r"\b(meta_trained_on|training_config)=", text) and path != ARTIFACTS:
            writers.append(path.name)
    assert writers == []


def test_benchmark_rows_and_artifacts_carry_provenance(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import common
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    cache = common.Cache(tmp_path / "cache")
    row = cache.run("k", lambda: {"test_accuracy": 0.5}, seed=3)
    assert row["seed"] == 3 and row["provenance"]["git_revision"]
    assert row["provenance"]["slem"] and row["provenance"]["torch"]
    assert json.loads((tmp_path / "cache" / "runs.jsonl").read_text())["provenance"]

    values = {
        "method": "mwnet",
        "data": {"name": "mnist1d", "size": 600, "noise": "symmetric:0.4", "meta_per_class": 5},
        "optim": {"epochs": 2},
        "model": {"width": 8},
        "meta": {"warmup_epochs": 0},
        "seed": 4,
    }
    out = common.train(values, save=tmp_path / "artifact")
    assert out["seed"] == 4
    info = json.loads((tmp_path / "artifact" / "methodology.json").read_text())
    assert info["training_config"]["method"] == "mwnet"  # what slem apply reads
    assert info["meta_trained_on"] == {
        "dataset": "mnist1d",
        "noise": "symmetric:0.4",
        "imbalance": None,
        "epochs": 2,
        "seed": 4,
    }
    assert info["provenance"]["git_revision"] and info["class_counts"]
    assert apply_config(tmp_path / "artifact", "mnist1d").model.width == 8


def test_save_methodology_records_an_applied_rule(tmp_path: Path) -> None:
    path = save_methodology(
        MWNet(), tmp_path / "a", {"method": "apply"}, applied=True, applied_from={"dataset": "x"}
    )
    info = json.loads((path / "methodology.json").read_text())
    assert info["meta_trained_on"] == {"dataset": "x"} and info["applied_to"] == {}
    assert info["training_config"] == {"method": "apply"}


def test_the_docs_quote_the_examples_as_they_are() -> None:
    """Every code line of docs/own-code.md is a line of the example it describes, so the
    page shows code the suite runs."""
    page = (ROOT / "docs" / "own-code.md").read_text()
    code = set()
    for path in EXAMPLES.glob("*.py"):
        code |= {line.strip() for line in path.read_text().splitlines()}
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    lines = [ln.strip() for block in blocks for ln in block.splitlines() if ln.strip()]
    assert len(lines) > 20
    assert [ln for ln in lines if ln not in code] == []
    assert page.count("# slem") >= 6


def test_a_run_on_a_given_task_resumes_from_python_only(task: Task, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = TrainConfig(method="erm", optim={"epochs": 2})
    torch.manual_seed(0)
    start = mlp()
    first = copy.deepcopy(start)
    full, _ = train_run(config, run, progress=False, task=task, model=start)
    with pytest.raises(SlemError, match=r"task given in Python .* task_given=True"):
        read_run_config(run)
    resumed_config = read_run_config(run, task_given=True)
    assert resumed_config == config
    # a second run stopped after its first epoch, then resumed with the same task and model
    other = tmp_path / "other"
    one = TrainConfig(method="erm", optim={"epochs": 2})

    class StopAfterOneEpoch(Callback):
        def on_epoch_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
            trainer.request_stop("interrupted")

    with pytest.raises(TrainingStopped):
        train_run(
            one,
            other,
            progress=False,
            task=task,
            model=copy.deepcopy(first),
            extra_callbacks=[StopAfterOneEpoch()],
        )
    again, _ = train_run(
        read_run_config(other, task_given=True),
        other,
        resume=True,
        progress=False,
        task=task,
        model=copy.deepcopy(first),
    )
    assert again.summary["test_accuracy"] == full.summary["test_accuracy"]
    assert again.history[-1]["val_loss"] == full.history[-1]["val_loss"]
