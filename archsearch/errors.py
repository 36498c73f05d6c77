"""Exceptions that carry a one-line, user-facing message.

The CLI maps every :class:`ArchsearchError` to ``error: <message>`` and a non-zero exit,
without a traceback (``--debug`` shows one).
"""

from __future__ import annotations

__all__ = ["ArchsearchError", "CandidateError", "MissingBlockError", "ParameterError", "SpecError"]


class ArchsearchError(Exception):
    """Base class for errors caused by user input (files, flags, environment)."""

    exit_code = 2


class SpecError(ArchsearchError):
    """A search-space or candidate file is invalid."""


class CandidateError(ArchsearchError):
    """A candidate cannot be built or resolved."""


class MissingBlockError(ArchsearchError):
    """A latency table lacks a block that a candidate needs."""


class ParameterError(ArchsearchError):
    """A bad value of one parameter of a library function: ``"<param> <detail>"``, or
    ``"<param>: ..."`` when ``detail`` starts with a colon.

    ``param`` is the keyword the caller passed (``target``, ``resolution``, ``trials``,
    ``proxy.steps``...), never a command-line flag; the CLI shows its own flag for it
    (:func:`archsearch.cli._common.flag_errors`, with :meth:`named`). ``detail`` is the rest of
    the message.
    """

    def __init__(self, param: str, detail: str) -> None:
        self.param = param
        self.detail = detail
        super().__init__(self.named(param))

    def named(self, name: str) -> str:
        """The message with ``name`` (a command's flag) in place of the parameter."""
        return f"{name}{'' if self.detail.startswith(':') else ' '}{self.detail}"
