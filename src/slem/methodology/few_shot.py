"""Few-shot learners: the methodologies of optimization-based and metric-based meta-learning.

Each learner is a :class:`~slem.methodology.Methodology` whose meta-learned parameters set how
a new task is learned from its support set (the SLeM paper's ``h``; seeds 001, 002, 004):

========== ============================================ ================== ====================
kind       what is meta-learned                         inner loop         meta-gradient
========== ============================================ ================== ====================
maml       the initialization (Finn et al. 2017)        SGD, all weights   second order
fomaml     the initialization                           SGD, all weights   first order
reptile    the initialization (Nichol et al. 2018)      SGD, all weights   ``phi - theta_K``
metasgd    initialization and per-weight rates (Li      ``theta - alpha    second order
           et al. 2017)                                 * grad``
anil       body and head initialization (Raghu et       SGD, head only     second order
           al. 2020)
imaml      the initialization under a proximal term     SGD + ``lam/2 |    implicit (CG)
           (Rajeswaran et al. 2019)                     theta - phi|^2``
protonet   the embedding (Snell et al. 2017)            class means        exact (no inner step)
matching   the embedding (Vinyals et al. 2016, without  attention over     exact (no inner step)
           full context embeddings)                     the support
========== ============================================ ================== ====================

The hook into learning is :meth:`FewShotLearner.problem`: one task's bilevel problem over the
learner's parameters (inner loss on the support, outer loss on the query), which
:func:`slem.bilevel.task_hypergrad` differentiates over a batch of tasks; and
:meth:`FewShotLearner.predict`, the frozen learner adapted to new tasks' supports.

**Normalization.** The convolutional backbone normalizes with :class:`TaskNorm`, which keeps no
running statistics, so nothing a learner sees at meta-test can move its meta-trained state.
``norm="per_task"`` normalizes every example of a task (support and query) with its support's
statistics: a query prediction depends on the support and on that query example alone.
``norm="transductive"`` normalizes the query with the query batch's own statistics, as MAML's
reference code does (a prediction then depends on the other query examples).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from slem.bilevel import SGD, BilevelProblem, Hypergrad, Params, adapt
from slem.bilevel.tasks import task_slice
from slem.errors import SlemError
from slem.methodology.base import Methodology

NORMS = ("per_task", "transductive")
BACKBONES = ("conv", "mlp")
Episode = tuple[Tensor, Tensor, Tensor, Tensor]

#: rows whose statistics :class:`TaskNorm` normalizes with (None: all rows of the batch)
_CONTEXT_ROWS: ContextVar[int | None] = ContextVar("slem_context_rows", default=None)


@contextmanager
def context_rows(rows: int | None) -> Iterator[None]:
    """Within this context every :class:`TaskNorm` takes its statistics from the first
    ``rows`` examples of its input (a task's support, placed before its query)."""
    token = _CONTEXT_ROWS.set(rows)
    try:
        yield
    finally:
        _CONTEXT_ROWS.reset(token)


class TaskNorm(nn.Module):
    """Batch normalization over one task's examples, with a learned affine map and no running
    statistics (Ioffe & Szegedy 2015, eq. in Alg. 1, without the inference-time averages).

    Input ``(n, C, ...)``; the mean and variance per channel come from the first
    :func:`context_rows` rows (all rows outside that context). Composed of plain tensor
    operations, so ``vmap`` over tasks and second-order gradients are exact (torch's fused
    batch norm gives a different double-backward under ``vmap``).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        rows = _CONTEXT_ROWS.get()
        ref = x if rows is None else x[:rows]
        dims = [0, *range(2, x.dim())]
        mean = ref.mean(dim=dims, keepdim=True)
        var = ((ref - mean) ** 2).mean(dim=dims, keepdim=True)
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale = self.weight.view(shape) * torch.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias.view(shape)


def build_backbone(
    input_shape: Sequence[int], kind: str, hidden: int, layers: int
) -> tuple[nn.Sequential, int]:
    """The embedding network and its output size.

    ``conv``: ``layers`` blocks of 3x3 convolution (``hidden`` channels), :class:`TaskNorm`,
    ReLU and 2x max-pooling (the four-block network of Vinyals et al. 2016 and Finn et al.
    2017), for inputs ``(C, H, W)``, or ``(C, L)`` with 1-D convolutions; ``mlp``: ``layers``
    ReLU layers of width ``hidden`` (Finn et al.'s 40-40 network for sinusoids).

    Raises:
        SlemError: an unknown kind, or an input too small for ``layers`` poolings.
    """
    shape = tuple(int(s) for s in input_shape)
    if kind not in BACKBONES:
        raise SlemError(f"unknown backbone '{kind}'; use one of {', '.join(BACKBONES)}")
    modules: list[nn.Module] = []
    if kind == "mlp":
        width = math.prod(shape)
        modules.append(nn.Flatten())
        for _ in range(layers):
            modules += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        return nn.Sequential(*modules), width
    if len(shape) not in (2, 3):
        raise SlemError(
            f"backbone conv needs inputs (C, H, W) or (C, L), got {shape}; use backbone mlp"
        )
    conv, pool = (nn.Conv2d, nn.MaxPool2d) if len(shape) == 3 else (nn.Conv1d, nn.MaxPool1d)
    channels, sizes = shape[0], list(shape[1:])
    for _ in range(layers):
        if min(sizes) < 2:
            raise SlemError(
                f"inputs of shape {shape} are too small for {layers} conv blocks (each halves "
                "the size); lower backbone layers"
            )
        modules += [conv(channels, hidden, 3, padding=1), TaskNorm(hidden), nn.ReLU(), pool(2)]
        channels, sizes = hidden, [s // 2 for s in sizes]
    modules.append(nn.Flatten())
    return nn.Sequential(*modules), channels * math.prod(sizes)


class FewShotLearner(Methodology):
    """The base of every few-shot learner: a backbone (``body``), a task type, a
    normalization mode and how it adapts to a task.

    Args:
        input_shape: one example's shape, e.g. ``(1, 28, 28)`` or ``(1,)``.
        ways: N of N-way classification (the head's outputs); 0 for regression (one output).
        backbone, hidden, layers: see :func:`build_backbone`.
        norm: ``per_task`` or ``transductive`` (module docstring).
        inner_lr, inner_steps: the inner loop's SGD rate and steps in meta-training (gradient
            learners; metric learners have none).

    Raises:
        SlemError: an unknown norm, ``ways`` of 1, a negative rate or step count.
    """

    input_features = ("support_set",)
    used_with = "slem fewshot eval ARTIFACT"
    #: the hypergradient method of its meta step (:data:`slem.bilevel.TASK_METHODS`)
    method: ClassVar[str] = "unrolled"
    #: parameters adapted in the inner loop: ``all`` or ``head``
    adapts: ClassVar[str] = "all"
    #: it has an inner loop (metric learners adapt in closed form)
    gradient_based: ClassVar[bool] = True

    def __init__(
        self,
        input_shape: Sequence[int],
        ways: int,
        backbone: str = "conv",
        hidden: int = 64,
        layers: int = 4,
        norm: str = "per_task",
        inner_lr: float = 0.4,
        inner_steps: int = 1,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise SlemError(f"unknown norm '{norm}'; use one of {', '.join(NORMS)}")
        if ways == 1 or ways < 0:
            raise SlemError(f"ways must be 0 (regression) or at least 2, got {ways}")
        if inner_lr <= 0 or inner_steps < 0:
            raise SlemError(
                f"inner_lr must be > 0 and inner_steps >= 0, got {inner_lr} and {inner_steps}"
            )
        self.input_shape = tuple(int(s) for s in input_shape)
        self.ways, self.backbone, self.hidden, self.layers = ways, backbone, hidden, layers
        self.norm, self.inner_lr, self.inner_steps = norm, float(inner_lr), int(inner_steps)
        self.body, self.features = build_backbone(self.input_shape, backbone, hidden, layers)

    @property
    def task_type(self) -> str:
        """``classification`` (N-way) or ``regression``."""
        return "classification" if self.ways else "regression"

    def config(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "ways": self.ways,
            "backbone": self.backbone,
            "hidden": self.hidden,
            "layers": self.layers,
            "norm": self.norm,
            "inner_lr": self.inner_lr,
            "inner_steps": self.inner_steps,
        }

    # what a task batch looks like to the engine
    @staticmethod
    def batches(episodes: Any) -> tuple[tuple[Tensor, Tensor], Episode]:
        """``(inner_batch, outer_batch)`` of a task batch (an :class:`~slem.data.Episodes`):
        the support, and the whole episode (a query forward may need the support's
        statistics)."""
        e = episodes
        return (e.support_x, e.support_y), (e.support_x, e.support_y, e.query_x, e.query_y)

    def task_loss(self, output: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy of ``(n, N)`` logits (classification) or the mean squared error of
        ``(n, 1)`` predictions (regression)."""
        if self.ways:
            return F.cross_entropy(output, y)
        return ((output - y) ** 2).mean()

    def problem(self) -> BilevelProblem:
        """One task's bilevel problem over all of the learner's parameters (the
        hyperparameters of meta-learning), for :func:`slem.bilevel.task_hypergrad`."""
        raise NotImplementedError

    def meta_gradient(self, result: Hypergrad) -> Params:
        """The direction the meta optimizer steps along, from a task batch's hypergradient
        (the hypergradient itself, but for Reptile)."""
        return result.grads

    def hypergrad_options(self) -> dict[str, Any]:
        """Options of the meta step's hypergradient method (iMAML's solver)."""
        return {}

    def check_ways(self, ways: int) -> None:
        """Raise unless the learner can be applied to ``ways``-way tasks.

        Raises:
            SlemError: a classification head of another size, or a task type mismatch.
        """
        if (ways == 0) != (self.ways == 0):
            kinds = ("regression", "classification")
            raise SlemError(
                f"this learner was meta-trained for {self.task_type}; these tasks are "
                f"{kinds[ways != 0]}"
            )

    @torch.no_grad()
    def predict(
        self, episodes: Any, steps: int | None = None, vectorize: bool | None = None
    ) -> Tensor:
        """Adapt to every task's support and predict its query: ``(B, Q, N)`` logits or
        ``(B, Q, 1)`` regression outputs. ``steps``: inner steps (default: as in
        meta-training). ``vectorize``: the tasks under ``vmap`` (default: :meth:`vectorizes`).
        Nothing of the learner changes (its parameters stay frozen)."""
        self.check_ways(getattr(episodes, "ways", self.ways))
        shape = tuple(episodes.support_x.shape[2:])
        if shape != self.input_shape:
            raise SlemError(
                f"this learner was meta-trained on examples of shape {self.input_shape}; "
                f"these tasks' are {shape}"
            )
        k = self.inner_steps if steps is None else steps
        if k < 0 or (k > 0 and not self.gradient_based):
            allowed = "at least 0" if self.gradient_based else "0 (it adapts in closed form)"
            raise SlemError(f"{self.kind}: inner steps must be {allowed}, got {k}")
        inner, outer = self.batches(episodes)
        problem = self.problem()
        hyper = {name: v.detach() for name, v in self.named_parameters()}

        def one(support: tuple[Tensor, Tensor], episode: Episode) -> Tensor:
            with torch.enable_grad() if k > 0 else torch.no_grad():
                params = adapt(problem, hyper, support, k, first_order=True)
            return self.query_output({**hyper, **params}, episode).detach()

        if self.vectorizes() if vectorize is None else vectorize:
            return vmap(one, randomness="different")(inner, outer)
        tasks = range(int(inner[0].shape[0]))
        return torch.stack([one(task_slice(inner, b), task_slice(outer, b)) for b in tasks])

    def vectorizes(self) -> bool:
        """Task batches run under ``vmap`` by default: yes but for convolutional backbones
        on CPU, where ``vmap``'s batched convolutions measured 0.5-1.3x the speed of a loop over
        tasks (``docs/results/few_shot.md``)."""
        return self.backbone != "conv" or next(self.parameters()).device.type != "cpu"

    def query_output(self, params: Params, episode: Episode) -> Tensor:
        """The query's outputs of one task at ``params`` (all of the learner's)."""
        raise NotImplementedError

    def embed(self, params: Params, x: Tensor) -> Tensor:
        """The body's features ``(n, F)`` of ``x`` at ``params`` (the body's are read)."""
        body = {k[len("body.") :]: v for k, v in params.items() if k.startswith("body.")}
        out: Tensor = functional_call(self.body, body, (x,))
        return out

    def task_embed(
        self, params: Params, support_x: Tensor, query_x: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Features of a task's support and query under the learner's normalization mode."""
        n = support_x.shape[0]
        if self.norm == "per_task":
            with context_rows(n):
                z = self.embed(params, torch.cat([support_x, query_x]))
            return z[:n], z[n:]
        return self.embed(params, support_x), self.embed(params, query_x)


class MAML(FewShotLearner):
    """Model-agnostic meta-learning (Finn et al. 2017, Alg. 2): meta-learns the
    initialization ``phi``; a task adapts all weights by ``inner_steps`` SGD steps on its
    support, ``theta = phi - inner_lr * grad L_support(phi)``; the meta-gradient is the
    query loss's, second order through the steps."""

    kind = "maml"

    def __init__(self, input_shape: Sequence[int], ways: int, **kwargs: Any) -> None:
        super().__init__(input_shape, ways, **kwargs)
        self.head = nn.Linear(self.features, ways or 1)

    def check_ways(self, ways: int) -> None:
        super().check_ways(ways)
        if self.ways and ways != self.ways:
            raise SlemError(
                f"this {self.kind} learner was meta-trained {self.ways}-way (its head has "
                f"{self.ways} outputs); evaluate with --ways {self.ways} or meta-train one "
                f"with ways {ways}"
            )

    def adapted(self, name: str) -> bool:
        """The parameter ``name`` moves in the inner loop."""
        if name.startswith("alpha."):
            return False
        return self.adapts == "all" or name.startswith("head.")

    def output(self, params: Params, x: Tensor) -> Tensor:
        head = {k[len("head.") :]: v for k, v in params.items() if k.startswith("head.")}
        out: Tensor = functional_call(self.head, head, (self.embed(params, x),))
        return out

    def query_output(self, params: Params, episode: Episode) -> Tensor:
        sx, _, qx, _ = episode
        if self.norm == "per_task":
            n = sx.shape[0]
            with context_rows(n):
                return self.output(params, torch.cat([sx, qx]))[n:]
        return self.output(params, qx)

    def inner_rate(self) -> Any:
        """The inner SGD step's rate: a float, or a function of the hyperparameters."""
        return self.inner_lr

    def inner_penalty(self, params: Params, hyper: Params) -> Tensor | float:
        """A term added to the support loss (iMAML's proximal term)."""
        return 0.0

    def problem(self) -> BilevelProblem:
        names = [k for k, _ in self.named_parameters() if self.adapted(k)]

        def start(hyper: Params) -> Params:
            return {k: hyper[k] for k in names}

        def inner_loss(params: Params, hyper: Params, batch: tuple[Tensor, Tensor]) -> Tensor:
            x, y = batch
            loss = self.task_loss(self.output({**hyper, **params}, x), y)
            return loss + self.inner_penalty(params, hyper)

        def outer_loss(params: Params, hyper: Params, episode: Episode) -> Tensor:
            return self.task_loss(self.query_output({**hyper, **params}, episode), episode[3])

        hyper: Params = dict(self.named_parameters())
        return BilevelProblem(
            start(hyper), hyper, inner_loss, outer_loss, SGD(self.inner_rate()), start
        )


class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017, section 5.2): MAML with the inner gradients taken
    as constants, so the meta-gradient is the query gradient at the adapted weights; memory
    flat in the number of inner steps."""

    kind = "fomaml"
    method = "first_order"


class Reptile(MAML):
    """Reptile (Nichol et al. 2018, Alg. 2, batched): the meta optimizer steps along
    ``phi - mean_b theta_K^b``, the average displacement of the ``inner_steps``-step
    adapted weights (first order; memory flat in the steps). The reported meta loss is still
    the query loss after adaptation."""

    kind = "reptile"
    method = "first_order"

    def meta_gradient(self, result: Hypergrad) -> Params:
        assert result.params is not None, "task_hypergrad returns the adapted parameters"
        current = dict(self.named_parameters())
        grads = {k: torch.zeros_like(v) for k, v in result.grads.items()}
        for k, adapted in result.params.items():
            grads[k] = current[k].detach() - adapted.mean(dim=0)
        return grads


class MetaSGD(MAML):
    """Meta-SGD (Li et al. 2017, eq. 1): meta-learns the initialization and one learning
    rate per weight, ``theta = phi - alpha * grad L_support(phi)`` (``alpha`` of every
    weight's shape, initialized uniformly in [0.005, 0.1] as in the paper's section 4)."""

    kind = "metasgd"

    def __init__(self, input_shape: Sequence[int], ways: int, **kwargs: Any) -> None:
        super().__init__(input_shape, ways, **kwargs)
        self.alpha = nn.ParameterDict(
            {
                _key(name): nn.Parameter(torch.empty_like(p).uniform_(0.005, 0.1))
                for name, p in self.named_parameters()
            }
        )

    def inner_rate(self) -> Any:
        def rates(hyper: Params) -> Params:
            names = [k for k, _ in self.named_parameters() if self.adapted(k)]
            return {k: hyper[f"alpha.{_key(k)}"] for k in names}

        return rates


def _key(name: str) -> str:
    return name.replace(".", "__")


class ANIL(MAML):
    """Almost no inner loop (Raghu et al. 2020): only the head adapts in the inner loop; the
    body (and the head's initialization) is meta-learned, second order through the head's
    steps."""

    kind = "anil"
    adapts = "head"


class IMAML(MAML):
    """Implicit MAML (Rajeswaran et al. 2019, Alg. 1 with eq. 7): each task minimizes its
    support loss plus ``lam / 2 * |theta - phi|^2`` by ``inner_steps`` SGD steps; the
    meta-gradient ``(I + H / lam)^{-1} grad L_query(theta)`` comes from the implicit function
    theorem by conjugate gradient (``cg_iterations``; truncated at a direction of negative
    curvature, which a network's support loss can have), so memory does not depend on the
    inner steps.

    Args:
        lam: the proximal regularization strength.
        cg_iterations: conjugate-gradient iterations per task.
    """

    kind = "imaml"
    method = "implicit"

    def __init__(
        self,
        input_shape: Sequence[int],
        ways: int,
        lam: float = 1.0,
        cg_iterations: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(input_shape, ways, **kwargs)
        if lam <= 0 or cg_iterations < 1:
            raise SlemError(
                f"imaml needs lam > 0 and cg_iterations >= 1, got {lam} and {cg_iterations}"
            )
        self.lam, self.cg_iterations = float(lam), int(cg_iterations)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "lam": self.lam, "cg_iterations": self.cg_iterations}

    def inner_penalty(self, params: Params, hyper: Params) -> Tensor | float:
        total = sum(((p - hyper[k]) ** 2).sum() for k, p in params.items())
        return 0.5 * self.lam * total

    def hypergrad_options(self) -> dict[str, Any]:
        return {
            "solver": "cg",
            "iterations": self.cg_iterations,
            "negative_curvature": "stop",
        }


class MetricLearner(FewShotLearner):
    """A metric-based learner: the body embeds, a task is adapted in closed form from its
    support's embeddings (no inner step), and the meta-gradient is the exact gradient of the
    query loss (:func:`~slem.bilevel.task_hypergrad` with 0 steps). Any number of ways at
    meta-test."""

    gradient_based = False

    def __init__(self, input_shape: Sequence[int], ways: int, **kwargs: Any) -> None:
        if not ways:
            raise SlemError(f"{self.kind} classifies (ways >= 2); use maml for regression")
        kwargs.setdefault("inner_steps", 0)
        super().__init__(input_shape, ways, **kwargs)

    @staticmethod
    def batches(episodes: Any) -> tuple[tuple[Tensor, Tensor], Episode]:
        """As :meth:`FewShotLearner.batches`, with the support labels one-hot ``(B, S, N)``
        (so the number of ways is a static shape under ``vmap``)."""
        e = episodes
        onehot = F.one_hot(e.support_y, e.ways).to(e.support_x.dtype)
        return (e.support_x, onehot), (e.support_x, onehot, e.query_x, e.query_y)

    def scores(self, support: Tensor, onehot: Tensor, query: Tensor) -> Tensor:
        """Logits ``(Q, N)`` of query features ``(Q, F)`` against the support's ``(S, F)``
        with one-hot labels ``(S, N)``."""
        raise NotImplementedError

    def query_output(self, params: Params, episode: Episode) -> Tensor:
        sx, onehot, qx, _ = episode
        zs, zq = self.task_embed(params, sx, qx)
        return self.scores(zs, onehot, zq)

    def problem(self) -> BilevelProblem:
        def start(hyper: Params) -> Params:
            return hyper

        def inner_loss(params: Params, hyper: Params, batch: Any) -> Tensor:
            raise SlemError("a metric learner has no inner loss")

        def outer_loss(params: Params, hyper: Params, episode: Episode) -> Tensor:
            return self.task_loss(self.query_output(params, episode), episode[3])

        hyper: Params = dict(self.named_parameters())
        return BilevelProblem(hyper, hyper, inner_loss, outer_loss, SGD(1.0), start)


class ProtoNet(MetricLearner):
    """Prototypical networks (Snell et al. 2017, eq. 1-2): a class's prototype is the mean
    of its support embeddings; a query's logits are its negative squared Euclidean distances
    to the prototypes."""

    kind = "protonet"

    def scores(self, support: Tensor, onehot: Tensor, query: Tensor) -> Tensor:
        prototypes = (onehot.T @ support) / onehot.sum(dim=0).clamp_min(1.0).unsqueeze(1)
        distances = (
            (query**2).sum(1, keepdim=True)
            - 2 * query @ prototypes.T
            + (prototypes**2).sum(1).unsqueeze(0)
        )
        return -distances


class MatchingNet(MetricLearner):
    """Matching networks (Vinyals et al. 2016, eq. 1-2) without full context embeddings: a
    query's class distribution is the softmax attention over the support's cosine
    similarities (times ``scale``) applied to the one-hot support labels; its logits are
    the log-probabilities.

    Args:
        scale: the inverse temperature of the attention (cosine similarities lie in [-1, 1];
            the paper's softmax over raw cosines learns slowly).
    """

    kind = "matching"

    def __init__(
        self, input_shape: Sequence[int], ways: int, scale: float = 10.0, **kwargs: Any
    ) -> None:
        super().__init__(input_shape, ways, **kwargs)
        if scale <= 0:
            raise SlemError(f"matching needs scale > 0, got {scale}")
        self.scale = float(scale)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "scale": self.scale}

    def scores(self, support: Tensor, onehot: Tensor, query: Tensor) -> Tensor:
        similarity = F.normalize(query, dim=1) @ F.normalize(support, dim=1).T
        attention = torch.softmax(self.scale * similarity, dim=1)
        return torch.log((attention @ onehot).clamp_min(1e-12))


#: the few-shot learners by kind
LEARNERS: dict[str, type[FewShotLearner]] = {
    cls.kind: cls for cls in (MAML, FOMAML, Reptile, MetaSGD, ANIL, IMAML, ProtoNet, MatchingNet)
}
