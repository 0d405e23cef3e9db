"""What a study's trials became: the trial states and user attributes the worker loop uses,
:class:`Tally` and :func:`tally` (trials by outcome), :func:`counted` and :func:`best_rows`.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
ERROR = "error"  # user attr of a trial whose objective raised (or returned no number)
SKIPPED = "skipped"  # user attr of a trial that was never evaluated (duplicate, surplus)
WORKER = "worker"  # user attr: host:pid of the process that ran the trial
#: user attr: where a trial's configuration came from: ``sampler`` (the study's sampler),
#: ``zero_shot:<meta-dataset>#<rank>`` or ``warm_start:<task>`` (enqueued from earlier tasks)
SOURCE = "source"


@dataclass(frozen=True)
class Tally:
    """A study's trials by what became of them. ``finished`` (complete or pruned) is what
    counts toward the study's total; ``failed`` raised an error (``error`` user attr),
    ``lost`` belonged to a worker that stopped sending heartbeats, ``skipped`` were never
    evaluated (a duplicate configuration, or a trial beyond the total)."""

    complete: int
    pruned: int
    running: int
    waiting: int
    failed: int
    lost: int
    skipped: int

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def tally(study: optuna.Study) -> Tally:
    counts = dict.fromkeys(("complete", "pruned", "running", "waiting"), 0)
    failed = lost = skipped = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL:
            if SKIPPED in t.user_attrs:
                skipped += 1
            elif ERROR in t.user_attrs:
                failed += 1
            else:
                lost += 1
        else:
            counts[t.state.name.lower()] += 1
    return Tally(failed=failed, lost=lost, skipped=skipped, **counts)


def counted(study: optuna.Study) -> int:
    """Trials that count toward the study's total: the finished ones (complete or pruned).
    Failed trials are replaced, running ones may still fail."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def best_rows(study: optuna.Study, k: int = 5) -> list[optuna.trial.FrozenTrial]:
    """The ``k`` best complete trials, best first."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(done, key=lambda t: sign * float(t.value or 0.0))[:k]
