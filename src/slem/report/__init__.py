"""Reports of runs, the top layer beside ``cli``: plots (PNG, and HTML for studies) rendered
from plain data, never from trainers.

- :func:`write_run_plots` renders a :class:`slem.train.record.RunRecord` (what
  :func:`slem.train.train_run` and :func:`slem.train.bbo.bbo_run` return) into
  ``run_dir/plots/``;
- :func:`write_study_plots` renders an Optuna study (``slem hpo``).

Nothing below ``report`` imports it (``lint-imports``, see ``pyproject.toml``).
"""

from slem.report.hpo_plots import write_study_plots
from slem.report.plots import write_run_plots

__all__ = ["write_run_plots", "write_study_plots"]
