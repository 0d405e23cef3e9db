"""Meta-learning a sample-weighting methodology while training: :class:`MetaTrainer`
(MW-Net, Shu et al. 2019, Alg. 1; CMW-Net and CMW-Net-SL, Shu et al. 2023)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.bilevel import BilevelProblem, PerSample, functional
from slem.bilevel.head import HeadSplit
from slem.data.task import Task
from slem.errors import SlemError
from slem.methodology import Methodology
from slem.train import losses as L
from slem.train.callbacks import Callback
from slem.train.config import TrainConfig
from slem.train.distributed import rows_of, sum_over_ranks, weighted_mean
from slem.train.hooks import new_weighting
from slem.train.meta_step import MetaStep, PendingStep, phased_meta_step
from slem.train.methods import method_spec
from slem.train.teacher import weighted_terms
from slem.train.trainer import Trainer

#: the outer batch's model inputs (the head's features under meta.scope head)
_INPUTS = ("x", "weak", "strong")


def _rank_mean(tensors: dict[str, Tensor], weight: float) -> dict[str, Tensor]:
    """The fast path's ``reduce`` over the ranks (:class:`~slem.bilevel.WeightedProblem`)."""
    return weighted_mean(tensors, weight)[0]


class MetaTrainer(Trainer):
    """Meta-learns a sample-weighting methodology while training the model; its meta step
    comes in two phases (:class:`~slem.train.meta_step.PhasedMetaStep`).

    Each meta step builds a :class:`~slem.bilevel.WeightedProblem` over the current batch
    and asks the engine for the hypergradient of the meta objective with respect to the
    weighting net (``meta.hypergrad``; ``lookahead`` takes the structured fast path), takes
    an Adam step on the net, then the real training step with the updated weights (or, in
    the ``lagged`` order, reuses the virtual step as the real one).

    Data-parallel (:meth:`~slem.train.Trainer.use_ranks`): each rank holds its part of the
    training batch and of the outer batch; the fast path averages its parts over the ranks
    (a ``reduce`` of the :class:`~slem.bilevel.WeightedProblem`), the sample weights are the
    global batch's (:meth:`~slem.train.hooks.SampleWeights.weights`), and each outer term is
    this rank's share of the global batch's (DAC-MR's prior term included), so the step is
    the one-process step on the global batch.
    """

    def __init__(
        self,
        config: TrainConfig,
        task: Task,
        model: nn.Module | None = None,
        methodology: Methodology | None = None,
        callbacks: Sequence[Callback] = (),
        device: torch.device | str | None = None,
    ) -> None:
        meta = config.meta
        if methodology is None:  # seeded here, so a run does not depend on what ran before
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed + 1_000_003)
                methodology = self.new_methodology(config, task)
        super().__init__(config, task, model, methodology, callbacks, device)
        assert self.methodology is not None
        if "clean" in meta.objective and self.meta_training:
            n_meta = len(task.meta) if task.meta is not None else 0
            if n_meta < task.n_classes:
                raise SlemError(
                    f"the meta set has {n_meta} samples, fewer than the {task.n_classes} "
                    "classes; raise data.meta_per_class or use meta.objective dac or selected"
                )
        self.meta_step: MetaStep | None = None
        if self.meta_training:
            self.meta_step = MetaStep(
                meta,
                self.optimizer,
                self.meta_hyper(),
                self._check_finite,
                [self.observe_hypergradient],
            )
        self.selected: Tensor | None = None
        self._f_model = functional(self.model)
        self._f_meth = functional(self.methodology)
        # meta.scope head (the layer subset): the meta step's problem is the output layer on
        # features computed once; model: the whole model on the inputs
        self._head = HeadSplit(self.model) if meta.scope == "head" else None
        if self._head is not None:  # refuse a model without an output layer now, not later
            self._head.head_params(self.inner_params())
            self._head.features(self._f_model, self._f_model.params(), self.train_x[:2])
        self._net: Any = self._head.head if self._head is not None else self._f_model
        self._live_logits: Tensor | None = None

    # ------------------------------------------------------------------ state

    meta_training: bool = True

    def new_methodology(self, config: TrainConfig, task: Task) -> Methodology:
        """The untrained methodology this trainer meta-learns."""
        (kind,) = method_spec(config).meta_learns
        return new_weighting(kind, config.meta)

    def meta_hyper(self) -> dict[str, nn.Parameter]:
        """The methodology's parameters the meta step learns, by name."""
        assert self.methodology is not None
        return dict(self.methodology.named_parameters())

    @property
    def meta_optimizer(self) -> torch.optim.Optimizer | None:
        """The methodology's optimizer (None when the methodology is frozen)."""
        return self.meta_step.meta_optimizer if self.meta_step is not None else None

    def state(self) -> dict[str, Any]:
        opt = self.meta_optimizer
        return {
            **super().state(),
            "meta_optimizer": opt.state_dict() if opt is not None else None,
            "selected": self.selected,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if self.meta_optimizer is not None:
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.selected = state["selected"]

    # ------------------------------------------------------------------ epochs

    @property
    def in_warmup(self) -> bool:
        return self.meta_training and self.progress.epoch < self.config.meta.warmup_epochs

    def on_epoch_start(self) -> None:
        super().on_epoch_start()
        selecting = self.config.meta.objective == "selected" and self.meta_training
        if selecting and not self.in_warmup:
            self.selected = self.select_clean()

    def select_clean(self) -> Tensor:
        """Per class, the ``select_per_class`` training samples with the lowest loss."""
        losses = self.labels.eval_losses(self.model, self.train_x, self.train_y)
        k = self.config.meta.select_per_class
        chosen = []
        for c in range(self.task.n_classes):
            idx = torch.nonzero(self.train_y == c).squeeze(1)
            if len(idx):
                chosen.append(idx[torch.argsort(losses[idx])[:k]])
        return torch.cat(chosen)

    # ------------------------------------------------------------------ steps

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, float]:
        if self.in_warmup:
            return self._warmup_step(x, y, idx)
        if self.meta_step_due:
            return self.meta_train_step(x, y, idx)
        return super().train_step(x, y, idx)

    def _warmup_step(self, x: Tensor, y: Tensor, idx: Tensor | None = None) -> dict[str, float]:
        """A plain step (ERM); the losses of training samples ``idx`` join the histories."""
        start = time.perf_counter()
        self.model.train()
        losses = L.cross_entropy(self.model(x), y)
        if idx is not None and self.sample_weights is not None:
            self.sample_weights.observe(losses, idx)
        return self._optimize(losses.mean(), start)

    def _per_sample(self, params: dict[str, Tensor], batch: tuple[Any, ...]) -> PerSample:
        x, y, pseudo, _ = batch
        # functional: no side effects, except the fast path's live forward (the real step's
        # forward, options live_forward/keep_graph) which moves BatchNorm statistics once;
        # under meta.scope head, x are the head's input features
        return weighted_terms(self._net(params, x), y, pseudo)

    def _weights(self, hyper: dict[str, Tensor], losses: Tensor, batch: tuple[Any, ...]) -> Tensor:
        assert self.sample_weights is not None
        return self.sample_weights.weights(
            losses, batch[1], batch[3], lambda inputs, groups: self._f_meth(hyper, inputs, groups)
        )

    def _outer_batch(self) -> dict[str, Tensor]:
        meta = self.config.meta
        out: dict[str, Tensor] = {}
        if "clean" in meta.objective or meta.objective == "selected":
            if meta.objective == "selected":
                assert self.selected is not None
                pool_x, pool_y = self.train_x[self.selected], self.train_y[self.selected]
            else:
                assert self.meta_x is not None and self.meta_y is not None
                pool_x, pool_y = self.meta_x, self.meta_y
            take = torch.randperm(len(pool_y), generator=self.generator)[: meta.batch_size]
            take = take.to(self.device)
            out["x"], out["y"] = pool_x[take], pool_y[take]
        if "dac" in meta.objective:
            out.update(self.dac_views(meta.batch_size))
        return self._own_rows(out) if self.ranks.active else out

    def _own_rows(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Data-parallel: this rank's part of every tensor of the global outer ``batch``
        (drawn alike on every rank), and the global number of rows of each of its terms
        (``clean_rows``, ``dac_rows``), by which :meth:`_outer_loss` scales its share."""
        out = {k: v[rows_of(len(v), self.ranks)] for k, v in batch.items()}
        if "y" in batch:
            out["clean_rows"] = torch.tensor(len(batch["y"]))
        if "weak" in batch:
            out["dac_rows"] = torch.tensor(len(batch["weak"]))
        return out

    def _batch_mean(self, values: Tensor, rows: Tensor | None) -> Tensor:
        """The mean of per-sample ``values`` over the outer batch; data-parallel (``rows``:
        the global batch's rows), this rank's share: its sum times ``ranks / rows``, whose
        plain mean over the ranks is the global batch's mean."""
        if rows is None:
            return values.mean()
        return values.sum() * (self.ranks.size / int(rows))

    def _outer_loss(
        self, params: dict[str, Tensor], hyper: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> Tensor:
        meta = self.config.meta
        total = torch.zeros((), device=self.device)
        if "y" in batch:
            logits = self._net(params, batch["x"])
            if "clean_rows" in batch:
                ce = self._batch_mean(L.cross_entropy(logits, batch["y"]), batch["clean_rows"])
            else:
                ce = F.cross_entropy(logits, batch["y"])
            total = total + (meta.clean_weight if meta.objective == "clean+dac" else 1.0) * ce
        if "weak" in batch:  # DAC-MR: predictions on strong views should match weak views
            with torch.no_grad():
                target = F.softmax(
                    self._net(params, batch["weak"]).detach() / meta.dac_temperature, dim=1
                )
            logits = self._net(params, batch["strong"])
            rows = batch.get("dac_rows")
            dac = self._batch_mean(L.soft_cross_entropy(logits, target), rows)
            total = total + meta.dac_weight * dac
            if meta.dac_prior_weight > 0:
                share = self._prior_gap_share
                gap = self.prior_gap(logits) if rows is None else share(logits, rows)
                total = total + meta.dac_prior_weight * gap
        return total

    def prior_gap(self, logits: Tensor) -> Tensor:
        """``KL(prior || mean softmax)``: zero when the batch's average prediction has the
        observed label frequencies, large when the model predicts few classes."""
        prior = self.labels.log_prior.exp()
        mean_log = torch.logsumexp(F.log_softmax(logits, dim=1), dim=0) - math.log(len(logits))
        return (prior * (self.labels.log_prior - mean_log)).sum()

    def _prior_gap_share(self, logits: Tensor, rows: Tensor) -> Tensor:
        """Data-parallel :meth:`prior_gap` of the global batch (``rows`` rows, this rank's
        ``logits``): this rank's share, whose plain mean over the ranks has the global gap's
        value and gradient (the mean prediction travels in one all-reduce of ``C`` numbers;
        the gap's gradient through a rank's rows is ``-prior / mean`` times theirs)."""
        n, log_prior = int(rows), self.labels.log_prior
        own = F.softmax(logits, dim=1).sum(0)
        mean = sum_over_ranks(own.detach()) / n
        gap = (log_prior.exp() * (log_prior - mean.log())).sum()
        linear = -(log_prior.exp() / mean * own).sum() * (self.ranks.size / n)
        return linear - linear.detach() + gap

    def meta_problem(
        self, x: Tensor, y: Tensor, idx: Tensor | None = None
    ) -> tuple[BilevelProblem, Any, Any]:
        """The bilevel problem of a meta step on the batch ``(x, y)`` of training samples
        ``idx``, with its inner and
        outer batch: one virtual step on ``mean(w * l)`` (the weights from the net, with the
        teacher's pseudo-labels under label correction), then the meta objective."""
        sw, step = self.sample_weights, self.meta_step
        assert sw is not None and step is not None
        pseudo = sw.pseudo_labels(x)
        params = self.inner_params()
        outer = self._outer_batch()
        if self._head is not None:
            params, x, outer = self._head_inputs(params, x, outer)
        reduce = _rank_mean if self.ranks.active else None
        problem = step.weighted_problem(
            params, self._per_sample, self._weights, self._outer_loss, reduce
        )
        return problem, (x, y, pseudo, idx), outer

    def _head_inputs(
        self, params: dict[str, Tensor], x: Tensor, outer: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
        """``meta.scope head``: the head's parameters, the training batch's features from the
        real step's own forward (kept, with its graph, in :attr:`_live_logits` for the real
        step) and the outer batch's features at the current parameters, without a graph
        (:meth:`~slem.bilevel.head.HeadSplit.features`)."""
        assert self._head is not None
        logits, features = self._head.run(self.forward, x)
        self._live_logits = logits
        head, f = self._head, self._f_model
        outer = {k: (head.features(f, params, v) if k in _INPUTS else v) for k, v in outer.items()}
        return self._head.head_params(params), features.detach(), outer

    @property
    def meta_step_due(self) -> bool:
        """The next training step is a meta step (past the warm-up, every ``meta.interval``
        steps)."""
        interval = self.config.meta.interval
        due = not self.in_warmup and self.progress.global_step % interval == 0
        return self.meta_training and due

    def meta_hypergradient(self, x: Tensor, y: Tensor, idx: Tensor | None = None) -> PendingStep:
        """Phase one of a meta step on the batch ``(x, y)`` of training samples ``idx``: the
        hypergradient of the meta objective at the current methodology (:meth:`meta_problem`);
        nothing moves yet."""
        start = time.perf_counter()
        step = self.meta_step
        assert step is not None
        self.model.train()
        problem, inner, outer = self.meta_problem(x, y, idx)
        head = self._head is not None
        keep = step.fast and self.config.meta.order == "mwnet" and not head
        result = step.hypergradient(problem, inner, outer, keep_graph=keep, live_forward=not head)
        terms = result.diagnostics.get("losses") if keep else None
        if head:  # the real step's forward ran in meta_problem
            assert self.sample_weights is not None and self._live_logits is not None
            terms = self.sample_weights.terms(self._live_logits, y, inner[2])
            self._live_logits = None
        return PendingStep(
            result,
            x,
            y,
            start,
            problem.params,
            pseudo=inner[2],
            reuse=terms is not None,
            idx=idx,
            terms=terms,
        )

    def real_step(self, pending: PendingStep) -> dict[str, float]:
        """Phase two: the real training step with the methodology as it stands now (after
        the meta update), reusing phase one's forward pass, or, in the ``lagged`` order, its
        virtual step; returns the step's ``loss`` and ``meta_loss``."""
        sw, step, result = self.sample_weights, self.meta_step, pending.result
        assert sw is not None and step is not None
        if step.fast and self.config.meta.order == "lagged":  # the virtual step is the real one
            inner = result.diagnostics["inner_grads"]
            self.optimizer.zero_grad(set_to_none=True)
            for name, p in pending.params.items():
                p.grad = inner[name]
            self.optimizer.step()
            self._check_parameters()
            # no history to add: MetaConfig refuses history inputs in the lagged order
            sw.after_step(self.model, self.progress.global_step)
            loss_value = result.outer_loss
        else:
            x, y, pseudo = pending.x, pending.y, pending.pseudo
            terms = pending.terms
            terms = terms if terms is not None else sw.terms(self.forward(x), y, pseudo)
            loss = sw.loss(terms, y, pending.idx, same_batch=pending.reuse)
            loss_value = self._apply_step(loss)
        self.progress.timings["meta"].append(time.perf_counter() - pending.start)
        return {"loss": loss_value, "meta_loss": result.outer_loss}

    def meta_train_step(self, x: Tensor, y: Tensor, idx: Tensor | None = None) -> dict[str, float]:
        """A meta step on the batch: :meth:`meta_hypergradient`, one step of the
        methodology's optimizer, :meth:`real_step` with the updated methodology."""
        return phased_meta_step(self, x, y, idx)
