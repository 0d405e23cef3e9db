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
tolerance (``torch.optim.LBFGS`` with a strong-Wolfe line search, warm-started from the
previous step's solution, which is what makes the path cheap: a few L-BFGS iterations per step
instead of a cold solve; ridge is solved exactly by one linear solve), then takes the implicit
hypergradient (:func:`slem.bilevel.hypergrad` with ``"implicit"``, conjugate gradient on
Hessian-vector products; one solve whatever the number of penalties) and an Adam step on the
log-penalties. The iterate with the best validation loss is kept; the search stops when the
validation loss has not improved for ``patience`` steps.

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
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from slem.bilevel import SGD, BilevelProblem, Params, hypergrad
from slem.errors import SlemError

__all__ = ["MODELS", "PenaltyResult", "inner_solve", "penalty_problem", "tune_penalties"]

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


def inner_solve(
    model: str,
    groups: np.ndarray,
    log_penalty: Tensor,
    batch: Batch,
    params: Params,
    tol: float = 1e-6,
    iterations: int = 500,
    history: int = 20,
) -> tuple[Params, int, float]:
    """Minimize the inner objective from ``params`` (a warm start; not modified).

    Logistic: ``torch.optim.LBFGS`` (strong-Wolfe line search) until the largest absolute
    gradient entry is at most ``tol``. Ridge: the normal equations, solved exactly. Returns
    ``(params, iterations, gradient inf-norm)``.

    Raises:
        SlemError: the gradient is still above ``tol`` after ``iterations`` (one line; the
            implicit hypergradient needs a stationary point).
    """
    x, y = batch
    lam = log_penalty.detach().exp()[torch.as_tensor(groups, dtype=torch.long)]
    lam_col = lam[:, None]

    def objective(coef: Tensor, intercept: Tensor) -> Tensor:
        z = x @ coef + intercept
        return _data_loss(model, z, y, outer=False) + 0.5 * (lam_col * coef**2).sum()

    def gradient_norm(found: Params) -> float:
        p = [found[k].detach().clone().requires_grad_(True) for k in ("coef", "intercept")]
        with torch.enable_grad():
            return _inf_norm(list(torch.autograd.grad(objective(*p), p)))

    if model == "ridge":
        n, d = x.shape
        a = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], dim=1)
        reg = torch.diag(torch.cat([lam, torch.zeros(1, dtype=x.dtype)]))
        theta = torch.linalg.solve(a.T @ a / n + reg, a.T @ y / n)
        found = {"coef": theta[:d].contiguous(), "intercept": theta[d].contiguous()}
        used = 1
        norm = gradient_norm(found)
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
        inner_iterations: L-BFGS iterations allowed per inner solve.
        patience: stop after this many steps without a lower validation loss (None: never).
        bounds: the penalties are kept in ``[low, high]`` (log-penalties clipped).
        cg_iterations, cg_tol: the conjugate-gradient solve of the hypergradient (relative
            residual).
        standardize: scale features by training-split mean and standard deviation first (the
            penalties then act on standardized coefficients; ``coef`` is returned on the
            original scale either way).
        seed: seeds torch (the search itself is deterministic given the data).

    Returns:
        :class:`PenaltyResult`.

    Raises:
        SlemError (one line): inputs of the wrong shape, non-finite values, fewer than two
            training classes, validation labels unseen in training, an unknown model or
            groups, bad settings, or an inner problem not solved to ``inner_tol``.
    """
    _check_settings(model, outer_steps, lr, inner_tol, inner_iterations, patience, bounds)
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
                f"y_train has only one class ({classes[0]!r}); logistic regression needs at "
                "least two"
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

    trajectory: list[dict[str, Any]] = []
    best: tuple[float, int, np.ndarray, Params] | None = None
    stale = 0
    stopped = "outer_steps"
    for step in range(outer_steps):
        params, used, gnorm = inner_solve(
            model, group_of, phi, train, params, inner_tol, inner_iterations
        )
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
        trajectory.append(
            {
                "step": step,
                "val_loss": val_loss,
                "penalties": [float(v) for v in phi.detach().exp()],
                "hypergrad_norm": float(g.norm()),
                "inner_iterations": used,
                "inner_grad_norm": gnorm,
                "cg_iterations": int(result.diagnostics.get("iterations", 0)),
                "seconds": time.perf_counter() - start,
            }
        )
        if not math.isfinite(val_loss):
            raise SlemError(
                f"the validation loss became {val_loss} at step {step}; lower lr or narrow bounds"
            )
        if best is None or val_loss < best[0] - 1e-12:
            best = (val_loss, step, phi.detach().clone().numpy(), params)
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
    assert best is not None
    val_loss, best_step, best_phi, best_params = best
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
            "y_1d": y_1d,
        },
    )
