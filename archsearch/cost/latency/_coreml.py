"""Core ML on macOS: time ``MLModel.predict`` with the chosen compute units.

Converting a block or a model (and checking it) is the export stage's
(:func:`archsearch.export.convert_module`); coremltools converts on Linux but cannot run a
model there ("only supported on macOS"), so off macOS the ``coreml``/``ane`` targets
estimate instead (``_devices.py``).
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

from archsearch.errors import ArchsearchError

__all__ = ["is_macos", "time_mlmodel"]


def is_macos() -> bool:
    return platform.system() == "Darwin"


def time_mlmodel(mlmodel: Any, inputs: tuple, *, min_run_time: float = 0.5, max_run_time: float = 5.0,
                 threshold: float = 0.1, statistic: str = "median") -> tuple[float, float, int]:
    """``statistic`` and IQR (ms) of ``MLModel.predict`` and the number of timed calls (macOS only)."""
    if not is_macos():
        raise ArchsearchError("timing a Core ML model needs macOS (coremltools cannot run models on "
                              f"{platform.system()}); use the roofline estimate or --import")
    from archsearch.cost.latency._measure import MeasureSettings, time_callable  # noqa: PLC0415

    names = [inp.name for inp in mlmodel.get_spec().description.input]
    tensors = [t for t in inputs if t is not None]  # None inputs are constants of the program
    feed = {n: t.detach().cpu().numpy().astype(np.float32) for n, t in zip(names, tensors)}
    for _ in range(3):  # warm-up: the first calls compile and load onto the device
        mlmodel.predict(feed)
    t = time_callable(lambda: mlmodel.predict(feed), MeasureSettings(min_run_time, max_run_time, threshold, statistic))
    return t.ms, t.iqr_ms, t.runs
