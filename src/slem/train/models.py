"""Small reference models, chosen by input shape: an MLP for tables, a 1-D CNN for signals
(MNIST-1D), a 2-D CNN for images (Fashion-MNIST, digits). Any stock ``nn.Module`` that maps a
batch to ``(batch, n_classes)`` logits works with the trainers too."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from slem.errors import SlemError

Arch = Literal["auto", "mlp", "cnn1d", "cnn2d"]
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


def build_model(
    input_shape: tuple[int, ...],
    n_classes: int,
    arch: Arch = "auto",
    width: int = 32,
    depth: int = 2,
    dropout: float = 0.0,
    activation: Activation = "relu",
) -> nn.Module:
    """The reference model for inputs of ``input_shape`` (one sample, without the batch);
    ``activation`` applies to the MLP."""
    if arch == "auto":
        arch = {1: "mlp", 2: "cnn1d", 3: "cnn2d"}.get(len(input_shape), "mlp")  # type: ignore[assignment]
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
    raise SlemError(f"model.arch '{arch}' is unknown; use auto, mlp, cnn1d or cnn2d")
