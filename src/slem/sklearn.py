"""scikit-learn estimators: slem's methods behind ``fit`` / ``predict`` / ``score``.

Each estimator builds a :class:`~slem.data.Task` from the arrays given to ``fit``
(:meth:`Task.from_arrays <slem.data.Task.from_arrays>`), trains the slem method on it
(:func:`~slem.train.make_trainer`) and keeps the trained model for ``predict``:

- :class:`MWNetClassifier`: meta-learned sample weights from the loss (MW-Net: Shu et al.,
  "Meta-Weight-Net: learning an explicit mapping for sample weighting", NeurIPS 2019),
  method ``mwnet``.
- :class:`CMWNetClassifier`: class-aware meta-weight net, conditioned on the size group of
  each sample's class (CMW-Net: Shu et al., IEEE TPAMI 45, 11521-39, 2023), method ``cmwnet``.
- :class:`SLeMClassifier`: trains with a saved methodology applied frozen (a rule of the zoo,
  ``zoo:label-noise``, an artifact directory, or a methodology in memory such as a fitted
  :class:`MWNetClassifier`'s ``methodology_``): no meta set, no meta-learning, the cost of
  plain training; method ``apply``.
- :class:`HWNetRegressor`: regression with a meta-learned robust loss (the hyper-weight net
  HWnet: Rui, Cao, Shu et al., arXiv:2301.06081), method ``hwnet``.
- :class:`ERMClassifier`: the same network trained by plain cross-entropy (method ``erm``),
  the baseline to compare with.

They follow the scikit-learn contract (``check_estimator`` passes; tested with
``parametrize_with_checks`` in ``tests/test_sklearn.py``): ``__init__`` only stores the
hyperparameters, ``get_params`` / ``set_params`` / ``clone`` work, inputs are validated
(NumPy arrays, lists, pandas DataFrames with numeric columns; NaN or infinite values are
refused: put a ``SimpleImputer`` in front), ``n_features_in_`` and ``feature_names_in_`` are
set, class labels may be any sortable values (strings stay strings: ``classes_`` holds them
and ``predict`` returns them), and a fit is deterministic for an integer ``random_state``.

How ``fit`` splits the data. A slem task has a training split, a validation split
(``val_fraction`` of the samples, stratified by class; it picks the epoch whose weights
``predict`` uses, see ``keep_best``), a test split and, for the meta-learned methods, a meta
set. The estimators have no test split of their own (score them on your held-out data): the
task's test split is one row of ``X``, and ``summary_`` leaves its metrics out. The meta set is
``X_meta``/``y_meta`` when given to ``fit`` (trusted samples, kept out of training); without
one the classifiers meta-learn by DAC-MR (no meta set, no clean labels), unless
``meta_objective`` asks for a meta set drawn from ``X`` (``meta_per_class`` samples per
class, labels as given), and the regressor draws ``meta_size`` samples from ``X``.

Small data are handled, not refused: a drawn meta set takes at most half of the smallest
class (a quarter of the rows for regression; with fewer than 8 rows the regressor uses
DAC-MR instead), and a validation split that comes out empty leaves ``predict`` the last
epoch's weights. What cannot be trained is a ``ValueError``: fewer than 2 classes, a class
with a single sample (every class needs at least 2), a single sample for regression.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d, validate_data
from torch import nn

from slem import zoo
from slem.data.task import Normalizer, Task
from slem.errors import SlemError
from slem.methodology import Methodology, freeze, load_frozen
from slem.train.config import TrainConfig, set_dotted
from slem.train.meta_test import apply_config
from slem.train.methods import make_trainer
from slem.train.threads import set_threads
from slem.train.trainer import Trainer

__all__ = [
    "CMWNetClassifier",
    "ERMClassifier",
    "HWNetRegressor",
    "MWNetClassifier",
    "SLeMClassifier",
]

#: rows per forward pass in predict
PREDICT_BATCH = 4096
#: a model factory: (number of input features, number of outputs) -> the network
ModelFactory = Callable[[int, int], nn.Module]
OBJECTIVES = ("auto", "clean", "dac", "clean+dac", "selected")


class _SLeMEstimator(BaseEstimator):  # type: ignore[misc]
    """What every estimator shares: the config, the task, training, prediction. Subclasses
    set ``_method`` and implement :meth:`_targets` (encoding ``y``) and the meta set."""

    _method: str = "erm"
    _task_type: Literal["classification", "regression"] = "classification"

    # ------------------------------------------------------------------ fit

    def _fit(self, X: Any, y: Any, X_meta: Any = None, y_meta: Any = None) -> Any:
        X, y = validate_data(
            self, X, y, dtype=np.float32, y_numeric=self._task_type != "classification"
        )
        if (X_meta is None) != (y_meta is None):
            raise ValueError("X_meta and y_meta must be given together")
        y_enc = self._targets(y, reset=True)
        meta: dict[str, Any] = {}
        if X_meta is not None:
            Xm = check_array(X_meta, dtype=np.float32)
            if Xm.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X_meta has {Xm.shape[1]} features, but X has {self.n_features_in_}; "
                    "the meta set needs the same features"
                )
            ym = column_or_1d(check_array(y_meta, ensure_2d=False, dtype=None), warn=True)
            if len(ym) != len(Xm):
                raise ValueError(f"X_meta has {len(Xm)} rows but y_meta has {len(ym)}")
            meta = {"x_meta": Xm, "y_meta": self._targets(ym, reset=False, what="y_meta")}
        seed = self._seed()
        objective, meta = self._meta_options(y_enc, meta)
        task = self._task(X, y_enc, meta, seed)
        config = self._config(seed, objective, task)
        with _torch_threads(self.threads), torch.random.fork_rng(devices=[]):
            trainer = self._trainer(config, task)
            result = trainer.fit(progress=bool(self.verbose))
        self._keep(trainer, result.summary, result.history, objective)
        return self

    def _seed(self) -> int:
        """``random_state`` as slem's seed: an int is used as it is, None or a RandomState
        draws one."""
        rs = self.random_state
        if isinstance(rs, int | np.integer) and not isinstance(rs, bool):
            return int(rs)
        return int(check_random_state(rs).randint(np.iinfo(np.int32).max))

    def _meta_options(
        self, y: np.ndarray, meta: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        """The meta objective and the Task's meta-set options (no meta set by default)."""
        return None, meta

    def _task(self, X: np.ndarray, y: np.ndarray, meta: dict[str, Any], seed: int) -> Task:
        # the test split is required by a Task: one row of X (its metrics are left out)
        try:
            return Task.from_arrays(
                X,
                y,
                x_test=X[:1],
                y_test=y[:1],
                task_type=self._task_type,
                class_names=self._class_names(),
                name=type(self).__name__,
                val_fraction=self.val_fraction,
                normalize=bool(self.standardize),
                seed=seed,
                **meta,
            )
        except SlemError as exc:
            raise ValueError(f"{type(self).__name__}: {exc}") from None

    def _class_names(self) -> list[str] | None:
        return None

    def _base_values(self, seed: int) -> dict[str, Any]:
        """The config mapping of the common hyperparameters."""
        return {
            "method": self._method,
            "model": {"width": self.width, "depth": self.depth},
            "optim": {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr},
            "seed": seed,
            "device": self.device,
            "threads": self.threads,
        }

    def _config(self, seed: int, objective: str | None, task: Task) -> TrainConfig:
        return self._validated(self._base_values(seed))

    def _validated(self, values: dict[str, Any]) -> TrainConfig:
        """``values`` with ``overrides`` applied, as a TrainConfig (a ValueError naming the
        field otherwise)."""
        overrides = self.overrides or {}
        if not isinstance(overrides, Mapping):
            raise ValueError(
                "overrides must be a mapping of dotted TrainConfig keys to values, e.g. "
                f"{{'meta.hidden': 50}}, not {type(overrides).__name__}"
            )
        for key, value in overrides.items():
            set_dotted(values, str(key), value, f"overrides[{key!r}]")
        try:
            return TrainConfig(**values)
        except SlemError as exc:
            raise ValueError(f"{type(self).__name__}: {exc}") from None

    def _trainer(self, config: TrainConfig, task: Task) -> Trainer:
        try:
            return make_trainer(config, task, model=self._new_model(task))
        except SlemError as exc:
            raise ValueError(f"{type(self).__name__}: {exc}") from None

    def _new_model(self, task: Task) -> nn.Module | None:
        """The network to train: a copy of ``model`` (a module), ``model(n_features,
        n_outputs)`` (a factory), or None (slem's MLP of ``width`` x ``depth``)."""
        if self.model is None:
            return None
        if isinstance(self.model, nn.Module):
            return copy.deepcopy(self.model)
        if callable(self.model):
            n_out = task.n_classes if task.is_classification else 1
            built = self.model(self.n_features_in_, n_out)
            if not isinstance(built, nn.Module):
                raise ValueError(
                    f"model(n_features, n_outputs) returned {type(built).__name__}, not an "
                    "nn.Module"
                )
            return built
        raise ValueError(
            "model must be None, an nn.Module or a function (n_features, n_outputs) -> "
            f"nn.Module, not {type(self.model).__name__}"
        )

    def _keep(
        self,
        trainer: Trainer,
        summary: dict[str, Any],
        history: list[dict[str, Any]],
        objective: str | None,
    ) -> None:
        """The fitted attributes: the model (best validation epoch's weights with
        ``keep_best``), the normalizer, the methodology, the run's summary and history."""
        model = trainer.model
        best = trainer.progress.best
        epochs = len(history)
        self.best_epoch_ = epochs
        if self.keep_best and best.get("state") is not None and len(trainer.task.val) > 0:
            model.load_state_dict(best["state"])
            self.best_epoch_ = int(best["epoch"])
        self.model_ = model.cpu().eval()
        self.normalizer_: Normalizer | None = trainer.task.normalizer
        net = trainer.methodology
        self.methodology_ = net.cpu().eval() if net is not None else None
        self.history_ = [dict(row) for row in history]
        hidden = ("splits", "test_labels")
        self.summary_ = {
            k: v for k, v in summary.items() if not k.startswith("test_") and k not in hidden
        }
        self.n_meta_ = len(trainer.task.meta) if trainer.task.meta is not None else 0
        self.meta_objective_ = objective
        objective_of = getattr(trainer, "objective", None)
        self._y_center = float(getattr(objective_of, "y_center", 0.0))
        self._y_scale = float(getattr(objective_of, "y_scale", 1.0))

    # ------------------------------------------------------------------ predict

    def _outputs(self, X: Any) -> np.ndarray:
        """The model's outputs on ``X`` (rows standardized as in training), float64, in eval
        mode, in batches of :data:`PREDICT_BATCH` rows on the CPU."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        if self.normalizer_ is not None:
            X = self.normalizer_(X)
        model = self.model_
        model.eval()
        # float64: a row's output does not depend on the other rows of its batch (float32
        # kernels sum in an order that does), at the round-off of the trained float32 model
        tensors = {
            **dict(model.named_parameters()),
            **dict(model.named_buffers()),
        }
        tensors = {k: v.double() if v.is_floating_point() else v for k, v in tensors.items()}
        out = []
        with _torch_threads(self.threads), torch.no_grad():
            x = torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float64)
            for i in range(0, len(x), PREDICT_BATCH):
                o = torch.func.functional_call(model, tensors, (x[i : i + PREDICT_BATCH],))
                out.append(o.reshape(len(o), -1))
        if not out:
            return np.zeros((0, 1))
        return torch.cat(out).numpy()

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Torch's thread count set to ``threads`` (None: slem's default) and put back after."""
    before = torch.get_num_threads()
    try:
        set_threads(threads)
    except SlemError as exc:
        raise ValueError(str(exc)) from None
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class _Classifier(ClassifierMixin, _SLeMEstimator):  # type: ignore[misc]
    """Class labels: encoding, ``predict``, ``predict_proba``, ``predict_log_proba``."""

    def _targets(self, y: np.ndarray, reset: bool, what: str = "y") -> np.ndarray:
        if reset:
            check_classification_targets(y)
            classes, encoded = np.unique(y, return_inverse=True)
            if len(classes) < 2:
                raise ValueError(
                    f"{type(self).__name__} needs samples of at least 2 classes in y; got "
                    f"{len(classes)} class ({classes[0]!r})"
                )
            counts = np.bincount(encoded)
            if counts.min() < 2:
                rare = classes[int(np.argmin(counts))]
                raise ValueError(
                    f"class {rare!r} has 1 sample in y; {type(self).__name__} needs at least "
                    "2 per class (drop or merge rare classes)"
                )
            self.classes_ = classes
            return encoded.astype(np.int64)
        known = np.isin(y, self.classes_)
        if not known.all():
            raise ValueError(
                f"{what} holds labels that y does not: {np.unique(np.asarray(y)[~known])[:5]!r}"
            )
        return np.searchsorted(self.classes_, y).astype(np.int64)

    def _class_names(self) -> list[str] | None:
        return [str(c) for c in self.classes_]

    def fit(self, X: Any, y: Any, X_meta: Any = None, y_meta: Any = None) -> Any:
        """Train on ``X`` (shape ``(n_samples, n_features)``, numeric) and class labels ``y``
        (shape ``(n_samples,)``, any sortable values; they may be noisy).

        ``X_meta``, ``y_meta``: an optional trusted meta set (same features, labels among
        ``y``'s), used by the meta-learned methods and kept out of training.

        Returns:
            self, fitted.

        Raises:
            ValueError: invalid inputs (NaN or infinite values, wrong shapes, continuous
                ``y``), fewer than 2 classes, a class with one sample, or an invalid
                hyperparameter (one line naming it).
        """
        return self._fit(X, y, X_meta, y_meta)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape ``(n_samples, n_classes)`` (columns in ``classes_``
        order; softmax of the model's logits), float64.

        Raises:
            NotFittedError: before ``fit``. ValueError: invalid ``X`` or a different number
                of features than in ``fit``.
        """
        logits = torch.as_tensor(self._outputs(X))
        return torch.softmax(logits, dim=1).numpy()

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of :meth:`predict_proba`, computed stably, shape ``(n_samples, n_classes)``."""
        logits = torch.as_tensor(self._outputs(X))
        return torch.log_softmax(logits, dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row, shape ``(n_samples,)``, as the labels given
        to ``fit`` (``classes_``' values and dtype)."""
        scores = self._outputs(X)
        return self.classes_[np.argmax(scores, axis=1)]


_COMMON_DOC = """
    Args:
        epochs: training epochs (``optim.epochs``).
        batch_size: training batch size (``optim.batch_size``; at most the training split).
        lr: peak learning rate of SGD with momentum 0.9 and a cosine schedule (``optim.lr``).
        width: hidden units per layer of slem's MLP (``model.width``).
        depth: hidden layers of slem's MLP (``model.depth``).
        standardize: standardize the features with training-split statistics, in ``fit`` and
            again in ``predict`` (``normalizer_``).
        val_fraction: the stratified validation split, in (0, 0.5).
        keep_best: predict with the weights of the epoch with the best validation score
            (accuracy, or balanced accuracy under class imbalance; validation MAE for
            regression), which slem reports as ``test_accuracy_at_best_val``; False, or an
            empty validation split: the last epoch's weights. ``best_epoch_`` says which.
        overrides: any other TrainConfig field, as dotted keys, e.g. ``{"optim.optimizer":
            "adam", "meta.hidden": 50}`` (they win over the arguments above).
        model: None (slem's MLP), an ``nn.Module`` (copied at each fit) or a function
            ``(n_features, n_outputs) -> nn.Module``; it maps ``(batch, n_features)`` float
            rows to ``(batch, n_outputs)`` outputs (logits; one output for regression).
        random_state: an int is slem's seed (the splits, initialization, batch order): the
            same fit every time; None or a ``RandomState``: a seed drawn from it.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``; the fitted model is kept
            on the CPU.
        threads: torch's CPU threads during fit and predict (None: slem's default; set back
            afterwards).
        verbose: a progress bar on stderr while training.
"""

_ATTRIBUTES_DOC = """
    Attributes:
        model_: the trained network (CPU, eval mode).
        normalizer_: the feature standardization (``slem.data.Normalizer``) or None.
        methodology_: the meta-learned (or applied) methodology, an ``nn.Module``, or None.
        summary_: the run's summary (as slem's ``summary.json``, without test metrics).
        history_: one dict per epoch (validation metrics, losses, learned weights' quality).
        best_epoch_: the (1-based) epoch whose weights ``model_`` holds.
        n_meta_: the meta set's size (0: none).
        meta_objective_: the meta objective used (None: the method has none).
        n_features_in_, feature_names_in_: as in scikit-learn.
"""


class ERMClassifier(_Classifier):
    __doc__ = (
        """A neural network trained by plain cross-entropy (empirical risk minimization, slem's
    method ``erm``): the baseline of the meta-learned classifiers, with the same network,
    optimizer and splits.
"""
        + _COMMON_DOC
        + _ATTRIBUTES_DOC
        + """        classes_: the class labels, sorted, as given in ``y``.
"""
    )

    _method = "erm"

    def __init__(
        self,
        *,
        epochs: int = 30,
        batch_size: int = 64,
        lr: float = 0.05,
        width: int = 64,
        depth: int = 2,
        standardize: bool = True,
        val_fraction: float = 0.1,
        keep_best: bool = True,
        overrides: dict[str, Any] | None = None,
        model: nn.Module | ModelFactory | None = None,
        random_state: Any = 0,
        device: str = "auto",
        threads: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.width = width
        self.depth = depth
        self.standardize = standardize
        self.val_fraction = val_fraction
        self.keep_best = keep_best
        self.overrides = overrides
        self.model = model
        self.random_state = random_state
        self.device = device
        self.threads = threads
        self.verbose = verbose


_META_DOC = """        meta_objective: what the weighting net is meta-learned on: ``clean`` (the
            meta set: ``X_meta``/``y_meta``, or ``meta_per_class`` samples drawn from ``X``),
            ``dac`` (DAC-MR, Shu et al. 2023: agreement between weakly and strongly augmented
            views of training rows; no meta set, no clean labels), ``clean+dac``,
            ``selected`` (each epoch, the ``meta.select_per_class`` lowest-loss training
            samples of each class; no meta set), or ``auto``: ``clean`` when ``X_meta`` is
            given to ``fit``, else ``dac``. A meta set drawn from noisy labels carries their
            noise: on 30% flipped labels it made MW-Net no better than ERM at the last
            epoch, where DAC-MR gained 11 points (docs/sklearn.md).
        meta_per_class: for ``clean`` and ``clean+dac`` without ``X_meta``: the meta set drawn
            from ``X`` per class (labels as given, so trust them; at most half of the
            smallest class), kept out of training.
        meta_lr: the weighting net's Adam learning rate (``meta.lr``).
        warmup_epochs: plain cross-entropy epochs before meta-learning starts
            (``meta.warmup_epochs``; below ``epochs``).
"""


class _MetaClassifier(_Classifier):
    def __init__(
        self,
        *,
        epochs: int = 30,
        batch_size: int = 64,
        lr: float = 0.05,
        width: int = 64,
        depth: int = 2,
        standardize: bool = True,
        val_fraction: float = 0.1,
        keep_best: bool = True,
        meta_objective: str = "auto",
        meta_per_class: int = 10,
        meta_lr: float = 1e-3,
        warmup_epochs: int = 1,
        overrides: dict[str, Any] | None = None,
        model: nn.Module | ModelFactory | None = None,
        random_state: Any = 0,
        device: str = "auto",
        threads: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.width = width
        self.depth = depth
        self.standardize = standardize
        self.val_fraction = val_fraction
        self.keep_best = keep_best
        self.meta_objective = meta_objective
        self.meta_per_class = meta_per_class
        self.meta_lr = meta_lr
        self.warmup_epochs = warmup_epochs
        self.overrides = overrides
        self.model = model
        self.random_state = random_state
        self.device = device
        self.threads = threads
        self.verbose = verbose

    def _meta_options(
        self, y: np.ndarray, meta: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        objective = _objective(self.meta_objective, "clean" if meta else "dac")
        if "clean" not in objective:
            _no_meta_set(objective, meta)
            return objective, {}
        if meta:
            return objective, meta
        k = int(self.meta_per_class)
        if k < 1:
            raise ValueError(f"meta_per_class must be at least 1, not {self.meta_per_class!r}")
        return objective, {"meta_per_class": max(1, min(k, int(np.bincount(y).min()) // 2))}

    def _config(self, seed: int, objective: str | None, task: Task) -> TrainConfig:
        values = self._base_values(seed)
        values["meta"] = {
            "objective": objective,
            "lr": self.meta_lr,
            "warmup_epochs": self.warmup_epochs,
        }
        if min(task.features.class_counts) < 2:
            # per-label normalization (auto's choice on balanced labels) gives a class's
            # single sample the weight 1 whatever the net says: nothing to meta-learn
            values["meta"]["normalize_weights"] = "batch"
        return self._validated(values)


def _objective(value: Any, auto: str) -> str:
    """``meta_objective`` checked, ``auto`` resolved to ``auto``."""
    if value not in OBJECTIVES:
        raise ValueError(f"meta_objective must be one of {', '.join(OBJECTIVES)}, not {value!r}")
    return auto if value == "auto" else str(value)


def _no_meta_set(objective: str, meta: dict[str, Any]) -> None:
    """A meta set given to fit is refused by an objective that would not read it."""
    if meta:
        raise ValueError(
            f"meta_objective {objective} uses no meta set, but X_meta, y_meta were given: "
            "use meta_objective auto, clean or clean+dac, or leave them out"
        )


class MWNetClassifier(_MetaClassifier):
    __doc__ = (
        """A neural network trained with MW-Net's meta-learned sample weights (slem's method
    ``mwnet``): a small net maps each training sample's loss to its weight, and is itself
    trained, step by step with the model, so that the weighted step lowers the loss on a
    meta set (bilevel optimization; Shu et al., "Meta-Weight-Net: learning an explicit
    mapping for sample weighting", NeurIPS 2019). For noisy labels (down-weights the samples
    the model cannot fit) and class imbalance.
"""
        + _COMMON_DOC
        + _META_DOC
        + _ATTRIBUTES_DOC
        + """        classes_: the class labels, sorted, as given in ``y``.
        methodology_: the learned weighting net (``slem.methodology.MWNet``): apply it to a
            new task with ``SLeMClassifier(methodology=...)``.
"""
    )

    _method = "mwnet"


class CMWNetClassifier(_MetaClassifier):
    __doc__ = (
        """A neural network trained with CMW-Net's class-aware meta-learned sample weights
    (slem's method ``cmwnet``): MW-Net's weighting net with one head per size group of the
    classes (the class sizes are grouped by k-means on their log counts), so frequent and
    rare classes get different loss-to-weight mappings (Shu et al., "CMW-Net: learning a
    class-aware sample weighting mapping for robust deep learning", IEEE TPAMI 45,
    11521-39, 2023). For label noise together with class imbalance.
"""
        + _COMMON_DOC
        + _META_DOC
        + _ATTRIBUTES_DOC
        + """        classes_: the class labels, sorted, as given in ``y``.
        methodology_: the learned weighting net (``slem.methodology.CMWNet``).
"""
    )

    _method = "cmwnet"


class SLeMClassifier(_Classifier):
    __doc__ = (
        """A neural network trained with a saved learning methodology applied frozen (slem's
    method ``apply``; plug and play, SLeM paper): the methodology, meta-learned once over a
    family of tasks (or on one task), sets the learning method of this one (sample weights,
    a learning-rate schedule, ...) with no meta set and no tuning, at the cost of plain
    training.

    Args:
        methodology: ``zoo:NAME`` (or a bare zoo name such as ``label-noise``; ``slem zoo
            list`` shows them: ``label-noise``, ``class-imbalance``, ``lr-schedule``), an
            artifact directory (or a run directory holding one), or a methodology in memory
            (an ``nn.Module`` of ``slem.methodology``, e.g. a fitted MWNetClassifier's
            ``methodology_``; copied, never modified).
        epochs, batch_size, lr, width, depth: as below; None: as the methodology was
            meta-trained (its artifact's training config; slem's defaults for one in memory).
"""
        + _COMMON_DOC.replace("    Args:\n", "    Other args:\n")
        + _ATTRIBUTES_DOC
        + """        classes_: the class labels, sorted, as given in ``y``.
        methodology_: the applied methodology (frozen).
"""
    )

    _method = "apply"

    def __init__(
        self,
        methodology: Any = "zoo:label-noise",
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        width: int | None = None,
        depth: int | None = None,
        standardize: bool = True,
        val_fraction: float = 0.1,
        keep_best: bool = True,
        overrides: dict[str, Any] | None = None,
        model: nn.Module | ModelFactory | None = None,
        random_state: Any = 0,
        device: str = "auto",
        threads: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.methodology = methodology
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.width = width
        self.depth = depth
        self.standardize = standardize
        self.val_fraction = val_fraction
        self.keep_best = keep_best
        self.overrides = overrides
        self.model = model
        self.random_state = random_state
        self.device = device
        self.threads = threads
        self.verbose = verbose

    def _source(self) -> str | Methodology:
        """The artifact: a methodology in memory, ``zoo:NAME`` or a directory."""
        m = self.methodology
        if isinstance(m, Methodology):
            return m
        if not isinstance(m, str) or not m:
            raise ValueError(
                "methodology must be zoo:NAME, an artifact directory or a slem methodology "
                f"module, not {type(m).__name__}"
            )
        if zoo.is_zoo(m):
            return m
        from pathlib import Path

        if not Path(m).exists() and m.strip("/") in zoo.names():
            return zoo.PREFIX + m.strip("/")
        return m

    def _config(self, seed: int, objective: str | None, task: Task) -> TrainConfig:
        source = self._source()
        given = {
            "optim.batch_size": self.batch_size,
            "optim.lr": self.lr,
            "model.width": self.width,
            "model.depth": self.depth,
        }
        chosen: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        chosen.update(device=self.device, threads=self.threads)
        try:
            base = apply_config(source, None, epochs=self.epochs, seed=seed, overrides=chosen)
        except SlemError as exc:
            raise ValueError(f"{type(self).__name__}: {exc}") from None
        return self._validated(base.model_dump(exclude_unset=False))

    def _trainer(self, config: TrainConfig, task: Task) -> Trainer:
        source = self._source()
        try:
            if isinstance(source, Methodology):
                frozen = freeze(copy.deepcopy(source))
            else:
                frozen = load_frozen(str(config.methodology))
            return make_trainer(config, task, model=self._new_model(task), methodology=frozen)
        except SlemError as exc:
            raise ValueError(f"{type(self).__name__}: {exc}") from None


class HWNetRegressor(RegressorMixin, _SLeMEstimator):  # type: ignore[misc]
    __doc__ = (
        """A neural network regressor trained with a meta-learned robust loss (slem's method
    ``hwnet``): a hyper-weight net (HWnet; Rui, Cao, Shu et al., arXiv:2301.06081) maps each
    sample's residual to a mixture of losses (squared, absolute, Huber, Cauchy), and is
    trained, step by step with the model, so that the step lowers the squared error on a
    meta set. For targets with noise or outliers. Targets are standardized internally by
    their median and 1.4826 MAD; predictions are in the original units.
"""
        + _COMMON_DOC
        + """        meta_objective: ``clean`` (the meta set), ``dac`` (DAC-MR, no meta set),
            ``clean+dac``, or ``auto``: ``clean`` on ``X_meta``/``y_meta`` when given, else
            on the meta set drawn from ``X``, or ``dac`` when ``X`` is too small to spare one
            (fewer than 8 rows).
        meta_size: with no ``X_meta``, the meta set drawn from ``X`` (targets as given; at
            most a quarter of the rows).
        meta_lr: the HWnet's Adam learning rate (``meta.lr``).
        warmup_epochs: epochs of plain absolute-error training before meta-learning starts
            (``meta.warmup_epochs``; below ``epochs``).
"""
        + _ATTRIBUTES_DOC
        + """        methodology_: the learned HWnet (``slem.methodology.HyperWeightNet``).
"""
    )

    _method = "hwnet"
    _task_type = "regression"

    def __init__(
        self,
        *,
        epochs: int = 30,
        batch_size: int = 64,
        lr: float = 0.05,
        width: int = 64,
        depth: int = 2,
        standardize: bool = True,
        val_fraction: float = 0.1,
        keep_best: bool = True,
        meta_objective: str = "auto",
        meta_size: int = 50,
        meta_lr: float = 1e-3,
        warmup_epochs: int = 1,
        overrides: dict[str, Any] | None = None,
        model: nn.Module | ModelFactory | None = None,
        random_state: Any = 0,
        device: str = "auto",
        threads: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.width = width
        self.depth = depth
        self.standardize = standardize
        self.val_fraction = val_fraction
        self.keep_best = keep_best
        self.meta_objective = meta_objective
        self.meta_size = meta_size
        self.meta_lr = meta_lr
        self.warmup_epochs = warmup_epochs
        self.overrides = overrides
        self.model = model
        self.random_state = random_state
        self.device = device
        self.threads = threads
        self.verbose = verbose

    def _targets(self, y: np.ndarray, reset: bool, what: str = "y") -> np.ndarray:
        y = np.asarray(y)
        if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
            try:
                y = y.astype(np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{what} must hold numbers for regression") from None
        y = y.astype(np.float32)
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{what} holds NaN or infinite values")
        if reset and len(y) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 samples; got 1 sample (n_samples=1)"
            )
        return y

    def _meta_options(
        self, y: np.ndarray, meta: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        if self.meta_objective == "selected":
            raise ValueError("meta_objective selected is for class labels; use clean or dac")
        k = int(self.meta_size)
        if k < 1:
            raise ValueError(f"meta_size must be at least 1, not {self.meta_size!r}")
        spare = min(k, len(y) // 4)
        objective = _objective(self.meta_objective, "clean" if meta or spare >= 2 else "dac")
        if "clean" not in objective:
            _no_meta_set(objective, meta)
            return objective, {}
        if meta:
            return objective, meta
        if spare < 1:
            raise ValueError(
                f"meta_objective {objective} needs a meta set: pass X_meta, y_meta to fit, "
                f"or give at least 4 rows (got {len(y)}), or use meta_objective dac"
            )
        return objective, {"meta_size": spare}

    def _config(self, seed: int, objective: str | None, task: Task) -> TrainConfig:
        values = self._base_values(seed)
        values["meta"] = {
            "objective": objective,
            "lr": self.meta_lr,
            "warmup_epochs": self.warmup_epochs,
        }
        return self._validated(values)

    def fit(self, X: Any, y: Any, X_meta: Any = None, y_meta: Any = None) -> HWNetRegressor:
        """Train on ``X`` (shape ``(n_samples, n_features)``, numeric) and real targets ``y``
        (shape ``(n_samples,)``; they may be noisy or hold outliers).

        ``X_meta``, ``y_meta``: an optional trusted meta set (same features), kept out of
        training.

        Returns:
            self, fitted.

        Raises:
            ValueError: invalid inputs (NaN or infinite values, wrong shapes), a single
                sample, or an invalid hyperparameter (one line naming it).
        """
        return self._fit(X, y, X_meta, y_meta)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted targets, shape ``(n_samples,)``, float64, in the units of ``y``.

        Raises:
            NotFittedError: before ``fit``. ValueError: invalid ``X`` or a different number
                of features than in ``fit``.
        """
        z = self._outputs(X)[:, 0]
        return z * self._y_scale + self._y_center
