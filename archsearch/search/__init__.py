"""The search: Optuna studies of candidates scored by distillation runs (:mod:`archsearch.distill`).

* :func:`run_search` -- what ``archsearch run SPEC`` does: settings from the spec's ``search:``
  section and flags, the teacher, the study (created or resumed) and the backend
  (``local`` processes or ``ray`` Tune trials).
* :class:`SearchSettings`, :func:`make_sampler` (``nsga2`` default, ``tpe``, ``gp``, ``random``),
  :func:`storage_url` / :func:`open_storage`, :func:`count_trials`, :func:`trial_state`,
  :func:`study_attrs` -- the study.
* :func:`check_space` -- every section of a spec checked before any work (``validate``).
* :func:`evaluate`, :class:`TrialRecord`, :class:`TrialContext` -- one trial.

How a candidate is trained and scored lives in :mod:`archsearch.distill`.
"""

from __future__ import annotations

from archsearch.search._check import SpaceCheck, check_space
from archsearch.search._local import threads_per_worker
from archsearch.search._objective import TrialContext, TrialRecord, evaluate
from archsearch.search._progress import StudyProgress
from archsearch.search._run import BACKENDS, SearchRun, resolve_latency_table, run_search
from archsearch.search._study import (
    DEFAULT_OBJECTIVES,
    DEFAULT_SAMPLER,
    INTERRUPTED,
    OBJECTIVES,
    SAMPLERS,
    SEARCH_KEYS,
    SearchSettings,
    count_trials,
    make_sampler,
    open_storage,
    open_study,
    recover_interrupted,
    storage_url,
    study_attrs,
    trial_state,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_OBJECTIVES",
    "DEFAULT_SAMPLER",
    "INTERRUPTED",
    "OBJECTIVES",
    "SAMPLERS",
    "SEARCH_KEYS",
    "SearchRun",
    "SearchSettings",
    "SpaceCheck",
    "StudyProgress",
    "TrialContext",
    "TrialRecord",
    "check_space",
    "count_trials",
    "evaluate",
    "make_sampler",
    "open_storage",
    "open_study",
    "recover_interrupted",
    "resolve_latency_table",
    "run_search",
    "storage_url",
    "study_attrs",
    "threads_per_worker",
    "trial_state",
]
