"""A model split at its output layer, for meta steps whose virtual step moves only that layer.

A one-step hypergradient of a per-sample weighting (MW-Net, Shu et al. 2019, Eq. 4-5) looks
ahead through a virtual step of *every* model parameter, which costs a forward and backward on
the training batch, a forward and backward on the meta batch at the looked-ahead parameters,
and a forward-mode pass (:func:`~slem.bilevel.weighted_lookahead`). Restricting the virtual
step to a subset of the layers is the approximation of FaMUS (Xu et al., "Faster Meta Update
Strategy for Noise-Robust Deep Learning", CVPR 2021, Sec. 3.2), which samples the layers; the
deterministic choice here is the output layer, whose input (the penultimate features) is
computed once: the body's forward on the training batch is the real step's own, the meta
batch's features come from one forward without a graph, and the whole bilevel problem (virtual
step, outer loss, forward-mode pass) then runs on the head alone, a linear layer of a few
thousand parameters. The result is the exact hypergradient of the head-only problem, and a
biased estimate of the whole model's (the body is held at ``theta`` in the lookahead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from slem.bilevel.problem import FunctionalModel, Params
from slem.errors import SlemError


class HeadSplit:
    """``module`` split at its last module with trainable parameters of its own (the head).

    ``run(call, x)`` evaluates the model through ``call`` (the module itself, a
    :class:`~slem.bilevel.FunctionalModel`, ...) and returns its output together with the head's
    input; ``head(params, features)`` is the head as a function of the model's parameters
    (named as in ``module.named_parameters()``; other names are ignored), so that
    ``head(params, run(call, x)[1])`` equals ``call(x)``.

    Raises:
        SlemError: the module has no trainable parameters; or (from :meth:`run`) the model's
            output is not the head's output (the head is not the last layer applied) or the
            head takes more than one tensor.
    """

    def __init__(self, module: nn.Module) -> None:
        last: tuple[str, nn.Module] | None = None
        for name, sub in module.named_modules():
            if any(p.requires_grad for p in sub.parameters(recurse=False)):
                last = (name, sub)
        if last is None:
            raise SlemError("the model has no trainable parameters to split off a head from")
        self.name, self.module = last
        self.prefix = f"{self.name}." if self.name else ""

    def names(self, params: Params) -> list[str]:
        """The names in ``params`` that belong to the head."""
        return [k for k in params if k.startswith(self.prefix)]

    def head_params(self, params: Params) -> Params:
        """The head's entries of the model's ``params`` (full names kept).

        Raises:
            SlemError: there are none (the head's parameters are tied to an earlier layer's,
                under whose name the model lists them, or frozen).
        """
        own = {k: params[k] for k in self.names(params)}
        if not own:
            raise SlemError(
                f"meta.scope head: the model's last layer '{self.name}' has no trainable "
                "parameters of its own (tied to another layer's, or frozen); set meta.scope "
                "model"
            )
        return own

    def head(self, params: Params, features: Tensor) -> Tensor:
        """The head applied to ``features`` ``(n, ...)`` with the head's entries of ``params``
        swapped in; ``(n, n_outputs)``."""
        own = {k[len(self.prefix) :]: v for k, v in params.items() if k.startswith(self.prefix)}
        out: Tensor = functional_call(self.module, own, (features,))
        return out

    def run(self, call: Callable[[Tensor], Any], x: Tensor) -> tuple[Tensor, Tensor]:
        """``call(x)`` and the head's input on the way: ``(output, features)``."""
        seen: dict[str, Any] = {}

        def hook(_: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            seen["inputs"], seen["output"] = inputs, output

        handle = self.module.register_forward_hook(hook)
        try:
            out = call(x)
        finally:
            handle.remove()
        inputs = seen.get("inputs")
        if inputs is None or seen["output"] is not out:
            raise SlemError(
                f"meta.scope head: the model's output is not the output of its last layer with "
                f"parameters ('{self.name or type(self.module).__name__}'); a model whose "
                "forward ends in that layer can use it, else set meta.scope model"
            )
        if len(inputs) != 1 or not isinstance(inputs[0], Tensor):
            raise SlemError(
                f"meta.scope head: the model's last layer '{self.name}' takes {len(inputs)} "
                "inputs; it needs one tensor (the features), else set meta.scope model"
            )
        return out, inputs[0]

    def features(self, model: FunctionalModel, params: Params, x: Tensor) -> Tensor:
        """The head's input for ``x`` at ``params`` (the model's, detached), without a graph:
        a functional call, so BatchNorm in train mode normalizes with the batch's statistics
        and its running statistics do not move (as in a whole-model lookahead)."""
        frozen = {k: v.detach() for k, v in params.items()}
        with torch.no_grad():
            return self.run(lambda t: model(frozen, t), x)[1]
