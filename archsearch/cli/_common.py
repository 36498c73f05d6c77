"""Shared pieces of the CLI: the error mapping, parameter → flag wording, progress bars."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Iterator, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from archsearch.errors import ArchsearchError, ParameterError

__all__ = ["console", "err_console", "flag_errors", "progress_bars", "user_errors"]

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn an :class:`ArchsearchError` into ``error: <message>`` and exit code 2.

    Set ``ARCHSEARCH_DEBUG=1`` to see the traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ArchsearchError as exc:
            if os.environ.get("ARCHSEARCH_DEBUG") == "1":
                raise
            # typer.echo, not rich: the message may contain [brackets] from user files
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def flag_errors(flags: dict[str, str]) -> Callable[[F], F]:
    """Library errors in the command's words: a parameter the user gave by a flag is named
    by that flag (``proxy.steps: bad value 0`` → ``--steps: bad value 0``).

    ``flags`` maps library parameter names to this command's flags. A
    :class:`~archsearch.errors.ParameterError` carries its parameter, and only those are
    reworded: no message is parsed, so a file name or a sentence is never mistaken for one.
    """

    def reword(exc: ArchsearchError) -> ArchsearchError | None:
        if isinstance(exc, ParameterError):
            flag = flags.get(exc.param)
            return None if flag is None else ArchsearchError(exc.named(flag))
        return None

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ArchsearchError as exc:
                new = reword(exc)
                if new is None:
                    raise
                new.exit_code = exc.exit_code
                raise new from None

        return wrapper  # type: ignore[return-value]

    return deco


class _PhaseBars:
    """Adapts the library's ``progress(phase, description, done, total)`` callback to one rich
    task per phase."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def __call__(self, phase: str, desc: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(escape(desc), total=max(total, 1), phase=phase)
        self.progress.update(self.tasks[phase], completed=done, total=max(total, 1), description=escape(desc))


@contextlib.contextmanager
def progress_bars(target: Console | None = None, *, enabled: bool = True) -> Iterator[Any]:
    """A ``progress(phase, description, done, total)`` callback drawing rich bars (elapsed,
    ETA) while the block runs; ``None`` when disabled. Bars appear only once something
    reports progress."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bars = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[phase]:<9}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    TextColumn("{task.description}"), console=target or console, transient=False)
    with bars:
        yield _PhaseBars(bars)
