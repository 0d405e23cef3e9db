"""Rerun the benchmarks' ``--quick`` versions and compare them with a recorded baseline.

    python benchmarks/compare_quick.py [--names hpo,hypergrad] [--out DIR] [--no-run]
                                       [--baseline DIR] [--tolerance REL] [--verbose]

For each benchmark NAME (default: every ``NAME.json`` in the baseline directory,
``benchmarks/results/quick_baseline``), one after another, this runs

    OMP_NUM_THREADS=1 python benchmarks/NAME.py --quick --cache TMP --json OUT/NAME.json

(``--cache`` and ``--threads 1`` only where the script has them; TMP is a fresh empty
directory, so nothing is resumed; the script's output goes to ``OUT/NAME.log``, its exit
code and duration to ``OUT/runs.txt``), then compares ``OUT/NAME.json`` with the baseline's
``NAME.json`` recursively. Numbers must be equal bit for bit (or within ``--tolerance``, a
relative difference), strings, nulls and the structure (keys, list lengths) equal. Timing
and memory measurements (:data:`MEASURED_FIELDS`) and provenance (:data:`PROVENANCE_FIELDS`)
differ from run to run and are not compared. The children run with this checkout's ``src``
first on ``PYTHONPATH``, so they test this checkout even where slem is installed elsewhere.

Prints, per benchmark, ``identical`` or the number of differences with the first ten (path,
old, new, relative difference); exits 1 if any benchmark differs, fails or has no output.

Known run-to-run nondeterminism (at be132b7 and 4beb30b): hpo's BOHB rows (hpobench-regret).
``regret_run`` creates its Optuna study without a name, so the name is ``no-name-<uuid4>``,
and HyperbandPruner picks each trial's bracket from ``crc32(f"{study_name}_{number}")``:
those scores change on every run; everything else in hpo is reproducible.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASELINE = HERE / "results" / "quick_baseline"

# Fields whose values are measurements of the machine, not results: wall-clock times, time
# ratios and peak memory. Patterns (fnmatch) on the key name, found by reading every
# baseline JSON; a key here is skipped wherever it occurs, with everything under it.
#   seconds, train_seconds            hypergrad (run, accuracy[], cost[]), schedules
#   load_s, task_s, meta_features_s   data_layer (datasets[])
#   median_ms, iqr_ms                 hypergrad (step_timing.rows[])
#   ratio_*  (ratio_to_plain, ratio_fast_to_plain, ...)   hypergrad (top level, step_timing)
#   meta_step_time_ratio              noisy_labels, schedules; in virtual_step it is the
#                                     *value* of "metric" (see METRIC_VALUE_FIELDS)
#   peak_mib                          hypergrad (cost[], step_timing.rows[]): peak RSS rise
# Not here on purpose: imbalance_ratio_mean/std (data_layer, a data statistic), rel_diff_*
# (virtual_step, hypergradient agreement), rel_error* (hypergrad, accuracy).
MEASURED_FIELDS: tuple[str, ...] = (
    "seconds",
    "*_seconds",
    "load_s",
    "task_s",
    "meta_features_s",
    "*_ms",
    "ratio_*",
    "meta_step_time_ratio",
    "peak_mib",
)

# Rows of the form {"metric": NAME, "mean": ..., "std": ...} (virtual_step's "outcome"):
# when NAME is a measured field, these value fields of the row are skipped too.
METRIC_VALUE_FIELDS: tuple[str, ...] = ("mean", "std")

# Provenance: where and with what a run was made (hypergrad's "machine": device, torch
# version, threads, platform; git revision, dates, versions, paths should a script add
# them). Skipped with everything under them.
PROVENANCE_FIELDS: tuple[str, ...] = (
    "machine",
    "provenance",
    "platform",
    "torch",
    "*version*",
    "git*",
    "revision",
    "date",
    "*time_utc",
    "timestamp",
    "hostname",
    "*path",
)


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def ignored(key: str) -> str | None:
    """Why a field of this name is not compared ("measured", "provenance"), or None."""
    if _matches(key, MEASURED_FIELDS):
        return "measured"
    if _matches(key, PROVENANCE_FIELDS):
        return "provenance"
    return None


@dataclass
class Difference:
    path: str
    old: Any
    new: Any
    rel: float | None = None  # relative difference, for two numbers

    def __str__(self) -> str:
        rel = "" if self.rel is None else f"  rel {self.rel:.3g}"
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)}{rel}"


@dataclass
class Comparison:
    differences: list[Difference] = field(default_factory=list)
    ignored: list[Difference] = field(default_factory=list)  # skipped fields that changed
    compared: int = 0  # leaf values compared
    tolerated: int = 0  # numbers that differ within the tolerance


_MISSING = object()


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(missing)"
    if isinstance(value, dict | list):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return repr(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _identical(a: float, b: float) -> bool:
    """Bit for bit (so NaN equals NaN, and 0.0 differs from -0.0); ints exactly."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, int) != isinstance(b, int):
        return False
    return struct.pack("<d", a) == struct.pack("<d", b)


def relative_difference(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if math.isnan(a) or math.isnan(b) or math.isinf(a) or math.isinf(b):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def compare(old: Any, new: Any, tolerance: float = 0.0) -> Comparison:
    """Compare two loaded JSON values recursively (see the module docstring)."""
    result = Comparison()
    _compare(old, new, "", tolerance, result, skipped=False)
    return result


def _compare(
    old: Any, new: Any, path: str, tolerance: float, out: Comparison, skipped: bool
) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        metric = old.get("metric")
        timed_row = isinstance(metric, str) and ignored(metric) == "measured"
        for key in list(old) + [k for k in new if k not in old]:
            skip = skipped or ignored(key) is not None
            skip = skip or (timed_row and key in METRIC_VALUE_FIELDS)
            _compare(
                old.get(key, _MISSING),
                new.get(key, _MISSING),
                f"{path}.{key}",
                tolerance,
                out,
                skip,
            )
        return
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _compare(a, b, f"{path}[{i}]", tolerance, out, skipped)
        return
    if isinstance(old, list) and isinstance(new, list):
        diff = Difference(f"{path} (length)", len(old), len(new))
    elif _is_number(old) and _is_number(new):
        if _identical(old, new):
            diff = None
        else:
            rel = relative_difference(float(old), float(new))
            ok = tolerance > 0 and rel <= tolerance and isinstance(old, int) == isinstance(new, int)
            out.tolerated += ok and not skipped
            diff = None if ok else Difference(path, old, new, rel)
    else:  # strings, nulls, booleans, a type or structure change, a missing key
        same = type(old) is type(new) and old == new
        diff = None if same else Difference(path, old, new)
    if not skipped:
        out.compared += 1
    if diff is not None:
        (out.ignored if skipped else out.differences).append(diff)


def script_options(script: Path, env: dict[str, str]) -> set[str]:
    """The options (``--cache``, ``--threads``) the script's ``--help`` mentions."""
    proc = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return {opt for opt in ("--cache", "--threads") if opt in proc.stdout}


def run_benchmark(name: str, out: Path, timeout: float | None) -> tuple[int, float]:
    """Run one benchmark's --quick version; (exit code, seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p
    )
    script = HERE / f"{name}.py"
    options = script_options(script, env)
    target = out / f"{name}.json"
    target.unlink(missing_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"slem-{name}-cache-") as cache:
        cmd = [sys.executable, str(script), "--quick", "--json", str(target)]
        if "--cache" in options:
            cmd += ["--cache", cache]
        if "--threads" in options:
            cmd += ["--threads", "1"]
        with (out / f"{name}.log").open("w") as log:
            log.write("$ OMP_NUM_THREADS=1 " + " ".join(cmd) + "\n")
            log.flush()
            try:
                rc = subprocess.run(
                    cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
                ).returncode
            except subprocess.TimeoutExpired:
                rc = 124
    seconds = time.perf_counter() - start
    with (out / "runs.txt").open("a") as fh:
        fh.write(f"{name} rc={rc} {seconds:.0f}s\n")
    return rc, seconds


def report(name: str, old_file: Path, new_file: Path, args: argparse.Namespace) -> bool:
    """Compare and print one benchmark; True if it matches the baseline."""
    if not new_file.is_file():
        print(f"{name}: no output ({new_file})")
        return False
    result = compare(
        json.loads(old_file.read_text()), json.loads(new_file.read_text()), args.tolerance
    )
    n = len(result.ignored)
    extra = f", {n} ignored field{'s' * (n != 1)} changed" if n else ""
    if not result.differences and result.tolerated:
        print(
            f"{name}: within tolerance ({result.compared} values compared,"
            f" {result.tolerated} differ by <= {args.tolerance:g}{extra})"
        )
    elif not result.differences:
        print(f"{name}: identical ({result.compared} values compared{extra})")
    else:
        n = len(result.differences)
        print(f"{name}: {n} difference{'s' * (n != 1)} ({result.compared} values compared{extra})")
        for diff in result.differences[: args.show]:
            print(f"    {diff}")
        if n > args.show:
            print(f"    ... {n - args.show} more")
    if args.verbose:
        for diff in result.ignored:
            print(f"    (ignored) {diff}")
    return not result.differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--names", help="comma-separated benchmarks (default: all in --baseline)")
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="baseline JSON directory")
    parser.add_argument(
        "--out", type=Path, help="directory for the new outputs (default: a temp dir)"
    )
    parser.add_argument(
        "--no-run", action="store_true", help="compare the outputs already in --out"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="relative difference allowed (default 0: bit-identical)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per benchmark")
    parser.add_argument("--show", type=int, default=10, help="differences printed per benchmark")
    parser.add_argument(
        "--verbose", action="store_true", help="also print ignored fields that changed"
    )
    args = parser.parse_args(argv)

    if args.no_run and args.out is None:
        parser.error("--no-run needs --out (the directory with the outputs to compare)")
    available = sorted(p.stem for p in args.baseline.glob("*.json"))
    names = args.names.split(",") if args.names else available
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"no baseline for {', '.join(unknown)} in {args.baseline}")
    out = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="slem-quick-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"baseline {args.baseline}\noutputs  {out}")

    failed = []
    for name in names:
        if not args.no_run:
            rc, seconds = run_benchmark(name, out, args.timeout)
            print(f"{name}: ran in {seconds:.0f} s, exit code {rc} (log {out / (name + '.log')})")
            if rc != 0:
                failed.append(name)
        if not report(name, args.baseline / f"{name}.json", out / f"{name}.json", args):
            failed.append(name)
        sys.stdout.flush()
    if failed:
        print(f"differ or failed: {', '.join(dict.fromkeys(failed))}")
        return 1
    print(f"all {len(names)} match the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
