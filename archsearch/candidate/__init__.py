"""Candidates: fully resolved architectures, their ids, files and sampling.

* :class:`Candidate` (:class:`StageConfig`, :class:`TemporalConfig`, :class:`AddedConditioning`)
  -- one resolved architecture, its ``id`` and files; :func:`load_candidate` -- a candidate
  file, or a space with exactly one assignment.
* :func:`resolve` a space with a chooser: :class:`RandomChooser` (:func:`sample`,
  :func:`sample_many`), :class:`OptunaChooser`, :class:`LargestChooser`
  (:func:`largest_candidate`: the ONE meaning of "the largest candidate", ranked by
  :data:`HEAVIER`); :func:`enumerate_candidates` -- every candidate of a small space.
"""

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
from archsearch.candidate._largest import HEAVIER, LargestChooser, largest_candidate
from archsearch.candidate._load import load_candidate

__all__ = [
    "CANDIDATE_FORMAT",
    "HEAVIER",
    "AddedConditioning",
    "Candidate",
    "LargestChooser",
    "OptunaChooser",
    "RandomChooser",
    "StageConfig",
    "TemporalConfig",
    "describe_changes",
    "enumerate_candidates",
    "largest_candidate",
    "load_candidate",
    "resolve",
    "sample",
    "sample_many",
]
