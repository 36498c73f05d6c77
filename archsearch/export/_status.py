"""A block's Core ML conversion as a latency table stores it, read back.

The latency stage converts every block of a ``coreml``/``ane`` table (``archsearch profile``)
and writes two columns from the :class:`~archsearch.export.ConversionResult`: ``coreml``
(its :attr:`~archsearch.export.ConversionResult.status`: ``ok`` or ``failed: <error>``; empty
when the profile ran with ``--no-convert``) and ``ane_flags`` (``copies:3;rank5:1;
off_ane:rank5:reshape:2``: the patterns found and, prefixed ``off_ane:``, the ops that would
fall off the Neural Engine). :class:`BlockConversion` reads one row back; the search's
convertibility constraint and the profile's summary read the table through it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

__all__ = ["BlockConversion", "unconvertible_types"]


@dataclass(frozen=True)
class BlockConversion:
    """One row's conversion: ``status`` ``ok``, ``failed`` or ``unchecked`` (never converted),
    the converter's ``error`` (one line) and the ops that would fall off the Neural Engine."""

    status: str
    error: str = ""
    off_ane: Counter = field(default_factory=Counter)

    @property
    def converts(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_row(cls, coreml: Any, ane_flags: Any = "") -> "BlockConversion":
        text = "" if coreml is None or coreml != coreml else str(coreml).strip()  # NaN: an empty cell
        off: Counter = Counter()
        flags = "" if ane_flags is None or ane_flags != ane_flags else str(ane_flags)
        for part in filter(None, flags.split(";")):
            if part.startswith("off_ane:"):
                what, _, count = part[len("off_ane:"):].rpartition(":")
                try:
                    off[what] += int(count)
                except ValueError:
                    off[part[len("off_ane:"):]] += 1
        if text == "ok":
            return cls("ok", "", off)
        if text.startswith("failed"):
            return cls("failed", text.partition(":")[2].strip() or "conversion failed", off)
        return cls("unchecked", "", off)


def unconvertible_types(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Block types with at least one row that failed to convert: ``{type: {"failed": n,
    "blocks": of n rows, "error": the first error}}``, in the order first seen."""
    out: dict[str, dict[str, Any]] = {}
    totals: Counter = Counter()
    for row in rows:
        totals[row.get("type")] += 1
        conv = BlockConversion.from_row(row.get("coreml"), row.get("ane_flags"))
        if conv.status == "failed":
            entry = out.setdefault(str(row.get("type")), {"failed": 0, "blocks": 0, "error": conv.error})
            entry["failed"] += 1
    for t, entry in out.items():
        entry["blocks"] = totals[t]
    return out
