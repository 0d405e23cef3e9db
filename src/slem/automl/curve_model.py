"""The meta-learned learning-curve extrapolator ``h``: a small MLP that maps a partial curve
to quantiles (5%, 50%, 95%) of its final value, trained on (partial curve, final value) pairs
of many curves, in the spirit of observation-based meta-learning (Adriaensen et al. 2023,
"Efficient Bayesian learning curve extrapolation using prior-data fitted networks" (LC-PFN);
Klein et al. 2017, "Learning curve prediction with Bayesian neural networks"; Domhan et al.
2015 for the parametric families it reads).

Its input is the canonical curve (:func:`slem.automl.curves.normalize`: oriented so lower is
better, shifted by the last value, divided by the observed scale) summarized in
:data:`N_FEATURES` numbers (:func:`features`): the last five values and their log budget
fractions, how many points there are, the best value so far, the last slope in log budget,
and every parametric family's prediction and fit residual. Its output is canonical too, so
the model serves any metric in any unit. A split-conformal offset (Romano et al. 2019,
conformalized quantile regression), computed on held-out calibration curves, widens the
5-95% interval so it covers about 90% of final values.

The model is saved as ``NAME.safetensors`` (the weights) and ``NAME.json`` (feature
normalization, conformal offset, what it was trained on); :func:`load_curve_model` with no
path loads the one shipped in ``slem/automl/data/`` (trained by ``benchmarks/curves.py`` on
LCDB curves and the MNIST-1D curve table).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from torch import nn

from slem.automl.curves import (
    CLIP,
    FAMILIES,
    Z90,
    Direction,
    Extrapolation,
    FloatArray,
    Normalized,
    ensemble_canonical,
    family_predictions,
    normalize,
    to_extrapolation,
)
from slem.errors import SlemError

QUANTILES = (0.05, 0.5, 0.95)
LAST = 5
N_FEATURES = 2 * LAST + 5 + 2 * len(FAMILIES)
SHIPPED = Path(__file__).parent / "data" / "curve_model"


def _squash(v: Any) -> FloatArray:
    """A signed log: keeps the sign, tames the heavy tails of canonical values."""
    a = np.asarray(v, dtype=float)
    return np.sign(a) * np.log1p(np.abs(a))


def features(n: Normalized, fits: dict[str, tuple[float, float]] | None = None) -> FloatArray:
    """The model's input for a canonical curve, shape ``(N_FEATURES,)``. ``fits``: the
    families' predictions (:func:`family_predictions`), computed when not given."""
    fits = family_predictions(n) if fits is None else fits
    y, lx = n.y, np.log(n.x)
    pad = max(0, LAST - len(y))
    last_y = np.concatenate([np.full(pad, y[0]), y[-LAST:]])
    last_x = np.concatenate([np.full(pad, lx[0]), lx[-LAST:]])
    k = min(3, len(y))
    slope = 0.0
    if k >= 2 and lx[-1] > lx[-k]:
        slope = float((y[-1] - y[-k]) / (lx[-1] - lx[-k]))
    med, _, _ = ensemble_canonical(fits, len(y))
    preds = [fits[f.name][0] for f in FAMILIES]
    resid = [min(fits[f.name][1], 10.0) for f in FAMILIES]  # inf (no fit) -> 10
    out = np.concatenate(
        [
            _squash(last_y),
            last_x,
            [math.log(len(y)), float(_squash(y.min())), float(_squash(slope)), float(_squash(med))],
            [float(lx[-1])],
            _squash(preds),
            np.log1p(resid),
        ]
    )
    return out.astype(np.float64)


class _Net(nn.Module):
    def __init__(self, n_in: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.head(self.body(x))
        mid = o[:, 1]
        lo = mid - nn.functional.softplus(o[:, 0])
        hi = mid + nn.functional.softplus(o[:, 2])
        return torch.stack([lo, mid, hi], dim=1)


def pinball(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean pinball (quantile) loss of ``pred`` (B, 3) at :data:`QUANTILES`."""
    q = torch.tensor(QUANTILES, dtype=pred.dtype)
    diff = target[:, None] - pred
    return torch.maximum(q * diff, (q - 1) * diff).mean()


@dataclass
class CurveModel:
    """The meta-learned extrapolator: the network, its feature normalization (``mean``,
    ``std``, shape ``(N_FEATURES,)``), the conformal offset added to both ends of the 5-95%
    interval (canonical units), and a description of its training data."""

    net: _Net
    mean: FloatArray
    std: FloatArray
    conformal: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def predict_features(self, feats: FloatArray) -> FloatArray:
        """Canonical (5%, 50%, 95%) quantiles for features ``(B, N_FEATURES)``, shape ``(B, 3)``,
        before the conformal offset."""
        x = torch.as_tensor((np.atleast_2d(feats) - self.mean) / self.std, dtype=torch.float32)
        with torch.no_grad():
            out = self.net(x).double().numpy()
        return np.clip(out, -CLIP, CLIP)

    def predict(
        self,
        steps: Sequence[float],
        values: Sequence[float],
        horizon: float,
        direction: Direction = "minimize",
        confidence: float = 0.95,
    ) -> Extrapolation:
        """The predicted value at ``horizon`` (median) and a two-sided interval whose bounds are
        the one-sided ``confidence`` quantiles (0.95: the conformalized 5-95% interval), in
        the metric's units. Shapes, units and errors as
        :func:`slem.automl.curves.extrapolate`."""
        n = normalize(steps, values, horizon, direction)
        lo, med, hi = self.predict_features(features(n))[0]
        scale = NormalDist().inv_cdf(confidence) / Z90
        lo = med - max(med - lo + self.conformal, 0.0) * scale
        hi = med + max(hi - med + self.conformal, 0.0) * scale
        return to_extrapolation(n, med, lo, hi)

    def save(self, path: str | Path) -> None:
        """``PATH.safetensors`` (weights) and ``PATH.json`` (the rest)."""
        from safetensors.torch import save_file

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(p.with_suffix(".safetensors")))
        meta = {
            "kind": "slem.curve_model",
            "version": 1,
            "hidden": self.net.head.in_features,
            "n_features": N_FEATURES,
            "quantiles": list(QUANTILES),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "conformal": self.conformal,
            "info": self.info,
        }
        p.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")


class ParametricExtrapolator:
    """The baseline with :class:`CurveModel`'s interface: the parametric ensemble
    (:func:`slem.automl.curves.extrapolate`), its bounds the one-sided ``confidence``
    normal quantiles."""

    def predict(
        self,
        steps: Sequence[float],
        values: Sequence[float],
        horizon: float,
        direction: Direction = "minimize",
        confidence: float = 0.95,
    ) -> Extrapolation:
        n = normalize(steps, values, horizon, direction)
        z = NormalDist().inv_cdf(confidence)
        med, lo, hi = ensemble_canonical(family_predictions(n), len(n.x), z)
        return to_extrapolation(n, med, lo, hi)


def load_curve_model(path: str | Path | None = None) -> CurveModel:
    """A saved :class:`CurveModel` (``PATH.safetensors`` + ``PATH.json``); the shipped one when
    ``path`` is None.

    Raises:
        SlemError: missing files, or files that are not a curve model of this version.
    """
    from safetensors.torch import load_file

    p = Path(SHIPPED if path is None else path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    js, st = p.with_suffix(".json"), p.with_suffix(".safetensors")
    if not (js.is_file() and st.is_file()):
        raise SlemError(f"no curve model at {p} (expected {js.name} and {st.name})")
    try:
        meta = json.loads(js.read_text())
        if meta.get("kind") != "slem.curve_model" or meta.get("n_features") != N_FEATURES:
            raise ValueError("kind or feature count")
        net = _Net(N_FEATURES, int(meta["hidden"]))
        net.load_state_dict(load_file(str(st)))
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise SlemError(f"{p} is not a slem curve model of this version ({exc})") from None
    net.eval()
    return CurveModel(
        net,
        np.asarray(meta["mean"], dtype=float),
        np.asarray(meta["std"], dtype=float),
        float(meta["conformal"]),
        dict(meta.get("info", {})),
    )


def train_curve_model(
    feats: FloatArray,
    targets: FloatArray,
    *,
    calib: tuple[FloatArray, FloatArray] | None = None,
    hidden: int = 64,
    epochs: int = 40,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    info: dict[str, Any] | None = None,
) -> CurveModel:
    """Fit ``h`` on canonical pairs: ``feats`` (N, N_FEATURES) from :func:`features`,
    ``targets`` (N,) the canonical final values (``Normalized.to_canonical(final)``), by the
    pinball loss at :data:`QUANTILES` with Adam; ``calib`` (features, targets) of held-out
    curves sets the conformal offset for a 90% interval.

    Raises:
        SlemError: mismatched shapes, fewer than 8 pairs, or non-finite inputs.
    """
    feats = np.asarray(feats, dtype=float)
    targets = np.clip(np.asarray(targets, dtype=float).ravel(), -CLIP, CLIP)
    if feats.ndim != 2 or feats.shape != (len(targets), N_FEATURES) or len(targets) < 8:
        raise SlemError(
            f"curve model training needs features (N, {N_FEATURES}) and N >= 8 targets "
            f"(got {feats.shape} and {targets.shape})"
        )
    if not (np.all(np.isfinite(feats)) and np.all(np.isfinite(targets))):
        raise SlemError("curve model training data must be finite")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean, std = feats.mean(axis=0), feats.std(axis=0) + 1e-6
    net = _Net(N_FEATURES, hidden)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    steps_per_epoch = max(1, math.ceil(len(targets) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    x_all = torch.as_tensor((feats - mean) / std, dtype=torch.float32)
    y_all = torch.as_tensor(targets, dtype=torch.float32)
    net.train()
    for _ in range(epochs):
        order = torch.as_tensor(rng.permutation(len(targets)))
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            loss = pinball(net(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    model = CurveModel(net, mean, std, 0.0, dict(info or {}))
    if calib is not None:
        model.conformal = conformal_offset(model, *calib)
    return model


def conformal_offset(model: CurveModel, feats: FloatArray, targets: FloatArray) -> float:
    """The split-conformal offset for a 90% interval: the ``ceil(0.9 (n + 1)) / n`` quantile
    of ``max(lo - y, y - hi)`` over the calibration pairs (may be negative: a too-wide
    interval is narrowed)."""
    q = model.predict_features(np.asarray(feats, dtype=float))
    y = np.clip(np.asarray(targets, dtype=float).ravel(), -CLIP, CLIP)
    scores = np.maximum(q[:, 0] - y, y - q[:, 2])
    n = len(scores)
    if n == 0:
        return 0.0
    level = min(1.0, math.ceil(0.9 * (n + 1)) / n)
    return float(np.quantile(scores, level, method="higher"))
