"""Few-shot recalibration: refit a table measured on another machine to this one from K
whole models timed here (what LitePred and HELP do with a handful of measurements).

    result = recalibrate_table("latency_tables/unet_mobile-cpu-r16.csv", models=8)
    result.fit.scales        # {'resnet': 1.71, 'transformer': 1.52, ...}: this machine / that one
    result.table             # the new table (saved at result.out), measured-class for this machine

The K candidates come from the space the table names, spread over the table's latency
range; each is timed whole with the same timer a profile run's calibration uses (the
backend's ``model_ms``, the table's own settings); :func:`fit_recalibration` fits a scale
per block type; every row of the table is multiplied by its type's scale and the result is
written (atomically) as a new table whose header says what it was derived from, with K, the
fit and its residuals, and this machine's fingerprint.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from archsearch.cost.latency._errors import ParameterError
from archsearch.cost.latency._keys import candidate_blocks
from archsearch.cost.latency._table import LatencyTable, load_table
from archsearch.errors import ArchsearchError

__all__ = [
    "MIN_MODELS_PER_TYPE",
    "RECALIBRATION_SEED",
    "RecalibrationFit",
    "RecalibrationResult",
    "choose_recalibration_candidates",
    "default_recalibrated_path",
    "fit_recalibration",
    "recalibrate_table",
    "type_sums",
]

#: Seed of the candidates a recalibration times (validation uses other seeds; its ids are the
#: new table's calibration points, which validation never draws).
RECALIBRATION_SEED = 7_000_019
#: below this many whole models only one global scale is fitted (a per-type fit is checked by
#: leaving one model out, and needs a few left to fit on)
MIN_MODELS_PER_TYPE = 5
#: a per-type fit replaces the global scale only when its leave-one-out error is at most this
#: share of the global scale's (leave-one-out errors of <= 10 models are noisy themselves)
PER_TYPE_GAIN = 0.9
#: shrinkage strengths tried (see :func:`fit_recalibration`), weakest first; ``inf`` = global
_LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, float("inf"))

Progress = Callable[[str, str, int, int], None]


# ----------------------------------------------------------------------------- the fit


@dataclass(frozen=True)
class RecalibrationFit:
    """``measured ≈ Σ_type scales[type] · (the type's rows summed)`` over the K models.

    ``method``: ``global`` (one scale for every type) or ``per-type`` (shrunk towards the
    global scale with strength ``shrinkage``); ``global_scale``: the one-scale fit;
    ``mape``: the fit's mean absolute percentage error on the K models (in sample);
    ``loo_mape``: the same with each model predicted by a fit on the others (the figure the
    method was chosen on), ``global_loo_mape`` the global scale's.
    """

    method: str
    scales: dict[str, float]
    global_scale: float
    shrinkage: float
    k: int
    mape: float
    loo_mape: float
    global_loo_mape: float

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "k": self.k,
                "scales": {t: round(float(s), 6) for t, s in self.scales.items()},
                "global_scale": round(float(self.global_scale), 6),
                "shrinkage": None if not np.isfinite(self.shrinkage) else float(self.shrinkage),
                "mape": round(float(self.mape), 4), "loo_mape": _round(self.loo_mape),
                "global_loo_mape": _round(self.global_loo_mape)}

    def line(self) -> str:
        """One line: the scales and the residuals."""
        if self.method == "global":
            what = f"one scale x{self.global_scale:.3f} for every block type"
        else:
            what = "per type " + ", ".join(f"{t} x{s:.3f}" for t, s in sorted(self.scales.items(),
                                                                          key=lambda kv: kv[0]))
        loo = "" if not np.isfinite(self.loo_mape) else (
            f", leave-one-out {self.loo_mape:.2f}% (global scale: {self.global_loo_mape:.2f}%)")
        return f"{what}; residual on the {self.k} models: MAPE {self.mape:.2f}%{loo}"


def _round(v: float) -> float | None:
    return round(float(v), 4) if np.isfinite(v) else None


def _global_scale(x: np.ndarray, y: np.ndarray) -> float:
    """The scale ``s`` minimising ``Σ ((y - s x) / y)²`` (relative errors: MAPE is the aim)."""
    r = x / y
    return float(r.sum() / (r * r).sum())


def _shrunk_fit(X: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """Per-type scales ``s >= 0`` minimising ``Σ_k ((y_k - X_k s) / y_k)² + lam K Σ_t (s_t - s0)²``
    (``s0``: the global scale of these models); ``lam = inf``: every scale is ``s0``."""
    from scipy.optimize import nnls

    s0 = _global_scale(X.sum(axis=1), y)
    if not np.isfinite(lam):
        return np.full(X.shape[1], s0)
    k, t = X.shape
    a = np.vstack([X / y[:, None], np.sqrt(lam * k) * np.eye(t)])
    b = np.concatenate([np.ones(k), np.full(t, np.sqrt(lam * k) * s0)])
    return nnls(a, b)[0]


def _mape(pred: np.ndarray, y: np.ndarray) -> float:
    return float(100 * np.mean(np.abs(pred - y) / y))


def _loo_mape(X: np.ndarray, y: np.ndarray, lam: float) -> float:
    k = len(y)
    pred = np.empty(k)
    for i in range(k):
        keep = np.arange(k) != i
        pred[i] = X[i] @ _shrunk_fit(X[keep], y[keep], lam)
    return _mape(pred, y)


def fit_recalibration(sums: pd.DataFrame, measured: Any) -> RecalibrationFit:
    """Scales per block type that turn a table's rows into this machine's whole-model times.

    ``sums``: one row per timed model, one column per block type: the table's rows of that
    type summed (uncalibrated, :func:`type_sums`); ``measured``: the models' times here.

    Why per type, and why shrunk: a machine change does not scale every block alike (another
    instruction set speeds convolutions up more than normalisations and attention's softmax,
    another cache size helps small blocks more than large ones), and one global scale cannot
    change a table's ranking of candidates at all — the problem a foreign table has besides
    its level (issue 22: Spearman 0.64 for the foreign table against 0.82 for one built on the
    machine). But K ≤ 10 models cannot pin down a scale for a type that is a few percent of
    every model, and types present once per model (stem, head, time embedding) have columns
    that move together; a free non-negative least-squares fit would give them arbitrary
    scales. So each type's scale is pulled towards the global scale (a ridge penalty on
    ``s_type - s_global``, non-negative least squares on relative errors): types that make up
    much of a model and vary between models get their own scale, the others stay at the
    machine's average speed-up. The penalty's strength is chosen by leaving each model out
    in turn and predicting it from the others, among a few strengths and the global scale
    alone; the per-type fit must beat the global scale clearly (by :data:`PER_TYPE_GAIN`:
    leave-one-out errors of a few models are noisy themselves), and with fewer than
    :data:`MIN_MODELS_PER_TYPE` models the global scale is the only candidate. No intercept is fitted: what a whole model adds to its
    blocks' sum is a few percent, proportional to its size in the tables measured so far,
    and an intercept trades off against the scales on so few points.
    """
    X = np.asarray(sums, dtype=float)
    y = np.asarray(measured, dtype=float)
    types = [str(c) for c in sums.columns] if isinstance(sums, pd.DataFrame) else [f"type{i}" for i in range(X.shape[1])]
    if X.ndim != 2 or X.shape[0] != len(y) or not len(y):
        raise ValueError("sums must have one row per measured model")
    if not (y > 0).all() or not (X.sum(axis=1) > 0).all():
        raise ValueError("measured times and block sums must be > 0")
    k = len(y)
    s0 = _global_scale(X.sum(axis=1), y)
    if k < 2:
        return RecalibrationFit("global", {t: s0 for t in types}, s0, float("inf"), k,
                                _mape(X.sum(axis=1) * s0, y), float("nan"), float("nan"))
    global_loo = _loo_mape(X, y, float("inf"))
    best_lam, best_loo = float("inf"), global_loo
    if k >= MIN_MODELS_PER_TYPE and X.shape[1] > 1:
        for lam in _LAMBDAS[:-1]:
            loo = _loo_mape(X, y, lam)
            if loo < best_loo - 1e-9:
                best_lam, best_loo = lam, loo
        if best_loo > PER_TYPE_GAIN * global_loo:  # not clearly better: the simpler fit
            best_lam, best_loo = float("inf"), global_loo
    scales = _shrunk_fit(X, y, best_lam)
    method = "global" if not np.isfinite(best_lam) else "per-type"
    return RecalibrationFit(method, {t: float(s) for t, s in zip(types, scales)}, s0, best_lam, k,
                            _mape(X @ scales, y), best_loo, global_loo)


# ----------------------------------------------------------------------------- candidates


def type_sums(table: LatencyTable, candidates: list[Any]) -> pd.DataFrame:
    """The table's rows summed per block type, one row per candidate (index: ids); every
    block of every candidate must be in the table."""
    ms = table.ms_array
    types = table.df["type"].tolist()
    out = []
    for c in candidates:
        acc: dict[str, float] = {}
        for key in candidate_blocks(c).keys:
            i = table.index_of(key)
            if i is None:
                raise ValueError(f"block {key} of candidate {c.id} is not in the table")
            t = types[i] or "unknown"
            acc[t] = acc.get(t, 0.0) + float(ms[i])
        out.append(acc)
    df = pd.DataFrame(out, index=[c.id for c in candidates]).fillna(0.0)
    return df[sorted(df.columns)]


def choose_recalibration_candidates(table: LatencyTable, space: Any, models: int,
                                    seed: int = RECALIBRATION_SEED, pool: int | None = None) -> list[Any]:
    """``models`` candidates of ``space`` whose blocks are all in ``table``, spread evenly
    over the table's latency range: a seeded pool (default ``max(64, 16 * models)``, the
    table's calibration candidates left out) sorted by the table's prediction, and the ones
    at evenly spaced ranks taken (the fastest and the slowest among them)."""
    from archsearch.cost.latency._blocks import sample_candidates
    from archsearch.cost.latency._predictor import predictor_for

    resolution = table.meta.get("resolution")
    calib = {p.get("id") for p in (table.meta.get("calibration") or {}).get("points", []) if isinstance(p, dict)}
    drawn = sample_candidates(space, pool or max(64, 16 * models), seed, resolution, exclude=calib)
    covered = [c for c in drawn if all(k in table for k in candidate_blocks(c).keys)]
    if len(covered) < models:
        name = table.path or "the table"
        raise ArchsearchError(
            f"{name}: only {len(covered)} of {len(drawn)} sampled candidates of {getattr(space, 'name', 'the space')} "
            f"have all their blocks in the table (needed: {models}); is it the table of this space and resolution "
            f"{resolution}?")
    pred = predictor_for(table).block_sums(covered)
    order = np.argsort(pred, kind="stable")
    ranks = sorted({int(round(q)) for q in np.linspace(0, len(covered) - 1, models)})
    return [covered[int(order[r])] for r in ranks]


# ----------------------------------------------------------------------------- the table


@dataclass
class RecalibrationResult:
    """What :func:`recalibrate_table` did: the new ``table`` (saved at ``out``), the ``fit``,
    one row per timed model in ``points`` (id, table_ms: the source table's prediction,
    measured_ms, fitted_ms: the new table's), the ``seconds`` it took, the ``source`` path."""

    table: LatencyTable
    out: Path
    fit: RecalibrationFit
    points: pd.DataFrame
    seconds: float
    source: str
    device: str = ""
    notes: list[str] = field(default_factory=list)


def default_recalibrated_path(path: str | os.PathLike) -> Path:
    """``latency_tables/<stem>-recalibrated.csv`` (in this folder's latency_tables/: a
    shipped table's own folder may not be writable)."""
    return Path("latency_tables") / f"{Path(path).stem}-recalibrated.csv"


def _space_of(table: LatencyTable, name: str) -> Any:
    from archsearch._resources import find_space
    from archsearch.spec import load_space

    info = table.meta.get("space") or {}
    path = info.get("path") if isinstance(info, dict) else None
    if not path:
        raise ArchsearchError(f"{name}: its header names no search space (space: path:); give the space: "
                              f"archsearch profile SPACE --recalibrate {name}")
    return load_space(find_space(path))


def _file_sha(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


#: header keys of the source table that describe its own run, not the new table
_DROP = ("calibration", "calibration_refused", "validation", "sentinel", "loadavg_start", "loadavg_end",
         "created", "updated", "build_seconds", "derived_from", "fingerprint", "imported")


def recalibrate_table(table: LatencyTable | str | os.PathLike, models: int = 8,
                      out: str | os.PathLike | None = None, *, space: Any = None, backend: Any = None,
                      progress: Progress | None = None, seed: int = RECALIBRATION_SEED,
                      command: str | None = None) -> RecalibrationResult:
    """Refit a measured table to this machine from ``models`` whole models timed here.

    ``table``: a :class:`LatencyTable` or its file; ``out``: the new table's file (default
    :func:`default_recalibrated_path`; never the source's). ``space``: the space to draw the
    models from (default: the one the table's header names). ``backend``: what times a whole
    model (default: the table's target with its dtype, batch, threads and timing settings,
    :func:`make_backend`; its ``model_ms`` is what a profile run's calibration uses).
    ``command``: how the recalibration was asked for (recorded). Estimated and imported
    tables are refused: their device is elsewhere by design, nothing here can time it.
    The new table is written once, atomically: an interrupted run leaves no file.
    """
    from archsearch.cost.latency._backends import make_backend
    from archsearch.cost.latency._fingerprint import device_fingerprint, table_fingerprint
    from archsearch.cost.latency._measure import MeasureSettings, device_name
    from archsearch.cost.latency._predictor import LatencyPredictor
    from archsearch.cost.latency._profile import _versions

    if not isinstance(table, LatencyTable):
        table = load_table(table)
    name = str(table.path) if table.path is not None else "the latency table"
    if not isinstance(models, int) or isinstance(models, bool) or models < 2:
        raise ParameterError("models", f"{models!r}: bad value (allowed: an integer >= 2; 8 is plenty)")
    src = table.source
    if src != "measured":
        raise ArchsearchError(f"{name}: source {src or 'unknown'}: only a measured table can be recalibrated "
                              "(estimated and imported tables describe a device elsewhere by design; "
                              "allowed: a table built with archsearch profile --target cpu|cuda|mps|xnnpack)")
    meta = table.meta
    target = str(meta.get("target") or "cpu")
    out = Path(out) if out is not None else default_recalibrated_path(name)
    if table.path is not None and out.resolve() == Path(table.path).resolve():
        raise ParameterError("out", f"{out}: is the table being recalibrated (allowed: another path; the "
                             "source table is kept as it is)")
    if backend is None:
        measure = {k: v for k, v in (meta.get("measure") or {}).items()
                   if k in MeasureSettings.__dataclass_fields__}
        backend = make_backend(target, dtype=str(meta.get("dtype", "float32")), batch=int(meta.get("batch", 1)),
                               threads=int(meta["threads"]) if meta.get("threads") else None,
                               settings=MeasureSettings(**measure))
    if backend.source != "measured" or not backend.calibrates:
        raise ArchsearchError(f"{name}: target {target}: whole models cannot be timed on this machine "
                              f"(its backend gives {backend.source} rows); allowed: cpu, cuda, mps, xnnpack tables")
    if space is None:
        space = _space_of(table, name)
    started = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    cands = choose_recalibration_candidates(table, space, models, seed)
    old_pred = LatencyPredictor(table).predict(cands)
    measured = []
    with backend.session():
        for i, c in enumerate(cands):
            if progress:
                progress("recalibrate", f"whole model {c.id}", i, len(cands))
            measured.append(float(backend.model_ms(c)))
    if progress:
        progress("recalibrate", "done", len(cands), len(cands))
    y = np.asarray(measured)
    sums = type_sums(table, cands)
    fit = fit_recalibration(sums, y)

    # the new table: every row times its type's scale; the fit replaces the calibration
    df = table.df
    scale = df["type"].map(lambda t: fit.scales.get(t, fit.global_scale)).astype(float)
    df["ms"] = df["ms"] * scale
    df["ms_iqr"] = df["ms_iqr"] * scale
    df["note"] = [f"{n}; recalibrated x{s:.4g}" if n else f"recalibrated x{s:.4g}" for n, s in zip(df["note"], scale)]
    new_meta = {k: copy.deepcopy(v) for k, v in meta.items() if k not in _DROP}
    fp = device_fingerprint(target, getattr(backend, "threads", None) or meta.get("threads"))
    new_meta["device"] = (backend.describe() or {}).get("device") or device_name(target)
    new_meta["fingerprint"] = fp
    versions = dict(new_meta.get("versions") or {})
    versions.update(_versions())
    new_meta["versions"] = versions
    old_fp, _ = table_fingerprint(meta)
    if new_meta.get("command"):
        cmd = str(new_meta["command"])
        new_meta["command"] = (re.sub(r"--out \S+", f"--out {out}", cmd) if "--out " in cmd
                               else f"{cmd} --out {out}")
    new = LatencyTable(df, new_meta, out)
    fitted = new_pred = LatencyPredictor(new).block_sums(cands)
    seconds = time.perf_counter() - started
    points = pd.DataFrame({"id": [c.id for c in cands], "table_ms": old_pred, "measured_ms": y,
                           "fitted_ms": fitted})
    new.meta["derived_from"] = {
        "table": name,
        "sha256": _file_sha(table.path),
        "device": meta.get("device"),
        "fingerprint": old_fp or None,
        "created": meta.get("created"),
        "calibration": {"scale": table.calibration[0], "overhead_ms": table.calibration[1]},
        "how": command or f"archsearch profile --recalibrate {name} -n {models} --out {out}",
        "models": len(cands),
        "seed": seed,
        "fit": fit.as_dict(),
        "seconds": round(seconds, 1),
        "points": [{"id": r.id, "measured_ms": round(float(r.measured_ms), 6),
                    "source_table_ms": round(float(r.table_ms), 6), "fitted_ms": round(float(r.fitted_ms), 6)}
                   for r in points.itertuples()],
    }
    new.set_calibration(1.0, 0.0, [{"id": c.id, "measured_ms": round(float(m), 6), "blocks_ms": round(float(s), 6)}
                                   for c, m, s in zip(cands, y, new_pred)],
                        f"recalibrated from {Path(name).name} on {len(cands)} whole models ({fit.method})")
    if load_start is not None:
        new.meta["loadavg_start"] = load_start
        new.meta["loadavg_end"] = round(os.getloadavg()[0], 2)
    new.save(out)
    return RecalibrationResult(new, out, fit, points, seconds, name, str(new_meta["device"]))

