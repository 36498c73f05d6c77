"""Timing with torch: one block or one whole model, on cpu, cuda or mps.

Warm up, pick a block size, then repeat until the interquartile range is below ``threshold``
of the median (or ``max_run_time`` is spent), as ``torch.utils.benchmark``'s
``adaptive_autorange`` does. The thread count is fixed for the whole measurement and
recorded; CUDA / MPS are synchronised before each clock read.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from archsearch.cost.latency._errors import ParameterError

__all__ = [
    "DTYPES",
    "TORCH_TARGETS",
    "STATISTICS",
    "MeasureSettings",
    "Timing",
    "cpu_name",
    "last_level_cache_bytes",
    "device_name",
    "resolve_profile_device",
    "time_callable",
    "time_module",
]

TORCH_TARGETS = ("cpu", "cuda", "mps")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


STATISTICS = ("median", "mean", "min")


@dataclass(frozen=True)
class MeasureSettings:
    """How long and how hard to time each block (stored in the table's metadata).

    ``statistic`` is what a table row holds: the ``median`` call (the default), the ``mean``
    or the ``min``. On a machine shared with other jobs a call is preempted now and then;
    a long call (a whole model) almost always, a short one (a block) rarely, so medians and
    minima of blocks do not add up to the model's; means do (each call loses the same share
    of its time on average). The minimum is the most repeatable number for one block.
    ``flush_bytes``: on the CPU, this much memory is written before every timed call, so a
    block alone starts with cold caches as it does inside a model, where the blocks before
    it evicted its weights (a block timed back to back keeps weights of up to the last-level
    cache's size on chip and looks up to 1.5x faster than inside the model). ``None``: twice
    the last-level cache (64 MiB if unknown); 0: off, timed calls run back to back.
    ``stable_time``: a block that is already stable stops early, after this many seconds
    (and five samples) instead of ``min_run_time``: stable = the statistic's relative
    standard error (mean, min) or IQR/median (median) below ``threshold / 2``. A row's
    error reaches a prediction only through a sum of some 30-100 blocks, so a 2.5 %
    standard error on each is about 0.5 % on a model, a tenth of what a shared machine
    varies by between runs. ``None``: a quarter of ``min_run_time``; set it to
    ``min_run_time`` for the old fixed budget.
    """

    min_run_time: float = 0.2
    max_run_time: float = 2.0
    threshold: float = 0.05
    statistic: str = "median"
    flush_bytes: int | None = None
    stable_time: float | None = None

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ParameterError("statistic", f"{self.statistic}: unknown (allowed: {', '.join(STATISTICS)})")
        if self.flush_bytes is None:
            object.__setattr__(self, "flush_bytes", 2 * last_level_cache_bytes())
        if self.stable_time is None:
            object.__setattr__(self, "stable_time", round(self.min_run_time / 4, 6))
        if not 0 <= self.stable_time:
            raise ParameterError("stable_time", f"{self.stable_time}: bad value (allowed: a number >= 0)")

    def as_dict(self) -> dict[str, Any]:
        return {"min_run_time": self.min_run_time, "max_run_time": self.max_run_time,
                "threshold": self.threshold, "statistic": self.statistic, "flush_bytes": self.flush_bytes,
                "stable_time": self.stable_time}


@dataclass(frozen=True)
class Timing:
    """One call, in milliseconds: the settings' statistic (``ms``), median, IQR; timed calls."""

    ms: float
    median_ms: float
    iqr_ms: float
    runs: int


def last_level_cache_bytes() -> int:
    """Size of the CPU's largest cache (Linux sysfs), or 32 MiB if it cannot be read."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            if not entry.startswith("index"):
                continue
            with open(f"{base}/{entry}/size", encoding="utf-8") as fh:
                text = fh.read().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * mult)
    except (OSError, ValueError):
        pass
    return best or (32 << 20)


def resolve_profile_device(target: str) -> torch.device:
    """The torch device a torch latency target (``cpu``, ``cuda``, ``mps``) is timed on, or a
    one-line error if it is absent here."""
    if target == "cpu":
        return torch.device("cpu")
    if target == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError("target", "cuda: no CUDA device is visible here "
                                 f"(torch {torch.__version__}; allowed here: cpu)")
        return torch.device("cuda")
    if target == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ParameterError("target", "mps: the Metal backend is not available here (needs macOS on Apple silicon)")
        return torch.device("mps")
    raise ParameterError("target", f"{target}: not a torch target (allowed: {', '.join(TORCH_TARGETS)})")


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), plus the core count (the
    ``device:`` line of a CPU table; the full fingerprint is ``_fingerprint``'s)."""
    from archsearch.cost.latency._fingerprint import cpu_cores, cpu_model

    return f"{cpu_model()} ({cpu_cores()} cores)"


def device_name(target: str) -> str:
    """A human name for the device a torch target runs on."""
    if target == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if target == "mps":
        return f"Apple GPU (MPS) on {platform.machine()}"
    return cpu_name()


def _sync(device: torch.device | None) -> None:
    if device is None:
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_callable(fn: Callable[[], Any], settings: MeasureSettings = MeasureSettings(),
                  sync: Callable[[], None] | None = None, flush: Callable[[], None] | None = None,
                  warm: bool = False) -> Timing:
    """Time one call of ``fn``.

    The loop of ``torch.utils.benchmark``'s ``adaptive_autorange``: warm up, then take
    samples (``sync`` before each clock read) until ``min_run_time`` has been spent on five
    or more samples (three for calls over 50 ms) and, for the median, IQR/median is below
    ``threshold``; at most ``max_run_time``. A call that is already stable after
    ``stable_time`` (see :class:`MeasureSettings`) stops there. Without ``flush`` a sample is ``number`` calls
    back to back (about a millisecond; its fixed 50 ms block estimate would cost ~0.3 s a
    block on sub-millisecond calls); with it, every sample is one call after ``flush()``,
    and the budget counts the flushing too. ``warm``: ``fn`` has just been called (e.g. to
    measure its memory), so no warm-up call: the first call is already a sample.
    """
    sync = sync or (lambda: None)

    def run(number: int) -> float:
        if flush is not None:
            flush()
        sync()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        return time.perf_counter() - t0

    start = time.perf_counter()
    first = run(1)
    times: list[float] = []
    if warm:
        times.append(first)  # already warm: the first call is a sample
    else:  # warm-up: allocations, lazy initialisation, caches
        if first < 0.05:
            first = run(1)
        start = time.perf_counter()
    number = 1 if flush is not None else max(1, int(1e-3 / max(first, 1e-7)))
    min_samples = 5 if first < 0.05 else 3  # heavy calls: three samples are enough
    while True:
        t = run(number)
        times.append(t / number)
        spent = time.perf_counter() - start
        if len(times) >= max(5, min_samples) and spent >= settings.stable_time and _stable(times, settings):
            break
        if len(times) >= min_samples and spent >= settings.min_run_time:
            if settings.statistic != "median":
                break
            q25, med, q75 = np.percentile(times, [25, 50, 75])
            if (q75 - q25) / med < settings.threshold:
                break
        if spent >= settings.max_run_time and len(times) >= 3:
            break
    q25, med, q75 = np.percentile(times, [25, 50, 75])
    value = {"min": min(times), "mean": float(np.mean(times))}.get(settings.statistic, med)
    return Timing(float(value) * 1e3, float(med) * 1e3, float(q75 - q25) * 1e3, len(times) * number)


def _stable(times: list[float], settings: MeasureSettings) -> bool:
    """Whether the samples already pin the statistic down (the early stop of ``stable_time``)."""
    arr = np.asarray(times)
    if settings.statistic == "median":
        q25, med, q75 = np.percentile(arr, [25, 50, 75])
        return bool(med > 0 and (q75 - q25) / med < settings.threshold / 2)
    mean = float(arr.mean())
    sem = float(arr.std(ddof=1)) / np.sqrt(len(arr))
    return bool(mean > 0 and sem / mean < settings.threshold / 2)


def time_module(module: torch.nn.Module, inputs: tuple, threads: int,
                settings: MeasureSettings = MeasureSettings(), warm: bool = False) -> Timing:
    """Time ``module(*inputs)`` under ``torch.inference_mode`` with ``threads`` CPU threads
    (``warm``: see :func:`time_callable`)."""
    device = next((t.device for t in inputs if isinstance(t, torch.Tensor)), None)
    flush = None
    if settings.flush_bytes and (device is None or device.type == "cpu"):
        scratch = torch.zeros(max(1, settings.flush_bytes // 4))
        flush = lambda: scratch.add_(1.0)  # noqa: E731 - writes every cache line once
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return time_callable(lambda: module(*inputs), settings, lambda: _sync(device), flush, warm)
    finally:
        torch.set_num_threads(old)

