"""Candidates: fully resolved architectures, their ids, files and sampling."""

from archsearch.candidate._candidate import (
    CANDIDATE_FORMAT,
    AddedConditioning,
    Candidate,
    OptunaChooser,
    RandomChooser,
    StageConfig,
    TemporalConfig,
    describe_changes,
    enumerate_candidates,
    resolve,
    sample,
    sample_many,
)
from archsearch.candidate._load import load_candidate

__all__ = [
    "CANDIDATE_FORMAT",
    "AddedConditioning",
    "Candidate",
    "OptunaChooser",
    "RandomChooser",
    "StageConfig",
    "TemporalConfig",
    "describe_changes",
    "enumerate_candidates",
    "load_candidate",
    "resolve",
    "sample",
    "sample_many",
]
