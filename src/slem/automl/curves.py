"""Learning-curve extrapolation, the parametric baseline: fit a few curve families to the
observed part of a learning curve and predict its value at the end of the budget, with an
interval.

A curve is ``values[i]`` measured at budgets ``steps[i]`` (epochs, training-set sizes; any
positive, increasing numbers) of a run whose budget ends at ``horizon``. Every extrapolator
here works on a *canonical* curve: oriented so that lower is better (a maximized metric is
negated), shifted by its last observed value and divided by a robust scale of what was
observed (:func:`normalize`), so the metric's unit (percent, a [0, 1] rate, a loss) does not
matter; the budget axis is ``x = step / horizon`` in ``(0, 1]``. Predictions are mapped back
to the metric's units.

The families (``y`` canonical, ``x`` the budget fraction; Domhan et al. 2015, IJCAI,
"Speeding up automatic hyperparameter optimization of deep neural networks by extrapolation
of learning curves"; Viering & Loog 2022, "The shape of learning curves: a review"):

* ``pow3``: ``c + a x^-alpha``
* ``pow4``: ``c + a (x + b)^-alpha``
* ``mmf`` (Morgan-Mercer-Flodin): ``a - (a - b) / (1 + (k x)^d)``
* ``exp3``: ``c + a exp(-b x)``
* ``janoschek``: ``a - (a - b) exp(-k x^d)``
* ``loglin``: ``c - a log x``

each non-increasing (``a >= 0``: learning curves are taken to be monotone), fitted by variable
projection on a grid of shape parameters (optionally polished by
:func:`scipy.optimize.least_squares` within bounds); a fit that fails (fewer than 3 points,
a non-finite prediction) falls back to the last observed value and never raises. The
ensemble is the median of the families' predictions; its interval is the median plus or minus
``z`` times the spread of the families and the fits' residuals.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.optimize import least_squares

from slem.errors import SlemError

Direction = Literal["minimize", "maximize"]
Z90 = 1.6448536269514722  # the standard normal's 95% quantile: a two-sided 90% interval

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class Family:
    """A curve ``y = c + a g(x; theta)``, linear in ``(c, a)`` given the shape parameters
    ``theta`` (one or two). ``grid(x_last)`` gives candidate shapes, shape ``(G, k)``, scaled
    to the last observed budget fraction; ``bounds`` bound ``theta`` in the polish."""

    name: str
    g: Callable[[FloatArray, FloatArray], FloatArray]  # theta (G, k), x (n,) -> (G, n)
    grid: Callable[[float], FloatArray]
    bounds: tuple[tuple[float, ...], tuple[float, ...]]


def _grid(*axes: FloatArray) -> FloatArray:
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def _pow3(t: FloatArray, x: FloatArray) -> FloatArray:
    return x[None, :] ** (-t[:, :1])


def _pow4(t: FloatArray, x: FloatArray) -> FloatArray:
    return (x[None, :] + t[:, 1:2]) ** (-t[:, :1])


def _exp3(t: FloatArray, x: FloatArray) -> FloatArray:
    return np.exp(-t[:, :1] * x[None, :])


def _mmf(t: FloatArray, x: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + (t[:, :1] * x[None, :]) ** t[:, 1:2])


def _janoschek(t: FloatArray, x: FloatArray) -> FloatArray:
    return np.exp(-t[:, :1] * x[None, :] ** t[:, 1:2])


def _loglin(t: FloatArray, x: FloatArray) -> FloatArray:
    return np.broadcast_to(-np.log(x)[None, :], (len(t), len(x)))


def _jgrid(xl: float) -> FloatArray:
    t = _grid(_KAPPA, _D)
    t[:, 0] *= xl ** (-t[:, 1])
    return t


_ALPHA = np.geomspace(0.02, 2.5, 40)
_D = np.geomspace(0.1, 4.0, 12)
_KAPPA = np.geomspace(0.01, 100.0, 20)
FAMILIES: tuple[Family, ...] = (
    Family("pow3", _pow3, lambda xl: _ALPHA[:, None], ((0.0,), (3.0,))),
    Family(
        "pow4", _pow4, lambda xl: _grid(_ALPHA[::2], xl * np.geomspace(0.01, 10, 12)),
        ((0.0, 0.0), (3.0, 1.0)),
    ),
    Family("exp3", _exp3, lambda xl: (np.geomspace(0.01, 30, 40) / xl)[:, None], ((0.0,), (1e6,))),
    Family("mmf", _mmf, lambda xl: _grid(_KAPPA / xl, _D), ((1e-6, 0.05), (1e6, 6.0))),
    Family(
        "janoschek", _janoschek, lambda xl: _jgrid(xl), ((1e-6, 0.05), (1e6, 6.0)),
    ),
    Family("loglin", _loglin, lambda xl: np.zeros((1, 1)), ((), ())),
)  # fmt: skip
FAMILY_NAMES = tuple(f.name for f in FAMILIES)
CLIP = 50.0  # canonical predictions are clipped to +-CLIP observed scales


@dataclass(frozen=True)
class Normalized:
    """A canonical curve (:func:`normalize`) and how to map its values back:
    ``value = sign * (center + scale * y)``."""

    x: FloatArray
    y: FloatArray
    center: float
    scale: float
    sign: float

    def to_value(self, y: FloatArray | float) -> Any:
        return self.sign * (self.center + self.scale * np.asarray(y, dtype=float))

    def to_canonical(self, value: FloatArray | float) -> Any:
        return (self.sign * np.asarray(value, dtype=float) - self.center) / self.scale


def normalize(
    steps: Sequence[float], values: Sequence[float], horizon: float, direction: Direction
) -> Normalized:
    """The canonical form of a partial curve: ``x = steps / horizon``; ``y`` oriented so lower
    is better, minus its last value, over its scale: the observed range, at least 5% of the
    last value's magnitude and 1e-6 (so a flat curve does not blow up).

    Raises:
        SlemError: no point, lengths that differ, a non-finite value, steps not positive and
            increasing, or a step past the horizon.
    """
    s = np.asarray(steps, dtype=float).ravel()
    v = np.asarray(values, dtype=float).ravel()
    if len(s) == 0 or len(s) != len(v):
        raise SlemError(
            f"a learning curve needs as many steps as values, at least one (got {len(s)} steps, "
            f"{len(v)} values)"
        )
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(s))):
        raise SlemError("a learning curve's values must be finite numbers")
    if s[0] <= 0 or np.any(np.diff(s) <= 0) or s[-1] > horizon:
        raise SlemError(
            f"a learning curve's steps must be positive, increasing and at most the horizon "
            f"{horizon:g} (got {s.tolist()[:6]}...)"
        )
    if direction not in ("minimize", "maximize"):
        raise SlemError(f"direction must be minimize or maximize (got {direction!r})")
    sign = -1.0 if direction == "maximize" else 1.0
    y = sign * v
    center = float(y[-1])
    scale = max(float(np.ptp(y)), 0.05 * abs(center), 1e-6)
    return Normalized(s / horizon, (y - center) / scale, center, scale, sign)


def _linear(g: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Least squares of ``y ~ c + a g`` with ``a >= 0`` for every row of ``g`` (G, n): ``c``,
    ``a``, SSE."""
    gm = g.mean(axis=1, keepdims=True)
    gc = g - gm
    var = (gc**2).sum(axis=1)
    yc = y - y.mean()
    a = np.where(var > 1e-12, (gc @ yc) / np.maximum(var, 1e-12), 0.0)
    a = np.maximum(a, 0.0)  # every g decreases in x: a >= 0 keeps the curve non-increasing
    c = y.mean() - a * gm[:, 0]
    sse = ((c[:, None] + a[:, None] * g - y[None, :]) ** 2).sum(axis=1)
    return c, a, sse


def fit_family(
    fam: Family, x: FloatArray, y: FloatArray, polish: bool = False
) -> tuple[float, float]:
    """The family's canonical prediction at ``x = 1`` and its fit's RMS residual; the last
    observed value and ``inf`` when the fit is impossible or fails (never raises).

    The fit is variable projection: for every shape on the family's grid, ``(c, a)`` by
    closed-form least squares; the best shape is then polished (``polish``) by
    :func:`scipy.optimize.least_squares` over all parameters, within the shape's bounds."""
    fallback = (float(y[-1]), math.inf)
    if len(x) < 3:
        return fallback
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        theta = fam.grid(float(x[-1]))
        g = fam.g(theta, x)
        c, a, sse = _linear(g, y)
        sse = np.where(np.isfinite(sse), sse, np.inf)
        best = int(np.argmin(sse))
        if not math.isfinite(float(sse[best])):
            return fallback
        p = np.concatenate([[c[best], a[best]], theta[best]])
        k = theta.shape[1] if fam.name != "loglin" else 0
        if polish and k and len(x) > 2 + k:
            lo = np.concatenate([[-np.inf, 0.0], fam.bounds[0]])
            hi = np.concatenate([[np.inf, np.inf], fam.bounds[1]])
            p0 = np.clip(p, lo, hi)
            try:
                res = least_squares(
                    lambda q: q[0] + q[1] * fam.g(q[None, 2:], x)[0] - y,
                    p0,
                    bounds=(lo, hi),
                    max_nfev=10 * len(p0),
                )
                if np.isfinite(res.cost) and 2 * res.cost < sse[best]:
                    p = res.x
            except (ValueError, FloatingPointError, np.linalg.LinAlgError):
                pass
        fitted = p[0] + p[1] * fam.g(p[None, 2:] if k else np.zeros((1, 1)), x)[0]
        end = p[0] + p[1] * fam.g(p[None, 2:] if k else np.zeros((1, 1)), np.ones(1))[0, 0]
        rmse = float(np.sqrt(np.mean((fitted - y) ** 2)))
    pred = float(end)
    if not (math.isfinite(pred) and math.isfinite(rmse)):
        return fallback
    return float(np.clip(pred, -CLIP, CLIP)), rmse


@dataclass(frozen=True)
class Extrapolation:
    """A predicted final value, in the metric's units: the median and a two-sided interval
    (``lower <= median <= upper``, whichever the direction)."""

    median: float
    lower: float
    upper: float


def family_predictions(n: Normalized) -> dict[str, tuple[float, float]]:
    """Every family's canonical prediction at the horizon and its fit's RMS residual."""
    return {fam.name: fit_family(fam, n.x, n.y) for fam in FAMILIES}


def ensemble_canonical(
    fits: dict[str, tuple[float, float]], n_points: int, z: float = Z90
) -> tuple[float, float, float]:
    """The ensemble's canonical (median, lower, upper): the median of the families that fitted
    (the last value when none did), plus or minus ``z`` times the root of the families' spread
    (their variance) plus the mean squared residual inflated for the few points (``1 + 4 /
    n``)."""
    preds = np.array([p for p, r in fits.values() if math.isfinite(r)])
    resid = np.array([r for _, r in fits.values() if math.isfinite(r)])
    if len(preds) == 0:
        return 0.0, -z * 0.5, z * 0.5
    med = float(np.median(preds))
    spread = float(np.var(preds)) + float(np.mean(resid**2)) * (1 + 4 / max(n_points, 1))
    half = z * math.sqrt(max(spread, 1e-4))
    return med, med - half, med + half


def extrapolate(
    steps: Sequence[float],
    values: Sequence[float],
    horizon: float,
    direction: Direction = "minimize",
    z: float = Z90,
) -> Extrapolation:
    """The parametric ensemble's prediction of the curve's value at ``horizon``, with a
    (nominally 90%, ``z`` = 1.645) interval, in the metric's units.

    Args:
        steps: the budgets observed, shape ``(n,)``, positive and increasing.
        values: the metric at those budgets, shape ``(n,)``.
        horizon: the budget whose value is predicted (``>= steps[-1]``).
        direction: ``minimize`` (an error or a loss) or ``maximize`` (an accuracy).

    Raises:
        SlemError: an invalid curve (:func:`normalize`).
    """
    n = normalize(steps, values, horizon, direction)
    med, lo, hi = ensemble_canonical(family_predictions(n), len(n.x), z)
    return to_extrapolation(n, med, lo, hi)


def to_extrapolation(n: Normalized, med: float, lo: float, hi: float) -> Extrapolation:
    """Canonical (median, lower, upper) mapped back to the metric's units."""
    a, m, b = (float(n.to_value(v)) for v in (lo, med, hi))
    return Extrapolation(m, min(a, b), max(a, b))
