"""The search: Optuna studies of candidates scored by distillation runs (:mod:`archsearch.distill`).

* :func:`run_search` -- what ``archsearch run SPEC`` does: settings from the spec's ``search:``
  section and the caller's :class:`RunOptions`, the teacher, the study (created or resumed;
  interrupted trials re-run) and the search method's trials. It draws nothing:
  ``progress(phase, description, done, total)``, ``log(message)`` and ``on_trial(study)``
  callbacks.
* :class:`SearchMethod` -- one way of searching (``search.method``), registered by name
  (:func:`register_method`, :data:`METHODS`; :func:`search_method` looks one up): ``optuna``
  (the sampler proposes; ``local`` processes or ``ray`` Tune trials), ``evolve`` (SnapFusion's
  architecture evolving over the supernet), ``temporal`` (SnapGen-V's temporal layers on a
  frozen image backbone). Each says what its ``search:`` section needs, what ``validate``
  refuses, the one trial context, what a study runs first and how the trials run.
* :class:`SearchSettings`, :func:`make_sampler` (``gp`` default, :data:`DEFAULT_SAMPLER`; ``nsga2``,
  ``tpe``, ``random``; ``search.method: temporal`` defaults to ``nsga2``),
  :func:`storage_url` / :func:`open_storage`, :func:`count_trials`, :func:`trial_state`,
  :func:`study_attrs`, :func:`requeue_interrupted`, :class:`TrialSeededSampler`,
  :class:`StudyLock` / :func:`lock_path` -- the study.
* :func:`check_space` -- every section of a spec checked before any work (``validate``).
* :func:`evaluate`, :class:`TrialRecord`, :class:`TrialContext` -- one trial.

How a candidate is trained and scored lives in :mod:`archsearch.distill`.
"""

from __future__ import annotations

from archsearch.search._check import SpaceCheck, check_space
from archsearch.search._local import available_cores, check_workers, threads_per_worker
from archsearch.search._methods import SearchMethod, register_method, search_method
from archsearch.search._objective import TrialContext, TrialRecord, claim, evaluate
from archsearch.search._progress import Progress, TrialsProgress, describe_counts
from archsearch.search._run import BACKENDS, RunOptions, SearchRun, resolve_latency_table, run_search
from archsearch.search._study import (
    DEFAULT_OBJECTIVES,
    DEFAULT_SAMPLER,
    INTERRUPTED,
    METHODS,
    OBJECTIVES,
    SAMPLERS,
    SEARCH_KEYS,
    SearchSettings,
    StudyLock,
    TrialSeededSampler,
    count_trials,
    lock_path,
    make_sampler,
    open_storage,
    open_study,
    recover_interrupted,
    requeue_interrupted,
    storage_file,
    storage_url,
    study_attrs,
    trial_slot,
    trial_state,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_OBJECTIVES",
    "DEFAULT_SAMPLER",
    "INTERRUPTED",
    "METHODS",
    "OBJECTIVES",
    "SAMPLERS",
    "SEARCH_KEYS",
    "Progress",
    "RunOptions",
    "SearchMethod",
    "SearchRun",
    "SearchSettings",
    "SpaceCheck",
    "StudyLock",
    "TrialContext",
    "TrialRecord",
    "TrialSeededSampler",
    "TrialsProgress",
    "available_cores",
    "check_space",
    "check_workers",
    "claim",
    "count_trials",
    "describe_counts",
    "evaluate",
    "lock_path",
    "make_sampler",
    "open_storage",
    "open_study",
    "recover_interrupted",
    "register_method",
    "requeue_interrupted",
    "resolve_latency_table",
    "run_search",
    "search_method",
    "storage_file",
    "storage_url",
    "study_attrs",
    "threads_per_worker",
    "trial_slot",
    "trial_state",
]
