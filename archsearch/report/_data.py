"""Read a study folder written by the store (``reports/<study>/``) into one validated object.

Required: ``trials.csv`` and ``meta.json``. Optional: ``pareto/<candidate_id>.yaml``,
``latency_breakdown.csv``, ``validation.csv``, ``evolution.csv`` (an evolve study's path) — a missing optional file only drops its section
of the report (the page says so). A missing or malformed required file raises
:class:`archsearch.errors.ArchsearchError` naming the file (and the row/key when known).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from archsearch._util import first_line
from archsearch.errors import ArchsearchError

__all__ = [
    "ARCH_PREFIX",
    "Objective",
    "STATES",
    "StudyData",
    "load_study",
]

STATES = ("complete", "failed", "infeasible", "running")
#: ``sum of measured blocks``: a prediction from block rows timed on the device (store 2 on);
#: ``measured`` means a whole model timed as one (stores before 2 wrote it for block sums)
SUM_OF_MEASURED = "sum of measured blocks"
LATENCY_SOURCES = ("measured", SUM_OF_MEASURED, "estimate", "imported", "mixed")
ARCH_PREFIX = "arch."
REQUIRED_TRIAL_COLUMNS = ("number", "state", "candidate_id", "quality", "latency_ms", "pareto")
NUMERIC_COLUMNS = ("quality", "quality_se", "latency_ms", "params", "flops", "memory_mb", "wall_time_s",
                   "cross_attention")
BREAKDOWN_COLUMNS = ("candidate_id", "stage", "block_type", "ms")
VALIDATION_COLUMNS = ("candidate_id", "measured_ms", "predicted_ms")
EVOLUTION_COLUMNS = ("step", "kind", "stage", "block", "dimension", "before", "after", "trial", "candidate_id",
                     "quality", "latency_ms", "d_quality", "d_latency_ms", "value", "taken")


@dataclass(frozen=True)
class Objective:
    """One optimised quantity: a ``trials.csv`` column and its direction."""

    name: str
    direction: str  # 'minimize' | 'maximize'


@dataclass
class StudyData:
    """Everything the report draws from, as read from one study folder."""

    path: Path
    name: str
    meta: dict[str, Any]
    trials: pd.DataFrame
    objectives: list[Objective]
    reference_point: dict[str, float] | None
    constraints: dict[str, Any]
    pareto_yaml: dict[str, str] = field(default_factory=dict)
    breakdown: pd.DataFrame | None = None
    validation: pd.DataFrame | None = None
    evolution: pd.DataFrame | None = None  # evolution.csv of a search.method: evolve study

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def arch_columns(self) -> list[str]:
        """Every flattened architecture column (``arch.<stage>.<key>``), in file order."""
        return [c for c in self.trials.columns if str(c).startswith(ARCH_PREFIX)]

    @property
    def max_latency_ms(self) -> float | None:
        return _opt_float(self.constraints.get("max_latency_ms"))

    @property
    def max_params(self) -> float | None:
        return _opt_float(self.constraints.get("max_params"))

    @property
    def noise_z(self) -> float:
        """Error bars are quality ± noise_z * quality_se (meta.json's ``quality_noise.z``)."""
        noise = self.meta.get("quality_noise")
        z = _opt_float(noise.get("z")) if isinstance(noise, dict) else None
        return z if z is not None and z > 0 else 2.0

    @property
    def has_noise(self) -> bool:
        """Whether any trial has a noise estimate (stores before it have none)."""
        return bool(np.isfinite(self.trials["quality_se"].astype(float)).any())

    @property
    def knee(self) -> dict[str, Any] | None:
        """meta.json's suggested pick: ``candidate_id`` (None: no knee) and ``reason``; None when
        the store did not record one."""
        knee = self.meta.get("knee")
        return knee if isinstance(knee, dict) and isinstance(knee.get("reason"), str) else None

    @property
    def warnings(self) -> list[str]:
        """meta.json's ``warnings`` (Pareto candidates that cannot see the prompt)."""
        raw = self.meta.get("warnings")
        return [str(w) for w in raw] if isinstance(raw, list) else []

    @cached_property
    def table_device(self) -> Any:
        """The study's latency table checked against this machine
        (:class:`~archsearch.cost.latency.DeviceCheck`; ``None``: no table there, or unreadable),
        read once per study."""
        path = self.meta.get("latency_table")
        if not path or not Path(str(path)).is_file():
            return None
        from archsearch.cost.latency import check_table_device, load_table

        try:
            return check_table_device(load_table(path))
        except ArchsearchError:
            return None


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


# --------------------------------------------------------------------------- meta.json


def _load_meta(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ArchsearchError(f"{path}: missing (a study folder needs meta.json and trials.csv)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ArchsearchError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ArchsearchError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict):
        raise ArchsearchError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def _parse_objectives(meta: dict[str, Any], path: Path) -> list[Objective]:
    raw = meta.get("objectives")
    if not isinstance(raw, list) or not raw:
        raise ArchsearchError(
            f"{path}: key 'objectives' must be a non-empty list of "
            '{"name": ..., "direction": "minimize"|"maximize"}'
        )
    out: list[Objective] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ArchsearchError(f"{path}: key 'objectives[{i}].name' must be a string")
        direction = item.get("direction", "minimize")
        if direction not in ("minimize", "maximize"):
            raise ArchsearchError(
                f"{path}: key 'objectives[{i}].direction': {direction!r} "
                "(allowed: minimize, maximize)"
            )
        out.append(Objective(item["name"], direction))
    names = [o.name for o in out]
    if len(set(names)) != len(names):
        raise ArchsearchError(f"{path}: key 'objectives' names an objective twice: {names}")
    return out


def _parse_reference(
    meta: dict[str, Any], objectives: list[Objective], path: Path
) -> dict[str, float] | None:
    raw = meta.get("reference_point")
    if raw is None:
        return None
    if isinstance(raw, list):
        if len(raw) != len(objectives):
            raise ArchsearchError(
                f"{path}: key 'reference_point' has {len(raw)} values for "
                f"{len(objectives)} objectives"
            )
        raw = {o.name: v for o, v in zip(objectives, raw)}
    if not isinstance(raw, dict):
        raise ArchsearchError(f"{path}: key 'reference_point' must be an object {{name: value}}")
    out: dict[str, float] = {}
    for o in objectives:
        value = _opt_float(raw.get(o.name))
        if value is None:
            raise ArchsearchError(
                f"{path}: key 'reference_point.{o.name}' must be a finite number "
                f"(got {raw.get(o.name)!r})"
            )
        out[o.name] = value
    return out


def _parse_constraints(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    raw = meta.get("constraints") or {}
    if not isinstance(raw, dict):
        raise ArchsearchError(f"{path}: key 'constraints' must be an object")
    for key in ("max_latency_ms", "max_params", "max_memory_mb"):
        value = raw.get(key)
        if value is not None and _opt_float(value) is None:
            raise ArchsearchError(
                f"{path}: key 'constraints.{key}' must be a number or null (got {value!r})"
            )
    return dict(raw)


# --------------------------------------------------------------------------- trials.csv


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        # ids are hex strings that may look like numbers ('1e50...'): always read them as text
        return pd.read_csv(path, dtype={"candidate_id": str, "id": str, "within_noise_of": str}, keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise ArchsearchError(f"{path}: empty file (expected a header row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        msg = first_line(exc)
        raise ArchsearchError(f"{path}: not a readable CSV ({msg})") from None


def _require_columns(df: pd.DataFrame, required: tuple[str, ...] | list[str], path: Path) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ArchsearchError(
            f"{path}: missing column(s) {', '.join(missing)} "
            f"(has: {', '.join(map(str, df.columns))})"
        )


def _numeric(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    """Column as float; empty cells become NaN, anything else unparsable is an error."""
    raw = df[col]
    num = pd.to_numeric(raw, errors="coerce").astype(float)
    bad = num.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
    bad &= ~raw.astype(str).str.strip().str.lower().isin(["nan", "none", "null", "inf", "-inf"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ArchsearchError(
            f"{path}: row {i + 2}, column {col}: {raw.iloc[i]!r} is not a number"
        )
    return num


def _text(raw: pd.Series) -> pd.Series:
    """Column as str, empty cells as ''."""

    def one(v: Any) -> str:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)

    return raw.map(one)


_TRUE = {"true", "1", "yes", "1.0"}
_FALSE = {"false", "0", "no", "0.0", "", "nan"}


def _boolean(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    raw = df[col]
    if raw.dtype == bool:
        return raw
    text = raw.astype(str).str.strip().str.lower()
    bad = ~text.isin(_TRUE | _FALSE)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ArchsearchError(
            f"{path}: row {i + 2}, column {col}: {raw.iloc[i]!r} (allowed: true, false)"
        )
    return text.isin(_TRUE)


def _store_version(meta: dict[str, Any]) -> int:
    """meta.json's ``store_version`` (1 for stores written before the key)."""
    v = meta.get("store_version")
    return v if isinstance(v, int) and not isinstance(v, bool) else 1


def _load_trials(path: Path, objectives: list[Objective], meta_path: Path, store_version: int = 1) -> pd.DataFrame:
    if not path.is_file():
        raise ArchsearchError(f"{path}: missing (a study folder needs meta.json and trials.csv)")
    df = _read_csv(path)
    _require_columns(df, REQUIRED_TRIAL_COLUMNS, path)
    for o in objectives:
        if o.name not in df.columns:
            raise ArchsearchError(
                f"{meta_path}: objective {o.name!r} is not a column of {path.name} "
                f"(columns: {', '.join(map(str, df.columns))})"
            )
    df = df.copy()
    number = _numeric(df, "number", path)
    if number.isna().any():
        i = int(np.flatnonzero(number.isna().to_numpy())[0])
        raise ArchsearchError(f"{path}: row {i + 2}, column number: empty")
    df["number"] = number.astype(int)
    state = df["state"].astype(str).str.strip().str.lower()
    bad = ~state.isin(STATES)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ArchsearchError(
            f"{path}: row {i + 2}, column state: {df['state'].iloc[i]!r} "
            f"(allowed: {', '.join(STATES)})"
        )
    df["state"] = state
    df["candidate_id"] = _text(df["candidate_id"])
    for col in set(NUMERIC_COLUMNS) | {o.name for o in objectives}:
        if col in df.columns:
            df[col] = _numeric(df, col, path)
    for col in ("params", "flops", "memory_mb", "quality_se", "cross_attention"):  # stores written before them
        if col not in df.columns:
            df[col] = np.nan
    df["pareto"] = _boolean(df, "pareto", path)  # the store's front: the report draws it
    if "feasible" in df.columns:
        df["feasible"] = _boolean(df, "feasible", path)
    else:
        df["feasible"] = True
    df.loc[df["state"] == "infeasible", "feasible"] = False
    if "latency_source" in df.columns:
        src = _text(df["latency_source"]).str.strip().str.lower()
        bad = ~src.isin(LATENCY_SOURCES + ("",))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ArchsearchError(
                f"{path}: row {i + 2}, column latency_source: "
                f"{df['latency_source'].iloc[i]!r} (allowed: {', '.join(LATENCY_SOURCES)})"
            )
        if store_version < 2:  # every trial latency was a prediction from block rows
            src = src.replace("measured", SUM_OF_MEASURED)
        df["latency_source"] = src
    else:
        df["latency_source"] = ""
    for col in ("fail_reason", "candidate", "loss_curve", "datetime_start", "datetime_complete", "memory_source",
                "within_noise_of"):
        if col in df.columns:
            df[col] = _text(df[col])
        else:
            df[col] = ""
    df = df.sort_values("number", kind="stable").reset_index(drop=True)
    return df


# --------------------------------------------------------------------------- optional files


def _load_pareto_yaml(folder: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob("*.yaml")):
        try:
            out[f.stem] = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ArchsearchError(f"{f}: cannot read ({exc})") from None
    return out


def _load_breakdown(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    df = _read_csv(path)
    _require_columns(df, BREAKDOWN_COLUMNS, path)
    df = df.copy()
    df["ms"] = _numeric(df, "ms", path)
    for col in ("candidate_id", "stage", "block_type"):
        df[col] = _text(df[col])
    return df


def _load_validation(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    df = _read_csv(path)
    # the profile stage's validation table names them id / lut_ms: accept both spellings
    aliases = {"id": "candidate_id", "lut_ms": "predicted_ms"}
    df = df.rename(columns={a: c for a, c in aliases.items() if a in df and c not in df})
    _require_columns(df, VALIDATION_COLUMNS, path)
    df = df.copy()
    for col in ("measured_ms", "predicted_ms", "flops_fit_ms"):
        if col in df.columns:
            df[col] = _numeric(df, col, path)
    df["candidate_id"] = _text(df["candidate_id"])
    return df


def _load_evolution(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    df = _read_csv(path)
    _require_columns(df, EVOLUTION_COLUMNS, path)
    df = df.copy()
    for col in ("step", "trial", "quality", "latency_ms", "d_quality", "d_latency_ms", "value"):
        df[col] = pd.to_numeric(df[col], errors="coerce")  # empty cells (no value) read as NaN
    for col in ("kind", "stage", "block", "dimension", "before", "after", "candidate_id"):
        df[col] = _text(df[col])
    df["taken"] = _boolean(df, "taken", path)
    return df


# --------------------------------------------------------------------------- entry point


def load_study(study_dir: str | Path) -> StudyData:
    """Read and validate one study folder (see the module docstring for the files)."""
    path = Path(study_dir)
    if not path.is_dir():
        raise ArchsearchError(f"{path}: not a folder (expected a study folder with meta.json)")
    meta_path = path / "meta.json"
    meta = _load_meta(meta_path)
    objectives = _parse_objectives(meta, meta_path)
    reference = _parse_reference(meta, objectives, meta_path)
    constraints = _parse_constraints(meta, meta_path)
    trials = _load_trials(path / "trials.csv", objectives, meta_path, _store_version(meta))
    name = meta.get("study")
    if not isinstance(name, str) or not name:
        name = path.resolve().name
    return StudyData(
        path=path,
        name=name,
        meta=meta,
        trials=trials,
        objectives=objectives,
        reference_point=reference,
        constraints=constraints,
        pareto_yaml=_load_pareto_yaml(path / "pareto"),
        breakdown=_load_breakdown(path / "latency_breakdown.csv"),
        validation=_load_validation(path / "validation.csv"),
        evolution=_load_evolution(path / "evolution.csv"),
    )
