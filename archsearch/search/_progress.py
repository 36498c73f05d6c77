"""How a running study reports itself: the ``trials`` phase of the ``progress`` callback.

The library draws nothing: :class:`TrialsProgress` turns the study's counts into
``progress("trials", description, done, total)`` calls (the description carries each state
and the trials in flight) and calls ``on_trial(study)`` whenever a trial has finished, which
is where the CLI writes the store. The CLI draws the bars (``cli._common.progress_bars``).
"""

from __future__ import annotations

from typing import Any, Callable

from archsearch.search._study import count_trials

__all__ = ["Progress", "TrialsProgress", "describe_counts"]

#: ``progress(phase, description, done, total)``
Progress = Callable[[str, str, int, int], None]


def describe_counts(counts: dict[str, int]) -> str:
    """``3 complete · 1 infeasible · 0 failed · 2 running`` (plus queued re-runs, if any)."""
    text = (f"{counts.get('complete', 0)} complete · {counts.get('infeasible', 0)} infeasible"
            f" · {counts.get('failed', 0)} failed · {counts.get('running', 0)} running")
    if counts.get("interrupted"):
        text += f" · {counts['interrupted']} interrupted"
    return text


class TrialsProgress:
    """``watch(study)`` after any change: reports the counts, and calls ``on_trial(study)``
    once per change of the number of finished trials (never twice for the same count)."""

    def __init__(self, total: int, progress: Progress | None = None,
                 on_trial: Callable[[Any], None] | None = None, label: str = "") -> None:
        self.total = total
        self.progress = progress
        self.on_trial = on_trial
        self.label = label
        self._last: tuple[int, ...] | None = None
        self._last_done: int | None = None

    def __call__(self, study: Any) -> dict[str, int]:
        counts = count_trials(study)
        key = tuple(counts[k] for k in ("complete", "infeasible", "failed", "interrupted", "running"))
        if self.progress is not None and key != self._last:
            desc = (f"{self.label}: " if self.label else "") + describe_counts(counts)
            self.progress("trials", desc, min(counts["done"], self.total), self.total)
        self._last = key
        finished = counts["done"] + counts["interrupted"]
        if self.on_trial is not None and finished != self._last_done:
            self._last_done = finished
            self.on_trial(study)
        return counts
