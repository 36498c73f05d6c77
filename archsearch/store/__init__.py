"""The store: an Optuna study read back into ``reports/<study>/`` files.

:func:`write_store` writes ``trials.csv`` (one row per trial), ``meta.json``,
``pareto/<candidate_id>.yaml``, ``latency_breakdown.csv`` and, for an evolve study, ``evolution.csv``; :func:`trials_frame` gives the
same table as a pandas DataFrame without writing; :func:`load_trials` reads ``trials.csv`` back
(checked against ``meta.json``: :func:`check_store`); :func:`refresh_store` rebuilds a folder
from its study's storage (a killed run, a cut-short ``trials.csv``).
"""

from archsearch.store._store import (
    BASE_COLUMNS,
    EVOLUTION_COLUMNS,
    StoreSummary,
    check_store,
    load_trials,
    pareto_ids,
    refresh_store,
    trials_frame,
    write_store,
)

__all__ = ["BASE_COLUMNS", "EVOLUTION_COLUMNS", "StoreSummary", "check_store", "load_trials", "pareto_ids", "refresh_store",
           "trials_frame", "write_store"]
