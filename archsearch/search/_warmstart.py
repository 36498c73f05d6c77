"""A cost-spread start for the model-based samplers (nsga2, tpe, gp).

Latency and size are known before any training (predictor + parameter count), so instead of
``k`` random start-up trials a new study starts from ``k`` feasible candidates spread over the
predicted (latency, params) range: a pool of random candidates is priced (milliseconds each,
no training), infeasible ones are dropped, and ``k`` are picked by farthest-point sampling in
(log latency, log params). Their choices are enqueued (``study.enqueue_trial``), so they run
as ordinary trials and the sampler takes over after them. The random sampler is left alone:
it is the baseline.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np

from archsearch.candidate import resolve

__all__ = ["spread_start"]


class _Recorder:
    """A seeded random chooser that records every choice by name (Optuna param names)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.params: dict[str, Any] = {}

    def categorical(self, name: str, options: list[Any]) -> Any:
        value = options[self.rng.randrange(len(options))]
        self.params[name] = value
        return value

    def integer(self, name: str, low: int, high: int, step: int) -> int:
        value = self.rng.randrange(low, high + 1, step)
        self.params[name] = value
        return value


def spread_start(space: Any, settings: Any, table: Any | None, k: int, seed: int = 0,
                 pool: int | None = None) -> list[dict[str, Any]]:
    """Param dicts of ``k`` feasible candidates spread over predicted latency and params."""
    from archsearch.cost import count_params

    if k <= 0:
        return []
    pool = pool or max(64, 16 * k)
    rng = random.Random(seed)
    seen: set[str] = set()
    cands, params_list = [], []
    for _ in range(pool):
        rec = _Recorder(rng)
        cand = resolve(space, rec)
        if cand.id in seen:
            continue
        seen.add(cand.id)
        cands.append(cand)
        params_list.append(rec.params)
    size = np.array([count_params(c) for c in cands], dtype=float)
    feats = [size]
    ok = np.ones(len(cands), dtype=bool)
    if settings.max_params is not None:
        ok &= size <= settings.max_params
    if table is not None:
        import warnings

        from archsearch.cost.latency import predict

        with warnings.catch_warnings():  # interpolated blocks: fine for spreading the start
            warnings.simplefilter("ignore")
            lat = np.asarray(predict(cands, table, allow_missing=True), dtype=float)
        feats.insert(0, lat)
        if settings.max_latency_ms is not None:
            ok &= lat <= settings.max_latency_ms
    if getattr(settings, "max_memory_mb", None) is not None:
        if table is not None:
            from archsearch.cost.latency import predict_memory

            mem = np.asarray(predict_memory(cands, table), dtype=float)
        else:
            from archsearch.cost.latency import estimate_memory

            mem = np.asarray([estimate_memory(c).peak_mb for c in cands], dtype=float)
        ok &= mem <= settings.max_memory_mb
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return []
    x = np.log(np.maximum(np.stack([f[idx] for f in feats], axis=1), 1e-12))
    span = np.ptp(x, axis=0)
    x = (x - x.min(axis=0)) / np.where(span > 0, span, 1.0)
    chosen = [int(np.argmin(x.sum(axis=1)))]  # the cheapest, then farthest-point sampling
    dist = np.linalg.norm(x - x[chosen[0]], axis=1)
    while len(chosen) < min(k, len(idx)):
        nxt = int(np.argmax(dist))
        if not math.isfinite(dist[nxt]) or dist[nxt] <= 0:
            break
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
    return [params_list[idx[i]] for i in chosen]
