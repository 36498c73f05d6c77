"""Pareto dominance and exact hypervolume, for any mix of minimised and maximised objectives.

Every function takes ``points`` as an ``(n, m)`` array-like (one row per trial, one column per
objective) and ``directions``, one ``'minimize'`` or ``'maximize'`` per column (Optuna's
``StudyDirection`` members are accepted too). Internally every column is turned into a loss
(maximised columns are negated), so "better" always means "smaller".

- :func:`non_dominated` marks the rows that no other row dominates (rows with a NaN are never on
  the front).
- :func:`hypervolume` is the exact volume dominated by the points and bounded by a reference
  point: a 2-D sweep, a 3-D sweep along the last objective that keeps the 2-D staircase of the
  points passed (O(n log n) search, O(n^2) worst case), and for 4 or more objectives recursive
  slicing along the last objective (HSO, "hypervolume by slicing objectives"), each slice
  being a (d-1)-D problem. Points that do not strictly dominate the reference contribute
  nothing.
- :func:`hypervolume_history` is the hypervolume of the first ``k`` points for every ``k`` (the
  search-progress curve), updated incrementally.
- :func:`default_reference` is the nadir of the Pareto front moved 10% of the front's range
  further in the "worse" direction.

Bad input (wrong shapes, unknown directions, a non-finite reference) raises
:class:`archsearch.errors.ArchsearchError` with a one-line message.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np

from archsearch.errors import ArchsearchError, ParameterError

__all__ = [
    "DIRECTIONS",
    "default_reference",
    "hypervolume",
    "hypervolume_history",
    "non_dominated",
    "to_losses",
]

DIRECTIONS = ("minimize", "maximize")

#: Fraction of the Pareto front's range added to its nadir by :func:`default_reference`.
REFERENCE_MARGIN = 0.1


# --------------------------------------------------------------------------- validation


def _direction_signs(directions: Sequence[Any]) -> np.ndarray:
    """+1 for a minimised objective, -1 for a maximised one."""
    if isinstance(directions, str):
        directions = [directions]
    signs = []
    for i, d in enumerate(directions):
        name = getattr(d, "name", d)  # optuna.study.StudyDirection.MINIMIZE -> 'MINIMIZE'
        name = str(name).strip().lower()
        if name not in DIRECTIONS:
            raise ArchsearchError(
                f"directions[{i}]: {d!r} is not a direction (allowed: {', '.join(DIRECTIONS)})"
            )
        signs.append(1.0 if name == "minimize" else -1.0)
    if not signs:
        raise ParameterError("directions", ": at least one objective is needed")
    return np.asarray(signs, dtype=float)


def _as_points(points: Any, m: int) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.size == 0:
        return arr.reshape(0, m)
    if arr.ndim != 2:
        raise ArchsearchError(
            f"points: expected a 2-D array (trials x objectives), got shape {arr.shape}"
        )
    if arr.shape[1] != m:
        raise ArchsearchError(
            f"points: {arr.shape[1]} objective column(s) but {m} direction(s) given"
        )
    return arr


def to_losses(points: Any, directions: Sequence[Any]) -> np.ndarray:
    """Return ``points`` as a float array in which every column is minimised."""
    signs = _direction_signs(directions)
    arr = _as_points(points, len(signs))
    return arr * signs


def _reference_losses(reference: Any, signs: np.ndarray) -> np.ndarray:
    ref = np.asarray(reference, dtype=float).reshape(-1)
    if ref.shape[0] != signs.shape[0]:
        raise ArchsearchError(
            f"reference: {ref.shape[0]} value(s) for {signs.shape[0]} objective(s)"
        )
    if not np.all(np.isfinite(ref)):
        raise ParameterError("reference", f": every value must be finite, got {ref.tolist()}")
    return ref * signs


# --------------------------------------------------------------------------- dominance


def _nd_mask_losses(losses: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Non-dominated mask of an all-finite loss array (duplicates are all kept)."""
    n = losses.shape[0]
    mask = np.ones(n, dtype=bool)
    if n <= 1:
        return mask
    for start in range(0, n, chunk):
        block = losses[start : start + chunk]  # (b, m)
        # le[i, j]: row j is <= block row i everywhere; lt: strictly better somewhere
        le = np.all(losses[None, :, :] <= block[:, None, :], axis=2)
        lt = np.any(losses[None, :, :] < block[:, None, :], axis=2)
        mask[start : start + chunk] = ~np.any(le & lt, axis=1)
    return mask


def non_dominated(points: Any, directions: Sequence[Any]) -> np.ndarray:
    """Boolean mask of the rows of ``points`` that no other row dominates.

    Row ``a`` dominates row ``b`` when ``a`` is at least as good in every objective and strictly
    better in one. Identical rows do not dominate each other, so duplicates on the front are all
    marked. Rows containing NaN (failed trials) are never on the front and never dominate.
    """
    losses = to_losses(points, directions)
    finite = ~np.any(np.isnan(losses), axis=1)
    mask = np.zeros(losses.shape[0], dtype=bool)
    if finite.any():
        mask[finite] = _nd_mask_losses(losses[finite])
    return mask


# --------------------------------------------------------------------------- hypervolume


def _hv_2d(p: np.ndarray, ref: np.ndarray) -> float:
    order = np.lexsort((p[:, 1], p[:, 0]))  # by x, then y
    x = p[order, 0]
    y = np.minimum.accumulate(p[order, 1])
    prev = np.concatenate(([ref[1]], y[:-1]))
    return float(np.sum((ref[0] - x) * (prev - y)))


def _hv_3d(p: np.ndarray, ref: np.ndarray) -> float:
    """Sweep along z, keeping the (x, y) staircase of the points passed and its area."""
    order = np.argsort(p[:, 2], kind="stable")
    pts = p[order].tolist()
    z_next = [q[2] for q in pts[1:]] + [float(ref[2])]
    rx, ry = float(ref[0]), float(ref[1])
    xs: list[float] = []  # staircase, x ascending (y descending)
    ys: list[float] = []
    area = total = 0.0
    for (x, y, z), zn in zip(pts, z_next):
        pos = bisect.bisect_right(xs, x)
        if not (pos > 0 and ys[pos - 1] <= y):  # not dominated by a staircase point
            start = end = bisect.bisect_left(xs, x)
            while end < len(xs) and ys[end] >= y:  # points the new one dominates
                end += 1
            # area = sum_i (x_{i+1} - x_i) * (ry - y_i); only terms start-1 .. end-1 change
            x_after = xs[end] if end < len(xs) else rx
            old = sum(
                ((xs[i + 1] if i + 1 < len(xs) else rx) - xs[i]) * (ry - ys[i])
                for i in range(max(start - 1, 0), end)
            )
            new = (x_after - x) * (ry - y)
            if start > 0:
                new += (x - xs[start - 1]) * (ry - ys[start - 1])
            area += new - old
            xs[start:end] = [x]
            ys[start:end] = [y]
        total += area * (zn - z)
    return total


def _hv_losses(p: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of points that all strictly dominate ``ref`` (minimisation)."""
    n, d = p.shape
    if n == 0:
        return 0.0
    if n == 1:
        return float(np.prod(ref - p[0]))
    if d == 1:
        return float(ref[0] - p[:, 0].min())
    if d == 2:
        return _hv_2d(p, ref)
    if d == 3:
        return _hv_3d(p, ref)
    if n > 8:  # dominated points cannot add volume; dropping them keeps the recursion small
        p = p[_nd_mask_losses(p)]
        n = p.shape[0]
    # Slice along the last objective: between consecutive z values the dominated region's
    # cross-section is the (d-1)-D hypervolume of the points already passed.
    order = np.argsort(p[:, -1], kind="stable")
    p = p[order]
    z = np.concatenate((p[:, -1], [ref[-1]]))
    total = 0.0
    for i in range(n):
        thickness = z[i + 1] - z[i]
        if thickness > 0:
            total += _hv_losses(p[: i + 1, :-1], ref[:-1]) * thickness
    return float(total)


def hypervolume(points: Any, reference: Any, directions: Sequence[Any]) -> float:
    """Exact hypervolume dominated by ``points`` and bounded by ``reference``.

    Works for any number of objectives (fast enough for 2 to 4 with hundreds of points).
    Rows with NaN and rows that do not strictly dominate the reference in every objective
    contribute nothing. ``reference`` is given in the objectives' own units and directions.
    """
    signs = _direction_signs(directions)
    losses = _as_points(points, len(signs)) * signs
    ref = _reference_losses(reference, signs)
    if losses.shape[0] == 0:
        return 0.0
    keep = np.all(losses < ref, axis=1)  # NaN compares False: dropped too
    return _hv_losses(losses[keep], ref)


def hypervolume_history(
    points_in_trial_order: Any, reference: Any, directions: Sequence[Any]
) -> list[float]:
    """Hypervolume of the first ``k`` points, for ``k = 1 .. n`` (non-decreasing).

    Rows with NaN (failed or infeasible trials, by the caller's choice) leave the value
    unchanged. The front is updated incrementally and the volume is recomputed only when a
    new point enlarges it.
    """
    signs = _direction_signs(directions)
    losses = _as_points(points_in_trial_order, len(signs)) * signs
    ref = _reference_losses(reference, signs)
    history: list[float] = []
    front = np.empty((0, len(signs)))
    hv = 0.0
    for p in losses:
        if not np.all(p < ref) or (front.size and np.any(np.all(front <= p, axis=1))):
            history.append(hv)
            continue
        front = np.vstack((front[~np.all(p <= front, axis=1)], p))
        hv = _hv_losses(front, ref)
        history.append(hv)
    return history


def default_reference(points: Any, directions: Sequence[Any]) -> np.ndarray:
    """A reference point derived from the data: the front's nadir plus a 10% margin.

    The nadir is the worst value of each objective over the Pareto front (NaN rows ignored).
    Each coordinate is moved 10% of the front's range (nadir minus ideal) past the nadir, in
    the worse direction, so that the front's extreme points still add volume. An objective
    whose range is zero uses its magnitude as the range instead (or 1.0 when that is zero too).

    Raises :class:`ArchsearchError` when no row is free of NaN.
    """
    signs = _direction_signs(directions)
    losses = _as_points(points, len(signs)) * signs
    losses = losses[np.all(np.isfinite(losses), axis=1)]
    if losses.shape[0] == 0:
        raise ArchsearchError(
            "reference point: no trial has finite values for every objective to derive it from"
        )
    front = losses[_nd_mask_losses(losses)]
    nadir = front.max(axis=0)
    span = nadir - front.min(axis=0)
    span = np.where(span > 0, span, np.abs(nadir))
    span = np.where(span > 0, span, 1.0)
    return (nadir + REFERENCE_MARGIN * span) * signs
