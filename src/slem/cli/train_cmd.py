"""``slem train``, ``slem apply`` and ``slem demo``: training runs from the command line."""

from __future__ import annotations

import datetime as dt
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, cast

import typer

from slem.cli.console import ThreadsOption, console, err_console, set_threads, styled, user_errors
from slem.cli.launch import (
    MaxRestartsOption,
    NprocOption,
    check_launch_options,
    continuing,
    relaunch,
)
from slem.data.task import corruption_text, labels_text
from slem.errors import SlemError
from slem.train import distributed
from slem.train.config import (
    TrainConfig,
    apply_overrides,
    load_yaml,
    parse_train_config,
    resolve_paths,
    without_unread_sections,
)
from slem.train.guard import TrainingStopped
from slem.train.methods import data_parallel_refusal
from slem.train.models import with_import_root
from slem.train.record import RunRecord
from slem.train.run import (
    CHECKPOINT_FILE,
    check_new_run_dir,
    default_run_dir,
    read_run_config,
    train_run,
)
from slem.train.threads import resolve_device
from slem.train.trainer import Stoppable

EXIT_CODES = {"interrupted": 130, "aborted": 130, "terminated": 143}

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a config field: key=value (repeatable), e.g. optim.lr=0.1"
    ),
]
OutOption = Annotated[
    Path | None, typer.Option("--out", help="Run directory (default: runs/<time>-<method>-...).")
]
ResumeOption = Annotated[
    Path | None, typer.Option("--resume", help="Continue the run in this directory.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", help="No progress bar.")]
LoggerOption = Annotated[
    list[str] | None,
    typer.Option(
        "--logger",
        metavar="NAME",
        help="Also log the epoch metrics to csv (RUN_DIR/metrics.csv) or tensorboard "
        "(RUN_DIR/tensorboard/, needs the tensorboard extra of slem); repeatable, added to "
        "the config's loggers.",
    ),
]
PresetOption = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help="A published protocol (see 'slem presets'), e.g. mwnet-noise; config fields "
        "and --set win over it.",
    ),
]


@contextmanager
def stop_on_signals(trainers: list[Stoppable]) -> Iterator[None]:
    """SIGINT/SIGTERM ask the trainer to stop after the current step (it then checkpoints);
    a second Ctrl-C interrupts at once."""

    asked: set[int] = set()  # the trainers already asked to stop

    def handler(signum: int, frame: Any) -> None:
        reason = "interrupted" if signum == signal.SIGINT else "terminated"
        if not trainers or id(trainers[-1]) in asked:
            raise KeyboardInterrupt
        asked.add(id(trainers[-1]))
        trainers[-1].request_stop(reason)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def report_stopped(
    exc: TrainingStopped, run_dir: Path, command: str, resume_dir: Path | None = None
) -> NoReturn:
    """Say where the checkpoint is and how to continue (``--resume resume_dir``, default
    ``run_dir``); exit 130 (Ctrl-C) or 143 (kill)."""
    again = resume_dir or run_dir
    # a trainer's checkpoint, a meta-learner's, or a black-box search's study (slem nas)
    checkpoints = [run_dir / CHECKPOINT_FILE, run_dir / "meta_checkpoint.pt", run_dir / "study.db"]
    if not any(p.is_file() for p in checkpoints):
        saved = "no checkpoint was written yet"
        how = f"'{command} --resume {again}' starts it from the beginning"
    else:
        saved = "the last checkpoint is kept" if exc.reason == "aborted" else "checkpoint saved"
        how = f"continue with '{command} --resume {again}'"
    size = distributed.ranks().size
    if size > 1:  # the checkpoint holds every rank's state: resume on as many
        how = how.replace(f"--resume {again}'", f"--resume {again} --nproc {size}'")
    err_console.print(f"{exc.reason}: {saved} in {run_dir}; {how}")
    raise typer.Exit(code=EXIT_CODES.get(exc.reason, 1)) from None


def read_config_values(run_dir: Path, kind: str) -> dict[str, Any]:
    """The ``config.yaml`` of a run directory to resume (``kind`` names the command's runs).

    Raises:
        SlemError: no such directory, or no ``config.yaml`` in it (one line each).
    """
    from slem.train.checkpoint_io import read_yaml_mapping

    path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise SlemError(f"run directory '{run_dir}' does not exist; nothing to resume")
    if not path.is_file():
        raise SlemError(f"'{run_dir}' is not a {kind} run directory (no config.yaml)")
    return read_yaml_mapping(path, "restore it from a copy, or start a new run with another --out")


def run_meta_learner(
    run_dir: Path,
    command: str,
    config: Any,
    resume: bool,
    quiet: bool,
    run: Callable[..., RunRecord],
) -> RunRecord:
    """A meta-learner's run in ``run_dir`` (``slem bbo train``, ``slem fewshot train``): one
    writer (the directory's lock), a new directory checked empty and its ``config.yaml``
    (the pydantic ``config``) written first, Ctrl-C and SIGTERM turned into a clean stop.
    ``run(config, run_dir, resume, progress, on_trainer, render)`` is the meta-learner's run
    function (:func:`slem.train.bbo.bbo_run`, :func:`slem.train.few_shot.few_shot_run`); it
    registers its meta-trainer for those signals through ``on_trainer`` and its plots are
    :func:`slem.report.write_run_plots`.

    Raises:
        typer.Exit: the run was stopped (the checkpoint and how to continue are printed).
    """
    import yaml

    from slem.report import write_run_plots
    from slem.rundir import atomic_write_text, lock_run_dir

    trainers: list[Stoppable] = []
    try:
        with lock_run_dir(run_dir, command):
            if not resume:
                check_new_run_dir(run_dir, command)
                atomic_write_text(
                    run_dir / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"))
                )
            with stop_on_signals(trainers):
                return run(config, run_dir, resume, not quiet, trainers.append, write_run_plots)
    except TrainingStopped as exc:
        report_stopped(exc, run_dir, command)


def reject_with_resume(given: dict[str, object]) -> None:
    """``--resume`` continues a run with its own config: any argument that would change it is
    an error, not silently dropped.

    Raises:
        SlemError: one of ``given`` (option name -> value, None/False/[] when not given) is set.
    """
    named = [n for n, v in given.items() if not (v is None or v is False or v == [])]
    if named:
        raise SlemError(
            f"--resume continues a run with the config it was started with; drop "
            f"{', '.join(named)} (or start a new run without --resume)"
        )


def run_and_report(
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    quiet: bool,
    command: str = "slem train",
    on_trainer: Callable[[Stoppable], None] | None = None,
    resume_dir: Path | None = None,
) -> RunRecord:
    """Train ``config`` into ``run_dir`` and print its result. ``on_trainer``: called with
    the trainer before training starts; ``resume_dir``: the directory a stopped run is
    continued from (default ``run_dir``)."""
    from slem.report import write_run_plots  # here: matplotlib only when a run is written

    trainers: list[Stoppable] = []

    def started(trainer: Stoppable) -> None:
        trainers.append(trainer)
        if on_trainer is not None:
            on_trainer(trainer)

    try:
        with stop_on_signals(trainers):
            result, _ = train_run(
                config,
                run_dir,
                resume=resume,
                progress=not quiet,
                on_trainer=started,
                command=command,
                render=write_run_plots,
            )
    except TrainingStopped as exc:
        if not distributed.ranks().main:
            raise typer.Exit(1) from None
        report_stopped(exc, run_dir, command, resume_dir)
    if not distributed.ranks().main:  # rank 0 reports
        return result
    s = result.summary
    corruption, labels = corruption_text(s), labels_text(s)  # what the test metric measured
    head = styled((config.method, "bold"), f" on {s['dataset']} ({corruption}): ")
    if s.get("metric") == "test_mse":  # regression
        at_best = s.get("test_mse_at_best_val")
        best = ""
        if at_best is not None:
            best = f", {at_best:.4g} (epoch {s['best_epoch']}, best on val MAE)"
        head.append(
            f"test MSE {s['test_mse']:.4g}, MAE {s['test_mae']:.4g} (final epoch){best}; "
            f"test targets: {labels}"
        )
    else:
        at_best = s.get("test_accuracy_at_best_val")
        best = ""
        if at_best is not None:
            on = str(s.get("selected_on", "val_accuracy")).replace("_", " ")
            best = f", {at_best:.4f} (epoch {s['best_epoch']}, best on {on})"
        head.append(
            f"test accuracy {s['test_accuracy']:.4f} (final epoch){best}; test labels: {labels}"
        )
    console.print(head, soft_wrap=True)
    console.print(f"run directory: {run_dir}", soft_wrap=True)
    return result


def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config (see examples/).")] = None,
    out: OutOption = None,
    set_: SetOption = None,
    resume: ResumeOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    preset: PresetOption = None,
    logger: LoggerOption = None,
    nproc: NprocOption = None,
    max_restarts: MaxRestartsOption = 0,
) -> None:
    """Train (or meta-train) as CONFIG says and write a run directory; with --nproc (or
    under torchrun) data-parallel over several ranks (docs/distributed.md)."""
    check_launch_options(out, resume, nproc, max_restarts)
    if resume is not None:
        reject_with_resume({"CONFIG": config, "--out": out, "--set": set_, "--preset": preset})
        cfg = distributed.on_main(lambda: read_run_config(resume))
        cfg = with_loggers(cfg, logger)
        if threads is not None:
            cfg = cfg.model_copy(update={"threads": threads})
        on_ranks(cfg, resume, True, quiet, "slem train", nproc, max_restarts)
        return
    if config is None:
        raise SlemError("give a CONFIG.yaml (see examples/) or --resume RUN_DIR")
    # paths in the file: next to it first; on the command line (--set): the working directory
    values = resolve_paths(
        apply_overrides(resolve_paths(load_yaml(config), config.parent), set_ or [])
    )
    with_import_root(str(config.resolve().parent))  # model.arch modules next to the config
    if preset is not None:
        values["preset"] = preset
    if threads is not None:
        values["threads"] = threads
    cfg = with_loggers(parse_train_config(values), logger)
    on_ranks(cfg, out or default_run_dir(cfg), False, quiet, "slem train", nproc, max_restarts)


def with_loggers(cfg: TrainConfig, names: list[str] | None) -> TrainConfig:
    """``cfg`` with the loggers of ``--logger`` added to its own (``loggers``).

    Raises:
        SlemError: an unknown logger name.
    """
    from slem.train.callbacks import LOGGER_NAMES

    for name in names or []:
        if name not in LOGGER_NAMES:
            raise SlemError(f"--logger {name}: unknown logger; use {' or '.join(LOGGER_NAMES)}")
    if not names:
        return cfg
    return cfg.model_copy(update={"loggers": list(dict.fromkeys([*cfg.loggers, *names]))})


def on_ranks(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool,
    quiet: bool,
    command: str,
    nproc: int | None,
    max_restarts: int,
    on_trainer: Callable[[Stoppable], None] | None = None,
) -> None:
    """:func:`run_and_report` in this process, or on ``nproc`` ranks (relaunched under
    torchrun), or as one rank of the torchrun run this process belongs to (resuming by
    itself after an elastic restart)."""
    if nproc is not None and not distributed.launched():  # what the ranks would refuse
        resolve_device(cfg.device)
        refusal = data_parallel_refusal(cfg) if nproc > 1 else None
        if refusal is not None:
            raise SlemError(refusal)
        if cfg.optim.batch_size < nproc:
            raise SlemError(
                f"optim.batch_size {cfg.optim.batch_size} is smaller than --nproc {nproc}: each "
                "rank needs rows of every batch; raise it or use fewer ranks"
            )
        if not resume:
            check_new_run_dir(run_dir, command)
        raise typer.Exit(relaunch(nproc, max_restarts, None if resume else run_dir, cfg.threads))
    if not distributed.launched():
        run_and_report(cfg, run_dir, resume, quiet, command, on_trainer)
        return
    set_threads(cfg.threads)
    ranks = distributed.start(resolve_device(cfg.device))
    try:
        resuming = continuing(run_dir, resume)
        if distributed.restarted() and ranks.main:
            err_console.print(
                f"torchrun restarted the ranks: {run_dir} resumes from its checkpoint"
            )
        hook = on_trainer if ranks.main else None
        run_and_report(cfg, run_dir, resuming, quiet or not ranks.main, command, hook)
        distributed.stop(finished=True)
    finally:
        distributed.stop()


def presets(
    name: Annotated[str | None, typer.Argument(help="Show this preset's settings.")] = None,
    markdown: Annotated[
        bool,
        typer.Option("--markdown", help="Print the docs table (preset, setting, value, source)."),
    ] = False,
) -> None:
    """List the published protocols (MW-Net, CMW-Net) that 'slem train --preset' applies."""
    from rich.table import Table

    from slem.train.presets import PRESETS, get_preset, markdown_table

    if markdown:
        chosen = [get_preset(name)] if name else None
        console.print(markdown_table(chosen), highlight=False, markup=False, soft_wrap=True)
        return
    if name is None:
        table = Table("preset", "protocol", "code")
        for p in PRESETS.values():
            table.add_row(p.name, p.title, p.code)
        console.print(table)
        console.print("show one with: slem presets NAME", highlight=False)
        return
    p = get_preset(name)
    console.print(f"[bold]{p.name}[/]: {p.title}\n{p.paper}\ncode: {p.code}", highlight=False)
    table = Table("setting", "value", "source")
    for s in p.settings:
        table.add_row(s.key, repr(s.value), s.source)
    console.print(table)
    if p.recommended:
        rec = Table("recommended (not applied)", "value", "source")
        for s in p.recommended:
            rec.add_row(s.key, str(s.value), s.source)
        console.print(rec)
    for d in p.deviations:
        console.print(f"- deviation: {d}", highlight=False, markup=False)


def methods(
    target: Annotated[
        str | None,
        typer.Option(
            "--target", help="Only methods for this target: classification or regression."
        ),
    ] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the docs table (Markdown).")
    ] = False,
) -> None:
    """List the training methods (the registry, slem.train.methods): what each trains on,
    which method-specific config sections it reads, what it meta-learns and how."""
    from rich.table import Table
    from rich.text import Text

    from slem.errors import SlemError
    from slem.train import methods as registry

    if target not in (None, "classification", "regression"):
        raise SlemError(f"--target must be classification or regression, not '{target}'")
    chosen = cast("registry.Target | None", target)
    if markdown:
        text = registry.markdown(chosen)
        console.print(text, highlight=False, markup=False, soft_wrap=True)
        return
    rows = registry.table_rows(chosen)
    if console.width < 140:  # too narrow for the table: one block per method
        for name, *fields, summary in rows:
            console.print(Text.assemble((name, "bold"), f"  {summary}"), soft_wrap=True)
            for header, value in zip(registry.TABLE_HEADER[1:-1], fields, strict=True):
                console.print(Text(f"    {header}: {value}"), soft_wrap=True)
        return
    table = Table(*registry.TABLE_HEADER)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def apply(
    artifact: Annotated[
        Path | None,
        typer.Argument(
            help="A methodology artifact directory, the run directory holding it, or "
            "zoo:NAME for a shipped one (see 'slem zoo list')."
        ),
    ] = None,
    data: Annotated[str | None, typer.Option(help="Dataset of the new task.")] = None,
    noise: Annotated[str | None, typer.Option(help="KIND:RATE noise of the new task.")] = None,
    imbalance: Annotated[
        float | None, typer.Option(help="Long-tail factor of the new task.")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs (default: as meta-trained).")
    ] = None,
    size: Annotated[int | None, typer.Option(help="Training-pool size.")] = None,
    target: Annotated[str | None, typer.Option(help="Target column (tables and files).")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Fashion-MNIST directory.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the new task and training (default 0).")
    ] = None,
    out: OutOption = None,
    set_: SetOption = None,
    resume: ResumeOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    logger: LoggerOption = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            "--compare",
            metavar="METHODS",
            help="Also train these baselines (comma-separated, e.g. erm,gce) on the same task "
            "split with the same model and optimizer settings, into OUT/compare/METHOD, and "
            "print the side-by-side table (OUT/compare.json).",
        ),
    ] = None,
    nproc: NprocOption = None,
    max_restarts: MaxRestartsOption = 0,
) -> None:
    """Train on a new task with a saved, frozen methodology: no meta set, no tuning."""
    from slem.cli import compare as cmp

    check_launch_options(out, resume, nproc, max_restarts)
    if resume is not None:
        reject_with_resume(
            {
                "ARTIFACT": artifact,
                "--data": data,
                "--noise": noise,
                "--imbalance": imbalance,
                "--epochs": epochs,
                "--size": size,
                "--target": target,
                "--data-dir": data_dir,
                "--seed": seed,
                "--out": out,
                "--set": set_,
                "--compare": compare,
            }
        )
        cfg = distributed.on_main(lambda: read_run_config(resume))
        cfg = with_loggers(cfg, logger)
        if threads is not None:
            cfg = cfg.model_copy(update={"threads": threads})
        recorded = distributed.on_main(lambda: cmp.read_compare(resume))
        if recorded is None:
            on_ranks(cfg, resume, True, quiet, "slem apply", nproc, max_restarts)
            return
        refuse_compare_on_ranks(nproc)
        if not (resume / "summary.json").is_file():  # the applied run has not finished
            on_ranks(cfg, resume, True, quiet, "slem apply", nproc, max_restarts)
        compare_baselines(resume, cfg, recorded, quiet, threads, logger)
        return
    if artifact is None or data is None:
        raise SlemError("give the ARTIFACT directory and --data NAME (or --resume RUN_DIR)")
    from slem.methodology import read_artifact_info
    from slem.train.meta_test import apply_config

    overrides = [*(set_ or []), *([f"threads={threads}"] if threads is not None else [])]
    data_values = {
        "name": data,
        "noise": noise,
        "imbalance": imbalance,
        "size": size,
        "target": target,
        "data_dir": data_dir,
    }
    cfg = apply_config(artifact, data_values, epochs=epochs, seed=seed or 0, overrides=overrides)
    cfg = with_loggers(cfg, logger)
    trained = read_artifact_info(artifact).get("training_config") or {}
    hooks = [cmp.settings_announcer(cfg, trained, _say)]
    baselines: list[str] = []
    if compare is not None:  # every baseline checked before anything is written
        refuse_compare_on_ranks(nproc)
        baselines = cmp.parse_compare(compare, artifact_target(cfg))
        for name in baselines:
            cmp.baseline_config(cfg, name)
    run_dir = out or default_run_dir(cfg)
    if baselines:  # recorded once the applied run holds its directory, for --resume

        def record(_: Stoppable) -> None:
            cmp.write_compare(run_dir, baselines, [])

        hooks.append(record)

    def started(trainer: Stoppable) -> None:
        for hook in hooks:
            hook(trainer)

    on_ranks(cfg, run_dir, False, quiet, "slem apply", nproc, max_restarts, started)
    if baselines:
        compare_baselines(run_dir, cfg, baselines, quiet, threads, logger)


def _say(line: str) -> None:
    console.print(line, soft_wrap=True)


def refuse_compare_on_ranks(nproc: int | None) -> None:
    """``--compare`` trains its baselines in this process, one after another.

    Raises:
        SlemError: with ``--nproc``, or under torchrun.
    """
    if nproc is not None or distributed.launched():
        raise SlemError(
            "--compare trains the baselines in one process: drop --nproc (and run it "
            "outside torchrun)"
        )


def artifact_target(cfg: TrainConfig) -> str | None:
    """The targets (classification, regression) the applied artifact trains on."""
    from slem.methodology import load_frozen
    from slem.train.methods import spec_applying

    assert cfg.methodology is not None
    return spec_applying(load_frozen(cfg.methodology)).target


def compare_baselines(
    out: Path,
    cfg: TrainConfig,
    baselines: list[str],
    quiet: bool,
    threads: int | None,
    logger: list[str] | None,
) -> None:
    """Train (or resume, or read back) the baselines into ``OUT/compare/`` and print the
    table of the applied run against them."""
    from slem.cli import compare as cmp

    def run(config: TrainConfig, run_dir: Path, resume: bool) -> None:
        run_and_report(config, run_dir, resume, quiet, "slem apply", resume_dir=out)

    def read_config(run_dir: Path) -> TrainConfig:
        config = with_loggers(read_run_config(run_dir), logger)
        return config.model_copy(update={"threads": threads}) if threads is not None else config

    rows = cmp.run_baselines(out, cfg, baselines, run, read_config)
    console.print(cmp.compare_table(rows))
    console.print(f"comparison: {out / cmp.COMPARE_FILE}", soft_wrap=True)


def demo(
    out: Annotated[
        Path | None, typer.Option(help="Where the two runs go (default runs/demo-<time>).")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs of each run.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
) -> None:
    """MW-Net against ERM on MNIST-1D with 40% symmetric label noise (a few minutes on CPU)."""
    from slem.rundir import make_run_dir
    from slem.train.run import check_new_run_dir

    if out is None:
        out = Path("runs") / f"demo-{dt.datetime.now():%Y%m%d-%H%M%S}"
    configs = {
        method: parse_train_config(
            without_unread_sections(
                {
                    "method": method,
                    "data": {
                        "name": "mnist1d",
                        "noise": "symmetric:0.4",
                        "meta_per_class": 10,
                        "seed": seed,
                    },
                    "optim": {"epochs": epochs},
                    # MW-Net: one ERM warm-up epoch, none when the demo is shortened to one
                    # epoch (ERM has no meta section)
                    "meta": {"warmup_epochs": max(0, min(1, epochs - 1))},
                    "seed": seed,
                    "threads": threads,
                }
            )
        )
        for method in ("erm", "mwnet")
    }
    for method in configs:  # both checked before either run starts
        check_new_run_dir(make_run_dir(out / f"{method}-s{seed}"), "slem train")
    results = {
        method: run_and_report(cfg, out / f"{method}-s{seed}", False, quiet)
        for method, cfg in configs.items()
    }
    erm, mw = results["erm"].summary, results["mwnet"].summary
    console.print()
    console.print(styled(("MNIST-1D, 40% symmetric noise, 10 clean samples per class", "bold")))
    for name, s in (("ERM", erm), ("MW-Net", mw)):
        auc = ""
        if s["weight_auc"] is not None:
            auc = f", weight AUC clean vs noisy {s['weight_auc']:.3f}"
        console.print(f"  {name:7s} test accuracy {s['test_accuracy']:.4f}{auc}")
    console.print(f"plots: {out / f'mwnet-s{seed}' / 'plots'}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    for fn in (train, apply, demo, presets, methods):
        app.command(fn.__name__)(user_errors(fn))
