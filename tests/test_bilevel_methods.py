"""Every method against central finite differences on a small MLP with BatchNorm (float64),
the BatchNorm buffer policy, optimizer parity with torch.optim, and error messages."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.bilevel import SGD, Adam, BilevelProblem, Params, functional, hypergrad
from slem.errors import SlemError
from tests.conftest import central_difference

pytestmark = pytest.mark.usefixtures("float64")
F64 = torch.float64
N, D, C = 24, 4, 3


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, C)).double()


def data(seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=g, dtype=F64), torch.randint(0, C, (N,), generator=g)


TRAIN, META = data(1), data(2)


class Setup:
    """Class weights ``softplus(h)`` on the inner cross-entropy; plain CE outside.

    ``warm`` real optimizer steps first give the optimizer a state to carry into the virtual
    steps (Adam's first step is ``sign(g)``, whose hypergradient is ~0: a vacuous check).
    """

    def __init__(
        self, model: nn.Module, optimizer: object, lr_hyper: bool = False, warm: int = 0
    ) -> None:
        self.model = model
        self.net = functional(model)
        self.optimizer = optimizer
        self.lr_hyper = lr_hyper
        self.state = None
        if warm:
            params = {n: p.detach() for n, p in model.named_parameters()}
            state = optimizer.init(params)  # type: ignore[attr-defined]
            for _ in range(warm):
                ps = {n: p.clone().requires_grad_(True) for n, p in params.items()}
                loss = self.inner_loss(ps, {"h": H0}, TRAIN)
                g = dict(zip(ps, torch.autograd.grad(loss, list(ps.values())), strict=True))
                params, state = optimizer.update(params, g, state, {"h": H0})  # type: ignore[attr-defined]
                params = {n: p.detach() for n, p in params.items()}
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(params[n])
            self.state = state

    def inner_loss(self, params: Params, hyper: Params, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        losses = F.cross_entropy(self.net(params, x), y, reduction="none")
        if self.lr_hyper:
            return losses.mean()
        return (F.softplus(hyper["h"])[y] * losses).mean()

    def outer_loss(self, params: Params, hyper: Params, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(params, x), y)

    def problem(self, hyper: Tensor) -> BilevelProblem:
        return BilevelProblem.from_module(
            self.model,
            {"h": hyper},
            self.inner_loss,
            self.outer_loss,
            self.optimizer,
            optimizer_state=self.state,
        )


def finite_difference_grad(f: Callable[[Tensor], float], h: Tensor, step: float = 1e-5) -> Tensor:
    return central_difference(f, h, step)


def k_step_objective(setup: Setup, k: int, frozen_prefix: int = 0, h0: Tensor | None = None):
    """Reference: k plain optimizer steps (the first ``frozen_prefix`` at ``h0``), then the
    outer loss, with torch.optim semantics written out by hand."""

    def f(h: Tensor) -> float:
        params = {n: p.detach().clone() for n, p in setup.model.named_parameters()}
        state = setup.state if setup.state is not None else setup.optimizer.init(params)
        for t in range(k):
            hyper = {"h": h0 if t < frozen_prefix and h0 is not None else h}
            ps = {n: p.clone().requires_grad_(True) for n, p in params.items()}
            grads = torch.autograd.grad(setup.inner_loss(ps, hyper, TRAIN), list(ps.values()))
            g = dict(zip(ps, grads, strict=True))
            params, state = setup.optimizer.update(params, g, state, hyper)
            params = {n: p.detach() for n, p in params.items()}
        return float(setup.outer_loss(params, {"h": h}, META))

    return f


H0 = torch.tensor([0.3, -0.2, 0.5], dtype=F64)


def close(a: Tensor, b: Tensor, tol: float) -> None:
    assert float((a - b).norm() / b.norm()) < tol, (a, b)


@pytest.mark.parametrize("method", ["lookahead", "finite_difference"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_one_step_methods_vs_finite_differences(method: str, opt: str) -> None:
    optimizer = SGD(lr=0.3, momentum=0.9, weight_decay=1e-3) if opt == "sgd" else Adam(lr=0.05)
    setup = Setup(make_model(), optimizer, warm=3)
    reference = finite_difference_grad(k_step_objective(setup, 1), H0)
    options = {"epsilon": 1e-4} if method == "finite_difference" else {}
    result = hypergrad(setup.problem(H0), method, inner_batch=TRAIN, outer_batch=META, **options)
    close(result.grads["h"], reference, 1e-6)


@pytest.mark.parametrize("method", ["unrolled", "forward"])
def test_k_step_methods_vs_finite_differences(method: str) -> None:
    setup = Setup(make_model(), SGD(lr=0.3, momentum=0.5))
    reference = finite_difference_grad(k_step_objective(setup, 4), H0)
    result = hypergrad(setup.problem(H0), method, inner_batch=TRAIN, outer_batch=META, steps=4)
    close(result.grads["h"], reference, 1e-6)


def test_truncated_unrolling_is_the_gradient_of_the_last_steps() -> None:
    setup = Setup(make_model(), SGD(lr=0.3))
    reference = finite_difference_grad(k_step_objective(setup, 4, frozen_prefix=2, h0=H0), H0)
    result = hypergrad(
        setup.problem(H0), "unrolled", inner_batch=TRAIN, outer_batch=META, steps=4, truncate=2
    )
    close(result.grads["h"], reference, 1e-6)
    full = hypergrad(setup.problem(H0), "unrolled", inner_batch=TRAIN, outer_batch=META, steps=4)
    same = hypergrad(
        setup.problem(H0), "unrolled", inner_batch=TRAIN, outer_batch=META, steps=4, truncate=4
    )
    close(same.grads["h"], full.grads["h"], 1e-12)


def test_first_order_is_exact_for_a_learning_rate_hyperparameter() -> None:
    model = make_model()
    setup = Setup(model, SGD(lr=lambda h: h["h"].exp()), lr_hyper=True)
    log_lr = torch.tensor([-1.0])
    reference = finite_difference_grad(k_step_objective(setup, 1), log_lr)
    result = hypergrad(setup.problem(log_lr), "first_order", inner_batch=TRAIN, outer_batch=META)
    close(result.grads["h"], reference, 1e-6)


def test_implicit_vs_finite_differences_at_the_inner_optimum() -> None:
    """BatchNorm on the inputs (a hidden Linear->BN is scale-invariant, and with weight decay
    gradient descent never settles); the optimum is polished by Newton's method so the
    finite differences of the trained-to-convergence objective are exact to ~1e-9."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(D), nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, C)).double()
    wd = 0.05
    setup = Setup(model, SGD(lr=0.3, momentum=0.9, weight_decay=wd))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def unflat(v: Tensor) -> Params:
        return {n: t.view(s) for n, t, s in zip(names, v.split(sizes), shapes, strict=True)}

    def objective(v: Tensor, h: Tensor) -> Tensor:
        return setup.inner_loss(unflat(v), {"h": h}, TRAIN) + 0.5 * wd * (v * v).sum()

    def optimum(h: Tensor, v: Tensor, descend: int = 0) -> Tensor:
        buf = torch.zeros_like(v)
        for _ in range(descend):  # heavy ball into the basin, then Newton
            buf = 0.9 * buf + torch.func.grad(objective)(v, h)
            v = v - 0.3 * buf
        for _ in range(6):
            g = torch.func.grad(objective)(v, h)
            v = v - torch.linalg.solve(torch.func.hessian(objective)(v, h), g)
        return v

    v_star = optimum(H0, torch.cat([p.detach().reshape(-1) for p in model.parameters()]), 800)
    assert float(torch.func.grad(objective)(v_star, H0).norm()) < 1e-10

    def converged_objective(h: Tensor) -> float:
        return float(setup.outer_loss(unflat(optimum(h, v_star)), {"h": h}, META))

    reference = finite_difference_grad(converged_objective, H0, step=1e-5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(unflat(v_star)[n])
    result = hypergrad(setup.problem(H0), "implicit", inner_batch=TRAIN, outer_batch=META)
    close(result.grads["h"], reference, 1e-6)  # (the Neumann solver is checked on ridge)


def test_batchnorm_policy_virtual_steps_never_touch_running_statistics() -> None:
    model = make_model()
    model(TRAIN[0])  # one real step's forward: running stats move once
    before = {n: b.clone() for n, b in model.named_buffers()}
    setup = Setup(model, SGD(lr=0.3, momentum=0.9))
    for method, options in (
        ("lookahead", {}),
        ("unrolled", {"steps": 3}),
        ("forward", {}),
        ("first_order", {}),
        ("finite_difference", {}),
        ("implicit", {"solver": "neumann", "alpha": 0.1, "iterations": 3}),
    ):
        hypergrad(setup.problem(H0), method, inner_batch=TRAIN, outer_batch=META, **options)
        for n, b in model.named_buffers():
            assert torch.equal(b, before[n]), f"{method} changed buffer {n}"
    # in train mode the virtual forward uses batch statistics, as the real step will
    params = {n: p.detach() for n, p in model.named_parameters()}
    with torch.no_grad():
        virtual = float(setup.outer_loss(params, {}, META))
        expected = F.cross_entropy(model(META[0]), META[1])  # a real forward (moves stats)
    assert virtual == pytest.approx(float(expected), rel=1e-12)
    # in eval mode it reads the running statistics
    model.eval()
    with torch.no_grad():
        expected_eval = F.cross_entropy(model(META[0]), META[1])
        assert float(setup.outer_loss(params, {}, META)) == pytest.approx(
            float(expected_eval), rel=1e-12
        )


def test_adam_through_a_differentiable_step_has_no_nan() -> None:
    """A coordinate at its optimum has a gradient that is exactly zero yet depends on ``h``:
    reverse mode reaches sqrt(v) at v = 0, whose derivative is infinite."""

    def inner(params: Params, hyper: Params, batch: object) -> Tensor:
        return (hyper["h"] * (params["t"] - 1.0) ** 2).sum()

    def outer(params: Params, hyper: Params, batch: object) -> Tensor:
        return (params["t"] ** 2).sum()

    for eps_root, expect_nan in ((1e-16, False), (0.0, True)):
        problem = BilevelProblem(
            {"t": torch.tensor([1.0, 3.0])},
            {"h": torch.tensor(0.7)},
            inner,
            outer,
            Adam(lr=0.1, eps_root=eps_root),
        )
        g = hypergrad(problem, "unrolled", inner_batch=None, outer_batch=None, steps=3).grads["h"]
        assert bool(torch.isnan(g).any()) == expect_nan, (eps_root, g)
        if not expect_nan:
            assert float(g.abs()) > 0  # the live coordinate still carries a hypergradient


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (
            SGD(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
        ),
        (
            SGD(lr=0.1, momentum=0.9, dampening=0.1),
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1),
        ),
        (
            Adam(lr=0.01, weight_decay=0.01),
            lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01),
        ),
        (
            Adam(lr=0.01, weight_decay=0.1, decoupled=True),
            lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
        ),
    ],
)
def test_optimizers_match_torch_optim(
    ours: object, theirs: Callable[..., torch.optim.Optimizer]
) -> None:
    model = make_model()
    reference = make_model()
    opt = theirs(reference.parameters())
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = ours.init(params)  # type: ignore[attr-defined]
    for step in range(5):
        x, y = data(10 + step)
        opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        opt.step()
        ps = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        loss = F.cross_entropy(functional(model)(ps, x), y)
        grads = dict(zip(ps, torch.autograd.grad(loss, list(ps.values())), strict=True))
        params, state = ours.update(params, grads, state, {})  # type: ignore[attr-defined]
        params = {n: p.detach() for n, p in params.items()}
    for n, p in reference.named_parameters():
        torch.testing.assert_close(params[n], p.detach(), rtol=1e-7, atol=1e-9)


def test_torch_optimizer_state_carries_into_virtual_steps() -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(model(TRAIN[0]), TRAIN[1]).backward()
    opt.step()
    sgd = SGD(lr=0.1, momentum=0.9)
    state = sgd.state_from_torch(opt, dict(model.named_parameters()))
    assert set(state["momentum"]) == {n for n, _ in model.named_parameters()}
    setup = Setup(model, sgd)
    problem = setup.problem(H0)
    problem.optimizer_state = state
    with_state = hypergrad(problem, "lookahead", inner_batch=TRAIN, outer_batch=META)
    problem.optimizer_state = None
    without = hypergrad(problem, "lookahead", inner_batch=TRAIN, outer_batch=META)
    assert not torch.allclose(with_state.grads["h"], without.grads["h"])


def test_maml_initialization_as_hyperparameter() -> None:
    """initial_params makes theta_0 a function of phi; first_order is then FOMAML."""
    setup = Setup(make_model(), SGD(lr=0.3), lr_hyper=True)
    init = {n: p.detach().clone() for n, p in setup.model.named_parameters()}
    problem = BilevelProblem(
        init,
        {k: v.clone() for k, v in init.items()},
        setup.inner_loss,
        setup.outer_loss,
        SGD(lr=0.3),
        initial_params=lambda h: h,
    )
    maml = hypergrad(problem, "unrolled", inner_batch=TRAIN, outer_batch=META, steps=2)
    fomaml = hypergrad(problem, "first_order", inner_batch=TRAIN, outer_batch=META, steps=2)
    # FOMAML's gradient is the outer gradient at the adapted parameters
    adapted = fomaml.params
    assert adapted is not None
    outer_grad = torch.func.grad(setup.outer_loss)(adapted, {}, META)
    for k in init:
        torch.testing.assert_close(fomaml.grads[k], outer_grad[k])
    assert any(not torch.allclose(maml.grads[k], fomaml.grads[k]) for k in init)


def test_errors_are_clear() -> None:
    setup = Setup(make_model(), SGD(lr=0.1))
    problem = setup.problem(H0)
    with pytest.raises(SlemError, match="unknown hypergradient method 'lookahed'"):
        hypergrad(problem, "lookahed", inner_batch=TRAIN, outer_batch=META)
    with pytest.raises(SlemError, match="exactly one of inner_batch"):
        hypergrad(problem, "lookahead", outer_batch=META)
    with pytest.raises(SlemError, match=r"truncate must be in 1\.\.3"):
        hypergrad(problem, "unrolled", inner_batch=TRAIN, outer_batch=META, steps=3, truncate=5)
    with pytest.raises(SlemError, match="unexpected keyword argument 'stesp'"):
        hypergrad(problem, "unrolled", inner_batch=TRAIN, outer_batch=META, stesp=3)
    with pytest.raises(SlemError, match="use unrolled"):
        hypergrad(problem, "forward", inner_batch=TRAIN, outer_batch=META, max_directions=2)
    with pytest.raises(SlemError, match="non-positive curvature"):
        neg = BilevelProblem(
            {"t": torch.ones(2)},
            {"h": torch.tensor(1.0)},
            lambda p, h, b: -h["h"] * (p["t"] ** 2).sum(),
            lambda p, h, b: p["t"].sum(),
            SGD(lr=0.1),
        )
        hypergrad(neg, "implicit", inner_batch=None, outer_batch=None)
    with pytest.raises(SlemError, match="must be floating point"):
        BilevelProblem(
            {"t": torch.ones(2, dtype=torch.int64)},
            {"h": torch.tensor(1.0)},
            setup.inner_loss,
            setup.outer_loss,
            SGD(lr=0.1),
        )


def test_forward_mode_vectorized_and_fallback_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    setup = Setup(make_model(), SGD(lr=0.3, momentum=0.5))
    fast = hypergrad(setup.problem(H0), "forward", inner_batch=TRAIN, outer_batch=META, steps=3)
    assert fast.diagnostics["vectorized"]

    def no_vmap(*args: object, **kwargs: object) -> object:
        raise RuntimeError("no batching rule")

    monkeypatch.setattr("slem.bilevel.methods.vmap", no_vmap)
    slow = hypergrad(setup.problem(H0), "forward", inner_batch=TRAIN, outer_batch=META, steps=3)
    assert not slow.diagnostics["vectorized"]
    close(slow.grads["h"], fast.grads["h"], 1e-12)
