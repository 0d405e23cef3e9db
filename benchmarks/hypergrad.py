"""Hypergradient engine benchmark: accuracy, cost against K and parameter count, step timing.

    python benchmarks/hypergrad.py [--quick] [--json PATH]

1. **Accuracy** on ridge regression with a per-feature ridge strength, whose validation-loss
   hypergradient has a closed form: each method's relative error against it, and against the
   exact gradient of the method's own objective (the K-step loss), where that differs.
2. **Cost** of each method on an MLP classifier (class weights as hyperparameters): wall time
   and peak extra memory against K (inner steps; solver iterations for implicit) and against
   the parameter count.
3. **Step timing** for a per-sample-weighted loss on a small CNN (batch 128, MW-Net's 1-100-1
   weighting net), interleaved in one process: the fast path, generic lookahead the official
   MW-Net way (``create_graph``), generic lookahead through torch.func, first_order, and a
   plain training step; plus whole MW-Net iterations (meta step + real step).

Peak memory on CPU is the rise of the process's peak RSS during the call (the kernel's
high-water mark is reset before it; glibc is told to return freed tensors of 64 KiB and more
to the system, so smaller allocations are not seen), and ``torch.cuda.max_memory_allocated``
on CUDA.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from slem.bilevel import SGD, BilevelProblem, Params, WeightedProblem, functional, hypergrad
from slem.provenance import provenance

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- measuring

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _libc() -> Any:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


LIBC = _libc()


def malloc_mode(measuring: bool) -> None:
    """glibc only. Measuring memory: tensors of 64 KiB and more are mmapped and returned to the
    system when freed, so the peak RSS of a call is its real peak. Timing: a high threshold,
    as glibc's own adaptive one settles to, so page faults do not distort the timings."""
    if LIBC is None:
        return
    mmap, trim = (64 << 10, 128 << 10) if measuring else (32 << 20, 256 << 20)
    LIBC.mallopt(_M_MMAP_THRESHOLD, mmap)
    LIBC.mallopt(_M_TRIM_THRESHOLD, trim)


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float | None]:
    """Run ``fn`` once: (result, seconds, peak extra memory in MiB or None)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return out, seconds, (torch.cuda.max_memory_allocated() - base) / 2**20
    if LIBC is not None:
        LIBC.malloc_trim(0)  # free heap pages would hide new allocations
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        base = _status_kb("VmRSS")
    except OSError:
        base = None
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    mib = None if base is None or peak is None else max(peak - base, 0) / 1024
    return out, seconds, mib


# ----------------------------------------------------------------------------- 1. accuracy


class Ridge:
    """Inner |X t - y|^2/2n + sum_j lam_j t_j^2/2, outer |Xv t - yv|^2/2nv (float64)."""

    def __init__(self, d: int = 20, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        f64 = torch.float64
        self.X = torch.randn(200, d, generator=g, dtype=f64)
        w = torch.randn(d, generator=g, dtype=f64)
        self.y = self.X @ w + 0.5 * torch.randn(200, generator=g, dtype=f64)
        self.Xv = torch.randn(100, d, generator=g, dtype=f64)
        self.yv = self.Xv @ w + 0.5 * torch.randn(100, generator=g, dtype=f64)
        self.lam = torch.linspace(0.05, 0.5, d, dtype=f64)

    def inner(self, p: Params, h: Params, b: object) -> Tensor:
        t = p["t"]
        return ((self.X @ t - self.y) ** 2).mean() / 2 + 0.5 * (h["lam"] * t * t).sum()

    def outer(self, p: Params, h: Params, b: object) -> Tensor:
        return ((self.Xv @ p["t"] - self.yv) ** 2).mean() / 2

    def A(self) -> Tensor:
        return self.X.T @ self.X / len(self.y) + torch.diag(self.lam)

    def theta_star(self) -> Tensor:
        return torch.linalg.solve(self.A(), self.X.T @ self.y / len(self.y))

    def exact(self) -> Tensor:
        t = self.theta_star()
        v = self.Xv.T @ (self.Xv @ t - self.yv) / len(self.yv)
        return -torch.linalg.solve(self.A(), v) * t

    def lr(self) -> float:
        return 1.0 / float(torch.linalg.eigvalsh(self.A()).max())

    def problem(self, theta: Tensor) -> BilevelProblem:
        return BilevelProblem(
            {"t": theta.clone()},
            {"lam": self.lam.clone()},
            self.inner,
            self.outer,
            SGD(lr=self.lr()),
        )

    def k_step_reference(self, theta0: Tensor, k: int) -> Tensor:
        """Autograd through an explicit loop: the exact gradient of the K-step objective."""
        lam = self.lam.clone().requires_grad_(True)
        t = theta0.clone().requires_grad_(True)
        for _ in range(k):
            (g,) = torch.autograd.grad(
                self.inner({"t": t}, {"lam": lam}, None), t, create_graph=True
            )
            t = t - self.lr() * g
        (grad,) = torch.autograd.grad(self.outer({"t": t}, {}, None), lam)
        return grad


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def accuracy_rows(quick: bool) -> list[dict[str, Any]]:
    r = Ridge()
    exact = r.exact()
    zero, star = torch.zeros_like(r.lam), r.theta_star()
    k_long = 300 if quick else 1000
    rows = []

    def add(method: str, setting: str, grad: Tensor, own: Tensor | None, seconds: float) -> None:
        rows.append(
            {
                "method": method,
                "setting": setting,
                "rel_error": rel(grad, exact),
                "rel_error_own_objective": rel(grad, own) if own is not None else None,
                "seconds": round(seconds, 4),
            }
        )

    for method, setting, theta, options in (
        ("implicit", "CG at theta*", star, {}),
        (
            "implicit",
            "Neumann (200 terms) at theta*",
            star,
            {"solver": "neumann", "alpha": r.lr(), "iterations": 200},
        ),
        ("unrolled", "K=100 from 0", zero, {"steps": 100}),
        ("unrolled", f"K={k_long} from 0", zero, {"steps": k_long}),
        ("forward", "K=100 from 0", zero, {"steps": 100}),
        ("first_order", "K=100 from 0", zero, {"steps": 100}),
        ("lookahead", "K=1 at theta*", star, {}),
        ("finite_difference", "K=1 at theta*", star, {}),
    ):
        result, seconds, _ = measure(
            lambda t=theta, m=method, o=options: hypergrad(
                r.problem(t), m, inner_batch=None, outer_batch=None, **o
            )
        )
        steps = options.get("steps", 1)
        own = None
        if method in ("unrolled", "forward", "lookahead", "finite_difference"):
            own = r.k_step_reference(theta, int(steps))
        add(method, setting, result.grads["lam"], own, seconds)
    return rows


# ----------------------------------------------------------------------------- 2. cost


def mlp(width: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(40, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    ).to(DEVICE)


Batch = tuple[Tensor, Tensor]


def classifier_problem(model: nn.Module) -> tuple[BilevelProblem, Batch, Batch]:
    net = functional(model)
    g = torch.Generator().manual_seed(1)
    train = (
        torch.randn(128, 40, generator=g).to(DEVICE),
        torch.randint(0, 10, (128,), generator=g).to(DEVICE),
    )
    meta = (
        torch.randn(128, 40, generator=g).to(DEVICE),
        torch.randint(0, 10, (128,), generator=g).to(DEVICE),
    )

    def inner(p: Params, h: Params, b: tuple[Tensor, Tensor]) -> Tensor:
        losses = F.cross_entropy(net(p, b[0]), b[1], reduction="none")
        return (F.softplus(h["class_logits"])[b[1]] * losses).mean()

    def outer(p: Params, h: Params, b: tuple[Tensor, Tensor]) -> Tensor:
        return F.cross_entropy(net(p, b[0]), b[1])

    hyper = {"class_logits": torch.zeros(10, device=DEVICE)}
    problem = BilevelProblem.from_module(
        model, hyper, inner, outer, SGD(lr=0.05, momentum=0.9, weight_decay=1e-3)
    )
    return problem, train, meta


def cost_options(method: str, k: int) -> dict[str, Any] | None:
    if method in ("lookahead", "finite_difference"):
        return {} if k == 1 else None
    if method == "implicit":
        return {"solver": "neumann", "alpha": 0.05, "iterations": k}
    return {"steps": k}


METHOD_NAMES = ("lookahead", "unrolled", "forward", "first_order", "implicit", "finite_difference")


def cost_rows(quick: bool) -> list[dict[str, Any]]:
    rows = []
    ks = (1, 5, 20, 100)
    widths = (64, 256) if quick else (64, 256, 1024)
    configs = [(256, k) for k in ks] + [(w, 5) for w in widths if w != 256]
    configs += [(w, 1) for w in widths if w != 256]
    for width, k in configs:
        model = mlp(width)
        problem, train, meta = classifier_problem(model)
        n_params = sum(p.numel() for p in model.parameters())
        for method in METHOD_NAMES:
            options = cost_options(method, k)
            if options is None:
                continue

            def call(
                m: str = method,
                o: dict[str, Any] = options,
                p: BilevelProblem = problem,
                t: Batch = train,
                q: Batch = meta,
            ) -> Any:
                return hypergrad(p, m, inner_batch=t, outer_batch=q, **o)

            call()  # warm-up
            _, seconds, mib = measure(call)
            rows.append(
                {
                    "method": method,
                    "K": k,
                    "width": width,
                    "params": n_params,
                    "seconds": round(seconds, 4),
                    "peak_mib": None if mib is None else round(mib, 1),
                }
            )
    return rows


# ----------------------------------------------------------------------------- 3. step timing


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    ).to(DEVICE)


def weight_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(1, 100), nn.ReLU(), nn.Linear(100, 1), nn.Sigmoid()).to(DEVICE)


class StepBench:
    """All variants share one CNN, one weighting net and fixed batches (timing only)."""

    def __init__(self) -> None:
        self.model, self.vnet = small_cnn(), weight_net()
        g = torch.Generator().manual_seed(2)
        self.x = torch.randn(128, 1, 28, 28, generator=g).to(DEVICE)
        self.y = torch.randint(0, 10, (128,), generator=g).to(DEVICE)
        self.xm = torch.randn(128, 1, 28, 28, generator=g).to(DEVICE)
        self.ym = torch.randint(0, 10, (128,), generator=g).to(DEVICE)
        self.lr = 0.1
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9)
        self.vopt = torch.optim.Adam(self.vnet.parameters(), lr=1e-3)
        net, vnet = functional(self.model), functional(self.vnet)
        self.problem = WeightedProblem(
            dict(self.model.named_parameters()),
            dict(self.vnet.named_parameters()),
            lambda p, b: F.cross_entropy(net(p, b[0]), b[1], reduction="none"),
            lambda h, losses, b: vnet(h, losses[:, None]).squeeze(1),
            lambda p, h, b: F.cross_entropy(net(p, b[0]), b[1]),
            SGD(lr=self.lr),
        )

    def _refresh(self) -> None:  # the parameters change between steps; keep the problem live
        self.problem.params = dict(self.model.named_parameters())
        self.problem.hyper = dict(self.vnet.named_parameters())

    def plain(self) -> None:
        self.opt.zero_grad()
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()

    def _hypergrad(self, method: str, **options: Any) -> Any:
        self._refresh()
        return hypergrad(
            self.problem,
            method,
            inner_batch=(self.x, self.y),
            outer_batch=(self.xm, self.ym),
            **options,
        )

    def fast(self, jvp_mode: str = "forward") -> Any:
        return self._hypergrad("lookahead", jvp_mode=jvp_mode)

    def generic_func(self) -> Any:
        return self._hypergrad("lookahead", fast=False)

    def first_order(self) -> Any:
        return self._hypergrad("first_order")

    def official(self) -> None:
        """MW-Net's published recipe: every step it builds a fresh meta model, loads the
        model's state, takes a differentiable virtual step (create_graph=True) and calls
        ``backward()``, which also fills second-order gradients for the meta model."""
        meta_model = small_cnn()
        meta_model.load_state_dict(self.model.state_dict())
        params = dict(meta_model.named_parameters())
        cost = F.cross_entropy(meta_model(self.x), self.y, reduction="none")
        w = self.vnet(cost.detach()[:, None]).squeeze(1)
        grads = torch.autograd.grad((w * cost).mean(), list(params.values()), create_graph=True)
        virtual = {k: p - self.lr * g for (k, p), g in zip(params.items(), grads, strict=True)}
        self.vnet.zero_grad()
        F.cross_entropy(functional_call(meta_model, virtual, self.xm), self.ym).backward()

    def create_graph(self) -> tuple[Tensor, ...]:
        """The same virtual step with create_graph=True, done efficiently: no model rebuild,
        and only the weighting net's gradient is asked for (autograd prunes the rest)."""
        params = dict(self.model.named_parameters())
        cost = F.cross_entropy(
            functional_call(self.model, params, self.x), self.y, reduction="none"
        )
        w = self.vnet(cost.detach()[:, None]).squeeze(1)
        grads = torch.autograd.grad((w * cost).mean(), list(params.values()), create_graph=True)
        virtual = {k: p - self.lr * g for (k, p), g in zip(params.items(), grads, strict=True)}
        meta_loss = F.cross_entropy(functional_call(self.model, virtual, self.xm), self.ym)
        return torch.autograd.grad(meta_loss, list(self.vnet.parameters()))

    def iteration_fast(self) -> None:
        """A whole MW-Net iteration on the fast path: the real step reuses the first forward."""
        result = self._hypergrad("lookahead", keep_graph=True)
        self.vopt.zero_grad()
        result.accumulate_into(self.vnet)
        self.vopt.step()
        losses = result.diagnostics["losses"].weighted
        with torch.no_grad():
            w = self.vnet(losses.detach()[:, None]).squeeze(1)
        self.opt.zero_grad()
        (w * losses).mean().backward()
        self.opt.step()

    def iteration_lagged(self) -> None:
        """The virtual step *is* the real step: one forward and one backward serve both, and
        the weighting net's update applies from the next step on (one step of lag)."""
        result = self._hypergrad("lookahead")
        self.vopt.zero_grad()
        result.accumulate_into(self.vnet)
        self.vopt.step()
        grads = result.diagnostics["inner_grads"]
        for n, p in self.model.named_parameters():
            p.grad = grads[n]
        self.opt.step()

    def iteration_official(self) -> None:
        self.official()
        self.vopt.step()
        cost = F.cross_entropy(self.model(self.x), self.y, reduction="none")
        with torch.no_grad():
            w = self.vnet(cost.detach()[:, None]).squeeze(1)
        self.opt.zero_grad()
        (w * cost).mean().backward()
        self.opt.step()


def step_variants(bench: StepBench) -> dict[str, Callable[[], Any]]:
    return {
        "plain step": bench.plain,
        "fast path (jvp)": bench.fast,
        "fast path (difference)": lambda: bench.fast("difference"),
        "generic lookahead, official MW-Net recipe": bench.official,
        "generic lookahead, create_graph (efficient)": bench.create_graph,
        "generic lookahead (torch.func)": bench.generic_func,
        "first_order": bench.first_order,
        "MW-Net iteration, fast path": bench.iteration_fast,
        "MW-Net iteration, official": bench.iteration_official,
        "MW-Net iteration, fast path, lagged": bench.iteration_lagged,
    }


def step_memory() -> dict[str, float | None]:
    """Peak extra memory of each variant (run after timing, in measuring malloc mode)."""
    bench = StepBench()
    peaks: dict[str, float | None] = {}
    for name, fn in step_variants(bench).items():
        fn()
        peaks[name] = measure(fn)[2]
    return peaks


def step_timing(quick: bool) -> dict[str, Any]:
    bench = StepBench()
    variants = step_variants(bench)
    for fn in variants.values():  # warm-up
        fn()
    rounds = 8 if quick else 30
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):  # interleaved, rotating order: drift hits every variant alike
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            variants[name]()
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    median = {n: statistics.median(t) for n, t in times.items()}
    plain = median["plain step"]
    rows = [
        {
            "variant": n,
            "median_ms": round(1000 * m, 2),
            "ratio_to_plain": round(m / plain, 2),
            "iqr_ms": round(
                1000
                * (statistics.quantiles(times[n], n=4)[2] - statistics.quantiles(times[n], n=4)[0]),
                2,
            ),
        }
        for n, m in median.items()
    ]
    fast = median["fast path (jvp)"]
    return {
        "rows": rows,
        "rounds": rounds,
        "ratio_fast_to_plain": round(fast / plain, 3),
        "ratio_generic_to_fast": round(
            median["generic lookahead, official MW-Net recipe"] / fast, 3
        ),
        "ratio_create_graph_to_fast": round(
            median["generic lookahead, create_graph (efficient)"] / fast, 3
        ),
        "ratio_meta_overhead_to_plain": round(
            (median["MW-Net iteration, fast path, lagged"] - plain) / plain, 3
        ),
        "ratio_generic_func_to_fast": round(median["generic lookahead (torch.func)"] / fast, 3),
        "ratio_difference_to_plain": round(median["fast path (difference)"] / plain, 3),
        "ratio_iteration_fast_to_plain": round(median["MW-Net iteration, fast path"] / plain, 3),
        "ratio_iteration_official_to_fast": round(
            median["MW-Net iteration, official"] / median["MW-Net iteration, fast path"], 3
        ),
        "ratio_iteration_lagged_to_plain": round(
            median["MW-Net iteration, fast path, lagged"] / plain, 3
        ),
    }


# ----------------------------------------------------------------------------- report


def table(rows: list[dict[str, Any]], title: str) -> str:
    keys = list(rows[0])
    out = [f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [
            f"{v:.2e}" if isinstance(v, float) and k.startswith("rel_error") else str(v)
            for k, v in r.items()
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller grids (< 60 s on 2 cores)")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    start = time.perf_counter()
    accuracy = accuracy_rows(args.quick)
    malloc_mode(measuring=True)
    cost = cost_rows(args.quick)
    malloc_mode(measuring=False)
    steps = step_timing(args.quick)
    malloc_mode(measuring=True)
    peaks = step_memory()
    for row in steps["rows"]:
        mib = peaks.get(row["variant"])
        row["peak_mib"] = None if mib is None else round(mib, 1)
    print(table(accuracy, "accuracy on ridge regression (closed-form hypergradient)"))
    print(table(cost, f"cost on an MLP classifier, batch 128 ({DEVICE.type})"))
    print(
        table(
            steps["rows"],
            f"per-sample-weighted step on a small CNN, batch 128 "
            f"(median of {steps['rounds']} interleaved rounds)",
        )
    )
    ratios = {k: v for k, v in steps.items() if k.startswith("ratio")}
    print("ratios:", json.dumps(ratios))
    elapsed = time.perf_counter() - start
    print(f"total {elapsed:.1f} s")
    if args.json:
        per_method: dict[str, dict[str, Any]] = {}
        for row in accuracy:
            best = per_method.get(row["method"])
            if best is None or row["rel_error"] < best["rel_error"]:
                per_method[row["method"]] = {
                    "rel_error": row["rel_error"],
                    "setting": row["setting"],
                }
        report = {
            "machine": {
                "device": str(DEVICE),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "platform": platform.platform(),
            },
            "quick": args.quick,
            "seconds": round(elapsed, 1),
            "methods": per_method,
            "accuracy": accuracy,
            "cost": cost,
            "step_timing": steps,
            **ratios,
            "provenance": provenance(),
        }
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
