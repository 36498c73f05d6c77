"""One entry point for commands that take "an architecture": a candidate file, or a search
space with exactly one assignment (the reference backbones in ``search_spaces/reference/``)."""

from __future__ import annotations

import os
from pathlib import Path

from archsearch.candidate._candidate import Candidate, enumerate_candidates
from archsearch.errors import CandidateError
from archsearch.spec import load_space, load_yaml

__all__ = ["load_candidate"]


def load_candidate(path: str | os.PathLike) -> Candidate:
    """The candidate in ``path``: a candidate YAML (``archsearch sample -o``, ``pareto/``), or
    the single candidate of a search space that has exactly one assignment.

    A space with more than one candidate is refused with its size, naming the command that
    draws candidates from it.
    """
    path = Path(path)
    data = load_yaml(path).data
    if not (isinstance(data, dict) and "schema_version" in data and "stages" in data):
        return Candidate.from_yaml(path)
    space = load_space(path)
    n = space.size()
    if n != 1:
        raise CandidateError(
            f"{path}: this is a search space with {n:,} candidates, not one candidate "
            f"(allowed: a candidate file, or a space with exactly one assignment); "
            f"draw one with `archsearch sample {path} -n 1 -o DIR`"
        )
    return next(iter(enumerate_candidates(space)))
