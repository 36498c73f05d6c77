"""Predict a candidate's latency from a lookup table: the sum of its blocks' rows, then the
table's calibration ``scale * sum + overhead_ms`` (fitted on whole-model measurements).

Vectorised for search loops: a candidate's block keys are cached (``walk`` is Python and
costs ~0.1-0.3 ms a candidate), then its row indices per table; a batch of candidates is
one gather and one ``np.add.reduceat``.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Any, Iterable

import numpy as np
import pandas as pd

from archsearch.errors import MissingBlockError

__all__ = ["InterpolationWarning", "predict", "predict_breakdown"]


class InterpolationWarning(UserWarning):
    """Some blocks were missing from the table and were interpolated (``allow_missing``)."""


# ----------------------------------------------------------------------------- walk cache


@lru_cache(maxsize=262144)
def _candidate_keys(candidate: Any) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """``(keys, specs)`` of a candidate's blocks, in walk order (cached per candidate)."""
    from archsearch.model import walk

    specs = tuple(walk(candidate))
    return tuple(s.key for s in specs), specs


def _as_list(candidates: Any) -> list[Any]:
    from archsearch.candidate import Candidate

    if isinstance(candidates, Candidate):
        return [candidates]
    return list(candidates)


# ----------------------------------------------------------------------------- interpolation

_NUMERIC = (int, float)


def _spec_features(params: dict[str, Any], in_shape: tuple[int, ...]) -> tuple[dict[str, Any], np.ndarray]:
    cats = {k: v for k, v in params.items() if isinstance(v, (str, bool)) or not isinstance(v, _NUMERIC)}
    nums = [float(v) for k, v in sorted(params.items()) if k not in cats] + [float(s) for s in in_shape]
    return cats, np.log2(np.asarray(nums, dtype=float) + 1.0)


def _row_features(table: Any) -> list[tuple[str, dict[str, Any], np.ndarray, float, float]]:
    """(type, categorical params, log-numeric features, macs, ms) per row, cached on the table."""
    import json

    cached = getattr(table, "_nn_rows", None)
    if cached is not None and cached[0] == table.version:
        return cached[1]
    rows = []
    df = table.df
    for t, p, shape, macs, ms in zip(df["type"], df["params"], df["in_shape"], df["macs"], df["ms"]):
        try:
            params = json.loads(p) if p else {}
            dims = tuple(int(x) for x in shape.split("x")) if shape else ()
        except (ValueError, TypeError):
            params, dims = {}, ()
        cats, feats = _spec_features(params, dims)
        rows.append((t, cats, feats, float(macs) if macs == macs else float("nan"), float(ms)))
    table._nn_rows = (table.version, rows)
    return rows


def _spec_macs(spec: Any) -> float:
    from archsearch.cost.latency._devices import count_ops
    from archsearch.model import build_block, example_inputs

    try:
        block = build_block(spec, device="meta")
        ops = count_ops(block, example_inputs(spec, device="meta"))
    except Exception:  # noqa: BLE001 - interpolation falls back to the nearest row as is
        return float("nan")
    return float(sum(op.macs for op in ops))


def interpolate(spec: Any, table: Any, k: int = 4) -> tuple[float, str]:
    """Estimate a missing block from its nearest rows of the same type.

    Nearest = same type, same categorical hyperparameters if any row has them, smallest
    distance in log2 of the numeric hyperparameters and input shape. With two or more
    neighbours of distinct MACs, ``ms = a + b * macs`` is fitted on them (a, b >= 0);
    otherwise the nearest row is scaled by the ratio of MACs. Returns (ms, nearest key).
    """
    rows = _row_features(table)
    keys = table.keys()
    cats, feats = _spec_features(spec.hparams, tuple(spec.in_shape))
    same_type = [i for i, r in enumerate(rows) if r[0] == spec.type and len(r[2]) == len(feats)]
    if not same_type:
        same_type = [i for i, r in enumerate(rows) if r[0] == spec.type]
    if not same_type:
        raise MissingBlockError(
            f"block {spec.key} ({spec.name}) cannot be interpolated: the table has no '{spec.type}' "
            f"block at all; measure it with: {_measure_command(table)}")
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


# ----------------------------------------------------------------------------- prediction


def _measure_command(table: Any) -> str:
    cmd = table.meta.get("command")
    if cmd:
        return str(cmd)
    out = f" --out {table.path}" if table.path else ""
    return f"archsearch profile SPEC --target {table.meta.get('target', 'cpu')}{out}"


def _missing_error(candidate: Any, specs: list[Any], table: Any) -> MissingBlockError:
    first = specs[0]
    more = f" (and {len(specs) - 1} more)" if len(specs) > 1 else ""
    where = f" {table.path}" if table.path else ""
    hint = ""
    res = table.meta.get("resolution")
    if res and getattr(candidate, "resolution", res) != res:
        hint = (f"; note: the table was measured at resolution {res} and this candidate has resolution "
                f"{candidate.resolution} (predict candidate.for_proxy(resolution={res}) instead)")
    return MissingBlockError(
        f"block {first.key} ({first.name}) of candidate {candidate.id} is not in latency table{where}{more}; "
        f"measure it with: {_measure_command(table)} (or pass allow_missing=True / --allow-missing to "
        f"interpolate){hint}"
    )


def _entry(candidate: Any, table: Any, allow_missing: bool) -> tuple[np.ndarray, float, tuple[str, ...]]:
    """(row indices, interpolated ms, interpolated keys) of one candidate for one table."""
    keys, specs = _candidate_keys(candidate)
    index = table._index
    idx = [index.get(k, -1) for k in keys]
    if -1 not in idx:
        return np.asarray(idx, dtype=np.int64), 0.0, ()
    missing = [s for s, i in zip(specs, idx) if i < 0]
    if not allow_missing:
        raise _missing_error(candidate, missing, table)
    interp = table.__dict__.setdefault("_interp_cache", {})
    extra = 0.0
    for s in missing:
        if s.key not in interp:
            interp[s.key] = interpolate(s, table)[0]
        extra += interp[s.key]
    return np.asarray([i for i in idx if i >= 0], dtype=np.int64), extra, tuple(s.key for s in missing)


def _cache_for(table: Any) -> dict[Any, tuple[np.ndarray, float, tuple[str, ...]]]:
    cache = table.__dict__.get("_pred_cache")
    if cache is None or cache[0] != table.version:
        cache = (table.version, {})
        table._pred_cache = cache
        table._interp_cache = {}
    return cache[1]


def block_sums(candidates: Iterable[Any], table: Any, allow_missing: bool = False) -> np.ndarray:
    """Uncalibrated sum of block latencies (ms) per candidate."""
    cands = _as_list(candidates)
    if not cands:
        return np.zeros(0)
    cache = _cache_for(table)
    entries = []
    interpolated: set[str] = set()
    for c in cands:
        e = cache.get(c)
        if e is None:
            e = _entry(c, table, allow_missing)
            cache[c] = e
        if e[2]:
            if not allow_missing:  # cached with allow_missing=True earlier
                keys, specs = _candidate_keys(c)
                raise _missing_error(c, [s for s in specs if s.key in set(e[2])], table)
            interpolated.update(e[2])
        entries.append(e)
    lens = np.fromiter((len(e[0]) for e in entries), dtype=np.int64, count=len(entries))
    flat = np.concatenate([e[0] for e in entries])
    vals = table.ms_array[flat]
    offsets = np.zeros(len(entries), dtype=np.int64)
    np.cumsum(lens[:-1], out=offsets[1:])
    sums = np.zeros(len(entries))
    nonempty = lens > 0
    if nonempty.any():
        sums[nonempty] = np.add.reduceat(vals, offsets[nonempty]) if len(vals) else 0.0
    extras = np.fromiter((e[1] for e in entries), dtype=float, count=len(entries))
    if interpolated:
        warnings.warn(InterpolationWarning(
            f"{len(interpolated)} block(s) missing from the latency table were interpolated from their "
            f"nearest measured neighbours; measure them with: {_measure_command(table)}"), stacklevel=3)
    return sums + extras


def predict(candidates: Any, table: Any, allow_missing: bool = False) -> np.ndarray:
    """Predicted latency (ms) of each candidate: ``scale * sum(block rows) + overhead_ms``.

    ``candidates`` is one :class:`~archsearch.candidate.Candidate` or an iterable of them;
    the result is a float array, one value per candidate. A block missing from the table
    raises :class:`~archsearch.errors.MissingBlockError` naming the key and the command
    that would measure it; ``allow_missing=True`` interpolates it instead (with an
    :class:`InterpolationWarning` saying how many blocks were interpolated).
    """
    scale, overhead = table.calibration
    return scale * block_sums(candidates, table, allow_missing) + overhead


def predict_breakdown(candidate: Any, table: Any, allow_missing: bool = False) -> pd.DataFrame:
    """One row per block (name, stage, type, key, ms, source, table_ms) plus an ``overhead`` row.

    ``ms`` is the block's table latency times the calibration scale, so the column sums to
    :func:`predict`'s value; ``table_ms`` is the raw row.
    """
    scale, overhead = table.calibration
    keys, specs = _candidate_keys(candidate)
    rows = []
    missing = []
    src = table.df["source"].tolist()
    for s in specs:
        i = table.index_of(s.key)
        if i is None:
            missing.append(s)
            rows.append([s.name, s.stage, s.type, s.key, math.nan, "interpolated"])
        else:
            rows.append([s.name, s.stage, s.type, s.key, float(table.ms_array[i]), src[i] or "measured"])
    if missing:
        if not allow_missing:
            raise _missing_error(candidate, missing, table)
        interp = {s.key: interpolate(s, table)[0] for s in missing}
        for r in rows:
            if r[5] == "interpolated":
                r[4] = interp[r[3]]
        warnings.warn(InterpolationWarning(
            f"{len(interp)} block(s) missing from the latency table were interpolated from their "
            f"nearest measured neighbours; measure them with: {_measure_command(table)}"), stacklevel=2)
    df = pd.DataFrame(rows, columns=["name", "stage", "type", "key", "table_ms", "source"])
    df["ms"] = df["table_ms"] * scale
    over = pd.DataFrame([["overhead", "overhead", "overhead", "", math.nan, "calibration", overhead]],
                        columns=list(df.columns))
    df = pd.concat([df, over], ignore_index=True)
    return df[["name", "stage", "type", "key", "ms", "source", "table_ms"]]
