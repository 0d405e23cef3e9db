"""Linear solvers for the implicit hypergradient: ``H q = v`` with Hessian-vector products.

Vectors are ``Params`` dicts (the shape of the inner parameters), so nothing is flattened
and every product runs on the parameters' own device. The exception is ``"direct"``, a dense
solve for small inner problems, which works on the flat vector
``torch.cat([t.reshape(-1) for t in params.values()])`` (the parameters in their dict order,
each flattened row-major).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from slem.bilevel.problem import Params
from slem.errors import SlemError

HVP = Callable[[Params], Params]

#: ``q = H^{-1} v`` on flat vectors (see the module docstring): a factorization the caller holds
HessianSolve = Callable[[Tensor], Tensor]

#: the solvers of :func:`solve`
SOLVERS = ("cg", "neumann", "direct")


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


def flatten(tree: Params) -> Tensor:
    """The flat vector of ``tree`` (its tensors in dict order, each row-major)."""
    return torch.cat([t.reshape(-1) for t in tree.values()])


def unflatten(flat: Tensor, like: Params) -> Params:
    """The inverse of :func:`flatten`, in the shapes of ``like``."""
    out: Params = {}
    offset = 0
    for name, t in like.items():
        n = int(t.numel())
        out[name] = flat[offset : offset + n].reshape(t.shape)
        offset += n
    return out


def dense_hessian(hvp: HVP, like: Params) -> Tensor:
    """The ``(P, P)`` matrix of ``hvp`` (P Hessian-vector products, batched by ``vmap``; one at
    a time where an operation has no batching rule)."""
    from torch.func import vmap

    n = sum(int(t.numel()) for t in like.values())
    eye = torch.eye(
        n, dtype=next(iter(like.values())).dtype, device=next(iter(like.values())).device
    )

    def column(e: Tensor) -> Tensor:
        return flatten(hvp(unflatten(e, like)))

    try:
        columns = vmap(column)(eye)
    except RuntimeError:
        columns = torch.stack([column(e) for e in eye])
    return 0.5 * (columns + columns.T)  # symmetric up to rounding: H is a Hessian


def direct(
    hvp: HVP, v: Params, hessian_solve: HessianSolve | None = None
) -> tuple[Params, dict[str, Any]]:
    """``H^{-1} v`` by a dense solve: ``hessian_solve`` (the caller's factorization, applied to
    the flat ``v``) or, without it, a Cholesky factorization of the dense Hessian built from
    ``P`` Hessian-vector products (exact up to rounding; O(P) products and O(P^3) arithmetic,
    so for inner problems of up to a few thousand parameters). A singular positive
    semi-definite Hessian (a symmetry, e.g. a softmax's logits all shifted by one constant)
    gets the minimum-norm solution by its eigendecomposition, what conjugate gradient from
    zero returns; an indefinite one raises."""
    flat_v = flatten(v)
    if hessian_solve is not None:
        q = hessian_solve(flat_v)
        if q.shape != flat_v.shape:
            raise SlemError(
                f"hessian_solve returned shape {tuple(q.shape)} for a flat vector of shape "
                f"{tuple(flat_v.shape)}; it must return H^-1 v of the same shape"
            )
        return unflatten(q, v), {"iterations": 0, "factorization": "given"}
    h = dense_hessian(hvp, v)
    factor, info = torch.linalg.cholesky_ex(h)
    if int(info) == 0:
        q = torch.cholesky_solve(flat_v[:, None], factor)[:, 0]
        how = "cholesky"
    else:  # singular (a symmetry of the inner loss) or indefinite: look at the spectrum
        values, vectors = torch.linalg.eigh(h)
        top = float(values.abs().max())
        if float(values.min()) < -1e-8 * top:
            raise SlemError(
                "the inner Hessian is not positive semi-definite, so the direct solve has no "
                "answer; add damping (e.g. damping=1e-3) or use solver='cg' with "
                "negative_curvature='stop'"
            )
        keep = values > 1e-10 * top  # the minimum-norm solution, as CG from zero finds it
        q = vectors[:, keep] @ ((vectors[:, keep].T @ flat_v) / values[keep])
        how = "pseudo-inverse"
    residual = float(torch.linalg.vector_norm(h @ q - flat_v)) / max(
        float(torch.linalg.vector_norm(flat_v)), 1e-30
    )
    return unflatten(q, v), {"iterations": 0, "factorization": how, "relative_residual": residual}


def solve(
    hvp: HVP,
    v: Params,
    solver: str,
    iterations: int | None,
    tol: float,
    alpha: float | None,
    negative_curvature: str = "raise",
    hessian_solve: HessianSolve | None = None,
) -> tuple[Params, dict[str, Any]]:
    if negative_curvature not in ("raise", "stop"):
        raise SlemError(f"negative_curvature must be raise or stop, got '{negative_curvature}'")
    if hessian_solve is not None and solver != "direct":
        raise SlemError(f"hessian_solve needs solver='direct', not '{solver}'")
    if solver == "direct":
        return direct(hvp, v, hessian_solve)
    if solver == "cg":
        iterations = 100 if iterations is None else iterations
        return conjugate_gradient(hvp, v, iterations, tol, negative_curvature)
    if solver == "neumann":
        if alpha is None:
            raise SlemError("solver='neumann' needs alpha (the series step, e.g. the inner lr)")
        return neumann(hvp, v, 100 if iterations is None else iterations, alpha)
    raise SlemError(f"unknown implicit solver '{solver}'; use cg, neumann or direct")
