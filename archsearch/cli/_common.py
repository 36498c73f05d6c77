"""Shared pieces of the CLI: the error mapping, parameter → flag wording, Ctrl-C, progress
(bars on a terminal, plain or JSON lines in a log)."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from archsearch.errors import ArchsearchError, ParameterError

__all__ = ["LOG_FORMATS", "OUTPUT", "Output", "console", "err_console", "flag_errors", "progress_bars",
           "resume_hint", "user_errors"]

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

#: the values of the global ``--log-format``
LOG_FORMATS = ("text", "json")


@dataclass
class Output:
    """How this process reports progress; the global options (``archsearch --quiet
    --log-format json CMD``) set :data:`OUTPUT` before a command runs.

    ``quiet``: no progress at all (results and errors still print). ``log_format``: ``text``
    draws bars on a terminal and writes plain lines otherwise; ``json`` writes one JSON object
    per line always. ``interval``: seconds between two log lines of a phase at most (a line is
    also written every 5% of the phase, and at its end)."""

    quiet: bool = False
    log_format: str = "text"
    interval: float = 10.0


OUTPUT = Output()

#: exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it)
INTERRUPTED = 130


def _train_hint(kw: dict[str, Any]) -> str:
    if kw.get("checkpoint_every") == 0:
        return ("nothing to resume: --checkpoint-every 0 writes a checkpoint at the end only; "
                "rerun the same command to start again")
    if kw.get("resume") == "latest":
        return "rerun the same command to continue from its last checkpoint"
    return "rerun the same command with --resume latest to continue from its last checkpoint"


#: command function -> what to tell the user after Ctrl-C, from the command's arguments
_RESUME_HINTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "run": lambda kw: ("rerun the same command to continue (finished trials are kept)" if kw.get("resume") else
                       "rerun the same command with --resume to continue (finished trials are kept)"),
    "train": _train_hint,
    "fewstep": _train_hint,  # the same loop, the same checkpoints
    "prepare_cmd": lambda kw: "rerun the same command to continue (finished shards are kept)",
    "eval_": lambda kw: "rerun the same command to continue (what was scored is kept)",
    "profile": lambda kw: "rerun the same command to continue (the blocks measured so far are kept)",
}


def resume_hint(command: str, kwargs: dict[str, Any]) -> str:
    """The one line printed when Ctrl-C stops ``command`` (its function's name)."""
    hint = _RESUME_HINTS.get(command)
    what = {"prepare_cmd": "data prepare", "eval_": "eval"}.get(command, command)
    return f"interrupted: {what} stopped" + (f"; {hint(kwargs)}" if hint else "")


def user_errors(fn: F) -> F:
    """Turn an :class:`ArchsearchError` into ``error: <message>`` and exit code 2, and Ctrl-C
    into ``interrupted: ...; <how to resume>`` and exit code 130 (no traceback).

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
        except KeyboardInterrupt:
            if os.environ.get("ARCHSEARCH_DEBUG") == "1":
                raise
            typer.echo(resume_hint(fn.__name__, kwargs), err=True)
            raise typer.Exit(INTERRUPTED) from None

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


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class _Phase:
    def __init__(self, done: int, now: float) -> None:
        self.start_done, self.start = done, now
        self.last_done, self.last_time = -1, now


class _LogLines:
    """``progress(phase, description, done, total)`` as plain lines for a log (one per trial,
    per N steps, per shard), as accelerate and diffusers scripts log: counts, rate and ETA.

    A phase writes its first report, then a line whenever 5% more of it is done or
    ``interval`` seconds have passed with progress, and always its last one (done == total).
    ``json``: one object per line, ``{"phase", "done", "total", "rate", "eta", "elapsed",
    "message"}`` (rate per second, eta and elapsed in seconds; rate and eta null until known).
    """

    def __init__(self, fmt: str = "text", interval: float = 10.0, target: Console | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fmt, self.interval, self.clock = fmt, interval, clock
        self.target = target or err_console
        self.phases: dict[str, _Phase] = {}

    @property
    def stream(self) -> Any:
        return self.target.file  # looked up on each line: a test runner swaps sys.stdout/stderr

    def __call__(self, phase: str, desc: str, done: int, total: int) -> None:
        now = self.clock()
        st = self.phases.get(phase)
        if st is None:
            st = self.phases[phase] = _Phase(done, now)
        elif done == st.last_done or (
            done != total and done - st.last_done < 0.05 * max(total, 1) and now - st.last_time < self.interval
        ):
            return
        st.last_done, st.last_time = done, now
        elapsed = now - st.start
        rate = (done - st.start_done) / elapsed if elapsed > 0 and done > st.start_done else None
        eta = (total - done) / rate if rate else (0.0 if done >= total else None)
        if self.fmt == "json":
            line = json.dumps({"phase": phase, "done": done, "total": total,
                               "rate": None if rate is None else round(rate, 4),
                               "eta": None if eta is None else round(eta, 1), "elapsed": round(elapsed, 1),
                               "message": desc})
        else:
            pct = 100 * done / total if total else 100.0
            speed = ("?" if rate is None else f"{rate:,.0f}/s" if rate >= 100 else f"{rate:.3g}/s" if rate >= 1
                     else f"{_duration(1 / rate)} each")
            line = (f"{phase} {done}/{total} ({pct:.0f}%), {_duration(elapsed)} elapsed, {speed}, "
                    f"eta {_duration(eta)}" + (f": {desc}" if desc else ""))
        print(line, file=self.stream, flush=True)


def _silent(phase: str, desc: str, done: int, total: int) -> None:
    """The progress callback of ``--quiet``."""


@contextlib.contextmanager
def progress_bars(target: Console | None = None, *, enabled: bool = True) -> Iterator[Any]:
    """A ``progress(phase, description, done, total)`` callback while the block runs: rich bars
    (elapsed, ETA) on a terminal; where ``target`` (default: stdout) is not one (a log file, a
    scheduler, ``nohup``), plain lines on it instead, or JSON lines with ``--log-format json``;
    ``None`` when disabled; with ``--quiet`` a callback that prints nothing (so a caller that
    opens this lazily, on the first report, works the same). Bars appear only once something
    reports progress."""
    if not enabled:
        yield None
        return
    if OUTPUT.quiet:
        yield _silent
        return
    target = target or console
    if OUTPUT.log_format == "json" or not target.is_terminal:
        yield _LogLines(OUTPUT.log_format, OUTPUT.interval, target)
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
