"""Linear solvers for the implicit hypergradient: ``H q = v`` with Hessian-vector products.

Vectors are ``Params`` dicts (the shape of the inner parameters), so nothing is flattened
and every product runs on the parameters' own device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from slem.bilevel.problem import Params
from slem.errors import SlemError

HVP = Callable[[Params], Params]


def dot(a: Params, b: Params) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)  # type: ignore[return-value]


def axpy(alpha: float | Tensor, x: Params, y: Params) -> Params:
    """``alpha * x + y``."""
    return {k: alpha * x[k] + y[k] for k in x}


def conjugate_gradient(
    hvp: HVP, v: Params, iterations: int, tol: float, negative_curvature: str = "raise"
) -> tuple[Params, dict[str, Any]]:
    """CG for a symmetric positive-definite ``H`` (add damping otherwise); stops when the
    residual falls below ``tol`` relative to ``|v|``. On a direction of non-positive
    curvature it raises (``negative_curvature="raise"``) or returns the iterate so far
    (``"stop"``, truncated CG as in Steihaug 1983; diagnostics ``negative_curvature``)."""
    q = {k: torch.zeros_like(t) for k, t in v.items()}
    r = {k: t.clone() for k, t in v.items()}
    p = {k: t.clone() for k, t in v.items()}
    rr = dot(r, r)
    v_norm = max(float(torch.sqrt(rr)), 1e-30)
    done = 0
    stopped = False
    while done < iterations and float(torch.sqrt(rr)) > tol * v_norm:
        hp = hvp(p)
        curvature = dot(p, hp)
        if float(curvature) <= 0 and negative_curvature == "stop":
            stopped = True
            break
        if float(curvature) <= 0:
            raise SlemError(
                "conjugate gradient met non-positive curvature: the inner Hessian is not "
                "positive definite here; add damping (e.g. damping=1e-3) or use solver='neumann'"
            )
        step = rr / curvature
        q = axpy(step, p, q)
        r = axpy(-step, hp, r)
        rr_new = dot(r, r)
        p = axpy(rr_new / rr, p, r)
        rr = rr_new
        done += 1
    residual = float(torch.sqrt(rr)) / v_norm
    return q, {"iterations": done, "relative_residual": residual, "negative_curvature": stopped}


def neumann(hvp: HVP, v: Params, iterations: int, alpha: float) -> tuple[Params, dict[str, Any]]:
    """``H^{-1} v ~ alpha * sum_{j<=J} (I - alpha H)^j v``; converges when ``alpha`` is below
    ``2 / lambda_max(H)`` (Lorraine et al. 2020 use the inner learning rate)."""
    p = {k: t.clone() for k, t in v.items()}
    acc = {k: t.clone() for k, t in v.items()}
    for _ in range(iterations):
        hp = hvp(p)
        p = axpy(-alpha, hp, p)
        acc = {k: acc[k] + p[k] for k in acc}
    q = {k: alpha * t for k, t in acc.items()}
    hq = hvp(q)
    residual = {k: hq[k] - v[k] for k in v}
    rel = float(torch.sqrt(dot(residual, residual))) / max(float(torch.sqrt(dot(v, v))), 1e-30)
    return q, {"iterations": iterations, "relative_residual": rel}


def solve(
    hvp: HVP,
    v: Params,
    solver: str,
    iterations: int | None,
    tol: float,
    alpha: float | None,
    negative_curvature: str = "raise",
) -> tuple[Params, dict[str, Any]]:
    if negative_curvature not in ("raise", "stop"):
        raise SlemError(f"negative_curvature must be raise or stop, got '{negative_curvature}'")
    if solver == "cg":
        iterations = 100 if iterations is None else iterations
        return conjugate_gradient(hvp, v, iterations, tol, negative_curvature)
    if solver == "neumann":
        if alpha is None:
            raise SlemError("solver='neumann' needs alpha (the series step, e.g. the inner lr)")
        return neumann(hvp, v, 100 if iterations is None else iterations, alpha)
    raise SlemError(f"unknown implicit solver '{solver}'; use cg or neumann")
