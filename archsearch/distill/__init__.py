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
* :func:`load_supernet` (:class:`Supernet`) -- the space's supernet, trained once with
  SnapFusion's robust training through the same loop and cached; ``Supernet.score(candidate)``
  evaluates a candidate's sub-network on the proxy runs' held-out batch (``proxy.kind: supernet``).
* :func:`train` (:class:`TrainConfig`, :class:`TrainResult`) -- full training of a chosen
  backbone through the same loop (accelerate, EMA, checkpoints, resume, logs, sample grids);
  :func:`init_from_teacher` (:class:`CopyReport`) -- BK-SDM's copy of matching teacher weights;
  :func:`load_spatial` -- a video student's spatial layers from an image model, frozen
  (``spatial_from``, the temporal search), :func:`spatial_difference` -- where two candidates'
  spatial layers differ;
  :class:`CacheBatches` -- training batches from a latent cache; :func:`export_pipeline`,
  :func:`load_pipeline`, :func:`generate` -- the diffusers pipeline of a trained model.

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
from archsearch.distill._cachedata import CacheBatches, open_cache_for
from archsearch.distill._config import PROXY_KINDS, ProxyConfig
from archsearch.distill._data import SyntheticImageText, SyntheticVideoText, synthetic_dataset
from archsearch.distill._device import autocast, resolve_device, seeded, torch_threads
from archsearch.distill._distill import HOLDOUT_SEED, DistillResult, clear_caches, distill, holdout_for
from archsearch.distill._generate import export_pipeline, generate, load_pipeline
from archsearch.distill._init_from_teacher import CopyReport, init_from_teacher
from archsearch.distill._loop import (
    NAN_POLICIES,
    SCHEDULES,
    Batch,
    LoopCallback,
    LoopLog,
    Progress,
    StepBatches,
    StepState,
    TrialFailed,
    make_optimizer,
    train_loop,
)
from archsearch.distill._spatial import (
    is_temporal,
    load_spatial,
    spatial_candidate,
    spatial_difference,
    spatial_signature,
)
from archsearch.distill._train import TrainConfig, TrainResult, find_checkpoint, list_checkpoints, train
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
from archsearch.distill._supernet import (
    SUPERNET_VERSION,
    LargestChooser,
    Supernet,
    SupernetError,
    SupernetPlan,
    check_supernet,
    largest_candidate,
    load_supernet,
    plan_supernet,
    proxy_scale,
    supernet_key,
)
from archsearch.distill._text import DualTextEncoder, TextEncoder, cache_root

__all__ = [
    "CACHE_VERSION",
    "FORMATS",
    "HOLDOUT_SEED",
    "NAN_POLICIES",
    "PREDICTIONS",
    "PROXY_KINDS",
    "SCHEDULES",
    "SUPERNET_VERSION",
    "TEACHER_IMAGE",
    "TEACHER_VIDEO",
    "BadSample",
    "Batch",
    "BuiltinTeacherConfig",
    "CacheBatches",
    "CacheIndex",
    "CacheSplit",
    "CopyReport",
    "DistillResult",
    "DualTextEncoder",
    "LargestChooser",
    "LatentCache",
    "LoopCallback",
    "LoopLog",
    "NoiseProcess",
    "PrepareResult",
    "Progress",
    "ProxyConfig",
    "Source",
    "Supernet",
    "SupernetError",
    "SupernetPlan",
    "StepBatches",
    "StepState",
    "SyntheticImageText",
    "SyntheticVideoText",
    "Teacher",
    "TeacherEncoders",
    "TextEncoder",
    "TrainConfig",
    "TrainResult",
    "TrialFailed",
    "autocast",
    "builtin_teacher_candidate",
    "cache_root",
    "check_prediction",
    "check_supernet",
    "check_teacher",
    "clear_caches",
    "distill",
    "distill_loss",
    "export_pipeline",
    "find_checkpoint",
    "generate",
    "holdout_for",
    "init_from_teacher",
    "is_holdout",
    "is_temporal",
    "largest_candidate",
    "list_checkpoints",
    "load_pipeline",
    "load_spatial",
    "load_supernet",
    "load_teacher",
    "make_optimizer",
    "open_cache_for",
    "open_source",
    "pair_taps",
    "plan_supernet",
    "prepare",
    "proxy_scale",
    "resolve_device",
    "seeded",
    "spatial_candidate",
    "spatial_difference",
    "spatial_signature",
    "supernet_key",
    "synthetic_dataset",
    "teacher_components",
    "teacher_hash",
    "torch_threads",
    "train",
    "train_loop",
]
