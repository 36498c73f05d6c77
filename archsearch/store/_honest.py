"""What the store adds so that a front is not read as more than it is.

* :func:`within_noise` -- a Pareto candidate whose quality edge over a cheaper one is inside
  the noise of the two scores (``quality_se``, the standard error of each held-out score) is
  marked ``within noise of <id>``: it is no distinct trade-off.
* :func:`knee_point` -- the suggested pick of the quality-vs-latency front, with its reason.
* :func:`prompt_warnings` -- a Pareto candidate with no cross-attention anywhere cannot see the
  prompt: one line each, shown by ``archsearch run`` and the report.

All objectives are minimised (the store's convention). Plain pandas / numpy, no Optuna.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from archsearch.pareto import non_dominated

__all__ = ["NOISE_Z", "knee_point", "prompt_warnings", "within_noise"]

#: Two scores differ beyond their noise when the gap exceeds NOISE_Z standard errors of the
#: difference, sqrt(se_a^2 + se_b^2) (about a 95% two-sided test); error bars are ± NOISE_Z se.
NOISE_Z = 2.0
QUALITY = "quality"


def _first_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per Pareto candidate (its first trial), in trial order."""
    return df[df["pareto"].astype(bool)].drop_duplicates("candidate_id")


def within_noise(df: pd.DataFrame, objectives: list[str], z: float = NOISE_Z) -> pd.Series:
    """Per row: the id of a cheaper Pareto candidate this one is within the noise of, else ''.

    Pareto candidate A is within noise of B when B is no worse on every objective but quality
    and better on at least one, and A's quality edge over B is at most ``z`` standard errors of
    the difference. Of several such B the cheapest (first objective after quality, then the
    next...) is named. Rows without a noise estimate (``quality_se`` empty: a store written
    before it, one held-out sample) are never marked.
    """
    out = pd.Series("", index=df.index, dtype=object)
    if QUALITY not in objectives or "quality_se" not in df.columns or df.empty:
        return out
    costs = [o for o in objectives if o != QUALITY]
    front = _first_rows(df)
    if len(front) < 2 or not costs:
        return out
    q = front[QUALITY].astype(float).to_numpy()
    se = front["quality_se"].astype(float).to_numpy()
    c = front[costs].astype(float).to_numpy()
    ids = front["candidate_id"].astype(str).to_numpy()
    order = np.lexsort(c.T[::-1])  # cheapest first: first cost, then the next
    marks: dict[str, str] = {}
    for a in range(len(front)):
        if not (math.isfinite(q[a]) and math.isfinite(se[a])):
            continue
        for b in order:
            if b == a or ids[b] == ids[a] or not (math.isfinite(q[b]) and math.isfinite(se[b])):
                continue
            cheaper = bool(np.all(c[b] <= c[a]) and np.any(c[b] < c[a]))
            if cheaper and q[b] - q[a] <= z * math.hypot(se[a], se[b]):
                marks[ids[a]] = str(ids[b])
                break
    pareto = df["pareto"].astype(bool)
    out[pareto] = df.loc[pareto, "candidate_id"].astype(str).map(lambda i: marks.get(i, ""))
    return out


def knee_point(df: pd.DataFrame, objectives: list[str]) -> dict[str, Any]:
    """The suggested pick of the quality-vs-latency front and why (``candidate_id`` None: none).

    Among the Pareto candidates that are distinct trade-offs (not within noise of another), on
    the 2-D front of quality against latency (the report's plot; the first other objective if
    latency is none), both scaled to the front's range: the point farthest below the straight
    line from the fastest to the best-quality end. Moving from it towards either end trades
    more of one objective per unit of the other than the line does.
    """
    x_col = "latency_ms" if "latency_ms" in objectives else next((o for o in objectives if o != QUALITY), None)
    none: dict[str, Any] = {"candidate_id": None, "trial": None, "x": x_col, "method": "largest distance below the "
                            "line between the front's two ends (quality and the cost scaled to the front's range)"}
    if QUALITY not in objectives or x_col is None:
        return {**none, "reason": "no knee: the objectives need quality and a cost such as latency_ms"}
    front = _first_rows(df)
    n_front = len(front)
    if "within_noise_of" in front.columns:
        front = front[front["within_noise_of"].fillna("").astype(str) == ""]
    xy = front[[x_col, QUALITY]].astype(float).to_numpy()
    ok = np.isfinite(xy).all(axis=1)
    front, xy = front[ok], xy[ok]
    if len(xy):
        on = non_dominated(xy, ["minimize", "minimize"])
        front, xy = front[on], xy[on]
    distinct = np.unique(xy, axis=0) if len(xy) else xy
    if len(distinct) < 3:
        many = {0: "none is", 1: "one is", 2: "two are"}[len(distinct)]
        return {**none, "reason": f"no knee: of {n_front} Pareto candidate(s), {many} a distinct quality-{x_col} "
                                  "trade-off (not within the noise of a cheaper one, not beaten on both); a knee "
                                  "needs three: pick by your budget"}
    # on a 2-D front the fastest point has the worst quality and the best one the highest cost:
    # scaled to [0, 1] they are (0, 1) and (1, 0), and the line between them is x + y = 1
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    n = (xy - lo) / (hi - lo)
    fast = min(range(len(xy)), key=lambda i: (xy[i, 0], xy[i, 1]))
    best = min(range(len(xy)), key=lambda i: (xy[i, 1], xy[i, 0]))
    dist = (1.0 - n[:, 0] - n[:, 1]) / math.sqrt(2.0)  # > 0: below the line, towards the ideal corner
    k = int(np.argmax(dist))
    ids = front["candidate_id"].astype(str).tolist()
    if dist[k] <= 1e-12:
        return {**none, "reason": f"no knee: no candidate lies below the line from {ids[fast]} (fastest) to "
                                  f"{ids[best]} (best quality); the front is straight or bends the other way"}
    return {
        **none,
        "candidate_id": ids[k],
        "trial": int(front["number"].iloc[k]),
        "distance": round(float(dist[k]), 6),
        "reason": (f"knee of the quality-{x_col} front: farthest below the straight line from {ids[fast]} "
                   f"(fastest) to {ids[best]} (best quality), both scaled to the front's range; from it, each unit "
                   f"of {x_col} saved costs more quality, and each quality gained more {x_col}, than along that line"),
    }


def prompt_warnings(df: pd.DataFrame, kind: str | None = None) -> list[str]:
    """One line per Pareto candidate whose model has no cross-attention anywhere (the column
    ``cross_attention`` = 0): trained against a text-conditioned teacher, it cannot see the prompt."""
    if "cross_attention" not in df.columns:
        return []
    what = "text-to-video" if kind == "video" else "text-to-image"
    out = []
    for _, row in _first_rows(df).iterrows():
        n = pd.to_numeric(pd.Series([row["cross_attention"]]), errors="coerce").iloc[0]
        if n != 0:  # NaN (no candidate recorded) is no finding
            continue
        try:
            pooled = bool(json.loads(row.get("candidate") or "{}").get("added_cond"))
        except (TypeError, ValueError, AttributeError):
            pooled = False
        tail = " except as the pooled text embedding added to the time embedding (added_cond)" if pooled else ""
        out.append(f"{row['candidate_id']}: a {what} candidate with no cross-attention anywhere: it cannot see "
                   f"the prompt{tail}")
    return out
