"""Core ML convertibility as a constraint of a search aimed at Apple's chips.

A ``coreml`` or ``ane`` latency table converts every block it prices (``archsearch profile
--target ane``): its ``coreml`` column says ``ok`` or ``failed: <why>``, its ``ane_flags``
the ops that would fall off the Neural Engine (read by
:class:`archsearch.export.BlockConversion`). A candidate with a block that did not convert
cannot be exported to the device, whatever it scores; one whose predicted latency sits mostly
in blocks with ops off the Neural Engine runs elsewhere (the CPU or GPU) for that share. So
for such a table :func:`core_ml_constraint` adds the constraint ``coreml_convertible`` to
every trial, before any training:

* ``1`` (violated) when a block of the candidate failed to convert; the trial's reason names
  the block types and the converter's error;
* ``ane`` only: ``off-ANE share / MAX_OFF_ANE_SHARE - 1`` -- violated above the stated share
  :data:`MAX_OFF_ANE_SHARE` of the candidate's summed block latency in blocks with ops off
  the Neural Engine;
* ``-1`` otherwise. Rows never converted (``--no-convert``, or no coremltools) constrain
  nothing (the ``validate`` note says so).

:func:`convertibility_notes` is what ``archsearch validate`` says about it: a space whose
every sampled candidate has a block that does not convert, or a table that never converted
its blocks.
"""

from __future__ import annotations

import weakref
from collections import Counter
from typing import Any

__all__ = ["CORE_ML_TARGETS", "MAX_OFF_ANE_SHARE", "CONSTRAINT", "convertibility_notes", "core_ml_constraint"]

#: latency targets whose tables say whether each block converts to Core ML
CORE_ML_TARGETS = ("coreml", "ane")
#: the most of a candidate's summed block latency (``ane`` target) that may sit in blocks with
#: ops off the Neural Engine: beyond it the model runs mostly on the CPU/GPU, with a copy to
#: and from the Neural Engine around each such block
MAX_OFF_ANE_SHARE = 0.10
#: the constraint's name on a trial (``trial.set_constraint``)
CONSTRAINT = "coreml_convertible"
#: candidates ``validate`` draws to see whether a space can produce a convertible one (a
#: smaller space: all of them)
NOTE_SAMPLES = 64

_ROWS: "weakref.WeakKeyDictionary[Any, tuple[int, dict[str, tuple[Any, float, str]]]]" = weakref.WeakKeyDictionary()


def _rows(table: Any) -> dict[str, tuple[Any, float, str]]:
    """``{key: (BlockConversion, ms, type)}`` of ``table`` (kept per table and version)."""
    from archsearch.export import BlockConversion

    version = getattr(table, "version", 0)
    cached = _ROWS.get(table)
    if cached is not None and cached[0] == version:
        return cached[1]
    df = table.df
    flags = df["ane_flags"] if "ane_flags" in df else [""] * len(df)
    rows = {str(k): (BlockConversion.from_row(c, f), float(ms), str(t))
            for k, c, f, ms, t in zip(df["key"], df["coreml"], flags, df["ms"], df["type"])}
    _ROWS[table] = (version, rows)
    return rows


def _target(table: Any) -> str | None:
    target = (getattr(table, "meta", None) or {}).get("target")
    return target if target in CORE_ML_TARGETS else None


def _failed_types(keys: Any, rows: dict[str, tuple[Any, float, str]]) -> dict[str, str]:
    failed: dict[str, str] = {}
    for key in keys:
        row = rows.get(key)
        if row is not None and row[0].status == "failed":
            failed.setdefault(row[2], row[0].error)
    return failed


def core_ml_constraint(candidate: Any, table: Any | None,
                       max_off_ane_share: float = MAX_OFF_ANE_SHARE) -> tuple[dict[str, float], str]:
    """(``{CONSTRAINT: value}``, the reason when violated) of ``candidate`` on ``table``; no
    constraint (``{}``, ``''``) without a ``coreml``/``ane`` table or when none of the
    candidate's blocks was converted (see the module's docstring)."""
    target = _target(table) if table is not None else None
    if target is None:
        return {}, ""
    from archsearch.cost.latency import candidate_blocks

    rows = _rows(table)
    keys = candidate_blocks(candidate).keys
    known = [rows[k] for k in keys if k in rows and rows[k][0].status != "unchecked"]
    if not known:
        return {}, ""
    failed = _failed_types(keys, rows)
    if failed:
        what = "; ".join(f"{t} ({err})" for t, err in failed.items())
        return {CONSTRAINT: 1.0}, (f"does not convert to Core ML: {what}"[:400]
                                   + " (the latency table's coreml column; export would refuse it)")
    if target != "ane":
        return {CONSTRAINT: -1.0}, ""
    total = sum(ms for _, ms, _ in known)
    off = Counter()
    off_ms = 0.0
    for conv, ms, typ in known:
        if conv.off_ane:
            off_ms += ms
            off[typ] += 1
    share = off_ms / total if total > 0 else 0.0
    value = share / max_off_ane_share - 1.0 if max_off_ane_share > 0 else (1.0 if share > 0 else -1.0)
    if value <= 0:
        return {CONSTRAINT: min(value, 0.0)}, ""
    types = ", ".join(f"{t} x{n}" for t, n in off.most_common())
    return {CONSTRAINT: value}, (f"{100 * share:.0f}% of its block latency is in blocks with ops off the Neural "
                                 f"Engine ({types}) > {100 * max_off_ane_share:.0f}% allowed")


def convertibility_notes(space: Any, table: Any, samples: int = NOTE_SAMPLES) -> list[str]:
    """What ``validate`` says about Core ML convertibility for ``space`` on ``table`` (a
    :class:`~archsearch.cost.latency.LatencyTable` or its path): nothing for other targets."""
    if not hasattr(table, "df"):
        from archsearch.cost.latency import load_table

        table = load_table(table)
    target = _target(table)
    if target is None:
        return []
    rows = _rows(table)
    where = getattr(table, "path", None) or "the latency table"
    if rows and all(r[0].status == "unchecked" for r in rows.values()):
        return [f"{where}: its rows say nothing about Core ML conversion (empty coreml column: profiled with "
                f"--no-convert or without coremltools), so a candidate that does not convert is not rejected; "
                f"profile it again with coremltools installed and without --no-convert"]
    if not any(r[0].status == "failed" for r in rows.values()):
        return []  # every block converts (or was never tried): any candidate can
    from archsearch.candidate import enumerate_candidates, sample_many
    from archsearch.cost.latency import candidate_blocks

    failed: dict[str, str] = {}
    whole = space.size() <= samples  # a small space: every candidate, else a seeded sample
    drawn = list(enumerate_candidates(space)) if whole else sample_many(space, samples, seed=0)
    for cand in drawn:
        this = _failed_types(candidate_blocks(cand).keys, rows)
        if not this:
            return []
        for t, err in this.items():
            failed.setdefault(t, err)
    if not drawn:
        return []
    what = "; ".join(f"{t} ({err})" for t, err in failed.items())
    which = f"the {len(drawn)} candidates of the space" if whole else f"{len(drawn)} candidates drawn from the space"
    return [f"warning: every one of {which} has a block that does not convert to Core ML in {where}: {what}"[:500]
            + f"; a {target} search finds nothing feasible: allow other block types, or profile the table again "
              "with this archsearch (temporal convolutions convert now)"]
