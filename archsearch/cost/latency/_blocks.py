"""The distinct blocks of a space (or of some candidates), and the candidates they come from.

A block is what the builder's own :func:`~archsearch.model.walk` yields; its ``key`` is the
table's row key. A small space is enumerated completely (``enumerate_candidates``, the
enumeration ``space.size()`` counts); a larger one is sampled until new blocks stop coming.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

from archsearch.cost.latency._errors import ParameterError
from archsearch.errors import CandidateError

__all__ = [
    "BlockCensus",
    "BlockSet",
    "at_resolution",
    "block_census",
    "enumerate_blocks",
    "resolution_of",
    "sample_candidates",
]


@dataclass
class BlockSet:
    """The distinct blocks of a space (or of some candidates), by key, in first-seen order.

    ``method``: ``exhaustive`` (every candidate of the space), ``sampled`` or
    ``candidates``; ``samples``: how many candidates were walked; ``last_new``: the sample
    that brought the last new block; ``space`` or ``candidates``: where they come from.
    """

    specs: dict[str, Any]
    samples: int
    method: str
    last_new: int = 0
    resolution: int | None = None
    space: Any = None
    candidates: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.specs)

    def info(self) -> dict[str, Any]:
        """What the table's ``enumeration`` metadata records."""
        return {"method": self.method, "samples": self.samples, "last_new_block_at": self.last_new,
                "unique_blocks": len(self.specs)}


def resolution_of(blocks: BlockSet) -> int | None:
    """The latent resolution the blocks were enumerated at."""
    if blocks.resolution:
        return blocks.resolution
    if blocks.space is not None:
        return int(blocks.space.data.get("resolution", 64))
    return blocks.candidates[0].resolution if blocks.candidates else None


def at_resolution(candidate: Any, resolution: int | None) -> Any:
    """``candidate`` at another latent resolution (same blocks otherwise)."""
    if resolution is None or resolution == candidate.resolution:
        return candidate
    try:
        return candidate.for_proxy(resolution=resolution)
    except CandidateError as exc:
        n = len(candidate.stages)
        raise ParameterError("resolution", f"{resolution}: {exc} (allowed: a multiple of {2 ** (n - 1)})") from None


def sample_candidates(space: Any, n: int, seed: int, resolution: int | None,
                      exclude: Iterable[str] = ()) -> list[Any]:
    """``n`` distinct candidates (seeded), at ``resolution``, skipping ids in ``exclude``."""
    from archsearch.candidate import sample_many

    skip = set(exclude)
    drawn = (at_resolution(c, resolution) for c in sample_many(space, n + len(skip), seed))
    return [c for c in drawn if c.id not in skip][:n]


def enumerate_blocks(source: Any, resolution: int | None = None, *, seed: int = 0,
                     exhaustive_limit: int = 5000, patience: int = 3000, max_samples: int = 50000) -> BlockSet:
    """Every distinct block a space can produce, via the builder's own :func:`walk`.

    ``source`` is a :class:`SearchSpace` or candidates. A space of at most
    ``exhaustive_limit`` candidates is enumerated completely; a larger one is sampled until
    ``patience`` draws in a row add no new block (and at least twice as many draws as the
    last new block needed), up to ``max_samples``.
    """
    from archsearch.candidate import RandomChooser, enumerate_candidates, resolve
    from archsearch.model import walk
    from archsearch.spec import SearchSpace

    specs: dict[str, Any] = {}
    if not isinstance(source, SearchSpace):
        cands = [at_resolution(c, resolution) for c in source]
        for c in cands:
            for s in walk(c):
                specs.setdefault(s.key, s)
        return BlockSet(specs, len(cands), "candidates", len(cands), resolution, None, cands)
    space = source
    n = last = 0

    def add(c: Any) -> None:
        nonlocal n, last
        n += 1
        before = len(specs)
        for s in walk(at_resolution(c, resolution)):
            specs.setdefault(s.key, s)
        if len(specs) > before:
            last = n

    if space.size() <= exhaustive_limit:
        for c in enumerate_candidates(space):
            add(c)
        return BlockSet(specs, n, "exhaustive", last, resolution, space)
    rng = random.Random(seed)
    while n < max_samples and (n - last < patience or n < 2 * last):
        add(resolve(space, RandomChooser(rng)))
    return BlockSet(specs, n, "sampled", last, resolution, space)


class BlockCensus(NamedTuple):
    """What one call of a block does: multiply-accumulates, bytes moved, and the op list."""

    macs: int
    bytes: int
    ops: list[Any]


def block_census(spec: Any, batch: int = 1, elem_bytes: int = 2) -> BlockCensus:
    """Count the ops of one call of ``spec``'s block (built on ``meta``: nothing is computed)."""
    from archsearch.cost.latency._devices import count_ops
    from archsearch.model import build_block, example_inputs

    block = build_block(spec, device="meta")
    ops = count_ops(block, example_inputs(spec, batch, device="meta"), elem_bytes)
    return BlockCensus(sum(o.macs for o in ops), sum(o.bytes for o in ops), ops)
