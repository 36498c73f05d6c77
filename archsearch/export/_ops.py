"""What a converted program (or a module) runs, one op at a time: :class:`OpRecord`, and the
multiply-accumulates of an einsum (:func:`einsum_macs`), which the MIL census here and the
torch census of ``archsearch.cost.latency`` both count the same way."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["OpRecord", "einsum_macs"]


@dataclass
class OpRecord:
    """One op a block runs: its class, multiply-accumulates and bytes moved."""

    name: str
    op_class: str
    macs: int
    bytes: int
    elems: int  # output elements (elementwise work)


def einsum_macs(equation: str, shapes: list[Any]) -> int:
    """Multiply-accumulates of an einsum of operands of these ``shapes`` done pairwise: the
    product of the sizes of every index (``...`` dims included) for two or more operands; a
    single operand (a sum or a transpose) does none. Used for torch ops and MIL ops alike."""
    lhs = equation.replace(" ", "").split("->")[0].split(",")
    if len(lhs) < 2 or len(lhs) != len(shapes):
        return 0
    sizes: dict[Any, int] = {}
    for subs, shape in zip(lhs, shapes):
        shape = list(shape or ())
        if "..." in subs:
            head, tail = subs.split("...")
            n_ell = len(shape) - len(head) - len(tail)
            for i in range(n_ell):  # broadcast dims, aligned from the right
                key = ("...", n_ell - i)
                sizes[key] = max(sizes.get(key, 1), int(shape[len(head) + i]))
            letters = list(head) + [None] * n_ell + list(tail)
        else:
            letters = list(subs)
        for letter, n in zip(letters, shape):
            if letter is not None:
                sizes[letter] = max(sizes.get(letter, 1), int(n))
    return int(math.prod(sizes.values())) if sizes else 0
