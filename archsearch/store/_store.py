"""Read an Optuna study back into the files the report (and the user) read.

``reports/<study>/``:

* ``trials.csv`` -- one row per trial (complete, failed, infeasible, running): number, state,
  candidate_id, quality, quality_se (the standard error of the held-out score over its
  samples), latency_ms, params, flops (fvcore's count: one multiply-add is one FLOP),
  latency_source (``sum of measured blocks``, ``estimate``, ``imported`` or ``mixed``: a
  prediction from the table's block rows), memory_mb (predicted peak MiB of one forward call),
  memory_source, feasible, fail_reason, wall_time_s, datetime_start, datetime_complete (ISO),
  loss_curve (JSON list), candidate (JSON), duplicate_of, pareto, within_noise_of (a Pareto
  candidate whose quality edge over a cheaper one is inside the noise: that one's id),
  cross_attention (blocks that attend to the prompt; 0: the model cannot see it), then the
  candidate's ``summary()`` as ``arch.*`` columns;
* ``meta.json`` -- the study, spec, objectives and directions, reference point, constraints,
  target, latency table, sampler, seed, n_trials, hypervolume, counts, the Pareto ids, how the
  quality noise is estimated (``quality_noise``), the suggested pick (``knee``: candidate id
  and reason, :func:`~archsearch.store._honest.knee_point`), ``warnings`` (Pareto candidates
  that cannot see the prompt) and ``store_version``;
* ``pareto/<candidate_id>.yaml`` -- each Pareto-optimal candidate (``Candidate.to_yaml``), the
  input of full training;
* ``latency_breakdown.csv`` -- candidate_id, stage, block_type, ms of the Pareto candidates
  (the predictor's per-block rows, grouped, and a ``calibration`` row holding the
  calibrated overhead, so that each candidate's rows add up to its predicted latency);
* ``evolution.csv`` -- a ``search.method: evolve`` study's path (:data:`EVOLUTION_COLUMNS`):
  every action evaluated, in order, with its Δquality, Δlatency and value and whether it was
  taken. The front of such a study is taken among the architectures the evolution stood on
  (the study attr ``archsearch.evolution_result``), so ``pareto/`` holds what it chose.

Every file is written atomically (temp file + ``os.replace``); ``meta.json`` is written last
and records the row count and SHA-256 of the ``trials.csv`` it goes with (``trials_csv``), so
a cut-short or edited table is noticed (:func:`load_trials`, :func:`refresh_store`).
``archsearch run`` rewrites the store after every finished trial, so a killed study's folder
can be reported at any time; :func:`refresh_store` rebuilds it from the study (the truth)
whenever the study's storage can be read.
"""

from __future__ import annotations

import hashlib
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
from archsearch.pareto import default_reference, hypervolume, non_dominated
from archsearch.search import StudyLock, open_storage, storage_file, study_attrs, trial_state
from archsearch.store._honest import NOISE_Z, knee_point, prompt_warnings, within_noise

__all__ = ["BASE_COLUMNS", "EVOLUTION_COLUMNS", "StoreSummary", "check_store", "load_trials", "pareto_ids", "refresh_store",
           "trials_frame", "write_store"]

BASE_COLUMNS = (
    "number", "state", "candidate_id", "quality", "quality_se", "latency_ms", "params", "flops", "latency_source",
    "memory_mb", "memory_source", "feasible", "fail_reason", "wall_time_s", "datetime_start", "datetime_complete", "loss_curve",
    "candidate", "duplicate_of", "pareto", "within_noise_of", "cross_attention",
)
#: meta.json's ``store_version``: 2 added quality_se, within_noise_of, cross_attention, knee,
#: warnings and the ``sum of measured blocks`` latency source (1: stores without the key)
STORE_VERSION = 2
#: A trial's latency is a prediction from the table's block rows: rows timed on the device make
#: it a sum of measured blocks, never a measured whole model (stores before 2 said ``measured``).
SUM_OF_MEASURED = "sum of measured blocks"
_ID = re.compile(r"^[0-9a-f]{12}$")
#: Columns of ``evolution.csv`` (one row per evaluated action of an evolve study).
EVOLUTION_COLUMNS = (
    "step", "phase", "kind", "stage", "position", "block", "dimension", "before", "after", "trial",
    "candidate_id", "quality", "latency_ms", "d_quality", "d_latency_ms", "value", "taken",
)


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
    source = a.get("latency_source") or ""
    row: dict[str, Any] = {
        "number": t.number,
        "state": state,
        "candidate_id": a.get("candidate_id") or "",
        "quality": _num(a.get("quality")) if state == "complete" else math.nan,
        "quality_se": _num(a.get("quality_se")) if state == "complete" else math.nan,
        "latency_ms": _num(a.get("latency_ms")),
        "params": _num(a.get("params")),
        "flops": _num(a.get("flops")),
        "latency_source": SUM_OF_MEASURED if source == "measured" else source,
        "memory_mb": _num(a.get("memory_mb")),
        "memory_source": a.get("memory_source") or "",
        "feasible": bool(a.get("feasible", all(v <= 0 for v in t.constraints.values()))),
        "fail_reason": a.get("fail_reason") or "",
        "wall_time_s": _num(a.get("wall_time_s")),
        "datetime_start": _iso(t.datetime_start),
        "datetime_complete": _iso(t.datetime_complete),
        "loss_curve": json.dumps(a.get("loss_curve") or []),
        "candidate": json.dumps(cand, sort_keys=True) if cand else "",
        "duplicate_of": a.get("duplicate_of"),
        "pareto": False,
        "within_noise_of": "",
        "cross_attention": None,
    }
    if cand:
        from archsearch.candidate import Candidate

        candidate = Candidate.from_dict(cand)
        row["cross_attention"] = candidate.cross_attention_blocks()
        summary = candidate.summary()
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
    df["cross_attention"] = df["cross_attention"].astype("Int64")
    attrs = study_attrs(study)
    objectives = list(objectives or attrs.get("objectives") or ["quality", "latency_ms", "params"])
    chosen = (attrs.get("evolution_result") or {}).get("chosen") if attrs.get("method") == "evolve" else None
    df["pareto"] = _pareto_mask(df, objectives, among=chosen)
    df["within_noise_of"] = within_noise(df, objectives)
    return df


def _feasible_complete(df: pd.DataFrame, objectives: list[str]) -> pd.Series:
    mask = (df["state"] == "complete") & df["feasible"].astype(bool)
    for o in objectives:
        mask &= np.isfinite(df[o].astype(float))
    return mask


def _pareto_mask(df: pd.DataFrame, objectives: list[str], among: list[int] | None = None) -> pd.Series:
    """The non-dominated feasible complete trials (``among``: of these trial numbers only)."""
    out = pd.Series(False, index=df.index)
    feas = _feasible_complete(df, objectives)
    if among is not None:
        feas &= df["number"].isin([int(n) for n in among])
    if feas.any():
        pts = df.loc[feas, objectives].astype(float).to_numpy()
        out[feas] = non_dominated(pts, ["minimize"] * len(objectives))
    return out


def _with_candidate(df: pd.DataFrame) -> pd.DataFrame:
    """The first row of each candidate that holds its architecture, by candidate id (a trial
    stopped before it finished may carry the id alone)."""
    has = df["candidate"].fillna("").astype(str) != ""
    return df[has].drop_duplicates("candidate_id").set_index("candidate_id")


def pareto_ids(df: pd.DataFrame) -> list[str]:
    """Distinct candidate ids on the front, in trial order."""
    seen: list[str] = []
    for cid in df.loc[df["pareto"], "candidate_id"]:
        if cid not in seen:
            seen.append(cid)
    return seen


def _sha256(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def _store_lock(out: Path) -> Any:
    """Writers of one store folder (several runs of one study) take turns."""
    return StudyLock(str(out / ".store.lock")).hold()


def check_store(study_dir: str | Path) -> None:
    """Check that ``trials.csv`` is the table ``meta.json`` was written with (row count and
    SHA-256); a one-line error if it was cut short or changed. Stores written before these
    were recorded are not checked."""
    out = Path(study_dir)
    meta_path, csv_path = out / "meta.json", out / "trials.csv"
    if not meta_path.is_file() or not csv_path.is_file():
        return
    try:
        rec = json.loads(meta_path.read_text(encoding="utf-8")).get("trials_csv")
    except (OSError, ValueError, AttributeError):
        return  # the report's own reader says what is wrong with meta.json
    if not isinstance(rec, dict) or "sha256" not in rec:
        return
    with _store_lock(out):  # not between a writer's trials.csv and its meta.json
        data = csv_path.read_bytes()
        rec = json.loads(meta_path.read_text(encoding="utf-8")).get("trials_csv") or rec
    if _sha256(data) == rec.get("sha256"):
        return
    try:
        rows = len(pd.read_csv(csv_path))
    except Exception:  # noqa: BLE001 - unreadable: report it as such
        rows = None
    found = "cannot be read" if rows is None else f"has {rows} trial rows"
    raise ArchsearchError(
        f"{csv_path}: {found} but {meta_path.name} records {rec.get('rows')} "
        "(the file was cut short or changed after it was written); rebuild it from the study "
        "with `archsearch report` where the study's storage is reachable"
    )


def load_trials(study_dir: str | Path) -> pd.DataFrame:
    """Read ``trials.csv`` back (candidate ids as text), checked against ``meta.json``."""
    path = Path(study_dir) / "trials.csv"
    if not path.is_file():
        raise ArchsearchError(f"{path}: missing (run `archsearch run SPEC` first)")
    check_store(study_dir)
    return pd.read_csv(path, dtype={"candidate_id": str, "within_noise_of": str})


def _open_recorded_study(study_dir: Path) -> optuna.Study | None:
    """The study a store folder was written from, if its storage can be read (never creates one)."""
    meta: dict[str, Any] = {}
    try:
        meta = json.loads((study_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    if not isinstance(meta, dict):
        meta = {}
    url = meta.get("storage")
    if not url:
        db = study_dir / "study.db"
        if not db.is_file():
            return None
        url = f"sqlite:///{db.resolve()}"
    file = storage_file(url)
    if file is not None and not file.is_file():
        if (study_dir / "study.db").is_file():  # the folder was moved with its database
            url = f"sqlite:///{(study_dir / 'study.db').resolve()}"
        else:
            return None
    try:
        storage = open_storage(url)
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    except Exception:  # noqa: BLE001 - unreachable server, foreign file: fall back to the files
        return None
    name = meta.get("study") or study_dir.name
    if name not in names:
        if len(names) != 1 or meta.get("study"):
            return None
        name = names[0]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage)


def refresh_store(study_dir: str | Path) -> "StoreSummary | None":
    """Bring a store folder up to date with its study (the truth): rewrite every file from
    the study's storage when it can be read (a killed run's folder, a cut-short ``trials.csv``);
    else check the files agree (:func:`check_store`). Returns the meta when rewritten."""
    out = Path(study_dir)
    study = _open_recorded_study(out)
    if study is None:
        check_store(out)
        return None
    return write_store(study, out)


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
    first = _with_candidate(df)
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


def _write_store(study: optuna.Study, out: Path, attrs: dict[str, Any]) -> "StoreSummary":
    objectives = list(attrs.get("objectives") or ["quality", "latency_ms", "params"])
    df = trials_frame(study, objectives)
    ids = pareto_ids(df)

    # the front's YAML files (the input of full training); stale ones removed
    pdir = out / "pareto"
    pdir.mkdir(parents=True, exist_ok=True)
    from archsearch.candidate import Candidate

    first = _with_candidate(df)
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

    evo = _evolution_frame(attrs)
    if evo is not None:
        atomic_write_text(out / "evolution.csv", evo.to_csv(index=False))
    elif (out / "evolution.csv").exists():
        (out / "evolution.csv").unlink()

    csv_text = df.to_csv(index=False)
    atomic_write_text(out / "trials.csv", csv_text)

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
        **({"method": attrs.get("method")} if attrs.get("method") not in (None, "optuna") else {}),
        **({"evolution": attrs.get("evolution_result")} if evo is not None else {}),
        "seed": attrs.get("seed"),
        "n_trials": attrs.get("n_trials"),
        "population_size": attrs.get("population_size"),
        "hypervolume": hv,
        "counts": {s: int(counts.get(s, 0)) for s in ("complete", "infeasible", "failed", "running")},
        "pareto": ids,
        "quality_noise": {"estimate": "standard error of each trial's held-out score over its held-out samples "
                                      "(quality_se); the proxy run's seed-to-seed noise is not in it",
                          "z": NOISE_Z, "error_bar": f"quality ± {NOISE_Z:g} quality_se",
                          "within_noise": f"a Pareto candidate whose quality edge over a cheaper one is at most "
                                          f"{NOISE_Z:g} standard errors of the difference",
                          "within_noise_of": {cid: ref for cid, ref in zip(df["candidate_id"], df["within_noise_of"])
                                              if ref}},
        "knee": knee_point(df, objectives),
        "warnings": prompt_warnings(df, attrs.get("kind")),
        "store_version": STORE_VERSION,
        "storage": attrs.get("storage"),
        "space_hash": attrs.get("space_hash"),
        "teacher": attrs.get("teacher"),
        "proxy": attrs.get("proxy"),
        "trials_csv": {"rows": int(len(df)), "sha256": _sha256(csv_text)},
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2, default=str) + "\n")
    return meta


def _evolution_frame(attrs: dict[str, Any]) -> pd.DataFrame | None:
    """The evolve path recorded on the study (``archsearch.evolution``) as a table; None otherwise."""
    if attrs.get("method") != "evolve" or attrs.get("evolution") is None:
        return None
    rows = [{c: a.get(c) for c in EVOLUTION_COLUMNS} for a in attrs["evolution"] if isinstance(a, dict)]
    df = pd.DataFrame(rows, columns=list(EVOLUTION_COLUMNS))
    df["position"] = pd.to_numeric(df["position"], errors="coerce").astype("Int64")
    return df


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
    with _store_lock(out):
        meta = _write_store(study, out, attrs)
    meta.path = out
    return meta
