"""Exceptions that carry a one-line, user-facing message.

The CLI maps every :class:`ArchsearchError` to ``error: <message>`` and a non-zero exit,
without a traceback (``--debug`` shows one).
"""

from __future__ import annotations

__all__ = ["ArchsearchError", "SpecError", "CandidateError", "MissingBlockError"]


class ArchsearchError(Exception):
    """Base class for errors caused by user input (files, flags, environment)."""

    exit_code = 2


class SpecError(ArchsearchError):
    """A search-space or candidate file is invalid."""


class CandidateError(ArchsearchError):
    """A candidate cannot be built or resolved."""


class MissingBlockError(ArchsearchError):
    """A latency table lacks a block that a candidate needs."""
