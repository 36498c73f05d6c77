"""Latency lookup tables: one CSV file per (target, device, dtype, batch, threads).

The file is plain CSV that pandas reads with ``pd.read_csv(path, comment="#")``: the table's
metadata (target, device, versions, calibration, ...) sits in ``#`` lines above the header,
as YAML. One row per block key (``BlockSpec.key``: type + hyperparameters + input shape).
Every write goes through a temp file and ``os.replace``, so a killed profiler never leaves
a half-written table, and a resumed one finds every row it had measured.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import yaml

from archsearch._util import atomic_write_text
from archsearch.cost.latency._keys import candidate_blocks
from archsearch.errors import ArchsearchError
from archsearch.spec import load_yaml_text

__all__ = [
    "COLUMNS",
    "IMPORT_COLUMNS",
    "MEMORY_COLUMNS",
    "SOURCES",
    "TABLE_FORMAT",
    "LatencyTable",
    "load_table",
    "read_import_csv",
]

TABLE_FORMAT = "archsearch.latency-table/v1"
SOURCES = ("measured", "estimate", "imported")

#: Columns of a table file, in order. ``ms`` is the median latency of one call of the block
#: at the table's batch size; ``ms_iqr`` its interquartile range; ``runs`` the number of
#: timed calls; ``macs`` multiply-accumulates of one call; ``bytes`` the memory traffic
#: estimate (inputs + outputs + weights of every op) used by the roofline model.
#: ``weight_bytes``/``act_bytes``/``out_bytes``/``mem_source``: the block's memory (see
#: ``_memory.py``); optional on read (tables written before them load, with the columns empty).
COLUMNS = (
    "key", "type", "params", "in_shape", "ms", "ms_iqr", "runs", "source",
    "macs", "bytes", "weight_bytes", "act_bytes", "out_bytes", "mem_source",
    "coreml", "ane_flags", "example", "note",
)
MEMORY_COLUMNS = ("weight_bytes", "act_bytes", "out_bytes", "mem_source")
MEM_SOURCES = ("measured", "estimate")
_FLOAT_COLS = ("ms", "ms_iqr")
_INT_COLS = ("runs", "macs", "bytes", "weight_bytes", "act_bytes", "out_bytes")
_STR_COLS = tuple(c for c in COLUMNS if c not in _FLOAT_COLS + _INT_COLS)

#: Columns a device CSV given to ``archsearch profile --import`` may have. ``key`` and ``ms``
#: are required; ``ms_iqr``, ``runs`` and ``note`` are kept; the other table columns are
#: accepted (so an exported table can be filled in and imported back) and ignored.
IMPORT_COLUMNS = COLUMNS


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _split_header(text: str) -> tuple[str, str]:
    """Split ``# yaml`` header lines from the CSV body.

    The header keeps one line per file line (blank lines stay blank), so a YAML error's
    line number is the file's.
    """
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and (lines[i].startswith("#") or not lines[i].strip()):
        i += 1
    header = "".join((ln[2:] if ln.startswith("# ") else ln[1:]) if ln.startswith("#") else "\n"
                     for ln in lines[:i])
    return header, "".join(lines[i:])


def _read_csv_file(path: Path, what: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """Read ``path`` into (metadata, all-string frame); every failure is one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArchsearchError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ArchsearchError(f"{path}: is a folder, expected a {what} (.csv)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArchsearchError(f"{path}: cannot read {what} ({exc.__class__.__name__}: {exc})") from None
    header, body = _split_header(text)
    meta: dict[str, Any] = {}
    if header.strip():
        loaded = load_yaml_text(header, str(path)).data  # yaml.safe_load; FILE:LINE: one-line errors
        if loaded is not None and not isinstance(loaded, dict):
            raise ArchsearchError(f"{path}: the '#' metadata lines must be a YAML mapping (key: value)")
        meta = loaded or {}
    if not body.strip():
        raise ArchsearchError(f"{path}: no CSV header line (a {what} needs at least the columns key, ms)")
    try:
        df = pd.read_csv(io.StringIO(body), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise ArchsearchError(f"{path}: not a valid CSV ({str(exc).splitlines()[0]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    _check_rows_complete(body, text.count("\n") - body.count("\n"), path, what)
    return meta, df


def _check_rows_complete(body: str, before: int, path: Path, what: str) -> None:
    """Refuse a row with fewer fields than the header (pandas would fill them with NaN): a
    file cut short in the middle of its last line, or a row a hand edit broke."""
    reader = csv.reader(io.StringIO(body))
    try:
        n = len(next(reader))
        for row in reader:
            if row and len(row) < n:
                line = before + reader.line_num
                last = reader.line_num == body.count("\n") + (0 if body.endswith("\n") else 1)
                why = ("the file ends in the middle of its last line (cut short?)" if last and not body.endswith("\n")
                       else "a row cut short")
                raise ArchsearchError(f"{path}:{line}: {len(row)} of {n} columns: {why}; "
                                      f"re-run archsearch profile or delete the line (a {what} row needs every column)")
    except csv.Error as exc:
        raise ArchsearchError(f"{path}: not a valid CSV ({exc})") from None


def _numeric(df: pd.DataFrame, col: str, path: Path, line0: int, *, required: bool, positive: bool) -> pd.Series:
    """Parse a numeric column; a bad cell is an error naming file, line, key and column."""
    raw = df[col].astype(str).str.strip() if col in df else pd.Series([""] * len(df), index=df.index)
    vals = pd.to_numeric(raw.replace("", np.nan), errors="coerce")
    bad = (raw != "") & vals.isna()
    if required:
        bad |= raw == ""
    if positive:
        bad |= vals.notna() & ~(vals > 0)
    bad |= vals.notna() & ~np.isfinite(vals.astype(float))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        key = df["key"].iloc[i] if "key" in df else "?"
        allowed = "a number > 0" if positive else "a number"
        raise ArchsearchError(
            f"{path}:{line0 + i}: column {col}: bad value {raw.iloc[i]!r} for key {key!r} (allowed: {allowed})"
        )
    return vals


class LatencyTable:
    """Block latencies for one target, plus the table's metadata and calibration.

    ``table.df`` is a pandas frame indexed by nothing in particular with the columns in
    :data:`COLUMNS`; ``table.meta`` a plain dict (target, device, source, dtype, batch,
    threads, resolution, versions, space, calibration, ...).
    """

    def __init__(self, df: pd.DataFrame | None = None, meta: dict[str, Any] | None = None,
                 path: str | os.PathLike | None = None) -> None:
        self.meta: dict[str, Any] = dict(meta or {})
        self.meta.setdefault("format", TABLE_FORMAT)
        self.path: Path | None = Path(path) if path is not None else None
        self._df = self._normalise(df if df is not None else pd.DataFrame(columns=list(COLUMNS)))
        self._reindex()

    # ----------------------------------------------------------------- basics
    @staticmethod
    def _normalise(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        for c in COLUMNS:
            if c not in df:
                df[c] = "" if c in _STR_COLS else np.nan
        df = df[list(COLUMNS)]
        for c in _STR_COLS:
            df[c] = df[c].fillna("").astype(str)
        for c in _FLOAT_COLS + _INT_COLS:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
        return df.reset_index(drop=True)

    def _reindex(self) -> None:
        dup = self._df["key"].duplicated(keep="last")
        if dup.any():
            self._df = self._df[~dup].reset_index(drop=True)
        self._index: dict[str, int] = {k: i for i, k in enumerate(self._df["key"].tolist())}
        self._ms = self._df["ms"].to_numpy(dtype=float)
        #: bumped by every change: a :class:`LatencyPredictor` drops its caches when it moves
        self.version = getattr(self, "version", 0) + 1

    @property
    def df(self) -> pd.DataFrame:
        """The rows (a copy; change the table with :meth:`add_rows`)."""
        return self._df.copy()

    @property
    def ms_array(self) -> np.ndarray:
        """Latency per row (ms), aligned with :meth:`index_of`."""
        return self._ms

    def __len__(self) -> int:
        return len(self._df)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __repr__(self) -> str:
        where = f" {self.path}" if self.path else ""
        return (f"LatencyTable({len(self)} blocks, target={self.meta.get('target')!r}, "
                f"source={self.source!r}{where})")

    def keys(self) -> list[str]:
        return list(self._index)

    def index_of(self, key: str) -> int | None:
        return self._index.get(key)

    def row(self, key: str) -> dict[str, Any]:
        i = self._index.get(key)
        if i is None:
            raise KeyError(key)
        return self._df.iloc[i].to_dict()

    def ms(self, key: str) -> float:
        i = self._index.get(key)
        if i is None:
            raise KeyError(key)
        return float(self._ms[i])

    @property
    def source(self) -> str:
        """measured | estimate | imported, or mixed when rows disagree ('' when empty)."""
        found = sorted(set(self._df["source"]) - {""})
        if not found:
            return str(self.meta.get("source", ""))
        return found[0] if len(found) == 1 else "mixed"

    @property
    def calibration(self) -> tuple[float, float]:
        """``(scale, overhead_ms)``: a whole model is ``scale * sum(blocks) + overhead_ms``."""
        cal = self.meta.get("calibration") or {}
        return float(cal.get("scale", 1.0)), float(cal.get("overhead_ms", 0.0))

    # ----------------------------------------------------------------- changes
    def add_rows(self, rows: Iterable[dict[str, Any]] | pd.DataFrame) -> int:
        """Insert or replace rows by key; returns how many rows were given."""
        new = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        if new.empty:
            return 0
        if "key" not in new or "ms" not in new:
            raise ValueError("rows need at least the columns key and ms")
        bad = sorted(set(new.get("source", pd.Series(dtype=str)).dropna()) - set(SOURCES))
        if bad:
            raise ValueError(f"bad source {bad[0]!r} (allowed: {', '.join(SOURCES)})")
        new = self._normalise(new)
        keep = self._df[~self._df["key"].isin(set(new["key"]))]
        frames = [f for f in (keep, new) if not f.empty]
        self._df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
        self._reindex()
        return len(new)

    def set_calibration(self, scale: float, overhead_ms: float, points: list[dict[str, Any]],
                        method: str) -> None:
        """Store the whole-model fit ``ms = scale * sum(blocks) + overhead_ms`` and its data."""
        self.meta["calibration"] = {
            "scale": round(float(scale), 6),
            "overhead_ms": round(float(overhead_ms), 6),
            "method": method,
            "points": points,
        }
        self.version += 1

    # ----------------------------------------------------------------- I/O
    def to_csv_text(self) -> str:
        # plain types only (numpy scalars, str subclasses such as torch's version string)
        meta = json.loads(json.dumps(self.meta, default=_plain))
        meta["format"] = TABLE_FORMAT
        meta["source"] = self.source
        meta["blocks"] = len(self)
        head = yaml.safe_dump(meta, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True)
        header = "".join(f"# {ln}\n" for ln in head.splitlines())
        df = self._df.sort_values(["type", "key"], kind="stable").copy()
        for c in _INT_COLS:
            df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(int(v)))
        body = df.to_csv(index=False, float_format="%.6g", lineterminator="\n")
        return header + body

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the table atomically (temp file + ``os.replace``); returns the path."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("no path: pass one to save()")
        self.meta["updated"] = _now()
        self.meta.setdefault("created", self.meta["updated"])
        atomic_write_text(target, self.to_csv_text())
        self.path = target
        return target

    # ----------------------------------------------------------------- per candidate
    def source_for(self, candidate: Any) -> str:
        """'measured' | 'estimate' | 'imported' | 'mixed' for the rows ``candidate`` uses.

        A block missing from the table would be interpolated, so it counts as 'estimate'.
        """
        found: set[str] = set()
        src = self._df["source"].to_numpy()
        for key in candidate_blocks(candidate).keys:
            i = self._index.get(key)
            found.add(src[i] if i is not None and src[i] else "estimate")
        if not found:
            return self.source
        return found.pop() if len(found) == 1 else "mixed"


def load_table(path: str | os.PathLike) -> LatencyTable:
    """Read a table written by ``archsearch profile`` (or by hand in the same format)."""
    path = Path(path)
    meta, df = _read_csv_file(path, "latency table")
    fmt = meta.get("format", TABLE_FORMAT)
    if fmt != TABLE_FORMAT:
        raise ArchsearchError(f"{path}: format: unsupported {fmt!r} (allowed: {TABLE_FORMAT})")
    missing = [c for c in ("key", "ms") if c not in df.columns]
    if missing:
        raise ArchsearchError(f"{path}: missing column {missing[0]} (a latency table needs: {', '.join(COLUMNS)})")
    unknown = [c for c in df.columns if c not in COLUMNS]
    if unknown:
        raise ArchsearchError(f"{path}: unknown column {unknown[0]!r} (allowed: {', '.join(COLUMNS)})")
    line0 = _first_data_line(path)
    empty_key = df["key"].str.strip() == ""
    if empty_key.any():
        i = int(np.flatnonzero(empty_key.to_numpy())[0])
        raise ArchsearchError(f"{path}:{line0 + i}: column key: empty (every row needs a block key)")
    dup = df["key"].duplicated(keep=False)
    if dup.any():
        first = df["key"][dup].iloc[0]
        lines = [str(line0 + i) for i in np.flatnonzero((df["key"] == first).to_numpy())]
        raise ArchsearchError(f"{path}:{lines[0]}: key {first!r} appears on lines {', '.join(lines)} "
                              "(one row per block; keep the one you trust)")
    df["ms"] = _numeric(df, "ms", path, line0, required=True, positive=True)
    for c in ("ms_iqr", "runs", "macs", "bytes", "weight_bytes", "act_bytes", "out_bytes"):
        if c in df:
            df[c] = _numeric(df, c, path, line0, required=False, positive=False)
    if "mem_source" in df:
        bad = ~df["mem_source"].isin(MEM_SOURCES + ("",))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ArchsearchError(f"{path}:{line0 + i}: column mem_source: bad value {df['mem_source'].iloc[i]!r} "
                                  f"(allowed: {', '.join(MEM_SOURCES)})")
    if "source" in df:
        bad = ~df["source"].isin(SOURCES + ("",))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ArchsearchError(f"{path}:{line0 + i}: column source: bad value {df['source'].iloc[i]!r} "
                                  f"(allowed: {', '.join(SOURCES)})")
    return LatencyTable(df, meta, path)


def _first_data_line(path: Path) -> int:
    """1-based line number of the first data row (after '#' lines and the CSV header)."""
    n = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            n += 1
            if not (line.startswith("#") or not line.strip()):
                return n + 1
    return n + 1


def read_import_csv(path: str | os.PathLike) -> tuple[dict[str, Any], pd.DataFrame]:
    """Read a device CSV for ``profile --import``: (its '#' metadata, rows key/ms/ms_iqr/runs/note).

    Required columns: ``key``, ``ms`` (milliseconds per call, > 0). Optional: ``ms_iqr``,
    ``runs``, ``note``; the other table columns are accepted and ignored.
    """
    path = Path(path)
    meta, df = _read_csv_file(path, "device CSV")
    missing = [c for c in ("key", "ms") if c not in df.columns]
    if missing:
        raise ArchsearchError(f"{path}: missing column {missing[0]} (required: key, ms; optional: ms_iqr, runs, note)")
    unknown = [c for c in df.columns if c not in IMPORT_COLUMNS]
    if unknown:
        raise ArchsearchError(f"{path}: unknown column {unknown[0]!r} (allowed: {', '.join(IMPORT_COLUMNS)})")
    if df.empty:
        raise ArchsearchError(f"{path}: no rows (one row per block: key, ms)")
    line0 = _first_data_line(path)
    keys = df["key"].str.strip()
    if (keys == "").any():
        i = int(np.flatnonzero((keys == "").to_numpy())[0])
        raise ArchsearchError(f"{path}:{line0 + i}: column key: empty (every row needs a block key)")
    dup = keys.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise ArchsearchError(f"{path}:{line0 + i}: key {keys.iloc[i]!r} appears twice (one row per block)")
    out = pd.DataFrame({"key": keys})
    out["ms"] = _numeric(df, "ms", path, line0, required=True, positive=True)
    out["ms_iqr"] = _numeric(df, "ms_iqr", path, line0, required=False, positive=False)
    out["runs"] = _numeric(df, "runs", path, line0, required=False, positive=False)
    out["note"] = df["note"] if "note" in df else ""
    return meta, out
