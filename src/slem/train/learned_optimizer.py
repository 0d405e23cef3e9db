"""Meta-training a learned optimizer on a population of optimizee tasks.

Andrychowicz et al. (2016): optimizees (here MLPs of several widths and activations on several
datasets) are trained by the LSTM optimizer; the meta loss is the optimizee's training loss
summed over a truncated horizon of ``unroll`` steps (optionally weighted towards later steps),
back-propagated through the updates into the LSTM. Gradients fed to the LSTM are treated as
inputs (their second derivatives are dropped, as in the paper). After ``horizon`` steps a
fresh optimizee is drawn. Every optimizee's loss is divided by ``log C`` so tasks with more
classes do not dominate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from slem.bilevel import BilevelProblem, Params, hypergrad
from slem.data import LoadOptions, load_dataset, make_task
from slem.errors import SlemError
from slem.methodology import LearnedInnerOptimizer, LSTMOptimizerNet
from slem.train.config import LearnedOptimizerConfig
from slem.train.guard import NonFiniteLoss
from slem.train.loop import Iterations, MetaLearner
from slem.train.models import build_model

if TYPE_CHECKING:
    from slem.train.callbacks import Callback

#: what the meta loss of :meth:`OptimizerMetaTrainer.meta_step` is, for plots
OPTIMIZER_META_LOSS = "optimizee training loss / log C\n(weighted mean over each unroll)"


@dataclass
class Optimizee:
    """One task of the population: a model family on a dataset's training split."""

    name: str
    x: Tensor
    y: Tensor
    n_classes: int
    make_model: Callable[[], nn.Module]


def build_population(
    cfg: LearnedOptimizerConfig, seed: int, device: torch.device
) -> list[Optimizee]:
    population = []
    for name in cfg.datasets:
        data = load_dataset(name, LoadOptions(seed=seed, size=cfg.dataset_size))
        if data.task_type != "classification":
            raise SlemError(
                f"learned_optimizer.datasets: '{name}' is a regression set; use classification"
            )
        task = make_task(data, seed=seed)
        x = torch.as_tensor(task.train.X, dtype=torch.float32, device=device)
        y = torch.as_tensor(task.train.y, dtype=torch.long, device=device)
        for depth in cfg.depths:
            for width in cfg.widths:
                for act in cfg.activations:

                    def make(
                        shape: tuple[int, ...] = task.features.input_shape,
                        c: int = task.n_classes,
                        w: int = width,
                        d: int = depth,
                        a: Any = act,
                    ) -> nn.Module:
                        return build_model(shape, c, "mlp", w, d, activation=a)

                    label = f"{name}/mlp{width}x{depth}-{act}"
                    population.append(Optimizee(label, x, y, task.n_classes, make))
    return population


class OptimizerMetaTrainer(MetaLearner):
    """Truncated unrolled meta-training of an :class:`LSTMOptimizerNet` on a population of
    optimizees, run by :class:`~slem.train.loop.Loop` (checkpoint it with a
    :class:`~slem.train.CheckpointCallback` in ``callbacks``)."""

    net: LSTMOptimizerNet

    def __init__(
        self,
        cfg: LearnedOptimizerConfig,
        seed: int = 0,
        device: torch.device | str = "cpu",
        population: list[Optimizee] | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        super().__init__(callbacks)
        self.cfg, self.seed, self.device = cfg, seed, torch.device(device)
        self.plan, self.label = Iterations(cfg.iterations), "meta-training the optimizer"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1_000_003)
            self.net = LSTMOptimizerNet(cfg.hidden, cfg.layers, cfg.output_scale, cfg.p)
        self.net.to(self.device)
        self.meta_optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.population = population or build_population(cfg, seed, self.device)
        self.generator = torch.Generator().manual_seed(seed)
        self.trajectory: dict[str, Any] | None = None
        self._models: dict[int, nn.Module] = {}

    def _new_trajectory(self) -> dict[str, Any]:
        index = int(torch.randint(len(self.population), (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=self.generator)))
            model = self.population[index].make_model().to(self.device)
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        n = sum(p.numel() for p in params.values())
        return {
            "index": index,
            "params": params,
            "memory": self.net.initial_state(n, self.device),
            "steps": 0,
        }

    def _weights(self) -> list[float]:
        k = self.cfg.unroll
        if self.cfg.loss_weights == "increasing":
            return [(t + 1) / k for t in range(k)]
        return [1.0] * k

    def meta_step(self) -> float:
        """One truncation: ``unroll`` optimizee steps by the LSTM, then one Adam step on it.

        The meta-gradient is the bilevel engine's ``first_order`` hypergradient (the gradient
        the LSTM reads is its input, as in the paper) of the trajectory objective
        ``sum_t w_t L(theta_t, batch_t) / (log C * sum_t w_t)`` over the ``unroll`` iterates
        the steps start from (Andrychowicz et al. 2016, eq. 3), with the LSTM's parameters as
        the hyperparameters and its memory as the inner optimizer's state
        (:class:`~slem.methodology.LearnedInnerOptimizer`). The final parameters and memory
        carry over, detached, to the next truncation.
        """
        if self.trajectory is None or self.trajectory["steps"] >= self.cfg.horizon:
            self.trajectory = self._new_trajectory()
        tr = self.trajectory
        task = self.population[tr["index"]]
        if tr["index"] not in self._models:  # the architecture only; parameters are tr's
            with torch.random.fork_rng(devices=[]):
                self._models[tr["index"]] = task.make_model().to(self.device)
        model = self._models[tr["index"]]
        norm = math.log(max(task.n_classes, 2))
        batches = []
        for _ in range(self.cfg.unroll):
            idx = torch.randint(len(task.y), (self.cfg.batch_size,), generator=self.generator)
            idx = idx.to(self.device)
            batches.append((task.x[idx], task.y[idx]))

        def train_loss(params: Params, hyper: Params, batch: tuple[Tensor, Tensor]) -> Tensor:
            # the optimizee MLPs have no buffers, no dropout and no tied weights
            logits = functional_call(model, params, (batch[0],), tie_weights=False)
            return F.cross_entropy(logits, batch[1])

        def meta_loss(params: Params, hyper: Params, batch: tuple[Tensor, Tensor]) -> Tensor:
            return train_loss(params, hyper, batch) / norm

        problem = BilevelProblem(
            params=tr["params"],
            hyper=dict(self.net.named_parameters()),
            inner_loss=train_loss,
            outer_loss=meta_loss,
            optimizer=LearnedInnerOptimizer(self.net),
            optimizer_state={"memory": tr["memory"]},
        )
        weights = self._weights()
        total = sum(weights)
        result = hypergrad(
            problem,
            "first_order",
            outer_batch=None,  # w_K = 0: the final iterate is the next truncation's first
            inner_batches=batches,
            trajectory_weights=[w / total for w in weights] + [0.0],
        )
        if not math.isfinite(result.outer_loss):
            raise NonFiniteLoss(
                f"the learned optimizer's meta loss became {result.outer_loss} at iteration "
                f"{self.iteration + 1}; lower learned_optimizer.lr or output_scale"
            )
        self.meta_optimizer.zero_grad(set_to_none=True)
        result.accumulate_into(self.net)
        nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip)
        self.meta_optimizer.step()
        assert result.params is not None
        tr["params"] = result.params
        tr["memory"] = result.optimizer_state["memory"]
        tr["steps"] += self.cfg.unroll
        value = result.outer_loss
        row = {"iteration": self.iteration + 1, "meta_loss": value, "task": task.name}
        self.history.append(row)
        return value

    def extra_state(self) -> dict[str, Any]:
        return {"trajectory": self.trajectory}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.trajectory = state["trajectory"]
