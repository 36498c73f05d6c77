"""Predict a candidate's latency from a lookup table: the sum of its blocks' rows, then the
table's calibration ``scale * sum + overhead_ms`` (fitted on whole-model measurements).

    predictor = load_predictor("latency_tables/tiny-cpu-r16.csv")   # or LatencyPredictor(table)
    ms = predictor.predict(candidates)        # numpy array, one value per candidate
    df = predictor.breakdown(candidate)       # one row per block, plus the overhead

A :class:`LatencyPredictor` owns its table and its caches: a candidate's row indices in
that table (its block keys come from the shared walk cache in ``_keys.py``) and the
interpolated latency of blocks missing from it. A batch of candidates is then one gather
and one ``np.add.reduceat``. The caches follow the table: any change to it (its
``version``) drops them. The module-level :func:`predict` / :func:`predict_breakdown` take a
table (or a predictor) and reuse one predictor per table.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import weakref
from typing import Any, Iterable

import numpy as np
import pandas as pd

from archsearch.cost.latency._errors import MissingBlocksError
from archsearch.cost.latency._keys import candidate_blocks
from archsearch.cost.latency._table import LatencyTable, load_table

__all__ = [
    "InterpolationWarning",
    "LatencyPredictor",
    "block_sums",
    "interpolate",
    "load_predictor",
    "predict",
    "predict_breakdown",
    "predict_memory",
    "predictor_for",
]


#: The source of a latency summed from measured block rows (:meth:`LatencyPredictor.source_for`).
SUM_OF_MEASURED = "sum of measured blocks"


class InterpolationWarning(UserWarning):
    """Some blocks were missing from the table and were interpolated (``allow_missing``)."""


_NUMERIC = (int, float)
_Entry = tuple[np.ndarray, float, tuple[str, ...]]  # row indices, interpolated ms, interpolated keys


def _as_list(candidates: Any) -> list[Any]:
    from archsearch.candidate import Candidate

    if isinstance(candidates, Candidate):
        return [candidates]
    return list(candidates)


def _spec_features(params: dict[str, Any], in_shape: tuple[int, ...]) -> tuple[dict[str, Any], np.ndarray]:
    cats = {k: v for k, v in params.items() if isinstance(v, (str, bool)) or not isinstance(v, _NUMERIC)}
    nums = [float(v) for k, v in sorted(params.items()) if k not in cats] + [float(s) for s in in_shape]
    return cats, np.log2(np.asarray(nums, dtype=float) + 1.0)


def _spec_macs(spec: Any) -> float:
    from archsearch.cost.latency._devices import count_ops
    from archsearch.model import build_block, example_inputs

    try:
        block = build_block(spec, device="meta")
        ops = count_ops(block, example_inputs(spec, device="meta"))
    except Exception:  # noqa: BLE001 - interpolation falls back to the nearest row as is
        return float("nan")
    return float(sum(op.macs for op in ops))


class LatencyPredictor:
    """Latency of candidates from one :class:`LatencyTable` (sum of block rows, calibrated).

    ``LatencyPredictor(table)`` or :func:`load_predictor`. A block missing from the table
    raises :class:`MissingBlocksError` (naming the key, the table and the run that built
    it); ``allow_missing=True`` interpolates it from its nearest rows of the same type
    instead, with an :class:`InterpolationWarning` saying how many were interpolated.
    """

    def __init__(self, table: LatencyTable) -> None:
        self.table = table
        self._version: int | None = None
        self._entries: dict[Any, _Entry] = {}
        self._interpolated: dict[str, float] = {}
        self._rows: list[tuple[str, dict[str, Any], np.ndarray, float, float]] | None = None
        self._memory: dict[Any, Any] = {}
        self._block_memory: dict[str, tuple[int, int, int, str]] = {}

    def __repr__(self) -> str:
        return f"LatencyPredictor({self.table!r})"

    def _sync(self) -> None:
        """Drop every cache when the table changed since they were filled."""
        if self._version != self.table.version:
            self._version = self.table.version
            self._entries = {}
            self._interpolated = {}
            self._rows = None
            self._memory = {}
            self._block_memory = {}

    @property
    def calibration(self) -> tuple[float, float]:
        """``(scale, overhead_ms)`` of the table."""
        return self.table.calibration

    # ----------------------------------------------------------------- prediction
    def predict(self, candidates: Any, allow_missing: bool = False) -> np.ndarray:
        """Predicted latency (ms) of each candidate: ``scale * sum(block rows) + overhead_ms``.

        ``candidates`` is one :class:`~archsearch.candidate.Candidate` or an iterable of
        them; the result is a float array, one value per candidate.
        """
        scale, overhead = self.table.calibration
        return scale * self.block_sums(candidates, allow_missing) + overhead

    def block_sums(self, candidates: Any, allow_missing: bool = False) -> np.ndarray:
        """Uncalibrated sum of block latencies (ms) per candidate."""
        cands = _as_list(candidates)
        if not cands:
            return np.zeros(0)
        self._sync()
        cache = self._entries
        entries = []
        interpolated: set[str] = set()
        for c in cands:
            e = cache.get(c)
            if e is None:
                e = self._entry(c, allow_missing)
                cache[c] = e
            if e[2]:
                if not allow_missing:  # cached with allow_missing=True earlier
                    missing = set(e[2])
                    raise self._missing_error(c, [s for s in candidate_blocks(c).specs if s.key in missing])
                interpolated.update(e[2])
            entries.append(e)
        lens = np.fromiter((len(e[0]) for e in entries), dtype=np.int64, count=len(entries))
        flat = np.concatenate([e[0] for e in entries])
        vals = self.table.ms_array[flat]
        offsets = np.zeros(len(entries), dtype=np.int64)
        np.cumsum(lens[:-1], out=offsets[1:])
        sums = np.zeros(len(entries))
        nonempty = lens > 0
        if nonempty.any():
            sums[nonempty] = np.add.reduceat(vals, offsets[nonempty]) if len(vals) else 0.0
        extras = np.fromiter((e[1] for e in entries), dtype=float, count=len(entries))
        if interpolated:
            self._warn(len(interpolated))
        return sums + extras

    def breakdown(self, candidate: Any, allow_missing: bool = False) -> pd.DataFrame:
        """One row per block (name, stage, type, key, ms, source, table_ms) plus an ``overhead`` row.

        ``ms`` is the block's table latency times the calibration scale, so the column sums
        to :meth:`predict`'s value; ``table_ms`` is the raw row.
        """
        table = self.table
        scale, overhead = table.calibration
        rows = []
        missing = []
        src = table.df["source"].tolist()
        for s in candidate_blocks(candidate).specs:
            i = table.index_of(s.key)
            if i is None:
                missing.append(s)
                rows.append([s.name, s.stage, s.type, s.key, math.nan, "interpolated"])
            else:
                rows.append([s.name, s.stage, s.type, s.key, float(table.ms_array[i]), src[i] or "measured"])
        if missing:
            if not allow_missing:
                raise self._missing_error(candidate, missing)
            interp = {s.key: self._interpolated_ms(s) for s in missing}
            for r in rows:
                if r[5] == "interpolated":
                    r[4] = interp[r[3]]
            self._warn(len(interp))
        df = pd.DataFrame(rows, columns=["name", "stage", "type", "key", "table_ms", "source"])
        df["ms"] = df["table_ms"] * scale
        over = pd.DataFrame([["overhead", "overhead", "overhead", "", math.nan, "calibration", overhead]],
                            columns=list(df.columns))
        df = pd.concat([df, over], ignore_index=True)
        return df[["name", "stage", "type", "key", "ms", "source", "table_ms"]]

    def source_for(self, candidate: Any) -> str:
        """Where ``candidate``'s predicted latency comes from: ``sum of measured blocks`` (every
        row it uses was timed on the device, the whole model was not), ``estimate``,
        ``imported`` or ``mixed`` (rows of several sources). ``measured`` is kept for a whole
        model timed as one; a prediction never is (the table's rows keep their own source)."""
        src = self.table.source_for(candidate)
        return SUM_OF_MEASURED if src == "measured" else src

    # ----------------------------------------------------------------- memory
    @property
    def elem_bytes(self) -> int:
        """Bytes per element at the table's dtype."""
        return 2 if str(self.table.meta.get("dtype", "float32")) in ("float16", "bfloat16") else 4

    def block_memory(self, spec: Any) -> tuple[int, int, int, str]:
        """``(weight_bytes, act_bytes, out_bytes, mem_source)`` of one block: its table row,
        or (a table written before the memory columns, or a block missing from it) an
        estimate from a ``meta`` run at the table's dtype and batch."""
        self._sync()
        found = self._block_memory.get(spec.key)
        if found is not None:
            return found
        i = self.table.index_of(spec.key)
        vals = None
        if i is not None:
            df = self.table._df  # read-only access to the row's memory columns
            w, a, o = (df.at[i, c] for c in ("weight_bytes", "act_bytes", "out_bytes"))
            if all(v == v for v in (w, a, o)):  # not NaN
                vals = (int(w), int(a), int(o), str(df.at[i, "mem_source"]) or "estimate")
        if vals is None:
            from archsearch.cost.latency._memory import estimate_block_memory

            m = estimate_block_memory(spec, int(self.table.meta.get("batch", 1)), elem_bytes=self.elem_bytes)
            vals = (m.weight_bytes, m.act_bytes, m.out_bytes, m.source)
        self._block_memory[spec.key] = vals
        return vals

    def memory(self, candidate: Any) -> Any:
        """Peak memory of one forward call of ``candidate`` (a :class:`PeakMemory`):
        every block's weights, plus the largest sum, along the model's own block order, of
        the inputs, the skip tensors alive from the down path to the up path, and a block's
        input and activations. ``.peak_mb`` is what ``max_memory_mb`` compares."""
        self._sync()
        found = self._memory.get(candidate)
        if found is None:
            from archsearch.cost.latency._memory import model_peak

            found = model_peak(candidate, self.block_memory, int(self.table.meta.get("batch", 1)), self.elem_bytes)
            self._memory[candidate] = found
        return found

    def predict_memory(self, candidates: Any) -> np.ndarray:
        """Peak memory (MiB) of each candidate (see :meth:`memory`)."""
        return np.asarray([self.memory(c).peak_mb for c in _as_list(candidates)], dtype=float)

    # ----------------------------------------------------------------- interpolation
    def interpolate(self, spec: Any, k: int = 4) -> tuple[float, str]:
        """Estimate a block missing from the table from its nearest rows of the same type.

        Nearest = same type, same categorical hyperparameters if any row has them, smallest
        distance in log2 of the numeric hyperparameters and input shape. With two or more
        neighbours of distinct MACs, ``ms = a + b * macs`` is fitted on them (a, b >= 0);
        otherwise the nearest row is scaled by the ratio of MACs. Returns (ms, nearest key).
        """
        rows = self._row_features()
        keys = self.table.keys()
        cats, feats = _spec_features(spec.hparams, tuple(spec.in_shape))
        same_type = [i for i, r in enumerate(rows) if r[0] == spec.type and len(r[2]) == len(feats)]
        if not same_type:
            same_type = [i for i, r in enumerate(rows) if r[0] == spec.type]
        if not same_type:
            raise self._missing_error(None, [spec], uninterpolable=spec.type)
        same_cats = [i for i in same_type if rows[i][1] == cats]
        pool = same_cats or same_type

        def dist(i: int) -> float:
            f = rows[i][2]
            return float(np.abs(f - feats).sum()) if len(f) == len(feats) else math.inf

        order = sorted(pool, key=dist)[:k]
        nearest = order[0]
        macs = _spec_macs(spec)
        pts = [(rows[i][3], rows[i][4]) for i in order if rows[i][3] == rows[i][3]]
        if macs == macs and len({m for m, _ in pts}) >= 2:
            x = np.array([m for m, _ in pts])
            y = np.array([v for _, v in pts])
            b, a = np.polyfit(x, y, 1)
            if b >= 0 and a >= 0:
                return float(a + b * macs), keys[nearest]
        near_macs, near_ms = rows[nearest][3], rows[nearest][4]
        if macs == macs and near_macs == near_macs and near_macs > 0:
            return float(near_ms * macs / near_macs), keys[nearest]
        return float(near_ms), keys[nearest]

    def _row_features(self) -> list[tuple[str, dict[str, Any], np.ndarray, float, float]]:
        """(type, categorical params, log-numeric features, macs, ms) per row (cached)."""
        self._sync()
        if self._rows is not None:
            return self._rows
        rows = []
        df = self.table.df
        for t, p, shape, macs, ms in zip(df["type"], df["params"], df["in_shape"], df["macs"], df["ms"]):
            try:
                params = json.loads(p) if p else {}
                dims = tuple(int(x) for x in shape.split("x")) if shape else ()
            except (ValueError, TypeError):
                params, dims = {}, ()
            cats, feats = _spec_features(params, dims)
            rows.append((t, cats, feats, float(macs) if macs == macs else float("nan"), float(ms)))
        self._rows = rows
        return rows

    def _interpolated_ms(self, spec: Any) -> float:
        self._sync()
        if spec.key not in self._interpolated:
            self._interpolated[spec.key] = self.interpolate(spec)[0]
        return self._interpolated[spec.key]

    # ----------------------------------------------------------------- internals
    def _entry(self, candidate: Any, allow_missing: bool) -> _Entry:
        """(row indices, interpolated ms, interpolated keys) of one candidate."""
        keys, specs = candidate_blocks(candidate)
        index_of = self.table.index_of
        idx = [i if (i := index_of(k)) is not None else -1 for k in keys]
        if -1 not in idx:
            return np.asarray(idx, dtype=np.int64), 0.0, ()
        missing = [s for s, i in zip(specs, idx) if i < 0]
        if not allow_missing:
            raise self._missing_error(candidate, missing)
        extra = sum(self._interpolated_ms(s) for s in missing)
        return np.asarray([i for i in idx if i >= 0], dtype=np.int64), float(extra), tuple(s.key for s in missing)

    def _missing_error(self, candidate: Any, specs: list[Any], uninterpolable: str | None = None) -> MissingBlocksError:
        meta = self.table.meta
        first = specs[0]
        return MissingBlocksError(uninterpolable=uninterpolable,
            key=first.key, block=first.name, n_missing=len(specs),
            candidate_id=getattr(candidate, "id", "?"), candidate_resolution=getattr(candidate, "resolution", None),
            table_path=self.table.path, target=meta.get("target"), resolution=meta.get("resolution"),
            command=str(meta["command"]) if meta.get("command") else None)

    def _warn(self, n: int) -> None:
        cmd = self.table.meta.get("command")
        how = f"; measure them with: {cmd}" if cmd else ""
        warnings.warn(InterpolationWarning(
            f"{n} block(s) missing from the latency table were interpolated from their nearest measured "
            f"neighbours{how}"), stacklevel=4)


def load_predictor(path: str | os.PathLike) -> LatencyPredictor:
    """A predictor on the table file at ``path`` (see :func:`load_table`)."""
    return LatencyPredictor(load_table(path))


# ----------------------------------------------------------------------------- functions on a table

_PREDICTORS: "weakref.WeakKeyDictionary[LatencyTable, LatencyPredictor]" = weakref.WeakKeyDictionary()


def predictor_for(table: LatencyTable | LatencyPredictor) -> LatencyPredictor:
    """The predictor of ``table`` (one per table object, kept while the table lives), or
    ``table`` itself if it is a predictor already."""
    if isinstance(table, LatencyPredictor):
        return table
    pred = _PREDICTORS.get(table)
    if pred is None:
        pred = _PREDICTORS[table] = LatencyPredictor(table)
    return pred


def predict(candidates: Any, table: LatencyTable | LatencyPredictor, allow_missing: bool = False) -> np.ndarray:
    """``predictor_for(table).predict(candidates, allow_missing)``: see :meth:`LatencyPredictor.predict`."""
    return predictor_for(table).predict(candidates, allow_missing)


def predict_memory(candidates: Any, table: LatencyTable | LatencyPredictor) -> np.ndarray:
    """``predictor_for(table).predict_memory(candidates)``: peak MiB per candidate."""
    return predictor_for(table).predict_memory(candidates)


def predict_breakdown(candidate: Any, table: LatencyTable | LatencyPredictor,
                      allow_missing: bool = False) -> pd.DataFrame:
    """``predictor_for(table).breakdown(candidate, allow_missing)``: see :meth:`LatencyPredictor.breakdown`."""
    return predictor_for(table).breakdown(candidate, allow_missing)


def block_sums(candidates: Iterable[Any], table: LatencyTable | LatencyPredictor,
               allow_missing: bool = False) -> np.ndarray:
    """Uncalibrated sum of block latencies (ms) per candidate."""
    return predictor_for(table).block_sums(candidates, allow_missing)


def interpolate(spec: Any, table: LatencyTable | LatencyPredictor, k: int = 4) -> tuple[float, str]:
    """``predictor_for(table).interpolate(spec, k)``: see :meth:`LatencyPredictor.interpolate`."""
    return predictor_for(table).interpolate(spec, k)
