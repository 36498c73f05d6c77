"""The store: an Optuna study read back into ``reports/<study>/`` files.

:func:`write_store` writes ``trials.csv`` (one row per trial), ``meta.json``,
``pareto/<candidate_id>.yaml``, ``latency_breakdown.csv`` and, for an evolve study, ``evolution.csv``; :func:`trials_frame` gives the
same table as a pandas DataFrame without writing; :func:`load_trials` reads ``trials.csv`` back
(checked against ``meta.json``: :func:`check_store`); :func:`refresh_store` rebuilds a folder
from its study's storage (a killed run, a cut-short ``trials.csv``). :func:`within_noise`,
:func:`knee_point` and :func:`prompt_warnings` are what the store adds so that a front is not
read as more than it is (candidates within the noise of a cheaper one, the suggested pick, the
candidates that cannot see the prompt).
"""

from archsearch.store._honest import NOISE_Z, knee_point, prompt_warnings, within_noise
from archsearch.store._store import (
    BASE_COLUMNS,
    EVOLUTION_COLUMNS,
    STORE_VERSION,
    SUM_OF_MEASURED,
    StoreSummary,
    check_store,
    load_trials,
    pareto_ids,
    refresh_store,
    trials_frame,
    write_store,
)

__all__ = ["BASE_COLUMNS", "EVOLUTION_COLUMNS", "NOISE_Z", "STORE_VERSION", "SUM_OF_MEASURED", "StoreSummary",
           "check_store", "knee_point", "load_trials", "pareto_ids", "prompt_warnings", "refresh_store", "trials_frame",
           "within_noise", "write_store"]
