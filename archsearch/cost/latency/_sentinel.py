"""Measuring that notices: a sentinel block re-timed every few blocks of a profile run.

A table is only as good as the machine was quiet while it was measured, and a machine
shared with other jobs is not quiet for six minutes in a row. So a profile run keeps one
*sentinel* block (a mid-sized block of the run), times it before the first row, and again
after every ``every`` rows. When the sentinel drifts by more than ``drift`` from its
baseline — or the load average says other jobs hold more cores than this run leaves free —
the rows measured since the last good sentinel are measured again (at most
``max_retries`` times; rows still disturbed after that are kept and counted). The table's
metadata (``sentinel:``) records the sentinel, its checks and how many rows were re-measured.

    monitor = SentinelMonitor(lambda: backend.sentinel_ms(spec), SentinelSettings(), threads=1)
    monitor.start()                       # the baseline
    ok, reason = monitor.check()          # after a stretch of rows
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from archsearch.cost.latency._errors import ParameterError

__all__ = ["SentinelMonitor", "SentinelSettings", "choose_sentinel", "load_average"]


@dataclass(frozen=True)
class SentinelSettings:
    """When a profile run counts as disturbed.

    ``every``: rows between two sentinel checks; ``drift``: relative change of the
    sentinel's time (against its baseline) that counts as disturbed; ``max_retries``: how
    often one stretch of rows is measured again before it is kept as is (and counted as
    disturbed); ``check_load``: also count the 1-minute load average above the cores this
    run leaves free as disturbed (load average minus this run's threads > cores minus this
    run's threads); ``baseline_runs``: timings of the sentinel whose median is the baseline.
    A stretch still disturbed after ``max_retries`` is kept and the baseline is taken afresh
    (:meth:`SentinelMonitor.rebase`): the machine has changed for good, not for a moment.
    """

    every: int = 25
    #: 25%: this shared 2-core VM's sentinel wanders by 10-20% on a quiet machine (a unet_mobile
    #: build at 10% measured 850 of 867 rows twice); a busy neighbour on the core doubles it
    drift: float = 0.25
    #: one retry: on this VM a stretch disturbed twice in a row is a machine whose speed has
    #: moved (re-based), not a neighbour's burst; a second retry cost 25 rows each time
    max_retries: int = 1
    check_load: bool = True
    baseline_runs: int = 3

    def __post_init__(self) -> None:
        for name, lo in (("every", 1), ("max_retries", 0), ("baseline_runs", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ParameterError(f"sentinel.{name}", f"{v!r}: bad value (allowed: an integer >= {lo})")
        if not (isinstance(self.drift, (int, float)) and 0 < self.drift < 10):
            raise ParameterError("sentinel.drift", f"{self.drift!r}: bad value (allowed: a number in (0, 10))")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none."""
    if not hasattr(os, "getloadavg"):
        return None
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return None


def choose_sentinel(specs: list[Any], census: Callable[[Any], int]) -> Any | None:
    """The sentinel of a run: the block of median MACs among its resnet blocks (or all
    blocks, if it has none): long enough to time well, short enough to re-time often."""
    if not specs:
        return None
    pool = [s for s in specs if s.type == "resnet"] or [s for s in specs if s.type != "time_embed"] or list(specs)
    macs = [census(s) for s in pool]
    order = np.argsort(macs, kind="stable")
    return pool[int(order[len(order) // 2])]


class SentinelMonitor:
    """Times the sentinel (``time_ms()``) and judges each stretch of rows.

    ``loadavg``: a callable giving the load average (default :func:`load_average`);
    ``cpus``: the cores of the machine (default ``os.cpu_count()``); ``threads``: the CPU
    threads of the measurement.
    """

    def __init__(self, time_ms: Callable[[], float], settings: SentinelSettings = SentinelSettings(), *,
                 threads: int = 1, cpus: int | None = None,
                 loadavg: Callable[[], float | None] = load_average) -> None:
        self.time_ms = time_ms
        self.settings = settings
        self.threads = max(1, int(threads or 1))
        self.cpus = cpus or os.cpu_count() or 1
        self.loadavg = loadavg
        self.baseline_ms: float | None = None
        self.checks = 0
        self.disturbed_checks = 0
        self.rebased = 0
        self.events: list[str] = []

    def _fresh_baseline(self) -> float:
        return float(np.median([self.time_ms() for _ in range(self.settings.baseline_runs)]))

    def start(self) -> float:
        """Time the sentinel ``baseline_runs`` times; the median is the baseline."""
        self.baseline_ms = self._fresh_baseline()
        return self.baseline_ms

    def rebase(self) -> float:
        """A fresh baseline (``baseline_runs`` timings, the median), for a machine whose speed
        has moved for good (a stretch that stays disturbed through every retry); counted in
        :attr:`rebased`."""
        old = self.baseline_ms
        self.baseline_ms = self._fresh_baseline()
        self.rebased += 1
        if len(self.events) < 20:
            self.events.append(f"new baseline {self.baseline_ms:.3f} ms (was {old or 0:.3f} ms): still disturbed "
                               "after every retry")
        return self.baseline_ms

    def busy(self) -> str:
        """Why the load average says the machine is busy ('' if it does not, or is not checked)."""
        if not self.settings.check_load:
            return ""
        load = self.loadavg()
        if load is None:
            return ""
        others, free = load - self.threads, self.cpus - self.threads
        if others > max(free, 0) + 0.5:
            return (f"load average {load:.2f}: other jobs hold ~{others:.1f} cores, this run leaves "
                    f"{free} free")
        return ""

    def check(self) -> tuple[bool, str]:
        """Re-time the sentinel: (quiet?, why not). A sentinel faster than its baseline by
        more than ``drift`` is timed afresh (``baseline_runs`` times): if that confirms it,
        the baseline itself was taken on a disturbed machine: the fresh one replaces it and
        the stretch counts as disturbed."""
        if self.baseline_ms is None:
            self.start()
        self.checks += 1
        ms = float(self.time_ms())
        base = self.baseline_ms
        ratio = ms / base if base else 1.0
        reason = ""
        if ratio < 1.0 - self.settings.drift:
            fresh = self._fresh_baseline()
            if fresh < base * (1.0 - self.settings.drift):
                self.baseline_ms = fresh
                reason = (f"sentinel now takes {fresh:.3f} ms against a baseline of {base:.3f} ms "
                          f"({100 * (fresh / base - 1):+.0f}%): the baseline was disturbed")
        elif ratio > 1.0 + self.settings.drift:
            reason = (f"sentinel took {ms:.3f} ms against a baseline of {base:.3f} ms "
                      f"({100 * (ratio - 1):+.0f}%, allowed ±{100 * self.settings.drift:.0f}%)")
        if not reason:
            reason = self.busy()
        if reason:
            self.disturbed_checks += 1
            if len(self.events) < 20:
                self.events.append(reason)
        return not reason, reason
