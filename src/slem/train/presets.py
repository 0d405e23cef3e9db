"""Named presets: the published MW-Net and CMW-Net training protocols, every setting cited.

A preset fills the method, optimizer and meta-learning fields of a training config; the data
stay the user's. Use one with ``preset: mwnet-noise`` in a config or ``slem train CONFIG
--preset mwnet-noise``; list them with ``slem presets`` and show one (settings and sources)
with ``slem presets NAME``. Fields the user gives (in the YAML or with ``--set``) win over the
preset's.

Each setting cites the official script and line it comes from (read from the repositories at
the commits named in :attr:`Preset.code`). ``recommended`` holds the paper's data protocol and
model, which a preset does not apply (they describe CIFAR; the user's data and model are
theirs); ``deviations`` lists what slem cannot reproduce exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from slem.errors import SlemError


@dataclass(frozen=True)
class Setting:
    """One config field (dotted ``key``), its value, and where the value comes from."""

    key: str
    value: Any
    source: str


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    paper: str
    code: str
    settings: tuple[Setting, ...]
    recommended: tuple[Setting, ...] = ()
    deviations: tuple[str, ...] = ()

    def values(self) -> dict[str, Any]:
        """The settings as a nested config mapping (``{"optim": {"lr": 0.1}, ...}``)."""
        out: dict[str, Any] = {}
        for s in self.settings:
            node = out
            *parents, leaf = s.key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = copy.deepcopy(s.value)
        return out


MWNET_PAPER = (
    "Shu et al., 'Meta-Weight-Net: Learning an Explicit Mapping For Sample Weighting', NeurIPS 2019"
)
CMWNET_PAPER = (
    "Shu et al., 'CMW-Net: Learning a Class-Aware Sample Weighting Mapping for Robust Deep "
    "Learning', IEEE TPAMI 2023"
)

_N = "MW-Net.py"
MWNET_NOISE = Preset(
    name="mwnet-noise",
    title="MW-Net, noisy labels (official MW-Net.py)",
    paper=MWNET_PAPER,
    code="github.com/xjtushujun/meta-weight-net @ e85c3a2, MW-Net.py",
    settings=(
        Setting("method", "mwnet", f"{_N}:264 vnet = VNet(1, 100, 1)"),
        Setting("optim.optimizer", "sgd", f"{_N}:272 torch.optim.SGD"),
        Setting("optim.lr", 0.1, f"{_N}:46 --lr default 1e-1"),
        Setting("optim.momentum", 0.9, f"{_N}:48 --momentum 0.9, passed at :273"),
        Setting(
            "optim.nesterov",
            False,
            f"{_N}:272-273 SGD(..., momentum, weight_decay): --nesterov (:49) is never passed",
        ),
        Setting("optim.weight_decay", 5e-4, f"{_N}:50 --weight-decay 5e-4"),
        Setting("optim.batch_size", 100, f"{_N}:44 --batch_size 100"),
        Setting("optim.epochs", 120, f"{_N}:38 --epochs 120"),
        Setting("optim.schedule", "step", f"{_N}:160-161 adjust_learning_rate"),
        Setting("optim.milestones", [80 / 120, 100 / 120], f"{_N}:161 x0.1 at epochs 80, 100"),
        Setting("optim.gamma", 0.1, f"{_N}:161"),
        Setting("meta.objective", "clean", f"{_N}:212-219 CE on a clean meta batch"),
        Setting("meta.hypergrad", "lookahead", f"{_N}:208-211 one differentiable SGD step"),
        Setting("meta.interval", 1, f"{_N}:199 a meta step every training batch"),
        Setting("meta.warmup_epochs", 0, f"{_N}:278-281 meta-learning from the first epoch"),
        Setting("meta.hidden", 100, f"{_N}:264 VNet(1, 100, 1)"),
        Setting("meta.monotone", False, f"{_N}:264 an unconstrained MLP"),
        Setting("meta.optimizer", "adam", f"{_N}:274 torch.optim.Adam(vnet.params(), 1e-3"),
        Setting("meta.lr", 1e-3, f"{_N}:274"),
        Setting("meta.weight_decay", 1e-4, f"{_N}:275 weight_decay=1e-4"),
        Setting("meta.batch_size", 100, f"{_N}:126-127 meta loader batch_size=args.batch_size"),
        Setting(
            "meta.normalize_weights",
            "none",
            f"{_N}:207, :237 sum(cost * w) / len(cost): the plain mean, weights not normalized",
        ),
        Setting(
            "meta.virtual_step",
            "sgd",
            f"{_N}:210-211 update_params(lr_inner=meta_lr): theta - lr * grad at the epoch's lr",
        ),
        Setting("meta.order", "mwnet", f"{_N}:221-241 meta update, then the real step"),
    ),
    recommended=(
        Setting("data.noise", "uniform:0.4", f"{_N}:33-35 --corruption_prob 0.4, unif"),
        Setting(
            "data.meta_per_class",
            "1000 / classes (100 on CIFAR-10, 10 on CIFAR-100)",
            f"{_N}:37 --num_meta 1000; load_corrupted_data.py: int(num_meta / 10) per class",
        ),
        Setting("model", "ResNet-32", f"{_N}:27, :136 build_model: ResNet32"),
    ),
    deviations=(
        "the official script has no validation split: it reports the best test accuracy over "
        f"epochs ({_N}:283-285); slem selects on its validation split",
        f"CIFAR augmentation (reflect-pad 4, random crop 32, flip; {_N}:83-90) is not applied",
        "the paper's WRN-28-10 script (train_WRN-28-10_Meta_PGC.py, the README's command) "
        "differs: 20000 iterations of fresh random batches, lr x0.1 at 18000 and 19000, "
        "Nesterov, meta SGD lr 1e-3 momentum 0.9 Nesterov weight decay 5e-4, weights divided "
        "by their sum; use preset mwnet-noise-wrn",
    ),
)

_W = "train_WRN-28-10_Meta_PGC.py"
MWNET_NOISE_WRN = Preset(
    name="mwnet-noise-wrn",
    title="MW-Net, noisy labels, WRN-28-10 script (the official README's command)",
    paper=MWNET_PAPER,
    code=f"github.com/xjtushujun/meta-weight-net @ 1959353, {_W} (lines not numbered here)",
    settings=(
        Setting("method", "mwnet", f"{_W} main: vnet = VNet(1, 100, 1)"),
        Setting("optim.optimizer", "sgd", f"{_W} main: optimizer_a = torch.optim.SGD"),
        Setting("optim.lr", 0.1, f"{_W} --lr default 1e-1"),
        Setting("optim.momentum", 0.9, f"{_W} --momentum 0.9"),
        Setting("optim.nesterov", True, f"{_W} --nesterov True, passed to optimizer_a"),
        Setting("optim.weight_decay", 5e-4, f"{_W} --weight-decay 5e-4"),
        Setting("optim.batch_size", 100, f"{_W} --batch-size 100"),
        Setting(
            "optim.epochs",
            41,
            f"{_W} --iters 20000 batches of 100 on 49000 images = 40.8 epochs",
        ),
        Setting("optim.schedule", "step", f"{_W} adjust_learning_rate"),
        Setting(
            "optim.milestones",
            [0.9, 0.95],
            f"{_W} adjust_learning_rate: x0.1 at iteration 18000 and 19000 of 20000",
        ),
        Setting("optim.gamma", 0.1, f"{_W} adjust_learning_rate"),
        Setting("meta.objective", "clean", f"{_W} l_g_meta: CE on a clean meta batch"),
        Setting("meta.interval", 1, f"{_W} a meta step every iteration"),
        Setting("meta.warmup_epochs", 0, f"{_W} meta-learning from the first iteration"),
        Setting("meta.hidden", 100, f"{_W} VNet(1, 100, 1)"),
        Setting("meta.optimizer", "sgd", f"{_W} optimizer_c = torch.optim.SGD(vnet.params()"),
        Setting("meta.lr", 1e-3, f"{_W} optimizer_c lr 1e-3"),
        Setting("meta.momentum", 0.9, f"{_W} optimizer_c momentum=args.momentum"),
        Setting("meta.nesterov", True, f"{_W} optimizer_c nesterov=args.nesterov"),
        Setting("meta.weight_decay", 5e-4, f"{_W} optimizer_c weight_decay=args.weight_decay"),
        Setting("meta.batch_size", 100, f"{_W} meta loader batch_size=args.batch_size"),
        Setting("meta.normalize_weights", "batch", f"{_W} v_lambda / torch.sum(v_lambda)"),
        Setting("meta.virtual_step", "sgd", f"{_W} update_params(lr_inner=meta_lr)"),
        Setting("meta.order", "mwnet", f"{_W} meta update, then the real step"),
    ),
    recommended=(
        Setting("data.noise", "uniform:0.4", f"{_W} --corruption_prob 0.4, unif"),
        Setting("data.meta_per_class", "1000 / classes", f"{_W} --num_meta 1000"),
        Setting("model", "WRN-28-10", f"{_W} build_model: WideResNet(28, ..., 10)"),
    ),
    deviations=(
        f"every iteration draws a fresh random batch ({_W}: next(iter(train_loader))); slem "
        "runs epochs of shuffled batches",
        "no validation split in the official code (test accuracy every 100 iterations)",
    ),
)

_I = "meta-weight-net-class-imbalance.py"
MWNET_IMBALANCE = Preset(
    name="mwnet-imbalance",
    title="MW-Net, class imbalance (official class-imbalance script)",
    paper=MWNET_PAPER,
    code=f"github.com/xjtushujun/Meta-weight-net_class-imbalance @ 20c3276, {_I}",
    settings=(
        Setting("method", "mwnet", f"{_I}:110 vnet = VNet(1, 100, 1)"),
        Setting("optim.optimizer", "sgd", f"{_I}:106 torch.optim.SGD"),
        Setting("optim.lr", 0.1, f"{_I}:36 --lr default 1e-1"),
        Setting("optim.momentum", 0.9, f"{_I}:38 --momentum 0.9"),
        Setting("optim.nesterov", True, f"{_I}:39 --nesterov True, passed at :107"),
        Setting("optim.weight_decay", 5e-4, f"{_I}:40 --weight-decay 5e-4"),
        Setting("optim.batch_size", 100, f"{_I}:26 --batch-size 100"),
        Setting("optim.epochs", 100, f"{_I}:34 --epochs 100"),
        Setting("optim.schedule", "step", f"{_I} adjust_learning_rate"),
        Setting(
            "optim.milestones",
            [0.79, 0.89],
            f"{_I}:122 adjust_learning_rate(optimizer_a, epoch + 1): x0.1 at 80 and 90 of "
            "epoch + 1, i.e. after 79 and 89 epochs",
        ),
        Setting("optim.gamma", 0.1, f"{_I} adjust_learning_rate"),
        Setting("meta.objective", "clean", f"{_I}:175-178 CE on a clean meta batch"),
        Setting("meta.interval", 1, f"{_I}:121-124 a meta step every training batch"),
        Setting("meta.warmup_epochs", 0, f"{_I}:121-124 meta-learning from the first epoch"),
        Setting("meta.hidden", 100, f"{_I}:110 VNet(1, 100, 1)"),
        Setting("meta.monotone", False, f"{_I}:110 an unconstrained MLP"),
        Setting("meta.optimizer", "sgd", f"{_I}:112 optimizer_c = torch.optim.SGD"),
        Setting("meta.lr", 1e-5, f"{_I}:112 lr 1e-5"),
        Setting("meta.momentum", 0.9, f"{_I}:113 momentum=args.momentum"),
        Setting("meta.nesterov", True, f"{_I}:113 nesterov=args.nesterov"),
        Setting("meta.weight_decay", 5e-4, f"{_I}:114 weight_decay=args.weight_decay"),
        Setting("meta.batch_size", 100, f"{_I}:92 meta loader batch_size=args.batch_size"),
        Setting(
            "meta.normalize_weights",
            "batch",
            f"{_I}:161-166 v_lambda / sum(v_lambda) (and the same for the real step)",
        ),
        Setting("meta.virtual_step", "sgd", f"{_I}:171-172 update_params(lr_inner=meta_lr)"),
        Setting("meta.order", "mwnet", f"{_I} meta update, then the real step"),
    ),
    recommended=(
        Setting("data.meta_per_class", 10, f"{_I}:29 --num_meta 10 per class"),
        Setting("data.imbalance", 10, f"{_I}:31 --imb_factor 0.1 (head / tail = 10)"),
        Setting("model", "ResNet-32", f"{_I} build_model: ResNet32"),
    ),
    deviations=(
        f"the virtual step's lr drops one epoch later than the real one ({_I}:171 uses epoch, "
        ":122 epoch + 1); slem uses the real lr for both",
        f"each meta batch is a fresh shuffle of the meta set ({_I}:175 next(iter(...)))",
        "no validation split in the official code (best test accuracy is reported)",
    ),
)

_C = "section4/Class_Imbalance/LT1.py"
CMWNET_IMBALANCE = Preset(
    name="cmwnet-imbalance",
    title="CMW-Net, class imbalance (official LT1.py, run by table1.sh)",
    paper=CMWNET_PAPER,
    code=f"github.com/xjtushujun/CMW-Net @ a748e12, {_C}",
    settings=(
        Setting("method", "cmwnet", f"{_C}:153 vnet = VNet(1, 100, 100, 1, 3)"),
        Setting("optim.optimizer", "sgd", f"{_C}:155 torch.optim.SGD"),
        Setting("optim.lr", 0.1, f"{_C}:36 --lr default 1e-1"),
        Setting("optim.momentum", 0.9, f"{_C}:38 --momentum 0.9"),
        Setting("optim.nesterov", True, f"{_C}:39 --nesterov True, passed at :156"),
        Setting("optim.weight_decay", 5e-4, f"{_C}:40 --weight-decay 5e-4"),
        Setting("optim.batch_size", 100, f"{_C}:26 --batch-size 100"),
        Setting("optim.epochs", 200, f"{_C}:34 --epochs 200"),
        Setting("optim.schedule", "step", f"{_C} adjust_learning_rate"),
        Setting(
            "optim.milestones",
            [0.8, 0.9],
            f"{_C} adjust_learning_rate: x0.01 at epochs 160 and 180",
        ),
        Setting("optim.gamma", 0.01, f"{_C} adjust_learning_rate: 0.01 ** int(epoch >= 160)"),
        Setting("meta.objective", "clean", f"{_C} train_meta: CE on a meta batch"),
        Setting("meta.interval", 1, f"{_C} train_meta: a meta step every training batch"),
        Setting("meta.warmup_epochs", 160, f"{_C}:169 if epoch < 160: plain CE (train)"),
        Setting("meta.n_groups", 3, f"{_C}:121 KMeans(3) on the class counts"),
        Setting("meta.hidden", 100, f"{_C}:153 VNet(1, 100, 100, 1, 3)"),
        Setting("meta.optimizer", "adam", f"{_C}:159 torch.optim.Adam(vnet.params(), 1e-4"),
        Setting("meta.lr", 1e-4, f"{_C}:159"),
        Setting("meta.weight_decay", 1e-5, f"{_C}:159 weight_decay=1e-5"),
        Setting("meta.amsgrad", True, f"{_C}:159 amsgrad=True"),
        Setting("meta.batch_size", 100, f"{_C} train_meta: meta loader batch_size=args.batch_size"),
        Setting(
            "meta.normalize_weights",
            "batch",
            f"{_C} train_meta: sum(ce * v) / sum(v).detach()",
        ),
        Setting("meta.virtual_step", "sgd", f"{_C} train_meta: update_params(lr_inner=meta_lr)"),
        Setting("meta.order", "mwnet", f"{_C} train_meta: meta update, then the real step"),
    ),
    recommended=(
        Setting(
            "data.meta_per_class",
            "the smallest class's count",
            f"{_C}:179-183 a class-balanced meta set of min(img_num_list) per class, drawn "
            "from the (imbalanced) training set itself",
        ),
        Setting(
            "data.imbalance",
            "10, 20, 50, 100 or 200",
            "section4/Class_Imbalance/table1.sh --imb_factor 0.1 ... 0.005",
        ),
        Setting("model", "ResNet-32", f"{_C} build_model: ResNet32"),
    ),
    deviations=(
        "the official meta set is drawn from the training set (not held out); slem's "
        "data.meta_per_class holds it out",
        "the official weighting net is VNet(1, 100, 100, 1, 3) (resnet.py of the repository, "
        "not verified here); slem's CMW-Net is a 1-100 trunk with one output head per class "
        "group",
        "no validation split in the official code (best test accuracy is reported)",
        "CMW-Net's noisy-label protocol (section4/Feature-independent_Label_Noise/cmwn.py) adds "
        "mixup, an EMA teacher and pseudo-labels: no preset, use method cmwnet_sl",
    ),
)

PRESETS: dict[str, Preset] = {
    p.name: p for p in (MWNET_NOISE, MWNET_NOISE_WRN, MWNET_IMBALANCE, CMWNET_IMBALANCE)
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (``_`` and ``-`` are the same); a one-line SlemError naming
    the presets otherwise."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in PRESETS:
        raise SlemError(f"preset '{name}' is unknown; use one of {', '.join(PRESETS)}")
    return PRESETS[key]


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s values on top, section by section (new dicts; inputs kept)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_preset(values: dict[str, Any]) -> dict[str, Any]:
    """Resolve ``values["preset"]``: the preset's settings under the user's ``values`` (which
    win field by field). The preset's name stays in the result, so the run records it. A
    method-specific section only the preset fills (``meta``) is left out when the method the
    user chose instead does not read it (the preset's optimizer protocol with ``method: erm``)."""
    from slem.train.config import METHOD_SECTIONS
    from slem.train.methods import get_method, method_names

    name = values.get("preset")
    if name is None:
        return values
    preset = get_preset(name)
    merged = deep_merge(preset.values(), values)
    merged["preset"] = preset.name
    method = merged.get("method")
    if isinstance(method, str) and method in method_names():
        reads = get_method(method).sections
        for key in preset.values():
            if key in METHOD_SECTIONS and key not in values and key not in reads:
                del merged[key]
    return merged


def markdown_table(presets: list[Preset] | None = None) -> str:
    """A docs-ready table: preset, setting, value, source."""
    rows = ["| preset | setting | value | source |", "|---|---|---|---|"]
    for p in presets or list(PRESETS.values()):
        for s in p.settings:
            rows.append(f"| {p.name} | `{s.key}` | `{_fmt(s.value)}` | {s.source} |")
        for s in p.recommended:
            rows.append(
                f"| {p.name} | `{s.key}` (recommended, not applied) | {_fmt(s.value)} | "
                f"{s.source} |"
            )
    return "\n".join(rows)


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
