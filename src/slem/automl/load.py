"""A study config as ``slem hpo CONFIG.yaml`` reads it (:func:`load_study_config`).

* ``--set`` overrides are routed: ``study.*`` and ``objective.*`` keys set the study config;
  for a ``train`` objective every other key (``optim.epochs=2``, ``data.size=300``, and
  ``objective.base.KEY``) sets the *base* training config, as ``slem train --set`` would.
* ``objective.base``, when a path, is resolved relative to the study config's directory
  (an absolute path as it is; one given with ``--set objective.base=...`` relative to the
  current directory, like any command-line path), then read into the config: the study
  (its ``hpo.yaml``, its workers, a resume) runs the base it started with, whatever happens
  to the file later.
* The base's own file paths (``data.name`` when it is a file, ``data.meta``, ``data.test``,
  ``data.data_dir``, ``methodology``) are made absolute the way ``slem train`` reads them
  (next to the base config, else in the current directory:
  :func:`slem.train.config_io.resolve_paths`), and so are a CASH objective's data paths
  (next to the study config), so trials, ``best.yaml`` and a refit find the same files from
  any working directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slem.automl.config import HPOConfig, TrainObjective, parse_hpo_config
from slem.automl.run import RUN_KEYS, read_yaml_mapping
from slem.errors import SlemError
from slem.train.config_io import DATA_PATH_FIELDS, resolve_paths

#: the top-level sections of a study config; ``--set`` keys under any other go to the base
STUDY_SECTIONS = ("study", "objective")
BASE_PREFIX = "objective.base."


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--set`` items for the study config and for the base training config (the latter
    without an ``objective.base.`` prefix). A malformed item goes to the study config, whose
    parser names the problem."""
    study: list[str] = []
    base: list[str] = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        key = key.strip()
        if key.startswith(BASE_PREFIX):
            base.append(item.strip().removeprefix(BASE_PREFIX))
        elif not sep or not key or key.split(".", 1)[0] in STUDY_SECTIONS:
            study.append(item)
        else:
            base.append(item)
    return study, base


def _key(item: str) -> str:
    return item.partition("=")[0].strip()


def load_study_config(
    path: Path,
    overrides: Sequence[str] = (),
    values: dict[str, Any] | None = None,
) -> HPOConfig:
    """The study config in ``path`` (or ``values``, read from it) with ``overrides``; a
    ``train`` objective's base read in, overridden and its paths made absolute (see the
    module docstring).

    Raises:
        SlemError: a bad config or override, or a base config that is missing or invalid;
            one line naming it and what to do.
    """
    from slem.train.config import apply_overrides

    if values is None:
        values = read_yaml_mapping(path, "give a YAML study config (see examples/)")
    values = dict(values)
    for key in RUN_KEYS:  # a run's own hpo.yaml works as a config too
        values.pop(key, None)
    study_sets, base_sets = split_overrides(overrides)
    cfg = parse_hpo_config(apply_overrides(values, study_sets))
    objective = cfg.objective
    if not isinstance(objective, TrainObjective):
        if base_sets:
            keys = ", ".join(_key(i) for i in base_sets)
            raise SlemError(
                f"--set {keys}: a {objective.kind} study has no base training config; set "
                "study.* or objective.* keys (e.g. study.trials=20, objective.data.name=iris)"
            )
        data = objective.data
        paths = {f: getattr(data, f) for f in ("name", *DATA_PATH_FIELDS)}
        given = {k: v for k, v in paths.items() if v is not None}
        root = path.parent if path.is_file() else None
        objective.data = data.model_copy(update=resolve_paths({"data": given}, root)["data"])
        return cfg
    from_cli = any(_key(i) == "objective.base" for i in study_sets)
    root = Path.cwd() if from_cli else path.parent
    objective.base = with_base_overrides(read_base(objective.base, root), base_sets, objective)
    return cfg


def read_base(base: str | dict[str, Any], root: Path) -> dict[str, Any]:
    """The base training config: ``base`` itself (a mapping) or the YAML file it names,
    relative to ``root`` unless absolute; its file paths made absolute
    (:func:`absolute_paths`).

    Raises:
        SlemError: the file is missing (saying where it was looked for), or not YAML.
    """
    from slem.train.config import load_yaml

    if isinstance(base, dict):
        return resolve_paths(base, root)
    given = Path(base).expanduser()
    found = given if given.is_absolute() else root / given
    if not found.is_file():
        where = "" if given.is_absolute() else f" (relative to {root.resolve()})"
        hint = ""
        if not given.is_absolute() and given.is_file() and root.resolve() != Path.cwd():
            hint = (
                f"; objective.base is relative to the study config's directory: write "
                f"'{given.resolve()}' or a path relative to {root.resolve()}"
            )
        raise SlemError(
            f"objective.base '{base}' does not exist{where}{hint}; give the path of a slem "
            "train config"
        )
    return resolve_paths(load_yaml(found.resolve()), found.resolve().parent)


def with_base_overrides(
    base: dict[str, Any], overrides: Sequence[str], objective: TrainObjective
) -> dict[str, Any]:
    """``base`` with ``--set`` ``overrides`` applied and checked.

    Raises:
        SlemError: an override of a key the search space sets in every trial where it is
            active (the override would never be used), or a base that the overrides make
            invalid.
    """
    from slem.train.config import apply_overrides, parse_train_config

    if not overrides:
        return base
    keys = [_key(i) for i in overrides]
    searched = [k for k in keys if k in objective.space]
    if searched:
        raise SlemError(
            f"--set {searched[0]}: the search space sets this key in the trials; remove it "
            "from objective.space, or drop --set"
        )
    values = resolve_paths(apply_overrides(base, list(overrides)))
    try:
        parse_train_config(values)
    except SlemError as exc:
        raise SlemError(
            f"--set {', '.join(keys)} (applied to the base training config): {exc}; study "
            "settings are study.* keys, e.g. study.trials=20"
        ) from None
    return values
