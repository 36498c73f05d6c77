"""Candidates: fully resolved architectures, their ids, files and sampling."""

from archsearch.candidate._candidate import (
    CANDIDATE_FORMAT,
    Candidate,
    OptunaChooser,
    RandomChooser,
    StageConfig,
    TemporalConfig,
    resolve,
    sample,
    sample_many,
)

__all__ = [
    "CANDIDATE_FORMAT",
    "Candidate",
    "OptunaChooser",
    "RandomChooser",
    "StageConfig",
    "TemporalConfig",
    "resolve",
    "sample",
    "sample_many",
]
