"""Compute what the report draws (no plotting here): fronts, progress, breakdowns, tables.

Every function takes a :class:`~archsearch.report._data.StudyData` and returns plain pandas /
numpy / dict values; :mod:`archsearch.report._figures` turns them into Plotly figures.
Strings that come from user files are HTML-escaped here when they go into hover text.
"""

from __future__ import annotations

import html
import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import yaml

from archsearch.pareto import (
    default_reference,
    hypervolume,
    hypervolume_history,
    non_dominated,
)
from archsearch.report._data import ARCH_PREFIX, StudyData

__all__ = [
    "FrontData",
    "ParcoordsDim",
    "arch_groups",
    "breakdown_tables",
    "candidate_yaml_map",
    "evaluated_mask",
    "evolution_by_stage",
    "evolution_steps",
    "feasible_mask",
    "fmt_count",
    "fmt_mb",
    "fmt_ms",
    "fmt_noise",
    "fmt_value",
    "front_data",
    "objective_points",
    "parcoords_dims",
    "pareto_mask",
    "pareto_table",
    "progress_table",
    "reference_point",
    "validation_stats",
]

X_COL, Y_COL = "latency_ms", "quality"


# --------------------------------------------------------------------------- formatting


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, else None (a missing or unparsable cell)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_count(value: Any, unit: str = "") -> str:
    """1234567 -> '1.23 M' (params, FLOPs)."""
    v = _finite(value)
    if v is None:
        return "n/a"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.3g} {suffix}{unit}"
    return f"{v:.0f} {unit}".rstrip()


def fmt_noise(se: Any, z: float) -> str:
    """' ± 0.0012' (z standard errors), '' without a noise estimate."""
    v = _finite(se)
    return "" if v is None else f" ± {z * v:.2g}"


def fmt_ms(value: Any) -> str:
    v = _finite(value)
    return "n/a" if v is None else f"{v:.3g} ms"


def fmt_mb(value: Any) -> str:
    """Peak memory in MiB: '512 MiB', '1.25 GiB'; 'n/a' for a store without it."""
    v = _finite(value)
    if v is None:
        return "n/a"
    return f"{v / 1024:.3g} GiB" if v >= 1024 else f"{v:.3g} MiB"


def fmt_value(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.4g}"


# --------------------------------------------------------------------------- masks


def objective_points(study: StudyData, rows: pd.Series | None = None) -> np.ndarray:
    """(n, m) objective values in trial order (optionally only ``rows``)."""
    df = study.trials if rows is None else study.trials[rows]
    return df[study.objective_names].to_numpy(dtype=float)


def _finite_objectives(study: StudyData) -> pd.Series:
    vals = study.trials[study.objective_names].to_numpy(dtype=float)
    return pd.Series(np.all(np.isfinite(vals), axis=1), index=study.trials.index)


def evaluated_mask(study: StudyData) -> pd.Series:
    """Trials with a result to plot: complete or infeasible, all objectives finite."""
    t = study.trials
    return t["state"].isin(["complete", "infeasible"]) & _finite_objectives(study)


def feasible_mask(study: StudyData) -> pd.Series:
    """Trials that compete for the front: complete, feasible, all objectives finite."""
    t = study.trials
    return (t["state"] == "complete") & t["feasible"].astype(bool) & _finite_objectives(study)


def pareto_mask(study: StudyData) -> pd.Series:
    """The front as the store decided it (``trials.csv``'s ``pareto`` column).

    The store is the one place that computes the front; the report only draws it. Only trials
    that are also feasible here count, so a hand-edited file cannot put a failed trial on it.
    """
    return study.trials["pareto"].astype(bool) & feasible_mask(study)


def reference_point(study: StudyData) -> tuple[np.ndarray | None, str]:
    """The hypervolume reference: meta.json's ``reference_point`` or the default one.

    Returns ``(point, origin)``; ``point`` is None when no feasible trial exists and meta.json
    gives none.
    """
    if study.reference_point is not None:
        origin = study.meta.get("reference_origin")
        origin = f"meta.json: {origin}" if isinstance(origin, str) and origin else "meta.json"
        return np.array([study.reference_point[n] for n in study.objective_names]), origin
    feas = feasible_mask(study)
    if not feas.any():
        return None, "none"
    return (
        default_reference(objective_points(study, feas), study.directions),
        "default: Pareto-front nadir + 10% of its range",
    )


# --------------------------------------------------------------------------- hover text


def arch_groups(columns: list[str]) -> "OrderedDict[str, list[tuple[str, str]]]":
    """Group ``arch.<stage>.<key>`` columns by stage: {stage: [(key, column), ...]}."""
    groups: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()
    for col in columns:
        rest = col[len(ARCH_PREFIX) :]
        stage, _, key = rest.rpartition(".")
        if not stage:
            stage, key = "", rest
        groups.setdefault(stage, []).append((key, col))
    return groups


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _hover(row: pd.Series, study: StudyData, groups: dict, status: str) -> str:
    e = html.escape
    lines = [f"<b>{e(str(row['candidate_id']))}</b> (trial {int(row['number'])}, {status})"]
    for o in study.objectives:
        if o.name == X_COL:
            src = str(row.get("latency_source") or "")
            lines.append(f"latency: {fmt_ms(row[X_COL])}" + (f" ({e(src)})" if src else ""))
        elif o.name == Y_COL and not math.isfinite(float(row[Y_COL])):
            lines.append(f"{e(o.name)}: not measured (not trained)")
        elif o.name == Y_COL:
            lines.append(f"{e(o.name)}: {fmt_value(row[o.name])}{fmt_noise(row.get('quality_se'), study.noise_z)}")
        elif o.name not in ("params", "flops"):
            lines.append(f"{e(o.name)}: {fmt_value(row[o.name])}")
    if X_COL not in study.objective_names:
        lines.append(f"latency: {fmt_ms(row[X_COL])} ({e(str(row.get('latency_source') or ''))})")
    lines.append(f"params: {fmt_count(row.get('params'))}, FLOPs: {fmt_count(row.get('flops'))} (MAC)")
    if str(row.get("within_noise_of") or ""):
        lines.append(f"within noise of {e(str(row['within_noise_of']))} (no distinct trade-off)")
    knee = study.knee or {}
    if status == "Pareto" and knee.get("candidate_id") == row["candidate_id"]:
        lines.append("suggested pick (knee of the front)")
    if _finite(row.get("cross_attention")) == 0:
        lines.append("no cross-attention: cannot see the prompt")
    if "memory_mb" in row and math.isfinite(float(row["memory_mb"])):
        lines.append(f"peak memory: {fmt_mb(row['memory_mb'])} ({e(str(row.get('memory_source') or ''))})")
    for stage, items in groups.items():
        parts = ", ".join(f"{e(k)}={e(_cell(row[c]))}" for k, c in items if _cell(row[c]) != "-")
        if parts:
            lines.append(f"{e(stage)}: {parts}" if stage else parts)
    reason = str(row.get("fail_reason") or "")
    if reason and status != "Pareto":
        lines.append(f"reason: {e(reason[:200])}")
    return "<br>".join(lines)


# --------------------------------------------------------------------------- Pareto front


@dataclass
class FrontData:
    """Quality vs latency: every evaluated trial, its status and the 2-D front line."""

    points: pd.DataFrame  # number, candidate_id, x, y, params, flops, status, err, within_noise_of, hover
    line: pd.DataFrame  # x, y of the 2-D (quality, latency) front among feasible trials
    x_label: str
    y_label: str
    budget_ms: float | None
    knee_id: str | None = None  # the store's suggested pick (meta.json ``knee``)
    noise_z: float = 2.0  # ``err`` is noise_z standard errors


def _direction(study: StudyData, name: str) -> str:
    for o in study.objectives:
        if o.name == name:
            return o.direction
    return "minimize"


def front_data(study: StudyData) -> FrontData:
    """Every trial with a latency: feasible ones at (latency, quality); infeasible ones at their
    latency and their quality when they have one, else on the plot's top edge (they are not
    trained, so their quality is unknown; ``y_known`` says which)."""
    t = study.trials
    x_ok = np.isfinite(t[X_COL].astype(float))
    y_ok = np.isfinite(t[Y_COL].astype(float))
    feas = feasible_mask(study)
    infeasible = (t["state"] == "infeasible") | ((t["state"] == "complete") & ~t["feasible"])
    ev = x_ok & ((feas & y_ok) | infeasible)
    par = pareto_mask(study)
    status = np.where(~feas, "infeasible", np.where(par, "Pareto", "dominated"))
    groups = arch_groups(study.arch_columns)
    sub = t[ev]
    y = sub[Y_COL].astype(float)
    known = np.isfinite(y.to_numpy())
    if (~known).any():
        finite = y[known] if known.any() else t.loc[feas & y_ok, Y_COL].astype(float)
        if len(finite):
            lo, hi = float(finite.min()), float(finite.max())
            top = hi + 0.05 * ((hi - lo) or abs(hi) or 1.0)
            if _direction(study, Y_COL) == "maximize":
                top = lo - 0.05 * ((hi - lo) or abs(lo) or 1.0)
        else:
            top = 0.0
        y = y.where(known, top)
    pts = pd.DataFrame(
        {
            "number": sub["number"].astype(int),
            "candidate_id": sub["candidate_id"],
            "x": sub[X_COL].astype(float),
            "y": y,
            "y_known": known,
            "params": sub["params"].astype(float),
            "flops": sub["flops"].astype(float),
            "status": status[ev.to_numpy()],
            # error bar: ± z standard errors of the held-out score (NaN: no estimate, no bar)
            "err": (study.noise_z * sub["quality_se"].astype(float)).where(known),
            "within_noise_of": sub["within_noise_of"].astype(str),
        }
    )
    pts["hover"] = [
        _hover(row, study, groups, st) for (_, row), st in zip(sub.iterrows(), pts["status"])
    ]
    fsub = t[feas & ev & y_ok]
    dirs = [_direction(study, X_COL), _direction(study, Y_COL)]
    xy = fsub[[X_COL, Y_COL]].to_numpy(dtype=float)
    line = pd.DataFrame(columns=["x", "y"], dtype=float)
    if len(xy):
        on = non_dominated(xy, dirs)
        line = (
            pd.DataFrame(xy[on], columns=["x", "y"])
            .drop_duplicates()
            .sort_values(["x", "y"], ascending=[dirs[0] == "minimize", dirs[1] == "minimize"])
            .reset_index(drop=True)
        )
    return FrontData(
        points=pts.reset_index(drop=True),
        line=line,
        x_label="latency (ms, predicted)",
        y_label="quality (distillation loss, lower is better)"
        if _direction(study, Y_COL) == "minimize"
        else "quality (higher is better)",
        budget_ms=study.max_latency_ms,
        knee_id=(study.knee or {}).get("candidate_id"),
        noise_z=study.noise_z,
    )


# --------------------------------------------------------------------------- progress


def progress_table(study: StudyData, reference: np.ndarray | None) -> pd.DataFrame:
    """Per trial (in trial order): hypervolume so far and best-so-far of each objective.

    Only complete, feasible trials count; others carry the previous values forward.
    Columns: number, hypervolume (NaN without a reference), ``value:<obj>`` (the trial's own
    value where it counts, else NaN) and ``best:<obj>``.
    """
    t = study.trials
    feas = feasible_mask(study).to_numpy()
    pts = objective_points(study)
    pts[~feas] = np.nan
    out = pd.DataFrame({"number": t["number"].astype(int).to_numpy()})
    if reference is not None:
        out["hypervolume"] = hypervolume_history(pts, reference, study.directions)
    else:
        out["hypervolume"] = np.nan
    for j, o in enumerate(study.objectives):
        col = pd.Series(pts[:, j])
        best = col.cummin() if o.direction == "minimize" else col.cummax()
        out[f"value:{o.name}"] = col.to_numpy()
        out[f"best:{o.name}"] = best.ffill().to_numpy()
    return out


def final_hypervolume(study: StudyData, reference: np.ndarray | None) -> float | None:
    if reference is None:
        return None
    feas = feasible_mask(study)
    return hypervolume(objective_points(study, feas), reference, study.directions)


# --------------------------------------------------------------------------- breakdown


def breakdown_tables(
    study: StudyData, ids: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(by stage, by block type) pivot tables of ms: one row per candidate in ``ids`` order.

    Stages and block types keep the order in which they first appear in the file (the store
    writes blocks in model order). None when there is no breakdown for any of ``ids``.
    """
    bd = study.breakdown
    if bd is None:
        return None
    bd = bd[bd["candidate_id"].isin(ids)]
    if bd.empty:
        return None
    have = set(bd["candidate_id"])
    present = [i for i in ids if i in have]

    def pivot(col: str) -> pd.DataFrame:
        order = list(OrderedDict.fromkeys(bd[col]))
        p = bd.pivot_table(index="candidate_id", columns=col, values="ms", aggfunc="sum")
        return p.reindex(index=present, columns=order).fillna(0.0)

    return pivot("stage"), pivot("block_type")


# --------------------------------------------------------------------------- parcoords


@dataclass
class ParcoordsDim:
    label: str
    values: list[float]
    tickvals: list[float] | None = None
    ticktext: list[str] | None = None


def _natural_key(s: str) -> tuple:
    try:
        return (0, float(s), "")
    except ValueError:
        return (1, 0.0, s)


def parcoords_dims(study: StudyData, max_arch: int = 40) -> tuple[list[ParcoordsDim], list[str]]:
    """Dimensions for a parallel-coordinates plot of evaluated trials.

    Architecture columns that vary come first (text / boolean / partly-empty columns are
    encoded as category codes with their labels as ticks), then every objective.
    Returns (dims, dropped) where ``dropped`` names the constant architecture columns.
    """
    ev = evaluated_mask(study)
    t = study.trials[ev]
    dims: list[ParcoordsDim] = []
    dropped: list[str] = []
    for col in study.arch_columns:
        s = t[col]
        label = col[len(ARCH_PREFIX) :]
        if s.nunique(dropna=False) <= 1:
            dropped.append(label)
            continue
        if len(dims) >= max_arch:
            dropped.append(label)
            continue
        numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
        if numeric and s.notna().all():
            values = s.astype(float)
            uniq = sorted(values.unique())
            if len(uniq) <= 12:  # a few discrete choices: tick exactly those
                ticks = [_cell(v) for v in uniq]
                dims.append(ParcoordsDim(html.escape(label), values.tolist(), uniq, ticks))
            else:
                dims.append(ParcoordsDim(html.escape(label), values.tolist()))
            continue
        text = s.map(lambda v: "n/a" if _cell(v) == "-" else _cell(v))
        cats = sorted(set(text), key=_natural_key)
        code = {c: i for i, c in enumerate(cats)}
        dims.append(
            ParcoordsDim(
                html.escape(label),  # labels are rendered as Plotly pseudo-HTML: escaped
                [float(code[v]) for v in text],
                tickvals=[float(i) for i in range(len(cats))],
                ticktext=cats,  # tick text is set as plain SVG text by Plotly: not escaped
            )
        )
    for o in study.objectives:
        dims.append(ParcoordsDim(html.escape(o.name), t[o.name].astype(float).tolist()))
    return dims, dropped


# --------------------------------------------------------------------------- validation


def validation_stats(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per predictor column: MAPE (%), Spearman and Kendall rank correlation vs measured."""
    out: dict[str, dict[str, float]] = {}
    for col in ("predicted_ms", "flops_fit_ms"):
        if col not in df.columns:
            continue
        d = df[["measured_ms", col]].dropna()
        d = d[d["measured_ms"] > 0]
        if d.empty:
            continue
        mape = float((abs(d[col] - d["measured_ms"]) / d["measured_ms"]).mean() * 100)
        if len(d) >= 2 and d[col].nunique() > 1 and d["measured_ms"].nunique() > 1:
            sp = float(d["measured_ms"].corr(d[col], method="spearman"))
            kt = float(d["measured_ms"].corr(d[col], method="kendall"))
        else:
            sp = kt = float("nan")
        out[col] = {"mape": mape, "spearman": sp, "kendall": kt, "n": float(len(d))}
    return out


# --------------------------------------------------------------------------- tables and YAML


def pareto_table(study: StudyData) -> pd.DataFrame:
    """Pareto trials (one row per candidate id), sorted by latency then quality."""
    t = study.trials[pareto_mask(study)]
    t = t.sort_values([X_COL, Y_COL], kind="stable").drop_duplicates("candidate_id")
    return t.reset_index(drop=True)


def _candidate_yaml(text: str) -> str | None:
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return text  # shown verbatim rather than hiding it
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: 10x faster
    return yaml.dump(
        obj, Dumper=dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def candidate_yaml_map(study: StudyData, ids: list[str] | None = None) -> dict[str, str]:
    """candidate_id -> YAML text: the pareto/ file when there is one, else the trial's
    ``candidate`` JSON rendered as YAML."""
    t = study.trials
    if ids is not None:
        t = t[t["candidate_id"].isin(ids)]
    out: dict[str, str] = {}
    for cid, cand in zip(t["candidate_id"], t["candidate"]):
        if cid in out:
            continue
        if cid in study.pareto_yaml:
            out[cid] = study.pareto_yaml[cid]
        else:
            text = _candidate_yaml(cand)
            if text is not None:
                out[cid] = text
    return out


# --------------------------------------------------------------------------- the evolution's path


def evolution_steps(study: StudyData) -> pd.DataFrame | None:
    """The actions an evolve study took, in order (``evolution.csv`` rows with ``taken``)."""
    evo = study.evolution
    if evo is None or evo.empty:
        return None
    return evo[evo["taken"]].sort_values("step", kind="stable").reset_index(drop=True)


def evolution_by_stage(study: StudyData) -> pd.DataFrame | None:
    """Per stage and block type: blocks removed and added by the actions taken, actions evaluated
    and their mean value (held-out quality the block is worth per ms; SnapFusion found
    cross-attention carries semantics, ResNets local detail): columns ``stage, block, removed,
    added, evaluated, mean_value``."""
    evo = study.evolution
    if evo is None or evo.empty:
        return None
    rows = []
    for (stage, block), g in evo.groupby(["stage", "block"], sort=True):
        taken = g[g["taken"]]
        values = g["value"].astype(float)
        values = values[np.isfinite(values)]
        rows.append({"stage": stage, "block": block, "removed": int((taken["kind"] == "remove").sum()),
                     "added": int((taken["kind"] == "add").sum()), "evaluated": int(len(g)),
                     "mean_value": float(values.mean()) if len(values) else math.nan})
    return pd.DataFrame(rows, columns=["stage", "block", "removed", "added", "evaluated", "mean_value"])
