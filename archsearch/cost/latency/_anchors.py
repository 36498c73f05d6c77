"""The device profiles against published on-device figures: each profile's ``checks:``
(estimate vs published, for the models as the Neural Engine runs them) and the one-number
fit of a profile's compute efficiency on an anchor."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from archsearch._resources import bundled_root
from archsearch.cost.latency._devices import DeviceProfile, OpRecord

__all__ = ["check_published", "fit_efficiency"]


def check_published(profile: DeviceProfile, root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The profile's estimate of each reference model in its ``checks:`` next to the published figure."""
    from archsearch.candidate import sample
    from archsearch.cost.latency._devices import ane_model_ops
    from archsearch.spec import load_space

    base = Path(root) if root else bundled_root()  # checks name shipped spaces: search_spaces/...
    out = []
    for chk in profile.checks:
        space = load_space(base / chk["space"])
        cand = sample(space, 0)
        # the model as the Neural Engine runs it (apple/ml-stable-diffusion's layout)
        est = profile.estimate_ms(ane_model_ops(cand, int(chk.get("batch", 1))))
        out.append({"space": chk["space"], "role": chk.get("role", "check"), "published_ms": float(chk["published_ms"]),
                    "estimate_ms": est, "ratio": est / float(chk["published_ms"]), "source": chk["source"],
                    "batch": int(chk.get("batch", 1))})
    return out


def fit_efficiency(profile: DeviceProfile, ops: list[OpRecord], published_ms: float,
                   classes: tuple[str, ...] = ("conv", "matmul", "attention"),
                   tied: dict[str, float] | None = None) -> float:
    """The one compute efficiency (shared by ``classes``; ``tied`` classes get it times their
    factor, default ``dwconv`` a quarter) at which ``ops`` take ``published_ms`` on
    ``profile`` (bisection; the estimate falls as the efficiency rises). In [1e-4, 1]."""
    import copy

    tied = {"dwconv": 0.25} if tied is None else tied

    def est(e: float) -> float:
        p = copy.copy(profile)
        p.efficiency = {**profile.efficiency, **{c: e for c in classes},
                        **{c: max(1e-4, f * e) for c, f in tied.items()}}
        return p.estimate_ms(ops)

    lo, hi = 1e-4, 1.0
    if est(hi) > published_ms:
        return hi
    if est(lo) < published_ms:
        return lo
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if est(mid) > published_ms:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)
