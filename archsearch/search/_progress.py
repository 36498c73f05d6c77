"""The live display of a running study: one rich progress bar fed with trial counts."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["StudyProgress"]


class StudyProgress:
    """``with StudyProgress(total, console) as p: p.update(count_trials(study))``.

    The bar counts finished trials (complete + infeasible + failed) towards ``total``; the
    text after it shows each state and the trials in flight. Disabled, it does nothing.
    """

    def __init__(self, total: int, console: Console | None = None, enabled: bool = True,
                 description: str = "search", start_done: int = 0) -> None:
        self.enabled = enabled
        self.total = total
        self._start = start_done
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[states]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not enabled,
        )
        self._task = self._progress.add_task(description, total=total, completed=start_done,
                                             states=self._states({}))

    @staticmethod
    def _states(c: dict[str, int]) -> str:
        return (f"[green]{c.get('complete', 0)} complete[/] · [yellow]{c.get('infeasible', 0)} infeasible[/]"
                f" · [red]{c.get('failed', 0)} failed[/] · {c.get('running', 0)} running")

    def __enter__(self) -> "StudyProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def update(self, counts: dict[str, int]) -> None:
        """Show the latest counts (from :func:`archsearch.search.count_trials`)."""
        self._progress.update(self._task, completed=min(counts.get("done", 0), self.total),
                              states=self._states(counts))
