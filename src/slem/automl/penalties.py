"""Many L2 penalties at once by implicit hypergradients (offline hypergradient HPO).

:func:`tune_penalties` fits a logistic-regression or ridge model whose L2 penalty has one
coefficient per feature (or per group of features, or one for all) and tunes those
coefficients on a validation split by gradient descent on the validation loss::

    from slem.automl.penalties import tune_penalties

    result = tune_penalties(x_train, y_train, x_val, y_val, model="logistic", groups="feature")
    result.penalties            # (n_groups,) the chosen L2 coefficients
    result.val_loss             # validation log-loss at them
    result.predict_proba(x_test)
    result.trajectory[-1]       # {"step", "val_loss", "penalties", "hypergrad_norm", ...}

**The bilevel problem.** With ``lambda_g = exp(phi_g)`` (the search runs on log-penalties) and
``g(j)`` the group of feature ``j``::

    inner:  theta*(phi) = argmin_theta  mean_i l(x_i, y_i; theta)
                                         + 0.5 * sum_j lambda_g(j) * sum_c W[j, c]^2
    outer:  min_phi  mean_{val} l_out(x, y; theta*(phi))

``theta = (W, b)``; the intercept ``b`` is not penalized. ``l`` is the cross-entropy of a
softmax over the classes (a sigmoid for two classes, as scikit-learn's ``LogisticRegression``)
or half the squared error for ridge; ``l_out`` is the validation log-loss (mean
cross-entropy, nats) or the validation mean squared error (ridge). The penalties act on the
coefficients of *standardized* features (training-split mean and standard deviation, unless
``standardize=False``), so one coefficient means the same on every feature; scikit-learn's
``LogisticRegression(C=c)`` on the same standardized data is ``lambda = 1 / (c * n_train)``,
and ``Ridge(alpha=a)`` is ``lambda = a / n_train``.

**Method.** Each outer step solves the inner problem full-batch in float64 to a gradient
tolerance and takes the implicit hypergradient and an Adam step on the log-penalties. The
inner problems are small (at most a few thousand parameters) and smooth, so the default
(``inner_method="newton"``) exploits their structure: damped Newton steps on the analytic
Hessian (``X^T diag(p(1-p)) X / n + diag(lambda)`` for one logit, its ``(d+1)k``-square block
form for a softmax, ``X^T X / n + diag(lambda)`` for ridge, which is one exact solve; the
intercepts are unpenalized), warm-started from the previous step's solution moved by the
implicit function theorem's first-order prediction, so one or two Newton steps per outer step.
The Cholesky factor of the Hessian at the solution then gives the hypergradient in closed form
(``q = H^{-1} dL_val/dtheta``, ``d L_val / d phi_g = -sum_{j in g} lambda_j W[j] . q[j]``):
no iterative solve at all for one logit or ridge; for a softmax, whose dense Hessian costs as
much as a hundred Hessian-vector products to build, the factor of an earlier step
preconditions conjugate gradient on closed-form products to a relative residual of 1e-6 (a
few products; a fresh factor when that stalls). The Hessians' Gram terms are one BLAS
``syrk`` each (half a matrix product). That number is the engine's
(:func:`slem.bilevel.hypergrad`, ``"implicit"``, on :func:`penalty_problem`;
``solver="direct"`` with the same factor as ``hessian_solve``), tested equal; it is computed
here without the engine's generic ``torch.func`` machinery, whose fixed cost per call
(milliseconds) is more than the whole structured step. ``inner_method="lbfgs"``
is the generic path: ``torch.optim.LBFGS`` solves (strong-Wolfe line search) and the engine's
conjugate-gradient hypergradient on Hessian-vector products. The iterate with the best
validation loss is kept (with ``prior > 0``: the best value of the regularized outer
objective); the search stops when it has not improved for ``patience`` steps.

The implicit function theorem gives the hypergradient only at a stationary point of the inner
objective; an inner problem that did not reach ``inner_tol`` raises a one-line
:class:`~slem.errors.SlemError` rather than returning a wrong gradient.

Sources: Y. Bengio, "Gradient-based optimization of hyperparameters", Neural Computation 12(8),
2000 (the implicit gradient of a regularizer through the inner optimum); F. Pedregosa,
"Hyperparameter optimization with approximate gradient", ICML 2016 (HOAG: inexact inner
solves, warm starts, one L2 coefficient per feature group); J. Lorraine, P. Vicol and
D. Duvenaud, "Optimizing millions of hyperparameters by implicit differentiation", AISTATS 2020
(IFT with iterative inverse-Hessian-vector products at scale).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg.blas import dsyrk
from torch import Tensor

from slem.bilevel import SGD, BilevelProblem, Params, hypergrad
from slem.errors import SlemError

__all__ = [
    "INNER_METHODS",
    "MODELS",
    "PenaltyResult",
    "inner_solve",
    "penalty_problem",
    "tune_penalties",
]

#: the inner models
MODELS = ("logistic", "ridge")

Model = Literal["logistic", "ridge"]
Batch = tuple[Tensor, Tensor]


# ----------------------------------------------------------------------------- the result


@dataclass
class PenaltyResult:
    """What :func:`tune_penalties` returns.

    ``penalties``: ``(n_groups,)`` L2 coefficients ``lambda_g`` of the best validation
    iterate (on standardized coefficients, see the module docstring); ``groups``: ``(n_features,)``
    the group of each feature. ``coef`` ``(n_features, k)`` and ``intercept`` ``(k,)`` are the
    fitted model at those penalties on the *original* feature scale, so that
    ``x @ coef + intercept`` gives the logits (``k = 1`` for binary logistic regression and
    single-output ridge, else the number of classes or outputs). ``val_loss``: validation
    log-loss in nats (logistic) or mean squared error (ridge) at ``penalties``;
    ``initial_val_loss`` the same at the starting penalties. ``seconds``: wall time of the
    whole search. ``trajectory``: one dict per outer step (``step``, ``val_loss``,
    ``penalties``, ``hypergrad_norm``, ``inner_iterations``, ``cg_iterations``, ``seconds``
    since the start), the path the plots draw; ``best_step`` indexes it.
    """

    model: str
    penalties: np.ndarray
    groups: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    val_loss: float
    initial_val_loss: float
    seconds: float
    best_step: int
    trajectory: list[dict[str, Any]]
    classes: np.ndarray | None = None
    stopped: str = "outer_steps"
    settings: dict[str, Any] = field(default_factory=dict)

    def decision_function(self, x: Any) -> np.ndarray:
        """``x @ coef + intercept``: ``(n, k)`` logits (logistic) or predictions (ridge)."""
        a = _features(x, "x", self.coef.shape[0])
        out: np.ndarray = a @ self.coef + self.intercept
        return out

    def predict_proba(self, x: Any) -> np.ndarray:
        """``(n, n_classes)`` class probabilities, columns in the order of ``classes``.

        Raises:
            SlemError: a ridge model (it has no probabilities) or ``x`` of the wrong width.
        """
        if self.model != "logistic":
            raise SlemError("predict_proba needs model='logistic'; a ridge model has predict")
        z = self.decision_function(x)
        if z.shape[1] == 1:
            p = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p, p], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        out: np.ndarray = e / e.sum(axis=1, keepdims=True)
        return out

    def predict(self, x: Any) -> np.ndarray:
        """Class labels (logistic) or ``(n,)`` / ``(n, k)`` predictions (ridge)."""
        if self.model == "logistic":
            assert self.classes is not None
            out: np.ndarray = self.classes[self.predict_proba(x).argmax(axis=1)]
            return out
        z = self.decision_function(x)
        return z[:, 0] if self.settings.get("y_1d", True) else z

    def to_sklearn(self) -> Any:
        """The fitted model as a scikit-learn estimator with the same predictions:
        ``LogisticRegression`` (its ``classes_`` those of ``y_train``; softmax for more than
        two) or ``Ridge``, its coefficients set, nothing refitted. It predicts on the same
        inputs as :meth:`predict` (the original feature scale)."""
        from sklearn.linear_model import LogisticRegression, Ridge

        estimator: Any
        if self.model == "logistic":
            assert self.classes is not None
            estimator = LogisticRegression()
            estimator.classes_ = np.asarray(self.classes)
            estimator.coef_ = np.ascontiguousarray(self.coef.T)
            estimator.intercept_ = np.asarray(self.intercept, dtype=np.float64)
        else:
            estimator = Ridge()
            single = self.coef.shape[1] == 1 and self.settings.get("y_1d", True)
            estimator.coef_ = self.coef[:, 0].copy() if single else self.coef.T.copy()
            estimator.intercept_ = float(self.intercept[0]) if single else self.intercept.copy()
        estimator.n_features_in_ = self.coef.shape[0]
        return estimator

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest (no arrays of the fitted model)."""
        return {
            "model": self.model,
            "n_groups": len(self.penalties),
            "val_loss": self.val_loss,
            "initial_val_loss": self.initial_val_loss,
            "seconds": self.seconds,
            "best_step": self.best_step,
            "steps": len(self.trajectory),
            "stopped": self.stopped,
            "penalties": [float(p) for p in self.penalties],
        }


# ----------------------------------------------------------------------------- inputs


def _features(x: Any, name: str, width: int | None = None) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise SlemError(f"{name} must be a numeric 2-D array (rows x features)") from None
    if a.ndim != 2:
        raise SlemError(f"{name} must be 2-D (rows x features), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise SlemError(f"{name} is empty (shape {a.shape}); give at least one row and feature")
    if width is not None and a.shape[1] != width:
        raise SlemError(
            f"{name} has {a.shape[1]} features but the training data has {width}; use the "
            "same columns in the same order"
        )
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(axis=1).sum())
        raise SlemError(
            f"{name} has NaN or infinite values in {bad} rows; impute or drop them first"
        )
    return a


def _targets(y: Any, name: str, rows: int, model: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim not in (1, 2) or (model == "logistic" and a.ndim != 1):
        raise SlemError(f"{name} must be 1-D (one label per row), got shape {a.shape}")
    if len(a) != rows:
        raise SlemError(f"{name} has {len(a)} rows but its features have {rows}; align them")
    if model == "ridge" or a.dtype.kind == "f":
        try:
            numeric = a.astype(np.float64)
        except (TypeError, ValueError):
            raise SlemError(f"{name} must be numeric for model='ridge'") from None
        if not np.isfinite(numeric).all():
            raise SlemError(f"{name} has NaN or infinite values; drop those rows first")
        if model == "ridge":
            return numeric
    return a


def _groups(groups: Any, n_features: int) -> np.ndarray:
    if isinstance(groups, str):
        if groups == "feature":
            return np.arange(n_features)
        if groups == "global":
            return np.zeros(n_features, dtype=np.int64)
        raise SlemError(
            f"unknown groups '{groups}'; use feature, global or an array of one group id per "
            "feature"
        )
    g = np.asarray(groups)
    if g.shape != (n_features,) or g.dtype.kind not in "iu":
        raise SlemError(
            f"groups must be 'feature', 'global' or {n_features} integer group ids (one per "
            f"feature), got shape {g.shape} of dtype {g.dtype}"
        )
    _, inverse = np.unique(g, return_inverse=True)  # any ids -> 0..G-1 in sorted order
    out: np.ndarray = inverse.astype(np.int64)
    return out


# ----------------------------------------------------------------------------- the problem


def _logits(params: Params, x: Tensor) -> Tensor:
    return x @ params["coef"] + params["intercept"]


def _data_loss(model: str, z: Tensor, y: Tensor, outer: bool) -> Tensor:
    """Mean loss per row: cross-entropy (sigmoid for one logit), half squared error inside,
    squared error for the outer ridge loss (the validation MSE)."""
    if model == "logistic":
        if z.shape[1] == 1:
            return F.binary_cross_entropy_with_logits(z[:, 0], y)
        return F.cross_entropy(z, y)
    sq = ((z - y) ** 2).sum(dim=1).mean()
    return sq if outer else 0.5 * sq


def penalty_problem(
    model: str, groups: np.ndarray, params: Params, log_penalty: Tensor
) -> BilevelProblem:
    """The :class:`~slem.bilevel.BilevelProblem` of the module docstring.

    ``params``: ``{"coef": (n_features, k), "intercept": (k,)}``; ``log_penalty``: ``(n_groups,)``
    ``phi``; ``groups``: ``(n_features,)`` group ids in ``0..n_groups-1``. Batches are
    ``(x, y)`` float64 tensors (``y`` class indices for softmax, 0/1 floats for one logit,
    ``(n, k)`` targets for ridge). The inner optimizer is a placeholder (implicit never steps).
    """
    index = torch.as_tensor(groups, dtype=torch.long, device=log_penalty.device)

    def inner_loss(p: Params, h: Params, batch: Batch) -> Tensor:
        x, y = batch
        lam = h["log_penalty"].exp()[index]
        return (
            _data_loss(model, _logits(p, x), y, outer=False)
            + 0.5 * (lam[:, None] * p["coef"] ** 2).sum()
        )

    def outer_loss(p: Params, h: Params, batch: Batch) -> Tensor:
        x, y = batch
        return _data_loss(model, _logits(p, x), y, outer=True)

    return BilevelProblem(
        params=params,
        hyper={"log_penalty": log_penalty},
        inner_loss=inner_loss,
        outer_loss=outer_loss,
        optimizer=SGD(lr=1.0),
    )


def _inf_norm(grads: list[Tensor]) -> float:
    return max(float(g.abs().max()) for g in grads)


#: the inner solvers of :func:`inner_solve`
INNER_METHODS = ("newton", "lbfgs")

InnerMethod = Literal["newton", "lbfgs"]


class _Curvature:
    """A Cholesky factor of the inner Hessian at some point (maybe an earlier one: then a
    preconditioner).

    Parameters ``theta = [W; b]`` are the ``(d + 1, k)`` augmented coefficients, flattened
    row-major (``coef`` then ``intercept``: the engine's flat order of ``penalty_problem``'s
    params). ``kron``: the Hessian is ``kron(G, I_k)`` with ``G = factor factor^T`` (ridge,
    binary logistic); otherwise ``factor`` is that of the full ``(d+1)k`` matrix (softmax)
    with the intercepts' null direction (all logits up by one constant) given unit curvature,
    which leaves ``H^{-1} v`` unchanged for every ``v`` orthogonal to it (the gradients of
    softmax losses are)."""

    def __init__(self, factor: Tensor, rows: int, k: int, kron: bool) -> None:
        self.factor, self.rows, self.k, self.kron = factor, rows, k, kron

    def solve(self, v: Tensor) -> Tensor:
        """``H^{-1} v`` for a flat ``v`` (:data:`slem.bilevel.implicit.HessianSolve`)."""
        b = v.reshape(self.rows, self.k) if self.kron else v[:, None]
        half = torch.linalg.solve_triangular(self.factor, b, upper=False)
        return torch.linalg.solve_triangular(self.factor.T, half, upper=True).reshape(-1)

    def apply(self, v: Tensor) -> Tensor:
        """:meth:`solve` in the ``(d + 1, k)`` shape of ``theta``."""
        return self.solve(v.reshape(-1)).reshape(v.shape)


def _gram(a: Tensor, scale: float) -> Tensor:
    """``scale * a^T a``, of which only the lower triangle is meant to be read (the Cholesky
    factorizations read no other): BLAS ``dsyrk`` for float64 on the CPU, half the products
    of a full matrix product (the softmax Hessian's dominant cost); ``a.T @ a`` otherwise."""
    if a.device.type == "cpu" and a.dtype == torch.float64:
        lower = dsyrk(scale, a.detach().numpy().T, trans=0, lower=1)  # a^T a, no copy of a
        return torch.from_numpy(lower)
    return scale * (a.T @ a)


def _cholesky(h: Tensor) -> Tensor:
    """Lower Cholesky factor of ``h`` (its lower triangle: the upper one is not read); a
    positive-definite ``h`` that rounding made indefinite gets a tiny diagonal shift
    (relative 1e-12, raised tenfold until it factors)."""
    factor, info = torch.linalg.cholesky_ex(h)
    if int(info) == 0:
        return factor
    scale = float(h.diagonal().abs().max())
    shift = 1e-12 * scale
    while int(info) != 0 and shift < 1e-2 * scale:
        factor, info = torch.linalg.cholesky_ex(
            h + shift * torch.eye(len(h), dtype=h.dtype, device=h.device)
        )
        shift *= 10
    if int(info) != 0:
        raise SlemError(
            "the inner Hessian could not be factored (not positive definite); raise the lower "
            "penalty bound or standardize the features"
        )
    return factor


def _pcg(
    hvp: Callable[[Tensor], Tensor],
    precondition: Callable[[Tensor], Tensor],
    b: Tensor,
    rtol: float,
    iterations: int,
) -> tuple[Tensor, bool, int]:
    """Preconditioned conjugate gradient for ``H x = b`` (``H`` SPD); ``(x, converged, its)``.
    With the factor of ``H`` itself as the preconditioner it is exact after one iteration."""
    x = torch.zeros_like(b)
    r = b.clone()
    b_norm = float(torch.linalg.vector_norm(b))
    if b_norm == 0.0:
        return x, True, 0
    z = precondition(r)
    p = z.clone()
    rz = float((r * z).sum())
    for it in range(1, iterations + 1):
        hp = hvp(p)
        curvature = float((p * hp).sum())
        if not curvature > 0:
            return x, False, it
        step = rz / curvature
        x = x + step * p
        r = r - step * hp
        if float(torch.linalg.vector_norm(r)) <= rtol * b_norm:
            return x, True, it
        z = precondition(r)
        rz_new = float((r * z).sum())
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, False, iterations


class _Logistic:
    """Value, gradient, Hessian-vector products and the Hessian of the inner logistic
    objective in ``theta = [W; b]`` (``(d + 1, k)``), all in closed form."""

    def __init__(self, x: Tensor, y: Tensor, lam: Tensor, k: int) -> None:
        n, d = x.shape
        self.xa = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], dim=1)
        self.lam = torch.cat([lam, torch.zeros(1, dtype=x.dtype, device=x.device)])[:, None]
        self.n, self.d, self.k = n, d, k
        # an older factor as a preconditioner pays where the dense Hessian costs many
        # products (the softmax's (d+1)k square); for one logit a fresh one is cheaper
        self.stale_ok = k > 1
        if k == 1:
            self.target = y[:, None]
        else:
            self.target = F.one_hot(y, k).to(x.dtype)

    def value(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``(objective, probabilities)``."""
        z = self.xa @ theta
        penalty = 0.5 * (self.lam * theta**2).sum()
        if self.k == 1:
            return (F.softplus(z) - self.target * z).mean() + penalty, torch.sigmoid(z)
        log_p = torch.log_softmax(z, dim=1)
        return -(self.target * log_p).sum() / self.n + penalty, log_p.exp()

    def gradient(self, theta: Tensor, p: Tensor) -> Tensor:
        out: Tensor = self.xa.T @ (p - self.target) / self.n + self.lam * theta
        return out

    def hvp(self, p: Tensor, v: Tensor) -> Tensor:
        """``H v`` for ``v`` of ``theta``'s shape (with the softmax null-direction term)."""
        z = self.xa @ v
        if self.k == 1:
            s = p * (1 - p) * z
        else:
            s = p * z
            s = s - p * s.sum(dim=1, keepdim=True)
        out = self.xa.T @ s / self.n + self.lam * v
        if self.k > 1:
            out[-1] += v[-1].mean()
        return out

    def curvature(self, p: Tensor) -> _Curvature:
        """The Cholesky factor of the dense Hessian at the probabilities ``p``."""
        xa, n, rows, k = self.xa, self.n, self.d + 1, self.k
        if k == 1:
            h = _gram(xa * (p * (1 - p)).sqrt(), 1.0 / n)
            h.diagonal().add_(self.lam[:, 0])
            return _Curvature(_cholesky(h), rows, 1, kron=True)
        # H[(j,c),(j',c')] = sum_i x_ij x_ij' (p_ic [c = c'] - p_ic p_ic') / n
        a = (xa[:, :, None] * p[:, None, :]).reshape(n, rows * k)
        block = (xa.T @ a / n).reshape(rows, rows, k)  # [j, j', c] = sum_i x_ij x_ij' p_ic / n
        h = torch.diag_embed(block).permute(0, 2, 1, 3).reshape(rows * k, rows * k)
        h = h - _gram(a, 1.0 / n)  # only the lower triangle is right: all Cholesky reads
        h.diagonal().add_(self.lam.expand(rows, k).reshape(-1))
        h[-k:, -k:] += 1.0 / k  # unit curvature along the intercepts' null direction
        return _Curvature(_cholesky(h), rows, k, kron=False)


#: conjugate-gradient iterations on a stale factor before a fresh Hessian is factored
_STALE_ITERATIONS = 25
#: relative residual of the hypergradient's preconditioned conjugate gradient
#: (``H q = dL_val/dtheta`` on an earlier factor): 1e-6 moves the hypergradient by about
#: 1e-6 relative (tested within 1e-4 of a 1e-10 solve), far below what an Adam step on the
#: log-penalties resolves, and takes about half the products of 1e-10
_HYPERGRAD_RTOL = 1e-6


def _newton(
    objective: _Logistic,
    theta: Tensor,
    tol: float,
    iterations: int,
    curvature: _Curvature | None = None,
) -> tuple[Tensor, Tensor, int, float, _Curvature | None]:
    """Damped Newton (Armijo backtracking from the full step) until the largest absolute
    gradient entry is at most ``tol``; returns ``(theta, probabilities, steps, |grad|,
    curvature)``.

    Each Newton system is solved by conjugate gradient on closed-form Hessian-vector products
    preconditioned by ``curvature``, a Cholesky factor of the Hessian at some earlier point
    (the previous solution on a warm start): a few products while the Hessian has changed
    little; a fresh Hessian is built and factored (an exact step) when none is held or
    ``_STALE_ITERATIONS`` products do not reach the inexact-Newton tolerance
    ``min(0.1, sqrt(|grad|))`` (superlinear convergence)."""
    used = 0
    value, p = objective.value(theta)
    while True:
        g = objective.gradient(theta, p)
        norm = float(g.abs().max())
        if norm <= tol or used >= iterations:
            return theta, p, used, norm, curvature
        ok = False
        if curvature is not None and objective.stale_ok:
            step, ok, _ = _pcg(
                partial(objective.hvp, p),
                curvature.apply,
                -g,
                min(0.1, math.sqrt(norm)),
                _STALE_ITERATIONS,
            )
        if not ok:
            curvature = objective.curvature(p)
            step = -curvature.apply(g)
        slope = float((g * step).sum())
        t = 1.0
        while True:
            trial = theta + t * step
            trial_value, trial_p = objective.value(trial)
            if float(trial_value) <= float(value) + 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        used += 1
        if not float(trial_value) <= float(value) and t < 1e-10:  # no descent left: rounding
            return theta, p, used, norm, curvature
        theta, value, p = trial, trial_value, trial_p


@dataclass
class _Structure:
    """An inner solution with what the closed-form hypergradient needs: ``theta`` ``(d+1,
    k)``, the per-feature penalties ``lam``, a Cholesky factor (``exact``: of the Hessian at
    ``theta``; else of an earlier one, a preconditioner), and for logistic models the
    objective and the training probabilities at ``theta`` (Hessian-vector products)."""

    model: str
    theta: Tensor
    lam: Tensor
    curvature: _Curvature | None
    exact: bool
    objective: _Logistic | None = None
    p: Tensor | None = None

    def predict(self, lam: Tensor) -> Tensor:
        """The solution at new penalties ``lam`` to first order, ``theta - H^{-1} (lam -
        self.lam) W`` (the implicit function theorem's step, on the held factor): the warm
        start of the next solve, which then needs about one Newton step fewer."""
        if self.model == "ridge" or self.curvature is None:
            return self.theta
        change = torch.zeros_like(self.theta)
        change[:-1] = (lam - self.lam)[:, None] * self.theta[:-1]
        return self.theta - self.curvature.apply(change)

    def solve(self, v: Tensor, rtol: float = _HYPERGRAD_RTOL) -> tuple[Tensor, int]:
        """``(H^{-1} v, Hessian-vector products)`` for ``v`` of ``theta``'s shape: the exact
        factor, or conjugate gradient to relative residual ``rtol`` preconditioned by the
        held factor (a fresh factor when that takes more than ``_STALE_ITERATIONS``
        products). Softmax only: for one logit a fresh factor costs less than even two
        preconditioned products (measured)."""
        if self.exact:
            assert self.curvature is not None
            return self.curvature.apply(v), 0
        assert self.objective is not None and self.p is not None
        objective, p = self.objective, self.p
        if self.curvature is not None and objective.stale_ok:
            q, ok, used = _pcg(
                lambda u: objective.hvp(p, u), self.curvature.apply, v, rtol, _STALE_ITERATIONS
            )
            if ok:
                return q, used
        self.curvature, self.exact = objective.curvature(p), True
        return self.curvature.apply(v), 0


def _structured_hypergradient(
    structure: _Structure,
    val: Batch,
    index: Tensor,
    n_groups: int,
    rtol: float = _HYPERGRAD_RTOL,
) -> tuple[Tensor, float, int]:
    """``(d val_loss / d phi, val_loss, Hessian-vector products)`` in closed form: with
    ``v = d L_out / d theta`` and ``q = H^{-1} v``, the implicit function theorem gives
    ``d L_out / d phi_g = -sum_{j in g} lambda_j sum_c W[j, c] q[j, c]`` (the penalty is the
    only place ``phi`` enters, and the outer loss does not read it). The same number as
    :func:`slem.bilevel.hypergrad` with ``"implicit"`` on :func:`penalty_problem`, without
    its generic machinery (tested equal)."""
    x, y = val
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
    theta = structure.theta
    z = xa @ theta
    n = len(x)
    if structure.model == "ridge":
        residual = z - y
        loss = float((residual**2).sum(dim=1).mean())
        v = 2.0 * xa.T @ residual / n
    elif theta.shape[1] == 1:
        loss = float(F.binary_cross_entropy_with_logits(z[:, 0], y))
        v = xa.T @ (torch.sigmoid(z) - y[:, None]) / n
    else:
        loss = float(F.cross_entropy(z, y))
        v = xa.T @ (torch.softmax(z, dim=1) - F.one_hot(y, theta.shape[1]).to(z.dtype)) / n
    q, used = structure.solve(v, rtol)
    mixed = structure.lam * (theta[:-1] * q[:-1]).sum(dim=1)
    grad = -torch.zeros(n_groups, dtype=theta.dtype, device=theta.device).index_add_(
        0, index, mixed
    )
    return grad, loss, used


def _solve(
    model: str,
    groups: np.ndarray,
    log_penalty: Tensor,
    batch: Batch,
    params: Params,
    tol: float,
    iterations: int,
    history: int,
    method: str,
    curvature: _Curvature | None = None,
) -> tuple[Params, int, float, _Structure | None]:
    """:func:`inner_solve`; Newton and ridge also return the closed-form structure at the
    solution (for :func:`_structured_hypergradient`), Newton starting from ``curvature`` (a
    factor from an earlier solve) as its preconditioner."""
    if method not in INNER_METHODS:
        raise SlemError(f"unknown inner method '{method}'; use {' or '.join(INNER_METHODS)}")
    x, y = batch
    lam = log_penalty.detach().exp()[torch.as_tensor(groups, dtype=torch.long)]
    lam_col = lam[:, None]
    structure: _Structure | None = None

    def objective(coef: Tensor, intercept: Tensor) -> Tensor:
        z = x @ coef + intercept
        return _data_loss(model, z, y, outer=False) + 0.5 * (lam_col * coef**2).sum()

    def gradient_norm(found: Params) -> float:
        p = [found[k].detach().clone().requires_grad_(True) for k in ("coef", "intercept")]
        with torch.enable_grad():
            return _inf_norm(list(torch.autograd.grad(objective(*p), p)))

    def split(theta: Tensor) -> Params:
        return {"coef": theta[:-1].contiguous(), "intercept": theta[-1].contiguous()}

    if model == "ridge":
        n, d = x.shape
        a = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], dim=1)
        h = a.T @ a / n
        h.diagonal()[:d].add_(lam)
        fresh = _Curvature(_cholesky(h), d + 1, y.shape[1], kron=True)
        rhs = a.T @ y / n
        theta = fresh.solve(rhs.reshape(-1)).reshape(rhs.shape)
        found = split(theta)
        used = 1
        norm = float((h @ theta - rhs).abs().max())
        structure = _Structure(model, theta, lam, fresh, True)
    elif method == "newton":
        k = params["coef"].shape[1]
        theta0 = torch.cat([params["coef"], params["intercept"][None, :]]).detach()
        inner = _Logistic(x, y, lam, k)
        theta, p, used, norm, curvature = _newton(inner, theta0, tol, iterations, curvature)
        found = split(theta)
        structure = _Structure(model, theta, lam, curvature, False, inner, p)
    else:
        coef = params["coef"].detach().clone().requires_grad_(True)
        intercept = params["intercept"].detach().clone().requires_grad_(True)
        used = 0
        norm = math.inf
        found = {"coef": coef.detach().clone(), "intercept": intercept.detach().clone()}
        while used < iterations:  # L-BFGS may stop on a tiny loss change: restart it fresh
            left = iterations - used
            opt = torch.optim.LBFGS(
                [coef, intercept],
                lr=1.0,
                max_iter=left,
                max_eval=left * 5 // 4 + 25,
                tolerance_grad=tol,
                tolerance_change=1e-15,
                history_size=history,
                line_search_fn="strong_wolfe",
            )

            def closure() -> Tensor:
                coef.grad = intercept.grad = None
                loss = objective(coef, intercept)
                loss.backward()
                return loss

            opt.step(closure)
            done = int(opt.state[coef].get("n_iter", 0))
            used += done
            found = {"coef": coef.detach().clone(), "intercept": intercept.detach().clone()}
            previous, norm = norm, gradient_norm(found)
            if done == 0 or norm <= tol or norm > 0.5 * previous:  # converged or stalled
                break
    if not norm <= tol:
        raise SlemError(
            f"the inner problem is not at a stationary point: |grad| = {norm:.3g} after {used} "
            f"iterations (tol {tol:g}), and the implicit hypergradient assumes one; raise "
            "inner_iterations, loosen inner_tol, or standardize the features"
        )
    return found, used, norm, structure


def inner_solve(
    model: str,
    groups: np.ndarray,
    log_penalty: Tensor,
    batch: Batch,
    params: Params,
    tol: float = 1e-6,
    iterations: int = 500,
    history: int = 20,
    method: InnerMethod = "newton",
) -> tuple[Params, int, float]:
    """Minimize the inner objective from ``params`` (a warm start; not modified).

    Logistic, ``method="newton"`` (the default): damped Newton steps on the analytic Hessian
    (``X^T diag(p(1-p)) X / n + diag(lambda)`` for two classes, its ``(d+1)k``-square block
    form for a softmax; intercepts unpenalized), one Cholesky factorization per step, an
    Armijo backtracking line search from the full step; quadratic convergence near the
    solution, so a warm start needs a few steps. ``method="lbfgs"``: ``torch.optim.LBFGS``
    (strong-Wolfe line search; ``history`` pairs). Both run until the largest absolute
    gradient entry is at most ``tol``. Ridge: the normal equations, solved exactly (one
    Cholesky factorization). Returns ``(params, iterations, gradient inf-norm)``.

    Raises:
        SlemError: the gradient is still above ``tol`` after ``iterations`` (one line; the
            implicit hypergradient needs a stationary point), or an unknown ``method``.
    """
    found, used, norm, _ = _solve(
        model, groups, log_penalty, batch, params, tol, iterations, history, method
    )
    return found, used, norm


# ----------------------------------------------------------------------------- the search


def _check_settings(
    model: str,
    outer_steps: int,
    lr: float,
    inner_tol: float,
    inner_iterations: int,
    patience: int | None,
    bounds: tuple[float, float],
    prior: float = 0.0,
) -> None:
    if model not in MODELS:
        raise SlemError(f"unknown model '{model}'; use {' or '.join(MODELS)}")
    if outer_steps < 1:
        raise SlemError(f"outer_steps must be at least 1, got {outer_steps}")
    if not lr > 0:
        raise SlemError(f"lr must be positive (a step on log-penalties, e.g. 0.2), got {lr}")
    if not inner_tol > 0 or inner_iterations < 1:
        raise SlemError(
            f"inner_tol must be positive and inner_iterations at least 1, got {inner_tol} and "
            f"{inner_iterations}"
        )
    if patience is not None and patience < 1:
        raise SlemError(f"patience must be at least 1 (or None), got {patience}")
    if not prior >= 0:
        raise SlemError(f"prior must be non-negative (0: none), got {prior}")
    low, high = bounds
    if not 0 < low < high:
        raise SlemError(f"bounds must be 0 < low < high penalties, got {bounds}")


def tune_penalties(
    x_train: Any,
    y_train: Any,
    x_val: Any,
    y_val: Any,
    model: Model = "logistic",
    groups: str | np.ndarray = "feature",
    outer_steps: int = 25,
    lr: float = 0.3,
    init: float | np.ndarray | None = None,
    inner_tol: float = 1e-6,
    inner_iterations: int = 500,
    patience: int | None = 5,
    bounds: tuple[float, float] = (1e-5, 10.0),
    cg_iterations: int = 200,
    cg_tol: float = 1e-3,
    standardize: bool = True,
    seed: int = 0,
    inner_method: InnerMethod = "newton",
    prior: float = 0.0,
) -> PenaltyResult:
    """Tune one L2 penalty per feature group by implicit hypergradients (see the module).

    Args:
        x_train, x_val: ``(n, n_features)`` numeric arrays (any encoding done; no NaN).
        y_train, y_val: ``(n,)`` class labels (logistic; the classes are those of
            ``y_train``) or ``(n,)`` / ``(n, k)`` real targets (ridge).
        model: ``"logistic"`` (softmax; sigmoid for two classes) or ``"ridge"``.
        groups: ``"feature"`` (one penalty per feature), ``"global"`` (one for all) or an
            ``(n_features,)`` integer array of group ids (one penalty per distinct id, in
            sorted id order).
        outer_steps: Adam steps on the log-penalties (each: one warm inner solve and one
            hypergradient).
        lr: Adam's step on ``log(lambda)`` (0.2: a factor of about 1.2 per step).
        init: the starting penalty (a float for every group, or ``(n_groups,)``); default
            ``1 / n_train``, scikit-learn's ``LogisticRegression(C=1)``.
        inner_tol: gradient tolerance (largest absolute entry) of the inner solve.
        inner_iterations: Newton steps (L-BFGS iterations) allowed per inner solve.
        patience: stop after this many steps without a lower validation loss (None: never).
        bounds: the penalties are kept in ``[low, high]`` (log-penalties clipped).
        cg_iterations, cg_tol: the conjugate-gradient solve of the hypergradient (relative
            residual) with ``inner_method="lbfgs"``.
        standardize: scale features by training-split mean and standard deviation first (the
            penalties then act on standardized coefficients; ``coef`` is returned on the
            original scale either way).
        seed: seeds torch (the search itself is deterministic given the data).
        inner_method: ``"newton"`` (default: damped Newton on the analytic Hessian, whose
            Cholesky factor at the solution also gives the hypergradient, by the engine's
            ``solver="direct"``) or ``"lbfgs"`` (L-BFGS inner solves and a conjugate-gradient
            hypergradient on Hessian-vector products; ``cg_iterations``, ``cg_tol``). Ridge
            is solved exactly either way (and its factor reused).
        prior: ``gamma >= 0`` of a hyper-prior pulling the log-penalties toward their mean:
            the outer objective becomes ``val_loss + gamma / 2 * mean((phi - mean(phi))^2)``
            (it also picks the best iterate); 0 (default) is plain validation loss.

    Returns:
        :class:`PenaltyResult`.

    Raises:
        SlemError (one line): inputs of the wrong shape, non-finite values, fewer than two
            training classes, validation labels unseen in training, an unknown model or
            groups, bad settings, or an inner problem not solved to ``inner_tol``.
    """
    _check_settings(model, outer_steps, lr, inner_tol, inner_iterations, patience, bounds, prior)
    if inner_method not in INNER_METHODS:
        raise SlemError(f"unknown inner_method '{inner_method}'; use {' or '.join(INNER_METHODS)}")
    start = time.perf_counter()
    torch.manual_seed(seed)
    xt = _features(x_train, "x_train")
    d = xt.shape[1]
    xv = _features(x_val, "x_val", d)
    yt = _targets(y_train, "y_train", len(xt), model)
    yv = _targets(y_val, "y_val", len(xv), model)
    group_of = _groups(groups, d)
    n_groups = int(group_of.max()) + 1
    classes: np.ndarray | None = None
    y_1d = True
    if model == "logistic":
        classes = np.unique(yt)
        if len(classes) < 2:
            raise SlemError(
                f"y_train has only one class ({np.asarray(classes[0]).item()!r}); logistic "
                "regression needs at least two"
            )
        unseen = np.setdiff1d(np.unique(yv), classes)
        if len(unseen):
            raise SlemError(
                f"y_val has labels not in y_train ({', '.join(map(repr, unseen[:5].tolist()))}); "
                "split so that every class is in the training split"
            )
        it, iv = np.searchsorted(classes, yt), np.searchsorted(classes, yv)
        if len(classes) == 2:
            k = 1
            ty = torch.as_tensor(it, dtype=torch.float64)
            vy = torch.as_tensor(iv, dtype=torch.float64)
        else:
            k = len(classes)
            ty = torch.as_tensor(it, dtype=torch.long)
            vy = torch.as_tensor(iv, dtype=torch.long)
    else:
        y_1d = yt.ndim == 1
        yt2, yv2 = (yt[:, None], yv[:, None]) if y_1d else (yt, yv)
        if yv2.shape[1] != yt2.shape[1]:
            raise SlemError(f"y_val has {yv2.shape[1]} outputs but y_train has {yt2.shape[1]}")
        k = yt2.shape[1]
        ty = torch.as_tensor(yt2, dtype=torch.float64)
        vy = torch.as_tensor(yv2, dtype=torch.float64)
    mean = xt.mean(axis=0) if standardize else np.zeros(d)
    scale = xt.std(axis=0) if standardize else np.ones(d)
    scale = np.where(scale > 1e-12, scale, 1.0)
    train: Batch = (torch.as_tensor((xt - mean) / scale), ty)
    val: Batch = (torch.as_tensor((xv - mean) / scale), vy)

    low, high = math.log(bounds[0]), math.log(bounds[1])
    if init is None:
        start_phi = np.full(n_groups, math.log(1.0 / len(xt)))
    else:
        values = np.broadcast_to(np.asarray(init, dtype=np.float64), (n_groups,))
        if not (np.isfinite(values).all() and (values > 0).all()):
            raise SlemError("init must be positive penalties (a float or one per group)")
        start_phi = np.log(values)
    phi = torch.tensor(np.clip(start_phi, low, high), dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([phi], lr=lr)
    params: Params = {
        "coef": torch.zeros(d, k, dtype=torch.float64),
        "intercept": torch.zeros(k, dtype=torch.float64),
    }

    index = torch.as_tensor(group_of, dtype=torch.long)
    held: _Curvature | None = None  # the last Hessian factor (a preconditioner)
    trajectory: list[dict[str, Any]] = []
    best: tuple[float, int, np.ndarray, Params] | None = None
    stale = 0
    stopped = "outer_steps"
    for step in range(outer_steps):
        params, used, gnorm, structure = _solve(
            model,
            group_of,
            phi,
            train,
            params,
            inner_tol,
            inner_iterations,
            20,
            inner_method,
            held,
        )
        if structure is not None:  # closed form, the solve's own factor: no generic CG
            g, val_loss, products = _structured_hypergradient(structure, val, index, n_groups)
            held = structure.curvature
        else:
            problem = penalty_problem(model, group_of, params, phi.detach())
            result = hypergrad(
                problem,
                "implicit",
                inner_batch=train,
                outer_batch=val,
                solver="cg",
                iterations=cg_iterations,
                tol=cg_tol,
            )
            g = result.grads["log_penalty"]
            val_loss = result.outer_loss
            products = int(result.diagnostics.get("iterations", 0))
        objective = val_loss
        if prior > 0 and n_groups > 1:
            centred = phi.detach() - phi.detach().mean()
            objective = val_loss + 0.5 * prior * float((centred**2).mean())
            g = g + prior * centred / n_groups
        trajectory.append(
            {
                "step": step,
                "val_loss": val_loss,
                "penalties": phi.detach().exp().tolist(),
                "hypergrad_norm": float(g.norm()),
                "inner_iterations": used,
                "inner_grad_norm": gnorm,
                "cg_iterations": products,
                "seconds": time.perf_counter() - start,
            }
        )
        if not math.isfinite(val_loss):
            raise SlemError(
                f"the validation loss became {val_loss} at step {step}; lower lr or narrow bounds"
            )
        if best is None or objective < best[0] - 1e-12:
            best = (objective, step, phi.detach().clone().numpy(), params)
            stale = 0
        else:
            stale += 1
            if patience is not None and stale >= patience:
                stopped = "patience"
                break
        if step == outer_steps - 1:
            break
        adam.zero_grad()
        phi.grad = g.clone()
        adam.step()
        with torch.no_grad():
            phi.clamp_(low, high)
        if structure is not None:
            theta = structure.predict(phi.detach().exp()[index])
            params = {"coef": theta[:-1], "intercept": theta[-1]}
    assert best is not None
    _, best_step, best_phi, best_params = best
    val_loss = trajectory[best_step]["val_loss"]
    w = best_params["coef"].numpy() / scale[:, None]
    b = best_params["intercept"].numpy() - mean @ w
    return PenaltyResult(
        model=model,
        penalties=np.exp(best_phi),
        groups=group_of,
        coef=w,
        intercept=b,
        val_loss=float(val_loss),
        initial_val_loss=float(trajectory[0]["val_loss"]),
        seconds=time.perf_counter() - start,
        best_step=best_step,
        trajectory=trajectory,
        classes=classes,
        stopped=stopped,
        settings={
            "outer_steps": outer_steps,
            "lr": lr,
            "init_penalty": float(np.exp(start_phi).mean()),
            "inner_tol": inner_tol,
            "inner_iterations": inner_iterations,
            "patience": patience,
            "bounds": list(bounds),
            "standardize": standardize,
            "inner_method": inner_method,
            "prior": prior,
            "y_1d": y_1d,
        },
    )
