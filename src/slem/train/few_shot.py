"""Few-shot meta-learning: meta-train a :mod:`~slem.methodology.few_shot` learner on episodes of
one task family, select it on meta-validation episodes, and evaluate it frozen on new classes.

The meta-trainer is a :class:`~slem.train.loop.MetaLearner` run by the one
:class:`~slem.train.loop.Loop`; every meta step is one :class:`~slem.train.meta_step.MetaStep`
over a batch of tasks (:meth:`~slem.train.meta_step.MetaStep.task_hypergradient`: the
vectorized task batch of :func:`slem.bilevel.task_hypergrad`).

Families (``data.source``): ``omniglot`` (meta-train on ``images_background_small1``, with a
seeded fifth of its characters held out for meta-validation, meta-test on the 106 characters
of ``images_background_small2`` whose alphabets small1 lacks (the two sets share Greek and
Latin, image for image); ``rotations`` adds each character's 90, 180 and
270 degree rotations as new meta-training classes), ``sinusoid`` (Finn et al. 2017's
regression family) and class splits of ``fashion_mnist`` and ``mnist1d`` (meta-train on
``train_classes``, meta-test on ``test_classes``; meta-validation on held-out images of the
training classes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import torch
import yaml
from pydantic import Field, ValidationError, model_validator
from torch import Tensor

from slem.errors import SlemError, validation_message
from slem.methodology.few_shot import LEARNERS, FewShotLearner
from slem.rundir import atomic_write_text, make_run_dir
from slem.train.artifacts import save_methodology
from slem.train.callbacks import CheckpointCallback
from slem.train.config import MetaConfig
from slem.train.config_methods import _Strict
from slem.train.guard import NonFiniteLoss
from slem.train.loop import Iterations, MetaLearner
from slem.train.meta_step import MetaStep
from slem.train.record import RunRecord, meta_loss_array
from slem.train.run import check_new_run_dir
from slem.train.threads import resolve_device

if TYPE_CHECKING:
    from slem.data import ClassImages, Episodes, TaskSampler
    from slem.train.callbacks import Callback

Learner = Literal["maml", "fomaml", "reptile", "metasgd", "anil", "imaml", "protonet", "matching"]


class FewShotData(_Strict):
    """Where episodes come from (module docstring)."""

    source: Literal["omniglot", "sinusoid", "fashion_mnist", "mnist1d"] = "omniglot"
    data_dir: str | None = Field(
        None, description="directory of the offline files (default: $SLEM_DATA)"
    )
    image_size: int = Field(28, ge=8, description="omniglot: images resized to this side")
    rotations: bool = Field(True, description="omniglot: rotations as new training classes")
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="omniglot: characters of small1 held out for validation"
    )
    train_classes: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    test_classes: list[int] = Field(default_factory=lambda: [5, 6, 7, 8, 9])


class FewShotConfig(_Strict):
    """``slem fewshot train``: the learner, the episodes and meta-training."""

    learner: Learner = "protonet"
    data: FewShotData = Field(default_factory=FewShotData)
    ways: int = Field(5, ge=2, description="N of N-way (ignored for sinusoids)")
    shots: int = Field(1, ge=1, description="K support examples per class (per task: sinusoid)")
    queries: int = Field(15, ge=1, description="query examples per class (per task: sinusoid)")
    task_batch: int = Field(16, ge=1, description="tasks per meta step")
    iterations: int = Field(2000, ge=1, description="meta steps")
    inner_lr: float = Field(0.4, gt=0, description="inner SGD rate (gradient learners)")
    inner_steps: int = Field(1, ge=1, description="inner steps in meta-training")
    eval_steps: int | None = Field(
        None, ge=0, description="inner steps at meta-test (default: inner_steps)"
    )
    backbone: Literal["auto", "conv", "mlp"] = Field(
        "auto", description="auto: conv for images and signals, mlp for sinusoids"
    )
    hidden: int = Field(64, ge=1, description="channels (conv) or units (mlp)")
    layers: int | None = Field(None, ge=1, description="default: 4 conv blocks, 2 mlp layers")
    norm: Literal["per_task", "transductive"] = "per_task"
    meta_lr: float = Field(1e-3, gt=0, description="learning rate of the meta optimizer")
    meta_optimizer: Literal["adam", "sgd"] = "adam"
    vectorize: bool | Literal["auto"] = Field(
        "auto",
        description="the task batch under torch.func.vmap; auto: yes but for convolutional "
        "backbones on CPU, where vmap's batched convolutions measured 0.5-1.3x the speed of a "
        "loop over tasks (docs/results/few_shot.md)",
    )
    checkpoint: bool = Field(
        False, description="second-order learners: gradient checkpointing of inner steps"
    )
    lam: float = Field(1.0, gt=0, description="imaml: proximal regularization strength")
    cg_iterations: int = Field(5, ge=1, description="imaml: conjugate-gradient iterations")
    scale: float = Field(10.0, gt=0, description="matching: attention inverse temperature")
    val_every: int = Field(100, ge=1, description="meta-validation every k meta steps")
    val_episodes: int = Field(200, ge=1)
    test_episodes: int = Field(600, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when available (episodes are drawn on the CPU)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> FewShotConfig:
        metric = self.learner in ("protonet", "matching")
        if self.data.source == "sinusoid" and metric:
            raise ValueError(
                f"learner {self.learner} classifies; sinusoids need a gradient learner"
            )
        if self.checkpoint and self.learner not in ("maml", "metasgd", "anil"):
            raise ValueError(
                f"checkpoint is for second-order learners (maml, metasgd, anil), not {self.learner}"
            )
        return self

    @property
    def task_ways(self) -> int:
        """N of the episodes (0 for regression)."""
        return 0 if self.data.source == "sinusoid" else self.ways


def parse_few_shot_config(values: dict[str, Any]) -> FewShotConfig:
    """Validate ``values`` (a YAML mapping). Raises :class:`SlemError` naming the field."""
    try:
        return FewShotConfig.model_validate(values)
    except ValidationError as exc:
        raise SlemError(validation_message(exc)) from None


@dataclass
class Pools:
    """The class pools of a family's meta-train, meta-validation and meta-test splits
    (None for sinusoids, whose tasks are generated)."""

    train: ClassImages | None
    val: ClassImages | None
    test: ClassImages | None


def load_pools(data: FewShotData, seed: int = 0) -> Pools:
    """The splits of ``data.source`` (module docstring).

    Raises:
        SlemError: the offline files are missing (one line naming the directory).
    """
    from slem.data import ClassImages, class_pool, load_omniglot

    if data.source == "sinusoid":
        return Pools(None, None, None)
    if data.source == "omniglot":
        small1 = load_omniglot(data.data_dir, "small1", data.image_size)
        train, held_out = small1.split_classes(1.0 - data.val_fraction, seed)
        val = ClassImages(
            held_out.x, held_out.y, held_out.class_names, "omniglot small1 (meta-validation)"
        )
        small2 = load_omniglot(data.data_dir, "small2", data.image_size)
        seen = {name.split("/")[0] for name in small1.class_names}
        unseen = [i for i, n in enumerate(small2.class_names) if n.split("/")[0] not in seen]
        test = small2.subset(unseen)  # the two sets share Greek and Latin: new alphabets only
        return Pools(train.with_rotations() if data.rotations else train, val, test)
    if set(data.train_classes) & set(data.test_classes):
        raise SlemError("data.train_classes and data.test_classes must not share a class")
    train = class_pool(data.source, data.train_classes, "train", data.data_dir, seed)
    val = class_pool(data.source, data.train_classes, "test", data.data_dir, seed)
    test = class_pool(data.source, data.test_classes, "test", data.data_dir, seed)
    return Pools(train, val, test)


def make_sampler(
    pool: ClassImages | None, ways: int, shots: int, queries: int, seed: int
) -> TaskSampler:
    """An N-way K-shot sampler over ``pool``, or sinusoid tasks when ``pool`` is None."""
    from slem.data import EpisodeSampler, SinusoidTasks

    if pool is None:
        return SinusoidTasks(shots, queries, seed)
    return EpisodeSampler(pool, ways, shots, queries, seed)


def build_learner(cfg: FewShotConfig, input_shape: Sequence[int]) -> FewShotLearner:
    """The configured learner for examples of ``input_shape`` (seeded by ``cfg.seed``)."""
    backbone = cfg.backbone
    if backbone == "auto":
        backbone = "mlp" if cfg.data.source == "sinusoid" else "conv"
    layers = cfg.layers or (4 if backbone == "conv" else 2)
    kwargs: dict[str, Any] = {
        "backbone": backbone,
        "hidden": cfg.hidden,
        "layers": layers,
        "norm": cfg.norm,
    }
    cls = LEARNERS[cfg.learner]
    if cls.gradient_based:
        kwargs.update(inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps)
    if cfg.learner == "imaml":
        kwargs.update(lam=cfg.lam, cg_iterations=cfg.cg_iterations)
    if cfg.learner == "matching":
        kwargs["scale"] = cfg.scale
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1_000_003)
        return cls(tuple(input_shape), cfg.task_ways, **kwargs)


def episode_metric(learner: FewShotLearner, episodes: Episodes, steps: int | None) -> Tensor:
    """Per task: the query accuracy (classification, in [0, 1]) or mean squared error."""
    episodes = episodes.to(next(learner.parameters()).device)
    out = learner.predict(episodes, steps)
    if learner.ways:
        return (out.argmax(-1) == episodes.query_y).float().mean(-1)
    return ((out - episodes.query_y) ** 2).mean(dim=(-1, -2))


def evaluate(
    learner: FewShotLearner,
    sampler: TaskSampler,
    episodes: int,
    steps: int | None = None,
    batch: int = 25,
) -> dict[str, Any]:
    """The frozen learner on ``episodes`` new tasks from ``sampler``: ``mean`` and ``ci95``
    (1.96 standard errors) of the per-task query accuracy (in %) or MSE, and ``values``.
    ``steps``: inner steps at meta-test (default: the learner's)."""
    values = []
    done = 0
    while done < episodes:
        n = min(batch, episodes - done)
        values.append(episode_metric(learner, sampler.sample(n), steps))
        done += n
    v = torch.cat(values).double()
    if learner.ways:
        v = 100.0 * v
    ci = 1.96 * float(v.std()) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    name = "accuracy" if learner.ways else "mse"
    return {
        "metric": name,
        "mean": float(v.mean()),
        "ci95": ci,
        "episodes": len(v),
        "values": [float(x) for x in v],
    }


class FewShotMetaTrainer(MetaLearner):
    """Meta-trains a few-shot learner on ``cfg``'s task family, run by
    :class:`~slem.train.loop.Loop`; keeps the state with the best meta-validation score
    (accuracy, or negative MSE), which :meth:`finish` restores.

    Attributes:
        net: the learner. history: ``iteration``, ``meta_loss`` (the task batch's mean query
            loss after adaptation), ``seconds`` and, every ``val_every`` steps,
            ``val_accuracy`` (%) or ``val_mse``.
    """

    net: FewShotLearner

    def __init__(
        self, cfg: FewShotConfig, pools: Pools, callbacks: Sequence[Callback] = ()
    ) -> None:
        super().__init__(callbacks)
        self.cfg, self.pools = cfg, pools
        self.plan = Iterations(cfg.iterations)
        self.label = f"meta-training {cfg.learner}"
        ways, shots, queries = cfg.task_ways, cfg.shots, cfg.queries
        self.sampler = make_sampler(pools.train, ways, shots, queries, cfg.seed)
        self.generator = self.sampler.generator
        shape = self.sampler.sample(1).support_x.shape[2:]
        self.device = resolve_device(cfg.device)
        self.net = build_learner(cfg, shape).to(self.device)
        meta = MetaConfig(
            hypergrad=self.net.method,
            lr=cfg.meta_lr,
            optimizer=cfg.meta_optimizer,
            weight_decay=0.0,
            momentum=0.0 if cfg.meta_optimizer == "sgd" else 0.9,
        )
        self.outer = MetaStep(meta, None, dict(self.net.named_parameters()))
        self.meta_optimizer = self.outer.meta_optimizer
        self.best: dict[str, Any] = {}
        self.validation_sampler()  # a pool too small for the episodes fails now, not later

    @property
    def vectorized(self) -> bool:
        """Meta steps run the task batch under vmap (``cfg.vectorize``, auto resolved)."""
        if self.cfg.vectorize == "auto":
            return self.net.vectorizes()
        return bool(self.cfg.vectorize)

    def validation_sampler(self) -> TaskSampler:
        """The meta-validation tasks: the same ones at every evaluation (a fixed seed)."""
        c = self.cfg
        return make_sampler(self.pools.val, c.task_ways, c.shots, c.queries, c.seed + 7919)

    def validate(self) -> dict[str, Any]:
        c = self.cfg
        return evaluate(self.net, self.validation_sampler(), c.val_episodes, c.eval_steps)

    def meta_step(self) -> float:
        c = self.cfg
        episodes = self.sampler.sample(c.task_batch).to(self.device)
        inner, outer = self.net.batches(episodes)
        result = self.outer.task_hypergradient(
            self.net.problem(),
            inner,
            outer,
            steps=self.net.inner_steps,
            vectorize=self.vectorized,
            checkpoint=c.checkpoint,
            **self.net.hypergrad_options(),
        )
        if not math.isfinite(result.outer_loss):
            raise NonFiniteLoss(
                f"the meta loss became {result.outer_loss} at iteration {self.iteration + 1}; "
                "lower meta_lr or inner_lr"
            )
        self.outer.update(replace(result, grads=self.net.meta_gradient(result)))
        row: dict[str, Any] = {
            "iteration": self.iteration + 1,
            "meta_loss": result.outer_loss,
            "seconds": round(self.elapsed, 3),
        }
        if (self.iteration + 1) % c.val_every == 0 or self.iteration + 1 == c.iterations:
            score = self.validate()
            row[f"val_{score['metric']}"] = score["mean"]
            better = (
                score["mean"] > self.best.get("score", -math.inf)
                if self.net.ways
                else (score["mean"] < self.best.get("score", math.inf))
            )
            if better:
                self.best = {
                    "score": score["mean"],
                    "iteration": self.iteration + 1,
                    "state": {k: v.detach().clone() for k, v in self.net.state_dict().items()},
                }
        self.history.append(row)
        return result.outer_loss

    def extra_state(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.best = state["best"]

    def finish(self) -> FewShotLearner:
        if self.best:
            self.net.load_state_dict(self.best["state"])
        return self.net


def few_shot_run(
    cfg: FewShotConfig,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    on_trainer: Callable[[Any], None] | None = None,
    render: Callable[[RunRecord, Path], Sequence[Path]] | None = None,
) -> RunRecord:
    """``slem fewshot train``: meta-train into ``run_dir`` (resumable from its checkpoint),
    write the selected learner (``methodology/``), ``meta_metrics.jsonl``, the plots (by
    ``render``) and ``summary.json``: the meta-test score on ``test_episodes`` new tasks
    (mean and 95% interval), and for Omniglot metric learners (any number of ways) the error
    on Lake et al.'s 20 one-shot runs. A new ``run_dir`` gets ``config.yaml`` (so
    ``slem fewshot train --resume`` continues it); an existing one is refused unless
    ``resume``. Returns the record."""
    pools = load_pools(cfg.data, cfg.seed)
    if not resume and not (run_dir / "config.yaml").is_file():  # the CLI writes it first
        check_new_run_dir(run_dir, "few_shot_run")
        make_run_dir(run_dir)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json")))
    checkpoint = run_dir / "meta_checkpoint.pt"
    test_sampler = make_sampler(
        pools.test, cfg.task_ways, cfg.shots, cfg.queries, cfg.seed + 104729
    )
    meta = FewShotMetaTrainer(cfg, pools, [CheckpointCallback(checkpoint, cfg.checkpoint_every)])
    if resume and checkpoint.is_file():
        meta.load_checkpoint(checkpoint)
    if on_trainer is not None:
        on_trainer(meta)
    meta.fit(progress)
    learner = meta.net  # the state selected on meta-validation
    test = evaluate(learner, test_sampler, cfg.test_episodes, cfg.eval_steps)
    summary: dict[str, Any] = {
        "learner": cfg.learner,
        "source": cfg.data.source,
        "ways": cfg.task_ways,
        "shots": cfg.shots,
        f"test_{test['metric']}": round(test["mean"], 4),
        "test_ci95": round(test["ci95"], 4),
        "test_episodes": test["episodes"],
        "selected_iteration": meta.best.get("iteration"),
        f"val_{test['metric']}": None
        if meta.best.get("score") is None
        else round(meta.best["score"], 4),
        "iterations": meta.iteration,
        "seconds": round(meta.elapsed, 1),
        "seconds_per_meta_step": round(meta.elapsed / max(meta.iteration, 1), 4),
    }
    if cfg.data.source == "omniglot" and learner.kind in ("protonet", "matching"):
        summary["lake_20way_error"] = round(lake_error(learner, cfg.data), 2)
    save_methodology(
        learner,
        run_dir / "methodology",
        cfg,
        trained_on={
            "source": cfg.data.source,
            "ways": cfg.task_ways,
            "shots": cfg.shots,
            "iterations": meta.iteration,
            "selected_iteration": meta.best.get("iteration"),
        },
    )
    with (run_dir / "meta_metrics.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in meta.history)
    info = {
        "meta_loss_label": (
            "query loss after adaptation" if learner.gradient_based else "query loss"
        )
        + (" (cross-entropy)" if learner.ways else " (MSE)"),
        "meta_title": f"meta-training {cfg.learner} on {cfg.data.source}",
        "val_title": f"meta-validation of {cfg.learner} on {cfg.data.source}",
    }
    arrays: dict[str, np.ndarray] = meta_loss_array(meta.history)
    validated = [r for r in meta.history if f"val_{test['metric']}" in r]
    arrays["val_iteration"] = np.array([r["iteration"] for r in validated], dtype=np.int64)
    arrays["val_metric"] = np.array([r[f"val_{test['metric']}"] for r in validated])
    info["val_label"] = "accuracy (%)" if learner.ways else "mean squared error"
    if cfg.data.source == "sinusoid":
        arrays.update(adaptation_arrays(learner, cfg.shots, cfg.seed))
    record = RunRecord(list(meta.history), summary, arrays, info)
    if render is not None:
        summary["plots"] = [str(p) for p in render(record, run_dir)]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return record


def adaptation_arrays(
    learner: FewShotLearner,
    shots: int,
    seed: int = 0,
    tasks: int = 3,
    steps: Sequence[int] = (0, 1, 10),
) -> dict[str, np.ndarray]:
    """How the frozen learner fits ``tasks`` new sinusoids from ``shots`` points after each
    number of inner ``steps``, on a grid of 200 points of [-5, 5]: ``sinusoid_x`` (200,),
    ``sinusoid_truth`` (T, 200), ``sinusoid_support_x``/``_y`` (T, K),
    ``sinusoid_prediction`` (T, S, 200), ``sinusoid_steps`` (S,)."""
    from slem.data import Episodes, SinusoidTasks

    episodes = SinusoidTasks(shots, 1, seed + 31337).sample(tasks)
    grid = torch.linspace(-5.0, 5.0, 200)
    amplitude, phase = episodes.info["amplitude"], episodes.info["phase"]
    truth = SinusoidTasks.curve(amplitude[:, None], phase[:, None], grid[None, :])
    query = Episodes(
        episodes.support_x,
        episodes.support_y,
        grid.expand(tasks, -1).unsqueeze(-1),
        truth.unsqueeze(-1),
        0,
    )
    query = query.to(next(learner.parameters()).device)
    outputs = [learner.predict(query, k)[..., 0].cpu() for k in steps]
    predictions = torch.stack(outputs, dim=1)
    return {
        "sinusoid_x": grid.numpy(),
        "sinusoid_truth": truth.numpy(),
        "sinusoid_support_x": episodes.support_x[..., 0].numpy(),
        "sinusoid_support_y": episodes.support_y[..., 0].numpy(),
        "sinusoid_prediction": predictions.numpy(),
        "sinusoid_steps": np.array(list(steps)),
    }


@overload
def lake_error(
    learner: FewShotLearner,
    data: FewShotData,
    steps: int | None = ...,
    per_run: Literal[False] = ...,
) -> float: ...


@overload
def lake_error(
    learner: FewShotLearner, data: FewShotData, steps: int | None, per_run: Literal[True]
) -> list[float]: ...


def lake_error(
    learner: FewShotLearner, data: FewShotData, steps: int | None = None, per_run: bool = False
) -> float | list[float]:
    """The error (%) on Lake et al. (2015)'s 20 runs of 20-way one-shot classification (20
    queries each; ``per_run``: the 20 runs' errors)."""
    from slem.data import load_omniglot_runs

    runs = load_omniglot_runs(data.data_dir, data.image_size)
    errors = []
    device = next(learner.parameters()).device
    for run in (r.to(device) for r in runs):
        out = learner.predict(run, steps)
        right = int((out.argmax(-1) == run.query_y).sum())
        errors.append(100.0 * (1.0 - right / run.query_y.numel()))
    return errors if per_run else sum(errors) / len(errors)


def load_learner_run(
    directory: str | Path, data_dir: str | Path | None = None
) -> tuple[FewShotLearner, FewShotConfig]:
    """The learner a ``slem fewshot train`` run saved and the config it was trained with;
    ``data_dir`` overrides the run's (a stored one that no longer exists falls back to
    ``$SLEM_DATA``).

    Raises:
        SlemError: not a few-shot learner, or an artifact without its training config.
    """
    from slem.methodology import load_methodology

    learner, meta = load_methodology(directory)
    if not isinstance(learner, FewShotLearner):
        raise SlemError(
            f"'{directory}' holds a '{learner.kind}' methodology, not a few-shot learner; "
            "pass the run directory of slem fewshot train"
        )
    if not meta.get("training_config"):
        raise SlemError(
            f"'{directory}' has no training config (saved with learner.save?); save it with "
            "slem.train.save_methodology(learner, DIR, config) to evaluate it here"
        )
    cfg = FewShotConfig.model_validate(meta["training_config"])
    if data_dir is not None:
        cfg.data.data_dir = str(Path(data_dir).expanduser().resolve())
    elif cfg.data.data_dir is not None and not Path(cfg.data.data_dir).is_dir():
        cfg.data.data_dir = None
    return learner, cfg
