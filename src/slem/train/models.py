"""Small reference models, chosen by input shape: an MLP for tables, a 1-D CNN for signals
(MNIST-1D), a 2-D CNN for images (Fashion-MNIST, digits). Any stock ``nn.Module`` that maps a
batch to ``(batch, n_classes)`` logits works with the trainers too: in Python pass it to
``make_trainer(..., model=...)``; in a config name its class, ``model: {arch:
"package.module:ClassName", kwargs: {...}}`` (:func:`build_model`)."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from slem.errors import SlemError
from slem.methodology.architecture import CellNetwork, resolve_genotype

Arch = Literal["auto", "mlp", "cnn1d", "cnn2d", "cell"]
Activation = Literal["relu", "tanh", "sigmoid", "gelu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}


def mlp(
    n_in: int,
    n_out: int,
    width: int = 64,
    depth: int = 2,
    dropout: float = 0.0,
    activation: Activation = "relu",
) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    d = n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), ACTIVATIONS[activation]()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        d = width
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers)


def cnn1d(channels: int, n_out: int, width: int = 32) -> nn.Module:
    """Three conv blocks with BatchNorm, then global average pooling (about 90% on clean
    MNIST-1D at width 32)."""

    def block(c_in: int, c_out: int, k: int) -> list[nn.Module]:
        return [nn.Conv1d(c_in, c_out, k, padding=k // 2), nn.BatchNorm1d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(channels, width, 5),
        *block(width, 2 * width, 3),
        nn.MaxPool1d(2),
        *block(2 * width, 2 * width, 3),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(2 * width, n_out),
    )


class ChannelsLast(nn.Module):
    """Lays a batch of images out channels-last (NHWC): convolutions, BatchNorm and pooling
    run about 1.5x faster that way on CPU, and the layout is free for one-channel inputs."""

    def forward(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last)


def cnn2d(channels: int, n_out: int, width: int = 32) -> nn.Module:
    """Two conv + max-pool + BatchNorm blocks and a third conv, global average pooling.

    Pooling comes straight after each convolution, before BatchNorm and ReLU (max-pooling
    commutes with the ReLU), so the memory-bound normalisation runs on a quarter of the
    pixels; with the channels-last layout a training step is about 2x faster on CPU than
    conv-BN-ReLU-pool in NCHW, at the same accuracy."""

    def block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
        conv: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1)]
        if pool:
            conv.append(nn.MaxPool2d(2))
        return [*conv, nn.BatchNorm2d(c_out), nn.ReLU()]

    net = nn.Sequential(
        ChannelsLast(),
        *block(channels, width, pool=True),
        *block(width, 2 * width, pool=True),
        *block(2 * width, 2 * width, pool=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, n_out),
    )
    return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


BUILTIN_ARCHS = ("auto", "mlp", "cnn1d", "cnn2d", "cell")
#: ``package.module:ClassName`` (a dotted module path, a colon, an attribute name)
CUSTOM_ARCH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
#: what slem passes a custom model's constructor when its signature names them
BUILD_ARGS = ("input_shape", "n_features", "n_outputs")


def check_arch(arch: str) -> str:
    """``arch`` if it is a built-in architecture or ``package.module:ClassName``.

    Raises:
        ValueError: neither (pydantic turns it into the config's one-line error).
    """
    if arch in BUILTIN_ARCHS or CUSTOM_ARCH.match(arch):
        return arch
    raise ValueError(
        f"unknown arch '{arch}'; use one of {', '.join(BUILTIN_ARCHS)}, or your own nn.Module "
        "class as 'package.module:ClassName'"
    )


def build_model(
    input_shape: tuple[int, ...],
    n_classes: int,
    arch: str = "auto",
    width: int = 32,
    depth: int = 2,
    dropout: float = 0.0,
    activation: Activation = "relu",
    kwargs: Mapping[str, Any] | None = None,
    genotype: str | None = None,
    cells: int = 1,
    stages: int = 2,
) -> nn.Module:
    """The model for inputs of ``input_shape`` (one sample, without the batch) and
    ``n_classes`` outputs (1 for regression): a reference model (``activation`` applies to
    the MLP), or a custom ``arch`` ``package.module:ClassName`` built as
    ``ClassName(**kwargs)`` plus whichever of ``input_shape`` (tuple), ``n_features`` (int,
    the flattened input size) and ``n_outputs`` (int) its signature names and ``kwargs``
    does not set. A custom module is imported from ``sys.path``, then from the working
    directory. ``cell``: the :class:`~slem.methodology.architecture.CellNetwork` of
    ``genotype`` (a searched architecture: its ``architecture.json`` or string form) with
    ``width`` channels, ``cells`` cells per stage and ``stages`` stages, for signals or images.

    Raises:
        SlemError: an unknown arch, a reference arch that does not fit the inputs, or a
            custom class that cannot be imported or built, or is not an ``nn.Module``.
    """
    if ":" in arch:
        return _custom_model(arch, dict(kwargs or {}), input_shape, n_classes)
    if arch == "auto":
        arch = {1: "mlp", 2: "cnn1d", 3: "cnn2d"}.get(len(input_shape), "mlp")
    if arch == "mlp":
        n_in = 1
        for s in input_shape:
            n_in *= s
        return mlp(n_in, n_classes, width, depth, dropout, activation)
    if arch == "cnn1d":
        if len(input_shape) != 2:
            raise SlemError(f"model.arch cnn1d needs (channels, length) inputs, got {input_shape}")
        return cnn1d(input_shape[0], n_classes, width)
    if arch == "cnn2d":
        if len(input_shape) != 3:
            raise SlemError(f"model.arch cnn2d needs (channels, h, w) inputs, got {input_shape}")
        return cnn2d(input_shape[0], n_classes, width)
    if arch == "cell":
        return _cell_network(input_shape, n_classes, genotype, width, cells, stages)
    raise SlemError(f"model.arch '{arch}' is unknown; use auto, mlp, cnn1d, cnn2d or cell")


def _cell_network(
    input_shape: tuple[int, ...],
    n_classes: int,
    genotype: str | None,
    width: int,
    cells: int,
    stages: int,
) -> nn.Module:
    if genotype is None:
        raise SlemError("model.arch cell needs model.genotype (an architecture.json)")
    if len(input_shape) not in (2, 3):
        raise SlemError(
            f"model.arch cell needs (channels, length) or (channels, h, w) inputs, got "
            f"{input_shape}"
        )
    cell = resolve_genotype(genotype)
    dims = len(input_shape) - 1
    return CellNetwork(
        input_shape[0],
        n_classes,
        genotype=cell,
        channels=width,
        cells=cells,
        stages=stages,
        dims=dims,
    )


def import_arch(arch: str) -> Any:
    """The class (or factory) ``package.module:ClassName`` names.

    Raises:
        SlemError: the module cannot be imported (or fails while importing), or has no such
            attribute.
    """
    module_name, _, attr = arch.partition(":")
    where = f"model.arch '{arch}'"
    try:
        module = _import(module_name)
    except ModuleNotFoundError as exc:
        raise SlemError(
            f"{where}: cannot import {module_name} ({exc}); install it or put it on "
            "PYTHONPATH (or run slem from the directory that holds it)"
        ) from None
    except Exception as exc:
        raise SlemError(
            f"{where}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None
    if not hasattr(module, attr):
        defined = sorted(
            n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
        )
        shown = f"; its nn.Module classes: {', '.join(defined[:10])}" if defined else ""
        raise SlemError(f"{where}: {module_name} has no '{attr}'{shown}")
    return getattr(module, attr)


def import_root(arch: str) -> str | None:
    """The directory a custom ``arch``'s top-level package was imported from (what
    ``sys.path`` needs to import it again, e.g. to predict from another directory); None for
    a reference arch or a module without a file."""
    if ":" not in arch:
        return None
    module_name = arch.partition(":")[0]
    module = sys.modules.get(module_name) or _import(module_name)
    file = getattr(module, "__file__", None)
    if file is None:
        return None
    path = os.path.abspath(file)
    depth = module_name.count(".") + (1 if os.path.basename(path) == "__init__.py" else 0)
    root = os.path.dirname(path)
    for _ in range(depth):
        root = os.path.dirname(root)
    return root


def with_import_root(root: str | None) -> None:
    """Make a custom model's module importable again from ``root`` (see
    :func:`import_root`), after ``sys.path`` and the working directory."""
    if root and root not in sys.path:
        sys.path.append(root)


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        top = module_name.split(".")[0]
        if exc.name != top or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)  # as `python -m` would find it
        return importlib.import_module(module_name)


def _custom_model(
    arch: str, kwargs: dict[str, Any], input_shape: tuple[int, ...], n_outputs: int
) -> nn.Module:
    factory = import_arch(arch)
    if not callable(factory):
        raise SlemError(f"model.arch '{arch}' is not a class or function")
    n_features = 1
    for s in input_shape:
        n_features *= s
    given = {"input_shape": tuple(input_shape), "n_features": n_features, "n_outputs": n_outputs}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    args = {k: v for k, v in given.items() if k in params and k not in kwargs}
    call = ", ".join(f"{k}={v!r}" for k, v in {**kwargs, **args}.items())
    try:
        model = factory(**kwargs, **args)
    except Exception as exc:
        raise SlemError(
            f"model.arch '{arch}': {arch.partition(':')[2]}({call}) failed: "
            f"{type(exc).__name__}: {exc}; fix model.kwargs"
        ) from None
    if not isinstance(model, nn.Module):
        raise SlemError(
            f"model.arch '{arch}' built a {type(model).__name__}, not a torch.nn.Module"
        )
    return model
