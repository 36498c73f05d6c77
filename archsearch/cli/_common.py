"""Shared pieces of the CLI: the error mapping and the consoles."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console

from archsearch.errors import ArchsearchError

__all__ = ["console", "err_console", "user_errors"]

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
