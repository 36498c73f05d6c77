"""The search: Optuna studies of candidates scored by proxy distillation runs.

* :func:`run_search` -- what ``archsearch run SPEC`` does: settings from the spec's ``search:``
  section and flags, the teacher, the study (created or resumed) and the backend
  (``local`` processes or ``ray`` Tune trials).
* :class:`SearchSettings`, :func:`make_sampler` (``nsga2`` default, ``tpe``, ``gp``, ``random``),
  :func:`storage_url` / :func:`open_storage`, :func:`count_trials`, :func:`trial_state`,
  :func:`study_attrs` -- the study.
* :func:`evaluate`, :class:`TrialRecord`, :class:`TrialContext` -- one trial.
* :class:`ProxyConfig`, :func:`run_proxy`, :class:`ProxyResult`, :class:`TrialFailed` -- the
  proxy distillation run; :class:`Teacher`, :func:`load_teacher`; the built-in data
  (:class:`SyntheticImageText`, :class:`SyntheticVideoText`) and :class:`TextEncoder`.
* :mod:`archsearch.search.pareto` -- dominance and hypervolume.

Names are imported on first use, so ``archsearch.search.pareto`` alone does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    # study orchestration
    "BACKENDS": "_run",
    "SearchRun": "_run",
    "run_search": "_run",
    "resolve_latency_table": "_run",
    "DEFAULT_OBJECTIVES": "_study",
    "DEFAULT_SAMPLER": "_study",
    "INTERRUPTED": "_study",
    "OBJECTIVES": "_study",
    "SAMPLERS": "_study",
    "SEARCH_KEYS": "_study",
    "SearchSettings": "_study",
    "count_trials": "_study",
    "make_sampler": "_study",
    "open_storage": "_study",
    "open_study": "_study",
    "recover_interrupted": "_study",
    "storage_url": "_study",
    "study_attrs": "_study",
    "trial_state": "_study",
    "TrialContext": "_objective",
    "TrialRecord": "_objective",
    "evaluate": "_objective",
    "StudyProgress": "_progress",
    "threads_per_worker": "_local",
    # proxy distillation, teacher, data (helper S1)
    "ProxyConfig": "_distill",
    "ProxyResult": "_distill",
    "TrialFailed": "_distill",
    "run_proxy": "_distill",
    "Teacher": "_teacher",
    "load_teacher": "_teacher",
    "SyntheticImageText": "_data",
    "SyntheticVideoText": "_data",
    "TextEncoder": "_text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'archsearch.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"archsearch.search.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from archsearch.search._data import SyntheticImageText, SyntheticVideoText
    from archsearch.search._distill import ProxyConfig, ProxyResult, TrialFailed, run_proxy
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
    from archsearch.search._teacher import Teacher, load_teacher
    from archsearch.search._text import TextEncoder
