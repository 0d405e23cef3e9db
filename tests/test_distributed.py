"""Meta-training on several ranks (issue 17): cross-task meta-training shards episodes over
gloo ranks and averages the meta-gradients once per meta step; checkpoints hold every rank's
state; torchrun's elastic restarts resume every rank from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from slem.cli.app import app
from slem.errors import SlemError
from slem.train.checkpoint_io import read_checkpoint, save_atomic
from slem.train.cross_task import CrossTaskTrainer, parse_cross_task_config
from tests.ranks import run_ranks

#: a family of equally long tasks (so episodes finish together and are replaced in step)
FAMILY = {
    "tasks": {
        "datasets": ["wine"],
        "noise": ["symmetric:0.2", "symmetric:0.4"],
        "meta_per_class": 5,
        "seed": 3,
    },
    "train": {
        "method": "mwnet",
        "model": {"arch": "mlp", "width": 16, "depth": 1},
        "optim": {"epochs": 2, "batch_size": 32, "lr": 0.05},
        "meta": {"warmup_epochs": 0, "batch_size": 16, "lr": 0.01},
    },
    "tasks_per_step": 4,
    "steps": 9,
}


def relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    flat_a = torch.cat([a[k].reshape(-1) for k in sorted(a)])
    flat_b = torch.cat([b[k].reshape(-1) for k in sorted(b)])
    return float((flat_a - flat_b).norm() / flat_b.norm())


def meta_steps(values: dict[str, Any], steps: int) -> dict[str, Any]:
    """``steps`` meta steps in float64: each step's averaged meta-gradient, the final h."""
    torch.set_default_dtype(torch.float64)
    try:
        trainer = CrossTaskTrainer(parse_cross_task_config(values))
        grads = []
        for _ in range(steps):
            trainer.step(None)
            grads.append({k: v.clone() for k, v in trainer.last_meta_gradient.items()})
        h = {k: v.detach().clone() for k, v in trainer.methodology.state_dict().items()}
        return {"grads": grads, "h": h, "episodes": trainer.episodes_started()}
    finally:
        torch.set_default_dtype(torch.float32)


def test_two_ranks_take_the_meta_step_of_one_process_over_the_same_tasks(
    tmp_path: Path,
) -> None:
    """Four episodes per meta step, two on each rank: every averaged meta-gradient (and h
    after the steps, past the first episodes' end and their replacement) equals the
    one-process run's over the same tasks to 1e-6 in float64."""
    one = meta_steps(FAMILY, FAMILY["steps"])
    two = run_ranks(meta_steps, 2, tmp_path, FAMILY, FAMILY["steps"])
    assert one["episodes"] == two[0]["episodes"] == 8  # episodes 4-7 replaced 0-3
    for rank in two:
        for step, (g1, g2) in enumerate(zip(one["grads"], rank["grads"], strict=True)):
            assert relative_error(g2, g1) < 1e-6, step
        assert relative_error(rank["h"], one["h"]) < 1e-6
    # the ranks hold one h, to the bit
    for k in two[0]["h"]:
        assert torch.equal(two[0]["h"][k], two[1]["h"][k])


def checkpointed(values: dict[str, Any], path: str) -> dict[str, Any]:
    """4 meta steps, a checkpoint, 4 more in a fresh trainer from it; and 8 straight."""
    straight = CrossTaskTrainer(parse_cross_task_config(values))
    for _ in range(8):
        straight.step(None)
    first = CrossTaskTrainer(parse_cross_task_config(values))
    for _ in range(4):
        first.step(None)
    first.save_checkpoint(path)
    second = CrossTaskTrainer(parse_cross_task_config(values))
    second.load_checkpoint(path)
    for _ in range(4):
        second.step(None)
    return {
        "straight": straight.methodology.state_dict(),
        "resumed": second.methodology.state_dict(),
        "finished": second.all_finished() == straight.all_finished(),
    }


def test_a_checkpoint_holds_every_rank_and_resumes_each_to_the_bit(tmp_path: Path) -> None:
    path = tmp_path / "meta_checkpoint.pt"
    results = run_ranks(checkpointed, 2, tmp_path, FAMILY, str(path))
    for r in results:
        assert r["finished"]
        for k, v in r["straight"].items():
            assert torch.equal(v, r["resumed"][k])
    saved = torch.load(path, weights_only=False)
    assert [s["episodes"][0]["index"] for s in saved["ranks"]] == [0, 1]
    with pytest.raises(SlemError, match=r"written by a run on 2 ranks, this one has 1; resume"):
        read_checkpoint(path)


def test_a_one_process_checkpoint_is_not_one_of_several_ranks(tmp_path: Path) -> None:
    path = save_atomic({"methodology": {}}, tmp_path / "c.pt")
    assert read_checkpoint(path) == {"methodology": {}}


def too_few_tasks(values: dict[str, Any]) -> str:
    try:
        CrossTaskTrainer(parse_cross_task_config({**values, "tasks_per_step": 1}))
    except SlemError as exc:
        return str(exc)
    return "no error"


def test_every_rank_needs_an_episode(tmp_path: Path) -> None:
    messages = run_ranks(too_few_tasks, 2, tmp_path, FAMILY)
    assert messages[0] == (
        "tasks_per_step: 1 episodes cannot be shared by 2 ranks; set it to at least 2"
    )


def test_torchrun_without_a_run_directory_is_one_line(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = tmp_path / "family.yaml"
    config.write_text(yaml.safe_dump(FAMILY))
    result = runner.invoke(app, ["meta-train", str(config)])
    assert result.exit_code == 2
    assert "--out: give the run directory when running on several ranks" in result.stderr


# ---------------------------------------------------------------------- torchrun, end to end


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def _slem(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "slem", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _outcome(run: Path) -> dict[str, Any]:
    summary = json.loads((run / "summary.json").read_text())
    summary.pop("seconds"), summary.pop("methodology")
    return {
        "summary": summary,
        "episodes": (run / "episodes.jsonl").read_text(),
        "weights": (run / "methodology" / "methodology.safetensors").read_bytes(),
    }


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds ranks through /proc")
def test_a_rank_killed_mid_run_resumes_with_the_others_and_ends_as_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """``--nproc 2 --max-restarts 1``: SIGKILL one rank after the first checkpoint; torchrun
    restarts both, they resume from the checkpoint, and the run's final metrics and
    methodology equal an uninterrupted 2-rank run's."""
    values = {**FAMILY, "steps": 160, "checkpoint_every": 10}
    values["train"] = {**FAMILY["train"], "optim": {**FAMILY["train"]["optim"], "epochs": 6}}
    config = tmp_path / "family.yaml"
    config.write_text(yaml.safe_dump(values))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["meta-train", str(config), "--nproc", "2", "--quiet"]

    plain = _slem(*common, "--out", str(tmp_path / "plain"), env=env)
    out, _ = plain.communicate(timeout=300)
    assert plain.returncode == 0, out

    killed = tmp_path / "killed"
    run = _slem(*common, "--max-restarts", "1", "--out", str(killed), env=env)
    deadline = time.monotonic() + 120
    while not (killed / "meta_checkpoint.pt").is_file():
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0]
        time.sleep(0.02)
    (agent,) = _children(run.pid)  # slem --nproc -> torchrun's agent -> the ranks
    ranks = _children(agent)
    assert len(ranks) == 2
    os.kill(ranks[1], signal.SIGKILL)
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    assert "torchrun restarted the ranks" in out, out
    assert _outcome(killed) == _outcome(tmp_path / "plain")


def test_slem_train_on_two_ranks_ends_as_one_process(runner: CliRunner, tmp_path: Path) -> None:
    """``slem train --nproc 2``: data-parallel MW-Net on one task; rank 0 writes the one run
    directory, whose metrics equal a one-process run's (no BatchNorm, no dropout)."""
    config = tmp_path / "mwnet.yaml"
    values = {
        "method": "mwnet",
        "data": {"name": "wine", "noise": "symmetric:0.4", "meta_per_class": 5},
        "model": {"arch": "mlp", "width": 16, "depth": 1},
        "optim": {"epochs": 3, "batch_size": 32},
        "meta": {"warmup_epochs": 1, "batch_size": 16},
    }
    config.write_text(yaml.safe_dump(values))
    one = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "one"), "--quiet"])
    assert one.exit_code == 0, one.output
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = _slem(
        "train", str(config), "--nproc", "2", "--quiet", "--out", str(tmp_path / "two"), env=env
    )
    out, _ = two.communicate(timeout=300)
    assert two.returncode == 0, out
    assert out.count("test accuracy") == 1  # rank 0 reports, the other rank is quiet
    first, second = (
        json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two")
    )
    assert second["ranks"] == 2
    for key in ("test_accuracy", "val_accuracy", "best_epoch", "steps"):
        assert first[key] == pytest.approx(second[key], rel=1e-4), key


def test_max_restarts_without_nproc_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "family.yaml"
    config.write_text(yaml.safe_dump(FAMILY))
    result = runner.invoke(app, ["meta-train", str(config), "--max-restarts", "2"])
    assert result.exit_code == 2
    assert "--max-restarts: give --nproc N too" in result.stderr


def test_an_elastic_restart_resumes_only_the_run_its_own_job_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted rank resumes a directory only when this torchrun job wrote it: a run
    another command left there is never taken over (nor overwritten)."""
    from slem.cli.launch import continuing
    from slem.train.distributed import mark_job

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: erm\n")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    assert not continuing(run, resume=False)  # not restarted
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert not continuing(run, resume=False)  # someone else's run
    monkeypatch.setenv("WORLD_SIZE", "2")
    mark_job(run)
    assert continuing(run, resume=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-2")
    assert not continuing(run, resume=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "tasks_per_step=1"], "tasks_per_step: 1 episodes cannot be shared by 2 ranks"),
        (["--out", "EXISTING"], "already holds a run"),
    ],
)
def test_nproc_checks_what_the_ranks_would_refuse_before_starting_them(
    runner: CliRunner, tmp_path: Path, args: list[str], message: str
) -> None:
    config = tmp_path / "family.yaml"
    config.write_text(yaml.safe_dump(FAMILY))
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "config.yaml").write_text(yaml.safe_dump(FAMILY))
    args = [str(existing) if a == "EXISTING" else a for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "new")]
    result = runner.invoke(app, ["meta-train", str(config), "--nproc", "2", *out, *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "new").exists()


def _leave(rank: int, port: int, out: str) -> None:
    """A rank of a group whose TCP store rank 0's process hosts (as under ``--nproc``):
    rank 1 is slow to leave; each writes the time it has left."""
    import time

    import torch.distributed as dist

    from slem.train import distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    dist.barrier()
    if rank == 1:
        time.sleep(1.0)
    distributed.stop(finished=True)
    Path(out).write_text(str(time.monotonic()))


def test_rank_zero_hosting_the_store_leaves_last(tmp_path: Path) -> None:
    """A rank still leaving the group when rank 0's process (the TCP store's host) is gone
    aborts ('terminate called without an active exception'): a finished run's rank 0 waits
    for the others to leave."""
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"left-{r}" for r in range(2)]
    procs = [ctx.Process(target=_leave, args=(r, port, str(outs[r]))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    left = [float(o.read_text()) for o in outs]
    assert left[0] >= left[1]  # rank 0 left after rank 1
