"""Few-shot meta-learning: the task-batch hypergradient, the learners, the meta-trainer, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch.func import grad

from slem.bilevel import SGD, hypergrad, task_hypergrad
from slem.cli.app import app
from slem.data import Episodes, SinusoidTasks
from slem.errors import SlemError
from slem.methodology import load_methodology
from slem.methodology.few_shot import LEARNERS, MAML, ProtoNet, TaskNorm, context_rows
from slem.train.few_shot import (
    FewShotConfig,
    FewShotMetaTrainer,
    Pools,
    evaluate,
    few_shot_run,
    make_sampler,
    parse_few_shot_config,
)


def image_episodes(tasks: int = 3, ways: int = 3, shots: int = 2, queries: int = 2) -> Episodes:
    g = torch.Generator().manual_seed(0)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).clone()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).clone()
    return Episodes(
        torch.randn(tasks, ways * shots, 1, 8, 8, generator=g),
        sy,
        torch.randn(tasks, ways * queries, 1, 8, 8, generator=g),
        qy,
        ways,
    )


def learner(kind: str, ways: int = 3, **kw: object) -> MAML | ProtoNet:
    torch.manual_seed(0)
    if ways:
        return LEARNERS[kind]((1, 8, 8), ways, hidden=4, layers=2, **kw)  # type: ignore[return-value]
    return LEARNERS[kind]((1,), 0, backbone="mlp", hidden=8, layers=2, inner_lr=0.05, **kw)  # type: ignore[return-value]


def rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a)
    den = sum(float((b[k] ** 2).sum()) for k in a)
    return (num / max(den, 1e-30)) ** 0.5


def meta_grad(net: MAML | ProtoNet, episodes: Episodes, **options: object):  # type: ignore[no-untyped-def]
    inner, outer = net.batches(episodes)
    return task_hypergrad(
        net.problem(),
        net.method,
        inner_batch=inner,
        outer_batch=outer,
        steps=net.inner_steps,
        **{**net.hypergrad_options(), **options},
    )


# ------------------------------------------------------------------ engine


@pytest.mark.parametrize(
    "kind", ["maml", "fomaml", "metasgd", "anil", "imaml", "protonet", "matching"]
)
def test_vectorized_task_batch_equals_the_loop(kind: str) -> None:
    """vmap over tasks gives the per-task loop's averaged hypergradient; with conv + TaskNorm
    this includes second order through normalization (torch's fused batch norm is wrong
    there under vmap)."""
    net = learner(kind, inner_steps=2) if LEARNERS[kind].gradient_based else learner(kind)
    episodes = image_episodes()
    vec, loop = meta_grad(net, episodes), meta_grad(net, episodes, vectorize=False)
    assert vec.diagnostics["vectorized"] and not loop.diagnostics["vectorized"]
    assert rel(vec.grads, loop.grads) < 1e-4
    assert vec.outer_loss == pytest.approx(loop.outer_loss, rel=1e-5)
    assert any(float(g.abs().sum()) > 0 for g in vec.grads.values())


def test_one_task_matches_the_engines_unrolled_hypergradient() -> None:
    """B = 1 is exactly hypergrad(problem, 'unrolled') with MAML's learned initialization."""
    net = learner("maml", ways=0, inner_steps=3)
    e = SinusoidTasks(5, 5, seed=1).sample(1)
    inner, outer = net.batches(e)
    ours = task_hypergrad(net.problem(), "unrolled", inner_batch=inner, outer_batch=outer, steps=3)
    ref = hypergrad(
        net.problem(),
        "unrolled",
        inner_batch=(inner[0][0], inner[1][0]),
        outer_batch=tuple(t[0] for t in outer),
        steps=3,
    )
    assert rel(ours.grads, ref.grads) < 1e-5


def test_checkpointing_gives_the_second_order_gradient() -> None:
    net = learner("maml", inner_steps=3)
    plain, ckpt = (
        meta_grad(net, image_episodes()),
        meta_grad(net, image_episodes(), checkpoint=True),
    )
    assert ckpt.diagnostics["checkpoint"]
    assert rel(ckpt.grads, plain.grads) < 1e-4


def test_first_order_is_the_query_gradient_at_the_adapted_weights() -> None:
    net = learner("fomaml", ways=0, inner_steps=2)
    e = SinusoidTasks(5, 5, seed=2).sample(2)
    result = meta_grad(net, e)
    _, outer = net.batches(e)
    problem = net.problem()
    expected = None
    for b in range(2):
        adapted = {k: v[b] for k, v in result.params.items()}  # type: ignore[union-attr]
        g = grad(problem.outer_loss)(adapted, problem.hyper, tuple(t[b] for t in outer))
        expected = g if expected is None else {k: expected[k] + g[k] for k in g}
    assert expected is not None
    assert rel(result.grads, {k: v / 2 for k, v in expected.items()}) < 1e-5
    second = meta_grad(learner("maml", ways=0, inner_steps=2), e)
    assert rel(second.grads, result.grads) > 1e-4  # MAML's second-order terms are not 0


def test_reptile_steps_along_the_mean_displacement() -> None:
    net = learner("reptile", ways=0, inner_steps=3)
    result = meta_grad(net, SinusoidTasks(5, 5, seed=3).sample(4))
    direction = net.meta_gradient(result)
    for k, p in net.named_parameters():
        assert torch.allclose(direction[k], p.detach() - result.params[k].mean(0))  # type: ignore[index]


def test_metasgd_learns_its_rates_and_sgd_takes_per_parameter_rates() -> None:
    net = learner("metasgd", ways=0)
    result = meta_grad(net, SinusoidTasks(5, 5, seed=4).sample(2))
    alphas = [k for k in result.grads if k.startswith("alpha.")]
    assert alphas and all(float(result.grads[k].abs().sum()) > 0 for k in alphas)
    p = {"w": torch.ones(2)}
    new, _ = SGD(lambda h: {"w": h["a"]}).update(
        p, {"w": torch.ones(2)}, {"step": 0, "momentum": {}}, {"a": torch.tensor([0.1, 0.5])}
    )
    assert torch.allclose(new["w"], torch.tensor([0.9, 0.5]))


def test_imaml_matches_the_exact_gradient_of_the_regularized_solution() -> None:
    """A linear model on MSE: the proximal inner problem is a strongly convex quadratic, so
    the implicit gradient (solved well) equals the gradient through many unrolled steps."""
    torch.manual_seed(0)
    net = LEARNERS["imaml"](
        (1,), 0, backbone="mlp", layers=0, inner_lr=0.02, inner_steps=300, lam=2.0, cg_iterations=20
    )
    e = SinusoidTasks(5, 5, seed=5).sample(2)
    implicit = meta_grad(net, e)
    inner, outer = net.batches(e)
    unrolled = task_hypergrad(
        net.problem(), "unrolled", inner_batch=inner, outer_batch=outer, steps=300
    )
    assert rel(implicit.grads, unrolled.grads) < 1e-3


def test_task_batch_errors() -> None:
    net = learner("maml")
    inner, outer = net.batches(image_episodes())
    with pytest.raises(SlemError, match="unknown task-batch"):
        task_hypergrad(net.problem(), "lookahead", inner_batch=inner, outer_batch=outer)
    with pytest.raises(SlemError, match="checkpoint is for method unrolled"):
        task_hypergrad(
            net.problem(), "first_order", inner_batch=inner, outer_batch=outer, checkpoint=True
        )
    with pytest.raises(SlemError, match="same leading task dimension"):
        task_hypergrad(
            net.problem(), "unrolled", inner_batch=inner, outer_batch=tuple(t[:2] for t in outer)
        )
    with pytest.raises(SlemError, match="steps must be at least 1"):
        task_hypergrad(net.problem(), "implicit", inner_batch=inner, outer_batch=outer, steps=0)


# ------------------------------------------------------------------ learners


def test_tasknorm_per_task_uses_the_support_statistics_only() -> None:
    """per_task: a query prediction depends on the support and on itself, not on the other
    query examples; transductive: on the whole query batch (MAML's reference code)."""
    e = image_episodes(tasks=1)
    swapped = Episodes(e.support_x, e.support_y, e.query_x.clone(), e.query_y, e.ways)
    swapped.query_x[0, 1:] = torch.randn_like(swapped.query_x[0, 1:])
    for norm, same in (("per_task", True), ("transductive", False)):
        net = learner("maml", norm=norm)
        a, b = net.predict(e)[0, 0], net.predict(swapped)[0, 0]
        assert torch.allclose(a, b, atol=1e-6) == same
    norm = TaskNorm(3)
    x = torch.randn(6, 3, 2, 2)
    with context_rows(2):
        y = norm(x)
    assert torch.allclose(y[:2].mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert not list(norm.buffers())


@pytest.mark.parametrize("kind", list(LEARNERS))
def test_meta_test_statistics_never_leak_into_the_meta_trained_state(kind: str) -> None:
    net = learner(kind)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert not list(net.buffers())  # no running statistics to move
    net.train()
    net.predict(image_episodes(tasks=2))
    evaluate(net, make_sampler(None, 0, 2, 2, 0) if not net.ways else _pool_sampler(), 4)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _pool_sampler():  # type: ignore[no-untyped-def]
    from slem.data import ClassImages, EpisodeSampler

    g = torch.Generator().manual_seed(1)
    pool = ClassImages(
        torch.randn(40, 1, 8, 8, generator=g),
        torch.arange(8).repeat(5),
        [f"c{i}" for i in range(8)],
        "toy",
    )
    return EpisodeSampler(pool, 3, 1, 2, seed=0)


def test_prototypes_and_matching_attention() -> None:
    proto = ProtoNet((1, 8, 8), 3, hidden=4, layers=2)
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]])
    onehot = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    query = torch.tensor([[1.0, 1.0]])
    assert torch.allclose(proto.scores(support, onehot, query), -torch.tensor([[1.0, 17.0]]))
    matching = LEARNERS["matching"]((1, 8, 8), 3, hidden=4, layers=2)
    probs = matching.scores(support + 1, onehot, query).exp()  # type: ignore[attr-defined]
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)


def test_artifact_round_trip_and_ways(tmp_path: Path) -> None:
    from slem.train.artifacts import save_methodology

    e = image_episodes()
    for kind in ("metasgd", "imaml", "matching"):
        net = learner(kind)
        save_methodology(net, tmp_path / kind)
        loaded, meta = load_methodology(tmp_path / kind)
        assert meta["kind"] == kind and torch.allclose(loaded.predict(e), net.predict(e))  # type: ignore[attr-defined]
    with pytest.raises(SlemError, match="meta-trained 3-way"):
        learner("maml").predict(image_episodes(ways=4))
    assert learner("protonet").predict(image_episodes(ways=4)).shape == (3, 8, 4)
    with pytest.raises(SlemError, match="classifies"):
        LEARNERS["protonet"]((1,), 0)


# ------------------------------------------------------------------ meta-training


def sinusoid_config(**kw: object) -> FewShotConfig:
    values = {
        "learner": "maml",
        "data": {"source": "sinusoid"},
        "shots": 5,
        "queries": 5,
        "task_batch": 8,
        "inner_lr": 0.01,
        "hidden": 16,
        "iterations": 6,
        "val_every": 3,
        "val_episodes": 8,
        "test_episodes": 10,
        "checkpoint_every": 3,
        **kw,
    }
    return parse_few_shot_config(values)


def test_meta_training_lowers_the_sinusoid_query_loss() -> None:
    cfg = sinusoid_config(
        learner="maml", iterations=300, val_every=100, meta_lr=0.01, hidden=32, inner_lr=0.02
    )
    meta = FewShotMetaTrainer(cfg, Pools(None, None, None))
    net = meta.fit(progress=False)
    sampler = make_sampler(None, 0, 5, 20, 99)
    trained = evaluate(net, sampler, 50)["mean"]
    fresh = evaluate(
        FewShotMetaTrainer(cfg, Pools(None, None, None)).net, make_sampler(None, 0, 5, 20, 99), 50
    )["mean"]
    print(trained, fresh)
    assert trained < 0.7 * fresh
    assert meta.best["iteration"] in (100, 200, 300)


def test_resume_continues_exactly(tmp_path: Path) -> None:
    cfg = sinusoid_config(learner="metasgd")
    whole = few_shot_run(cfg, tmp_path / "a", progress=False)
    run = tmp_path / "b"
    run.mkdir()
    meta = FewShotMetaTrainer(cfg.model_copy(update={"iterations": 3}), Pools(None, None, None))
    meta.fit(progress=False)
    meta.save_checkpoint(run / "meta_checkpoint.pt")
    resumed = few_shot_run(cfg, run, resume=True, progress=False)
    a = [r["meta_loss"] for r in whole.history]
    b = [r["meta_loss"] for r in resumed.history]
    assert a == pytest.approx(b, rel=1e-6)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_mse"] > 0 and summary["iterations"] == 6


def test_config_errors() -> None:
    with pytest.raises(SlemError, match="sinusoids need a gradient learner"):
        sinusoid_config(learner="protonet")
    with pytest.raises(SlemError, match="checkpoint is for second-order"):
        sinusoid_config(learner="fomaml", checkpoint=True)
    with pytest.raises(SlemError, match="learner"):
        sinusoid_config(learner="snail")


# ------------------------------------------------------------------ CLI


def test_cli_train_and_eval_on_sinusoids(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "fs.yaml"
    config.write_text(yaml.safe_dump(sinusoid_config().model_dump(mode="json")))
    out = tmp_path / "run"
    result = runner.invoke(app, ["fewshot", "train", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "meta-test mse" in result.output
    assert (out / "methodology" / "methodology.json").is_file()
    assert (out / "plots" / "meta_training.png").is_file()
    result = runner.invoke(
        app,
        [
            "fewshot",
            "eval",
            str(out),
            "--episodes",
            "20",
            "--shots",
            "10",
            "--steps",
            "3",
            "--out",
            str(tmp_path / "e.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e.json").read_text())["episodes"] == 20
    for args, message in (
        (["--split", "lake"], "Omniglot's"),
        (["--split", "lake", "--ways", "5"], "drop --ways"),
        (["--episodes", "0"], "--episodes must be at least 1"),
        (["--shots", "0"], "--shots must be at least 1"),
        (["--steps", "-1"], "--steps must be at least 0"),
        (["--ways", "5"], "sinusoid tasks are generated"),
        (["--split", "val"], "sinusoid tasks are generated"),
        (["--split", "nope"], "--split must be"),
    ):
        result = runner.invoke(app, ["fewshot", "eval", str(out), *args])
        assert result.exit_code == 2 and message in result.output, result.output


def test_cli_bad_configs_are_one_line(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "bad.yaml"
    config.write_text("learner: maml\ndata: sinusoid\n")
    result = runner.invoke(app, ["fewshot", "train", str(config), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "data must be a mapping" in result.output
    config.write_text(yaml.safe_dump(sinusoid_config().model_dump(mode="json")))
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2 and "slem fewshot train FILE" in result.output


def test_a_pool_too_small_for_the_episodes_fails_before_meta_training() -> None:
    from slem.data import ClassImages

    def pool(classes: int) -> ClassImages:
        x = torch.randn(classes * 4, 1, 8, 8)
        return ClassImages(
            x,
            torch.arange(classes).repeat(4),
            [str(i) for i in range(classes)],
            f"{classes} classes",
        )

    cfg = parse_few_shot_config(
        {
            "learner": "protonet",
            "ways": 4,
            "shots": 1,
            "queries": 1,
            "layers": 2,
            "data": {"source": "mnist1d"},
        }
    )
    with pytest.raises(SlemError, match="3 classes"):
        FewShotMetaTrainer(cfg, Pools(pool(8), pool(3), pool(8)))


def test_predict_checks_the_example_shape_and_the_steps() -> None:
    with pytest.raises(SlemError, match="examples of shape"):
        learner("maml").predict(
            Episodes(
                *[
                    t[..., :4] if t.dim() > 2 else t
                    for t in (
                        image_episodes().support_x,
                        image_episodes().support_y,
                        image_episodes().query_x,
                        image_episodes().query_y,
                    )
                ],
                3,
            )
        )
    with pytest.raises(SlemError, match="closed form"):
        learner("protonet").predict(image_episodes(), steps=2)
    with pytest.raises(SlemError, match="at least 0"):
        learner("maml").predict(image_episodes(), steps=-1)


def test_cli_missing_omniglot_is_one_line(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(
        app,
        [
            "fewshot",
            "train",
            "--source",
            "omniglot",
            "--data-dir",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 2
    assert "--data-dir" in result.output and "Traceback" not in result.output


def test_omniglot_meta_training_runs_and_reports_lake(omniglot_dir: Path, tmp_path: Path) -> None:
    cfg = parse_few_shot_config(
        {
            "learner": "protonet",
            "data": {"source": "omniglot", "data_dir": str(omniglot_dir)},
            "ways": 5,
            "queries": 2,
            "task_batch": 1,
            "hidden": 8,
            "iterations": 4,
            "val_every": 2,
            "val_episodes": 5,
            "test_episodes": 10,
        }
    )
    record = few_shot_run(cfg, tmp_path, progress=False)
    assert 20.0 <= record.summary["test_accuracy"] <= 100.0
    assert 0.0 <= record.summary["lake_20way_error"] <= 100.0
