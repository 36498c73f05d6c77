"""How accurate is a table? Measure random candidates end to end and compare.

Two predictors on the same candidates: the lookup table (calibrated on *other* candidates,
so this is out of sample) and a FLOPs-only linear fit ``ms = a * MACs + b`` fitted on the
validation measurements themselves (in sample, which flatters it). Reported for both: the
share within ±5 % and ±10 %, the mean absolute percentage error and Spearman's rank
correlation; a Plotly scatter (predicted vs measured) is written as HTML.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from archsearch.cost.latency._errors import ParameterError
from archsearch.cost.latency._keys import candidate_blocks
from archsearch.errors import ArchsearchError

__all__ = ["Accuracy", "MemoryAccuracy", "ValidationResult", "accuracy", "flops_linear_fit", "memory_accuracy",
           "validate_memory", "validate_table", "write_scatter"]

#: Seed offset of validation samples (calibration uses CALIBRATION_SEED; ids are excluded too).
VALIDATION_SEED = 0


@dataclass(frozen=True)
class Accuracy:
    """Agreement of predictions with measurements."""

    n: int
    within_5: float
    within_10: float
    mape: float
    spearman: float

    def as_dict(self) -> dict[str, float]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def line(self) -> str:
        return (f"±5%: {100 * self.within_5:5.1f}%  ±10%: {100 * self.within_10:5.1f}%  "
                f"MAPE: {self.mape:5.2f}%  Spearman: {self.spearman:.4f}  (n={self.n})")


def accuracy(predicted: np.ndarray, measured: np.ndarray) -> Accuracy:
    """Share within ±5 %/±10 %, MAPE (%) and Spearman's rho of ``predicted`` vs ``measured``."""
    from scipy.stats import spearmanr

    p = np.asarray(predicted, float)
    m = np.asarray(measured, float)
    if p.shape != m.shape or p.ndim != 1:
        raise ValueError("predicted and measured must be 1-D arrays of the same length")
    if len(m) == 0:
        return Accuracy(0, float("nan"), float("nan"), float("nan"), float("nan"))
    rel = np.abs(p - m) / m
    rho = float(spearmanr(p, m).statistic) if len(m) > 1 and np.ptp(p) > 0 and np.ptp(m) > 0 else float("nan")
    return Accuracy(len(m), float(np.mean(rel <= 0.05)), float(np.mean(rel <= 0.10)), float(100 * rel.mean()), rho)


def flops_linear_fit(macs: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Least-squares ``measured ≈ a * macs + b`` on the data itself; (predictions, a, b)."""
    x = np.asarray(macs, float)
    y = np.asarray(measured, float)
    if len(x) >= 2 and np.ptp(x) > 0:
        a, b = np.polyfit(x, y, 1)
    else:
        a, b = 0.0, float(np.mean(y)) if len(y) else 0.0
    return a * x + b, float(a), float(b)


@dataclass(frozen=True)
class MemoryAccuracy:
    """Predicted vs measured whole-model peak memory: mean and largest absolute relative
    error, share within ±10 %, mean signed error (+: the prediction is high)."""

    n: int
    mape: float
    max_error: float
    within_10: float
    bias: float

    def as_dict(self) -> dict[str, float]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def line(self) -> str:
        return (f"peak memory: MAPE {self.mape:5.2f}%  largest error {self.max_error:5.2f}%  "
                f"±10%: {100 * self.within_10:5.1f}%  bias {self.bias:+.2f}%  (n={self.n})")


def memory_accuracy(predicted: np.ndarray, measured: np.ndarray) -> MemoryAccuracy:
    """:class:`MemoryAccuracy` of ``predicted`` vs ``measured`` bytes."""
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if not len(m):
        return MemoryAccuracy(0, float("nan"), float("nan"), float("nan"), float("nan"))
    rel = (p - m) / m
    return MemoryAccuracy(len(m), float(100 * np.abs(rel).mean()), float(100 * np.abs(rel).max()),
                          float(np.mean(np.abs(rel) <= 0.10)), float(100 * rel.mean()))


def validate_memory(table: Any, candidates: list[Any], device: Any = "cpu",
                    progress: Callable[[str, str, int, int], None] | None = None) -> tuple[pd.DataFrame, MemoryAccuracy]:
    """Measure each candidate's whole-model peak memory (``measure_model_memory``, at the
    table's dtype) and compare it with the predictor's (:meth:`LatencyPredictor.memory`).
    Returns (per candidate: id, predicted_mb, measured_mb, error_pct; the accuracy)."""
    from archsearch.cost.latency._measure import DTYPES
    from archsearch.cost.latency._memory import measure_model_memory
    from archsearch.cost.latency._predictor import predictor_for

    pred = predictor_for(table)
    dtype = DTYPES.get(str(table.meta.get("dtype", "float32")), DTYPES["float32"])
    rows = []
    for i, c in enumerate(candidates):
        if progress:
            progress("memory", f"whole model {c.id}", i, len(candidates))
        est = pred.memory(c)
        got = measure_model_memory(c, device, dtype, int(table.meta.get("batch", 1)))
        rows.append({"id": c.id, "predicted_mb": est.peak_mb, "measured_mb": got / 2**20,
                     "error_pct": 100 * (est.peak_bytes - got) / got, "peak_at": est.at_block})
    if progress:
        progress("memory", "done", len(candidates), len(candidates))
    df = pd.DataFrame(rows, columns=["id", "predicted_mb", "measured_mb", "error_pct", "peak_at"])
    return df, memory_accuracy(df["predicted_mb"].to_numpy(), df["measured_mb"].to_numpy())


@dataclass
class ValidationResult:
    """Per-candidate data (``df``) and the accuracy of both predictors."""

    df: pd.DataFrame
    lut: Accuracy
    flops: Accuracy
    flops_fit: tuple[float, float]
    added_blocks: int
    html: Path | None = None
    repeat: Accuracy | None = None  # a second measurement scored against the first: the noise floor
    memory: MemoryAccuracy | None = None  # predicted vs measured whole-model peak memory
    memory_df: pd.DataFrame | None = None

    def as_meta(self, seed: int) -> dict[str, Any]:
        out = {"n": self.lut.n, "seed": seed, "lut": self.lut.as_dict(), "flops_fit": self.flops.as_dict(),
               "blocks_added_for_validation": self.added_blocks}
        if self.repeat is not None:
            out["repeat_measurement"] = self.repeat.as_dict()
        if self.memory is not None:
            out["memory"] = self.memory.as_dict()
        return out


def _table_macs(table: Any, candidates: list[Any]) -> np.ndarray:
    macs = table.df.set_index("key")["macs"]
    out = []
    for c in candidates:
        keys = candidate_blocks(c).keys
        vals = macs.reindex(list(keys)).to_numpy(dtype=float)
        if np.isnan(vals).any():
            from archsearch.cost import flops

            out.append(float(flops(c).total))
        else:
            out.append(float(vals.sum()))
    return np.asarray(out)


def validate_table(
    table: Any,
    space: Any,
    n: int,
    *,
    seed: int = VALIDATION_SEED,
    resolution: int | None = None,
    html: str | os.PathLike | None = None,
    progress: Callable[[str, str, int, int], None] | None = None,
    plotlyjs: str | bool = True,
    repeat: bool = False,
    check_calibration: bool = True,
    max_overhead_share: float = 0.15,
    memory: int = 20,
) -> ValidationResult:
    """Measure ``n`` random candidates of ``space`` end to end on the table's own settings.

    Blocks of those candidates missing from the table are measured and added first (and
    counted in ``added_blocks``); the calibration candidates are never drawn. ``repeat``
    measures every candidate a second time and scores it against the first, as if it were
    a predictor: no predictor can be more accurate than the machine is repeatable.

    ``check_calibration``: a table whose calibration is implausible (see
    :func:`~archsearch.cost.latency.check_calibration`) is refused with
    :class:`ImplausibleCalibrationError` before anything is measured. ``memory``: the
    first this-many candidates also get their whole-model peak memory measured and
    compared with the predictor's (cpu and cuda tables; 0: off).
    """
    from archsearch.cost.latency._backends import make_backend
    from archsearch.cost.latency._blocks import enumerate_blocks, sample_candidates
    from archsearch.cost.latency._measure import MeasureSettings
    from archsearch.cost.latency._predictor import predictor_for
    from archsearch.cost.latency._profile import CALIBRATION_SEED, ProfileOptions, profile_space

    meta = table.meta
    if table.source != "measured":
        raise ArchsearchError(
            f"{table.path}: validation needs a measured table (this one is source: {table.source}; "
            "there is nothing to measure it against on this machine)")
    if n < 2:
        raise ParameterError("n", f"{n}: bad value (allowed: an integer >= 2)")
    if check_calibration:
        from archsearch.cost.latency._errors import ImplausibleCalibrationError
        from archsearch.cost.latency._profile import check_calibration as _check

        cal = meta.get("calibration") or {}
        pts = [p["measured_ms"] for p in cal.get("points", []) if "measured_ms" in p]
        scale, over = table.calibration
        why = _check(scale, over, pts, max_overhead_share) if pts else ""
        if why:
            raise ImplausibleCalibrationError(why, scale=scale, overhead_ms=over, table_path=table.path)
    resolution = resolution or meta.get("resolution")
    calib_ids = {p["id"] for p in (meta.get("calibration") or {}).get("points", [])}
    if seed == CALIBRATION_SEED:
        raise ParameterError("seed", f"{seed}: reserved for the calibration candidates (allowed: any other integer)")
    cands = sample_candidates(space, n, seed, resolution, exclude=calib_ids)
    settings = MeasureSettings(**(meta.get("measure") or {}))
    before = len(table)
    missing = [c for c in cands if any(k not in table for k in candidate_blocks(c).keys)]
    if missing:
        # same settings as the table: resume it on these candidates' blocks
        options = ProfileOptions(resolution=resolution, batch=int(meta.get("batch", 1)),
                                 dtype=str(meta.get("dtype", "float32")), threads=int(meta.get("threads", 1)),
                                 settings=settings, calibrate=0)
        table = profile_space(missing, meta["target"], table.path, options,
                              blocks=enumerate_blocks(missing, resolution), progress=progress)
    added = len(table) - before
    backend = make_backend(meta["target"], dtype=str(meta.get("dtype", "float32")), batch=int(meta.get("batch", 1)),
                           threads=int(meta.get("threads", 1)), settings=settings)
    measured = []
    again = []
    with backend.session():
        for i, c in enumerate(cands):
            if progress:
                progress("validate", f"whole model {c.id}", i, len(cands))
            measured.append(backend.model_ms(c))
        if repeat:
            for i, c in enumerate(cands):
                if progress:
                    progress("repeat", f"whole model {c.id} again", i, len(cands))
                again.append(backend.model_ms(c))
        if progress:
            progress("validate", "done", len(cands), len(cands))
    measured_arr = np.asarray(measured)
    lut = predictor_for(table).predict(cands)
    macs = _table_macs(table, cands)
    fl_pred, a, b = flops_linear_fit(macs, measured_arr)
    df = pd.DataFrame({"id": [c.id for c in cands], "measured_ms": measured_arr, "lut_ms": lut,
                       "macs": macs, "flops_fit_ms": fl_pred})
    result = ValidationResult(df, accuracy(lut, measured_arr), accuracy(fl_pred, measured_arr), (a, b), added)
    if repeat:
        df["measured_again_ms"] = again
        result.repeat = accuracy(np.asarray(again), measured_arr)
    if memory and meta["target"] in ("cpu", "cuda"):
        mem_df, result.memory = validate_memory(table, cands[:memory], backend.device, progress)
        result.memory_df = mem_df
    if html is not None:
        result.html = write_scatter(result, html, title=f"{meta.get('target')} · {meta.get('device', '')}",
                                    plotlyjs=plotlyjs)
    table.meta["validation"] = result.as_meta(seed)
    if table.path is not None:
        table.save()
    return result


def write_scatter(result: ValidationResult, path: str | os.PathLike, title: str = "",
                  plotlyjs: str | bool = True) -> Path:
    """Predicted vs measured (both predictors), the y = x line and a ±10 % band, as HTML."""
    import plotly.graph_objects as go

    from archsearch._util import atomic_write_text

    df = result.df
    lo = float(min(df["measured_ms"].min(), df["lut_ms"].min(), df["flops_fit_ms"].min())) * 0.95
    hi = float(max(df["measured_ms"].max(), df["lut_ms"].max(), df["flops_fit_ms"].max())) * 1.05
    fig = go.Figure()
    xs = [lo, hi]
    fig.add_trace(go.Scatter(x=xs, y=xs, mode="lines", name="y = x", line=dict(color="black", width=1)))
    for f, name in ((1.1, "+10%"), (0.9, "−10%")):
        fig.add_trace(go.Scatter(x=xs, y=[v * f for v in xs], mode="lines", name=name,
                                 line=dict(color="grey", width=1, dash="dash")))
    fig.add_trace(go.Scatter(x=df["measured_ms"], y=df["lut_ms"], mode="markers", text=df["id"],
                             name=f"lookup table (MAPE {result.lut.mape:.1f}%, ρ {result.lut.spearman:.3f})"))
    fig.add_trace(go.Scatter(x=df["measured_ms"], y=df["flops_fit_ms"], mode="markers", text=df["id"],
                             marker=dict(symbol="x"),
                             name=f"FLOPs linear fit (MAPE {result.flops.mape:.1f}%, ρ {result.flops.spearman:.3f})"))
    fig.update_layout(title=f"Predicted vs measured latency — {title}", xaxis_title="measured (ms)",
                      yaxis_title="predicted (ms)", template="plotly_white")
    return atomic_write_text(path, fig.to_html(include_plotlyjs=plotlyjs, full_html=True))
