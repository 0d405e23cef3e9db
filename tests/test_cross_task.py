"""Cross-task meta-training (issue 16): one methodology over a task family, for every method
whose trainer takes its meta step in two phases (sample weighting, the learned learning-rate
schedule, the loss adjuster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from slem.data import build_task
from slem.errors import SlemError
from slem.train import Callback, CheckpointCallback, TrainingStopped, make_trainer
from slem.train.cross_task import CrossTaskTrainer, parse_cross_task_config

TRAIN = {
    "method": "mwnet",
    "model": {"arch": "mlp", "width": 16, "depth": 1},
    "optim": {"epochs": 3, "batch_size": 32, "lr": 0.05},
    "meta": {"warmup_epochs": 1, "batch_size": 16},
}
#: each episode's training, per method that can be meta-trained across tasks
TRAINS = {
    "mwnet": TRAIN,
    "lr_schedule": {
        "method": "lr_schedule",
        "model": TRAIN["model"],
        "optim": TRAIN["optim"],
        "schedule": {"batch_size": 16},
    },
    "loss_adjuster": {**TRAIN, "method": "loss_adjuster"},
}
METHODS = pytest.mark.parametrize("method", list(TRAINS))
WINE = {"name": "wine", "meta_per_class": 5}
ONE_TASK = {"datasets": ["wine"], "noise": ["symmetric:0.4"], "meta_per_class": 5}


def cross(
    tasks: dict[str, Any],
    k: int,
    steps: int,
    method: str = "mwnet",
    setups: list[Any] | None = None,
    **sections: Any,
) -> Any:
    return parse_cross_task_config(
        {
            "tasks": tasks,
            "train": {**TRAINS[method], **sections},
            "tasks_per_step": k,
            "steps": steps,
            "setups": setups or [],
        }
    )


#: two training setups (architecture x length) and a rule that reads loss histories
SETUPS = [{}, {"model": {"width": 24}, "optim": {"epochs": 2, "schedule": "constant"}}]
TASK_META = {**TRAIN["meta"], "inputs": ["loss_ratio", "history", "progress", "noise_estimate"]}


@METHODS
def test_one_episode_at_a_time_is_the_per_task_method_bit_for_bit(method: str) -> None:
    """tasks_per_step 1 over a family of one task: the same methodology, to the bit, as the
    method trained on that task alone (the average of one hypergradient is itself); a learned
    schedule's snapshots and its rates included."""
    config = cross(ONE_TASK, k=1, steps=1, method=method)
    data = config.tasks.task(0)
    alone = make_trainer(config.train.model_copy(update={"data": data}), build_task(data))
    config = cross(ONE_TASK, k=1, steps=alone.plan.total_steps, method=method)
    alone.fit(progress=False)
    learner = CrossTaskTrainer(config)
    h = learner.fit(progress=False)
    assert alone.methodology is not None
    for (name, a), b in zip(
        alone.methodology.state_dict().items(), h.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    (episode,) = learner.episodes
    assert episode is not None and episode.loop.done and learner.started == 1
    assert [r["val_loss"] for r in episode.trainer.progress.history] == [
        r["val_loss"] for r in alone.progress.history
    ]
    assert getattr(episode.trainer, "lr_trace", None) == getattr(alone, "lr_trace", None)


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Any, stats: dict[str, float]) -> None:
        if trainer.progress.global_step == self.step:
            trainer.request_stop("interrupted")


@METHODS
def test_meta_training_across_episodes_resumes_exactly(tmp_path: Path, method: str) -> None:
    """Two episodes side by side over a family of two datasets and two training setups (the
    weighting rule reading loss histories), stopped mid-episode after several episodes have
    finished: the resumed run ends where the uninterrupted one does."""
    family = {**ONE_TASK, "datasets": ["wine", "breast_cancer"], "size": [200]}
    sections = {"meta": TASK_META} if method == "mwnet" else {}
    config = cross(family, k=2, steps=25, method=method, setups=SETUPS, **sections)
    full = CrossTaskTrainer(config)
    h_full = full.fit(progress=False)
    assert full.started >= 4 and len(full.finished) >= 2
    for ep in full.episodes:  # each episode trains in the setup drawn for it
        assert ep is not None and ep.setup == full.setup(ep.index)
        assert ep.trainer.config.model.width == (24 if ep.setup == 1 else 16)
    assert all(row["setup"] == full.setup(row["episode"]) for row in full.finished)
    assert {row["task"].split()[0] for row in full.finished} <= {"wine", "breast_cancer"}
    assert all(0 <= row["test_accuracy"] <= 1 for row in full.finished)
    assert 0 <= full.progress.history[-1]["recent_episode_test_accuracy"] <= 1  # in progress
    ckpt = tmp_path / "cross.pt"
    first = CrossTaskTrainer(config, [CheckpointCallback(ckpt, every=5), StopAt(13)])
    with pytest.raises(TrainingStopped):
        first.fit(progress=False)
    second = CrossTaskTrainer(config)
    second.load_checkpoint(ckpt)
    assert second.progress.global_step == 13
    h = second.fit(progress=False)
    for (name, a), b in zip(h_full.state_dict().items(), h.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert second.finished == full.finished
    assert second.progress.history == full.progress.history


@METHODS
def test_the_averaged_hypergradient_moves_the_shared_rule(method: str) -> None:
    family = {**ONE_TASK, "datasets": ["wine", "breast_cancer"], "size": [200]}
    learner = CrossTaskTrainer(cross(family, k=3, steps=12, method=method))
    before = [p.detach().clone() for p in learner.methodology.parameters()]
    learner.fit(progress=False)
    (first, *_), meta_losses = learner.progress.history, []
    for row in learner.progress.history:
        if row.get("train_meta_loss") is not None:
            meta_losses.append(row["train_meta_loss"])
    assert first["episodes_started"] == 3 and meta_losses
    after = list(learner.methodology.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # every running episode shares the one methodology object
    assert all(
        ep is not None and ep.trainer.methodology is learner.methodology for ep in learner.episodes
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"train": {**TRAIN, "data": {"name": "wine", "meta_per_class": 5}}},
            "train.data: remove it",
        ),
        (
            {"train": {"method": "gce"}},
            "train.method: gce cannot be meta-trained across tasks; use one of mwnet",
        ),
        (
            {"train": {**TRAIN, "method": "transition"}},
            "train.method: transition cannot be meta-trained across tasks; use one of mwnet, "
            "cmwnet, cmwnet_sl, lr_schedule, loss_adjuster",
        ),
        ({"tasks_per_step": 0}, "tasks_per_step: Input should be greater than or equal to 1"),
        ({"tasks": {"datasets": ["digits"]}}, "'digits' is reserved"),
        ({"setups": [{"meta": {"lr": 1.0}}]}, "setups[0]: meta cannot vary per episode"),
        ({"setups": [{"model": {"width": 0}}]}, "setups[0]: model.width: Input should be greater"),
    ],
)
def test_a_bad_cross_task_config_is_one_line(values: dict[str, Any], message: str) -> None:
    base = {"tasks": ONE_TASK, "train": TRAIN}
    with pytest.raises(SlemError) as exc:
        parse_cross_task_config({**base, **values})
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("method", "kind"),
    [("mwnet", "mwnet"), ("lr_schedule", "lr_schedule"), ("loss_adjuster", "bundle")],
)
def test_cli_meta_train_writes_an_artifact_that_slem_apply_uses(
    tmp_path: Path, runner: Any, method: str, kind: str
) -> None:
    """slem meta-train CONFIG --out RUN: the artifact (kind of the method, meta_trained_on the
    family), one row per finished episode; --resume of a finished run ends at once; slem
    apply trains a new task with the rule frozen; a bad config is one line, exit code 2."""
    import json

    import yaml

    from slem.cli.app import app
    from slem.methodology import read_artifact_info

    cfg = tmp_path / "family.yaml"
    family = {**ONE_TASK, "datasets": ["wine", "breast_cancer"], "size": [200]}
    cfg.write_text(
        yaml.safe_dump(
            {
                "tasks": family,
                "train": TRAINS[method],
                "steps": 20,
                "tasks_per_step": 2,
                "checkpoint_every": 5,
            }
        )
    )
    run = tmp_path / "run"
    done = runner.invoke(app, ["meta-train", str(cfg), "--out", str(run), "--quiet"])
    assert done.exit_code == 0, done.output
    assert f"{method} meta-trained in 20 meta steps on" in done.stdout
    assert "slem apply" in done.stdout
    assert "drawn from a family of 2 tasks" in done.stdout
    info = read_artifact_info(run / "methodology")
    assert info["kind"] == kind
    assert info["meta_trained_on"]["family"]["datasets"] == ["wine", "breast_cancer"]
    episodes = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    assert len(episodes) == summary["episodes_finished"] >= 2 and summary["meta_steps"] == 20
    again = runner.invoke(app, ["meta-train", "--resume", str(run), "--quiet"])
    assert again.exit_code == 0, again.output
    assert json.loads((run / "summary.json").read_text())["meta_steps"] == 20
    applied = runner.invoke(
        app,
        [
            "apply",
            str(run / "methodology"),
            "--data",
            "iris",
            "--noise",
            "symmetric:0.4",
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "applied"),
            "--quiet",
        ],
    )
    assert applied.exit_code == 0, applied.output
    assert "apply on iris" in applied.stdout
    # each command names the other when given the other's run to resume
    wrong = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])
    assert wrong.exit_code == 2 and f"slem meta-train --resume {run}" in wrong.stderr
    wrong = runner.invoke(app, ["meta-train", "--resume", str(tmp_path / "applied")])
    assert wrong.exit_code == 2 and "slem train --resume" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"tasks": {"datasets": ["digits"]}, "train": TRAIN}))
    refused = runner.invoke(app, ["meta-train", str(bad), "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "'digits' is reserved" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    # a family with a task that cannot be built fails before anything is written
    bad.write_text(yaml.safe_dump({"tasks": {**family, "meta_per_class": 90}, "train": TRAIN}))
    refused = runner.invoke(app, ["meta-train", str(bad), "--out", str(tmp_path / "y")])
    assert refused.exit_code == 2, refused.output
    assert "tasks: the task 'wine symmetric:0.4 size 200 (seed 0)' cannot be" in refused.stderr
    assert "meta_per_class 90 is more than class" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "y").exists()
