"""Distillation: how a candidate is trained against a teacher and given a quality score.

* :func:`distill` -- one seeded distillation run of a candidate at proxy scale against the
  teacher (:class:`DistillResult`; :class:`TrialFailed` for a NaN / inf run). A search trial
  and ``archsearch train`` both call it.
* :func:`load_teacher` -- the spec's teacher (:class:`Teacher`): the built-in UNet, trained
  once through the same loop with the KD weights at 0 and cached, or a local diffusers
  checkpoint.
* :class:`ProxyConfig` -- the ``proxy:`` section of a spec.
* :func:`train_loop`, :class:`StepBatches` -- the one training loop and its batches;
  :func:`distill_loss`, :func:`pair_taps` -- the timestep-aware KD objective and the feature
  pairing; :class:`NoiseProcess` -- noise, v or flow targets.
* :class:`SyntheticImageText`, :class:`SyntheticVideoText` -- the built-in data;
  :class:`TextEncoder` -- the offline text encoders.
* :func:`resolve_device`, :func:`autocast` -- devices and precision.

Progress is a callback, ``progress(phase, description, done, total)`` (:data:`Progress`), as in
:mod:`archsearch.cost.latency`; the CLI draws the bars. Errors name the parameter
(``proxy.steps``, ``device``), never a command-line flag.
"""

from __future__ import annotations

from archsearch.distill._cache import (
    CACHE_VERSION,
    CacheIndex,
    CacheSplit,
    LatentCache,
    is_holdout,
    teacher_components,
    teacher_hash,
)
from archsearch.distill._config import ProxyConfig
from archsearch.distill._data import SyntheticImageText, SyntheticVideoText, synthetic_dataset
from archsearch.distill._device import autocast, resolve_device, seeded, torch_threads
from archsearch.distill._distill import HOLDOUT_SEED, DistillResult, clear_caches, distill
from archsearch.distill._loop import SCHEDULES, Batch, LoopLog, Progress, StepBatches, TrialFailed, train_loop
from archsearch.distill._losses import distill_loss, pair_taps
from archsearch.distill._prepare import PrepareResult, TeacherEncoders, prepare
from archsearch.distill._sources import FORMATS, BadSample, Source, open_source
from archsearch.distill._noise import PREDICTIONS, NoiseProcess, check_prediction
from archsearch.distill._teacher import (
    TEACHER_IMAGE,
    TEACHER_VIDEO,
    BuiltinTeacherConfig,
    Teacher,
    builtin_teacher_candidate,
    check_teacher,
    load_teacher,
)
from archsearch.distill._text import DualTextEncoder, TextEncoder, cache_root

__all__ = [
    "CACHE_VERSION",
    "FORMATS",
    "HOLDOUT_SEED",
    "PREDICTIONS",
    "SCHEDULES",
    "TEACHER_IMAGE",
    "TEACHER_VIDEO",
    "BadSample",
    "Batch",
    "BuiltinTeacherConfig",
    "CacheIndex",
    "CacheSplit",
    "DistillResult",
    "DualTextEncoder",
    "LatentCache",
    "LoopLog",
    "NoiseProcess",
    "PrepareResult",
    "Progress",
    "ProxyConfig",
    "Source",
    "StepBatches",
    "SyntheticImageText",
    "SyntheticVideoText",
    "Teacher",
    "TeacherEncoders",
    "TextEncoder",
    "TrialFailed",
    "autocast",
    "builtin_teacher_candidate",
    "cache_root",
    "check_prediction",
    "check_teacher",
    "clear_caches",
    "distill",
    "distill_loss",
    "is_holdout",
    "load_teacher",
    "open_source",
    "pair_taps",
    "prepare",
    "resolve_device",
    "seeded",
    "synthetic_dataset",
    "teacher_components",
    "teacher_hash",
    "torch_threads",
    "train_loop",
]
