"""Read an Optuna study back into the files the report (and the user) read.

``reports/<study>/``:

* ``trials.csv`` -- one row per trial (complete, failed, infeasible, running): number, state,
  candidate_id, quality, latency_ms, params, flops, latency_source, feasible, fail_reason,
  wall_time_s, datetime_start, datetime_complete (ISO), loss_curve (JSON list), candidate
  (JSON), duplicate_of, pareto, then the candidate's ``summary()`` as ``arch.*`` columns;
* ``meta.json`` -- the study, spec, objectives and directions, reference point, constraints,
  target, latency table, sampler, seed, n_trials, hypervolume, counts, the Pareto ids;
* ``pareto/<candidate_id>.yaml`` -- each Pareto-optimal candidate (``Candidate.to_yaml``), the
  input of full training;
* ``latency_breakdown.csv`` -- candidate_id, stage, block_type, ms of the Pareto candidates
  (the predictor's per-block rows, grouped, and a ``calibration`` row holding the
  calibrated overhead, so that each candidate's rows add up to its predicted latency).

Every file is written atomically (temp file + ``os.replace``); ``meta.json`` is written last.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from archsearch._util import atomic_write_text
from archsearch.errors import ArchsearchError
from archsearch.search import study_attrs, trial_state
from archsearch.pareto import default_reference, hypervolume, non_dominated

__all__ = ["BASE_COLUMNS", "StoreSummary", "load_trials", "pareto_ids", "trials_frame", "write_store"]

BASE_COLUMNS = (
    "number", "state", "candidate_id", "quality", "latency_ms", "params", "flops", "latency_source",
    "feasible", "fail_reason", "wall_time_s", "datetime_start", "datetime_complete", "loss_curve",
    "candidate", "duplicate_of", "pareto",
)
_ID = re.compile(r"^[0-9a-f]{12}$")


def _iso(dt: datetime | None) -> str:
    if dt is None:
        return ""
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return dt.isoformat(timespec="seconds")


def _num(v: Any) -> float:
    try:
        out = float(v)
    except (TypeError, ValueError):
        return math.nan
    return out


def _row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    a = t.user_attrs
    state = trial_state(t)
    if state == "interrupted":
        state = "failed"
    cand = a.get("candidate")
    row: dict[str, Any] = {
        "number": t.number,
        "state": state,
        "candidate_id": a.get("candidate_id") or "",
        "quality": _num(a.get("quality")) if state == "complete" else math.nan,
        "latency_ms": _num(a.get("latency_ms")),
        "params": _num(a.get("params")),
        "flops": _num(a.get("flops")),
        "latency_source": a.get("latency_source") or "",
        "feasible": bool(a.get("feasible", all(v <= 0 for v in t.constraints.values()))),
        "fail_reason": a.get("fail_reason") or "",
        "wall_time_s": _num(a.get("wall_time_s")),
        "datetime_start": _iso(t.datetime_start),
        "datetime_complete": _iso(t.datetime_complete),
        "loss_curve": json.dumps(a.get("loss_curve") or []),
        "candidate": json.dumps(cand, sort_keys=True) if cand else "",
        "duplicate_of": a.get("duplicate_of"),
        "pareto": False,
    }
    if cand:
        from archsearch.candidate import Candidate

        summary = Candidate.from_dict(cand).summary()
        summary.pop("id", None)
        row.update({f"arch.{k}": v for k, v in summary.items()})
    return row


def trials_frame(study: optuna.Study, objectives: list[str] | tuple[str, ...] | None = None) -> pd.DataFrame:
    """Every started trial of ``study`` as one row (the ``trials.csv`` table), Pareto rows marked.

    Enqueued trials that never started (WAITING) have no data and are left out.
    """
    rows = [_row(t) for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING]
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=list(BASE_COLUMNS))
    arch = [c for c in df.columns if c.startswith("arch.")]
    df = df[list(BASE_COLUMNS) + arch]
    df["duplicate_of"] = df["duplicate_of"].astype("Int64")
    objectives = list(objectives or study_attrs(study).get("objectives") or ["quality", "latency_ms", "params"])
    df["pareto"] = _pareto_mask(df, objectives)
    return df


def _feasible_complete(df: pd.DataFrame, objectives: list[str]) -> pd.Series:
    mask = (df["state"] == "complete") & df["feasible"].astype(bool)
    for o in objectives:
        mask &= np.isfinite(df[o].astype(float))
    return mask


def _pareto_mask(df: pd.DataFrame, objectives: list[str]) -> pd.Series:
    out = pd.Series(False, index=df.index)
    feas = _feasible_complete(df, objectives)
    if feas.any():
        pts = df.loc[feas, objectives].astype(float).to_numpy()
        out[feas] = non_dominated(pts, ["minimize"] * len(objectives))
    return out


def pareto_ids(df: pd.DataFrame) -> list[str]:
    """Distinct candidate ids on the front, in trial order."""
    seen: list[str] = []
    for cid in df.loc[df["pareto"], "candidate_id"]:
        if cid not in seen:
            seen.append(cid)
    return seen


def load_trials(study_dir: str | Path) -> pd.DataFrame:
    """Read ``trials.csv`` back (candidate ids as text)."""
    path = Path(study_dir) / "trials.csv"
    if not path.is_file():
        raise ArchsearchError(f"{path}: missing (run `archsearch run SPEC` first)")
    return pd.read_csv(path, dtype={"candidate_id": str})


class StoreSummary(dict):
    """``meta.json`` as written (a dict), plus ``path`` (the study folder)."""

    path: Path


#: stage and block type of the calibration-overhead row in ``latency_breakdown.csv``
CALIBRATION = "calibration"


def _breakdown(df: pd.DataFrame, ids: list[str], table_path: str | None) -> pd.DataFrame | None:
    if not table_path or not ids or not Path(table_path).is_file():
        return None
    from archsearch.candidate import Candidate
    from archsearch.cost.latency import load_table, predict_breakdown

    table = load_table(table_path)
    parts = []
    first = df.drop_duplicates("candidate_id").set_index("candidate_id")
    for cid in ids:
        cand = Candidate.from_dict(json.loads(first.loc[cid, "candidate"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bd = predict_breakdown(cand, table, allow_missing=True)
        # the calibration overhead is its own segment (it may be negative), so a candidate's
        # rows add up to its predicted latency, as the trials table shows it
        bd = bd.rename(columns={"type": "block_type"})
        bd.loc[bd["stage"] == "overhead", ["stage", "block_type"]] = CALIBRATION
        g = bd.groupby(["stage", "block_type"], sort=False, as_index=False)["ms"].sum()
        g.insert(0, "candidate_id", cid)
        parts.append(g)
    return pd.concat(parts, ignore_index=True) if parts else None


def write_store(study: optuna.Study, study_dir: str | Path | None = None) -> StoreSummary:
    """Write ``trials.csv``, ``pareto/*.yaml``, ``latency_breakdown.csv`` and ``meta.json``.

    ``study_dir`` defaults to the folder recorded when ``archsearch run`` created the study.
    Pareto YAML files of candidates no longer on the front are removed. Returns the meta.
    """
    attrs = study_attrs(study)
    if study_dir is None:
        if not attrs.get("study_dir"):
            raise ArchsearchError(f"study {study.study_name!r}: no study folder recorded; pass study_dir")
        study_dir = attrs["study_dir"]
    out = Path(study_dir)
    objectives = list(attrs.get("objectives") or ["quality", "latency_ms", "params"])
    df = trials_frame(study, objectives)
    ids = pareto_ids(df)

    # the front's YAML files (the input of full training); stale ones removed
    pdir = out / "pareto"
    pdir.mkdir(parents=True, exist_ok=True)
    from archsearch.candidate import Candidate

    first = df.drop_duplicates("candidate_id").set_index("candidate_id")
    for cid in ids:
        atomic_write_text(pdir / f"{cid}.yaml", Candidate.from_dict(json.loads(first.loc[cid, "candidate"])).to_yaml())
    for f in pdir.glob("*.yaml"):
        if _ID.match(f.stem) and f.stem not in ids:
            f.unlink()

    bd = _breakdown(df, ids, attrs.get("latency_table"))
    if bd is not None:
        atomic_write_text(out / "latency_breakdown.csv", bd.to_csv(index=False))
    elif (out / "latency_breakdown.csv").exists():
        (out / "latency_breakdown.csv").unlink()

    atomic_write_text(out / "trials.csv", df.to_csv(index=False))

    directions = ["minimize"] * len(objectives)
    feas = _feasible_complete(df, objectives)
    pts = df.loc[feas, objectives].astype(float).to_numpy()
    ref = attrs.get("reference_point")
    if ref is not None:
        ref_vec = np.array([float(ref[o]) for o in objectives])
    elif len(pts):
        ref_vec = default_reference(pts, directions)
    else:
        ref_vec = None
    hv = float(hypervolume(pts, ref_vec, directions)) if ref_vec is not None and len(pts) else 0.0
    counts = df["state"].value_counts().to_dict()
    meta = StoreSummary({
        "study": study.study_name,
        "spec": attrs.get("spec"),
        "kind": attrs.get("kind"),
        "objectives": [{"name": o, "direction": "minimize"} for o in objectives],
        "reference_point": {o: float(v) for o, v in zip(objectives, ref_vec)} if ref_vec is not None else None,
        "reference_origin": "search.reference_point" if ref is not None else "Pareto-front nadir + 10% of its range",
        "constraints": attrs.get("constraints") or {},
        "target": attrs.get("target"),
        "latency_table": attrs.get("latency_table"),
        "sampler": attrs.get("sampler"),
        "seed": attrs.get("seed"),
        "n_trials": attrs.get("n_trials"),
        "population_size": attrs.get("population_size"),
        "hypervolume": hv,
        "counts": {s: int(counts.get(s, 0)) for s in ("complete", "infeasible", "failed", "running")},
        "pareto": ids,
        "storage": attrs.get("storage"),
        "space_hash": attrs.get("space_hash"),
        "teacher": attrs.get("teacher"),
        "proxy": attrs.get("proxy"),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2, default=str) + "\n")
    meta.path = out
    return meta
