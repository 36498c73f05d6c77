"""Errors of the latency stage that carry what went wrong as data, so the CLI can word it.

A library error names the parameter (``target``, ``resolution``, ``threads``...), never a
command-line flag; ``archsearch.cli`` maps parameters to its flags and adds next steps
(the command that would measure a missing block) from the fields below.
"""

from __future__ import annotations

from typing import Any

from archsearch.errors import ArchsearchError, MissingBlockError, ParameterError

__all__ = ["ImplausibleCalibrationError", "MissingBlocksError", "ParameterError", "UnknownBlockKeyError",
           "UnknownDeviceProfileError"]


class MissingBlocksError(MissingBlockError):
    """Blocks of a candidate are not in the latency table (and ``allow_missing`` is off).

    Fields: ``key`` and ``block`` (name) of the first missing block, ``n_missing``,
    ``candidate_id``, ``candidate_resolution``, and the table's ``table_path``, ``target``,
    ``resolution`` and recorded ``command`` (the run that built it, if recorded);
    ``uninterpolable``: the block type, when ``allow_missing`` was on but the table has no
    block of that type to interpolate from.
    """

    def __init__(self, *, key: str, block: str, n_missing: int, candidate_id: str,
                 candidate_resolution: int | None, table_path: Any, target: str | None,
                 resolution: int | None, command: str | None, uninterpolable: str | None = None) -> None:
        self.key = key
        self.block = block
        self.n_missing = n_missing
        self.candidate_id = candidate_id
        self.candidate_resolution = candidate_resolution
        self.table_path = table_path
        self.target = target
        self.resolution = resolution
        self.command = command
        self.uninterpolable = uninterpolable
        super().__init__(self.message())

    def message(self, *, measure: str | None = None, allow_missing: str = "allow_missing=True") -> str:
        """The one-line message; ``measure`` (how to measure the block) and the wording of the
        interpolation switch can be given by the caller (the CLI gives its command and flag)."""
        how = measure or self.command
        measure_text = f"measure it with: {how}" if how else (
            f"profile it on target {self.target or 'cpu'}{f' into {self.table_path}' if self.table_path else ''}")
        if self.uninterpolable:
            return (f"block {self.key} ({self.block}) cannot be interpolated: the table has no "
                    f"'{self.uninterpolable}' block at all; {measure_text}")
        more = f" (and {self.n_missing - 1} more)" if self.n_missing > 1 else ""
        where = f" {self.table_path}" if self.table_path else ""
        note = ""
        if self.resolution and self.candidate_resolution is not None and self.candidate_resolution != self.resolution:
            note = (f"; note: the table was measured at resolution {self.resolution} and this candidate has "
                    f"resolution {self.candidate_resolution} (predict candidate.for_proxy(resolution="
                    f"{self.resolution}) instead)")
        return (f"block {self.key} ({self.block}) of candidate {self.candidate_id} is not in latency table"
                f"{where}{more}; {measure_text} (or pass {allow_missing} to interpolate){note}")


class UnknownBlockKeyError(ArchsearchError):
    """A device CSV names a key that is not a block of the space (or candidates) imported into.

    Fields: ``path`` (the CSV), ``key`` (the first unknown key), ``n_unknown``, ``source``
    (the space's file, or 'these candidates'), ``resolution``, ``target``.
    """

    def __init__(self, *, path: Any, key: str, n_unknown: int, source: str, resolution: int | None,
                 target: str) -> None:
        self.path = path
        self.key = key
        self.n_unknown = n_unknown
        self.source = source
        self.resolution = resolution
        self.target = target
        super().__init__(f"{path}: key {key!r} is not a block of {source} at resolution {resolution} "
                         f"({n_unknown} unknown key(s))")


class UnknownDeviceProfileError(ArchsearchError):
    """No device profile of that name (:func:`~archsearch.cost.latency.load_device`).

    Fields: ``name`` (as asked), ``allowed`` (the profile names there are).
    """

    def __init__(self, name: str, allowed: list[str]) -> None:
        self.name = name
        self.allowed = allowed
        super().__init__(f"unknown device profile {name!r} ({self.allowed_text()})")

    def allowed_text(self) -> str:
        """``allowed: a, b, or a path to a .yaml``."""
        return f"allowed: {', '.join(self.allowed) or 'none shipped'}, or a path to a .yaml"


class ImplausibleCalibrationError(ArchsearchError):
    """A whole-model calibration was refused (``check_calibration``): its overhead or scale
    is implausible, so the block and whole-model measurements disagree (a busy machine).

    Fields: ``reason`` (the numbers, one line), ``scale``, ``overhead_ms``, ``table_path``.
    """

    def __init__(self, reason: str, *, scale: float, overhead_ms: float, table_path: Any = None) -> None:
        self.reason = reason
        self.scale = scale
        self.overhead_ms = overhead_ms
        self.table_path = table_path
        where = f"{table_path}: " if table_path else ""
        super().__init__(f"{where}calibration refused: {reason} (ms = {scale:.3f} x sum(blocks) + "
                         f"{overhead_ms:.1f}; the block and whole-model measurements disagree: re-measure "
                         "on a quiet machine)")
