"""A candidate's blocks as latency-table keys (the builder's own :func:`walk`, cached).

``walk`` is Python and costs ~0.1-0.3 ms a candidate; search loops score the same
candidates again and again, so the decomposition is cached per candidate (candidates are
frozen and hashable). Tables, the predictor and validation all read keys from here.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

__all__ = ["CandidateBlocks", "candidate_blocks"]


class CandidateBlocks(NamedTuple):
    """A candidate's blocks in walk order: their table keys and their :class:`BlockSpec`\\ s."""

    keys: tuple[str, ...]
    specs: tuple[Any, ...]


@lru_cache(maxsize=262144)
def candidate_blocks(candidate: Any) -> CandidateBlocks:
    """``(keys, specs)`` of ``candidate``'s blocks, in walk order (cached per candidate)."""
    from archsearch.model import walk

    specs = tuple(walk(candidate))
    return CandidateBlocks(tuple(s.key for s in specs), specs)
