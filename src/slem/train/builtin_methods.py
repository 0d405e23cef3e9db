"""The built-in methods of :mod:`slem.train.methods`, one :func:`register` call each.

Baselines (ERM, robust losses, fine-tuning, forward correction), the meta-learned
methodologies (sample weighting: MW-Net, CMW-Net, CMW-Net-SL; a learning-rate schedule:
MLR-SNet; a learned optimizer; loss adjuster, transition and their joint bundle; regression's
HWnet) and ``apply``, which trains with any saved methodology frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from slem.data.task import Task
from slem.errors import SlemError
from slem.methodology import Methodology
from slem.methodology.regression import base_loss
from slem.train import losses as L
from slem.train.bundle import BundleTrainer
from slem.train.callbacks import Callback
from slem.train.config import TrainConfig
from slem.train.forward import ForwardTrainer
from slem.train.meta_trainer import MetaTrainer
from slem.train.methods import (
    Builder,
    Loss,
    MethodSpec,
    check_fits,
    get_method,
    register,
    spec_applying,
)
from slem.train.objective import Classification
from slem.train.online_hpo import OnlineHPOTrainer
from slem.train.regression import HWNetTrainer
from slem.train.schedule import ScheduleTrainer
from slem.train.threads import resolve_device
from slem.train.trainer import Trainer


def _baseline(cls: type[Trainer]) -> Builder:
    """The builder of a baseline trained by ``cls``: it takes no methodology."""

    def build(
        config: TrainConfig,
        task: Task,
        model: nn.Module | None,
        methodology: Methodology | None,
        callbacks: Sequence[Callback],
    ) -> Trainer:
        if methodology is not None:
            raise SlemError(
                f"method {config.method} takes no methodology; use method apply to train "
                "with a saved one"
            )
        return cls(config, task, model, None, callbacks)

    return build


def _learned_optimizer(
    config: TrainConfig,
    task: Task,
    model: nn.Module | None,
    methodology: Methodology | None,
    callbacks: Sequence[Callback],
) -> Trainer:
    """Phase two of method learned_optimizer: train with the meta-trained optimizer; phase
    one (meta-training on the population, :func:`meta_train_optimizer`) runs here, in memory,
    when no optimizer is given (the run writer runs it with checkpoints first)."""
    if methodology is None:
        from slem.methodology import freeze
        from slem.train.learned_optimizer import OptimizerMetaTrainer

        meta = OptimizerMetaTrainer(
            config.learned_optimizer, config.seed, resolve_device(config.device)
        )
        meta.fit(progress=False)
        methodology = freeze(meta.net)
    return Trainer(config, task, model, methodology, callbacks)


def _meta_train_optimizer(*args: Any) -> Methodology:
    from slem.train.run import meta_train_optimizer

    return meta_train_optimizer(*args)


def _apply(
    config: TrainConfig,
    task: Task,
    model: nn.Module | None,
    methodology: Methodology | None,
    callbacks: Sequence[Callback],
) -> Trainer:
    """Method apply: the trainer of the method that meta-learns the artifact's kind."""
    if methodology is None:
        raise SlemError(
            "method apply needs the frozen methodology (load it with "
            "slem.methodology.load_methodology)"
        )
    check_fits(config, task, methodology)  # the artifact's method's targets
    spec = spec_applying(methodology)
    build = spec.apply_build or spec.build
    return build(config, task, model, methodology, callbacks)


def _labels(trainer: Trainer) -> Classification:
    assert isinstance(trainer.objective, Classification)
    return trainer.objective


def _forward_epochs(config: TrainConfig) -> str | None:
    """Forward correction from anchors needs epochs after its warm-up."""
    c, epochs = config.loss, config.optim.epochs
    if c.forward_transition == "anchor" and c.forward_warmup_epochs >= epochs:
        return (
            f"loss.forward_warmup_epochs ({c.forward_warmup_epochs}) must be below "
            f"optim.epochs ({epochs}) so the corrected loss gets epochs"
        )
    return None


def _residual(kind: str) -> Loss:
    def loss(pred: Tensor, z: Tensor, trainer: Trainer) -> Tensor:
        return base_loss(kind, pred - z)

    return loss


def _huber(pred: Tensor, z: Tensor, trainer: Trainer) -> Tensor:
    from slem.train.regression import huber

    return huber(pred - z, trainer.config.loss.huber_delta)


def _hwnet_warmup(pred: Tensor, z: Tensor, trainer: Trainer) -> Tensor:
    return base_loss(trainer.config.hwnet.warmup_loss, pred - z)


CLEAN_OR_DAC = "set data.meta_per_class (e.g. 10) or a trusted file data.meta, or use " + (
    "meta.objective dac or selected"
)

register(
    MethodSpec(
        "erm", "empirical risk minimization: cross-entropy", "classification", _baseline(Trainer)
    )
)
register(
    MethodSpec(
        "gce",
        "generalized cross-entropy (Zhang & Sabuncu 2018), loss.gce_q",
        "classification",
        _baseline(Trainer),
        sections=("loss",),
        loss=lambda logits, y, t: L.gce(logits, y, t.config.loss.gce_q),
    )
)
register(
    MethodSpec(
        "sce",
        "symmetric cross-entropy (Wang et al. 2019), loss.sce_alpha and sce_beta",
        "classification",
        _baseline(Trainer),
        sections=("loss",),
        loss=lambda logits, y, t: L.sce(logits, y, t.config.loss.sce_alpha, t.config.loss.sce_beta),
    )
)
register(
    MethodSpec(
        "bootstrap",
        "bootstrapping (Reed et al. 2015), loss.bootstrap_beta and bootstrap_mode",
        "classification",
        _baseline(Trainer),
        sections=("loss",),
        loss=lambda logits, y, t: L.bootstrap(
            logits, y, t.config.loss.bootstrap_beta, t.config.loss.bootstrap_mode
        ),
    )
)
register(
    MethodSpec(
        "finetune",
        "cross-entropy, then loss.finetune_epochs on the clean meta set",
        "classification",
        _baseline(Trainer),
        sections=("loss",),  # loss.finetune_epochs, finetune_lr_factor
        meta_set="always",
        meta_set_reason="method finetune needs a clean meta set",
        finetune=True,
    )
)
register(
    MethodSpec(
        "class_balanced",
        "class-balanced cross-entropy (Cui et al. 2019), loss.cb_beta",
        "classification",
        _baseline(Trainer),
        sections=("loss",),  # loss.cb_beta (the objective's cb_weights)
        loss=lambda logits, y, t: L.class_balanced(logits, y, _labels(t).cb_weights),
    )
)
for _name, _summary in (
    ("mwnet", "meta-learned sample weights from the loss (MW-Net, Shu et al. 2019)"),
    ("cmwnet", "class-aware meta-weight net (CMW-Net, Shu et al. 2023)"),
    ("cmwnet_sl", "CMW-Net with label correction by an EMA teacher (CMW-Net-SL)"),
):
    register(
        MethodSpec(
            _name,
            _summary,
            "classification",
            MetaTrainer,
            sections=("meta",),  # the net, its meta step, normalization, the teacher
            meta_learns=(_name,),
            meta_step="engine",
            weighted_problem=True,
            cross_task=True,
            meta_set="objective",
            meta_set_hint=CLEAN_OR_DAC,
            applies=(_name,),
            apply_build=Trainer,
        )
    )
register(
    MethodSpec(
        "hypergradient",
        "learning rate and weight decay tuned online by hypergradients of the validation "
        "loss (RTHO, Franceschi et al. 2017)",
        "classification",
        _baseline(OnlineHPOTrainer),
        sections=("hypergradient",),
    )
)
register(
    MethodSpec(
        "lr_schedule",
        "meta-learned learning-rate schedule (MLR-SNet, Shu et al. 2022)",
        "classification",
        ScheduleTrainer,
        sections=("meta", "schedule"),  # meta.hypergrad; the net and its meta-training
        meta_learns=("lr_schedule",),
        meta_step="rate",
        cross_task=True,
        meta_set="always",
        meta_set_reason="method lr_schedule meta-learns on a held-out meta set",
        meta_set_hint="set data.meta_per_class (e.g. 50) or a trusted file data.meta",
        applies=("lr_schedule",),
    )
)
register(
    MethodSpec(
        "learned_optimizer",
        "coordinatewise LSTM optimizer meta-trained on a population (Andrychowicz et al. 2016)",
        "classification",
        _learned_optimizer,
        sections=("learned_optimizer",),  # its own meta-training (meta.* is refused)
        meta_learns=("learned_optimizer",),
        meta_step="truncated",
        meta_train=_meta_train_optimizer,
        applies=("learned_optimizer",),
        apply_build=Trainer,
    )
)
register(
    MethodSpec(
        "forward",
        "forward loss correction with an estimated transition (Patrini et al. 2017)",
        "classification",
        _baseline(ForwardTrainer),
        sections=("loss",),  # loss.forward_transition, forward_warmup_epochs, anchor_quantile
        check=_forward_epochs,
    )
)
#: what method joint reads whatever its components: its own section and the meta step's
JOINT_OWN = ("joint", "meta")


def _joint_sections(config: TrainConfig) -> tuple[str, ...]:
    """Method joint reads its own sections and those its chosen components read as methods of
    their own (mwnet and cmwnet: meta; loss_adjuster: adjuster; transition: transition;
    lr_schedule: schedule)."""
    parts = [s for c in config.joint.components for s in get_method(c).sections]
    return tuple(dict.fromkeys([*JOINT_OWN, *parts]))


for _name, _summary, _kinds, _sections in (
    (
        "loss_adjuster",
        "meta-learned per-sample robust-loss parameters",
        ("loss_adjuster",),
        ("meta", "adjuster"),
    ),
    (
        "transition",
        "meta-learned instance-dependent noise transition",
        ("transition",),
        ("meta", "transition"),
    ),
    (
        "joint",
        "several methodologies meta-learned together (joint.components)",
        ("bundle",),
        (*JOINT_OWN, "adjuster", "transition", "schedule"),
    ),
):
    register(
        MethodSpec(
            _name,
            _summary,
            "classification",
            BundleTrainer,
            sections=_sections,
            sections_in=_joint_sections if _name == "joint" else None,
            meta_learns=_kinds,
            meta_step="engine",
            # a transition net is sized to one task's inputs and classes; joint: not yet
            cross_task=_name == "loss_adjuster",
            meta_set="objective",
            meta_set_hint=CLEAN_OR_DAC,
            applies=_kinds,
            components=(
                (lambda config: list(config.joint.components)) if _name == "joint" else None
            ),
        )
    )
for _name, _summary, _loss, _reads in (
    ("mse", "squared error r^2/2 in robust target units", _residual("l2"), ()),
    ("l1", "absolute error in robust target units", _residual("l1"), ()),
    ("huber", "Huber loss, loss.huber_delta in robust target units", _huber, ("loss",)),
):
    register(
        MethodSpec(_name, _summary, "regression", _baseline(Trainer), sections=_reads, loss=_loss)
    )
register(
    MethodSpec(
        "hwnet",
        "meta-learned robust regression loss (hyper-weight net)",
        "regression",
        HWNetTrainer,
        sections=("meta", "hwnet"),
        meta_learns=("hwnet",),
        meta_step="engine",
        meta_set="objective",
        meta_set_hint=CLEAN_OR_DAC + " (regression: data.meta_size)",
        loss=_hwnet_warmup,
        applies=("hwnet",),
    )
)
register(
    MethodSpec(
        "apply",
        "train with a saved methodology frozen (methodology: its directory); no meta set",
        None,
        _apply,
        # the artifact; what the trainers read when they apply one: the sample weights'
        # normalization and label-correction teacher (meta), the schedule's snapshots (schedule)
        sections=("methodology", "meta", "schedule"),
        frozen_artifact=True,
    )
)
