"""Distillation: how a candidate is trained against a teacher and given a quality score.

* :func:`distill` -- one seeded distillation run of a candidate at proxy scale against the
  teacher (:class:`DistillResult`; :class:`TrialFailed` for a NaN / inf run); its score is the
  held-out KD MSE on :func:`holdout_for`'s batch. A search trial calls it.
* :func:`load_teacher` -- the spec's teacher (:class:`Teacher`): the built-in UNet
  (:class:`BuiltinTeacherConfig`, :func:`builtin_teacher_candidate`), trained once through the
  same loop with the KD weights at 0 and cached, or a local diffusers checkpoint;
  :func:`check_teacher` checks a spec's teacher without loading it.
* :class:`ProxyConfig` -- the ``proxy:`` section of a spec; :func:`proxy_scale` -- a candidate
  at a run's scale (the one place it is done).
* :func:`train_loop` -- the one training loop (:class:`LoopOptions`, :class:`LoopCallback` hooks
  seeing a :class:`StepState`) over :class:`archsearch.data.StepBatches`, on an
  :class:`Objective` registered by name in :data:`OBJECTIVES` (built from an
  :class:`ObjectiveContext`): :class:`KDObjective`, the default, is :func:`distill_loss` (the
  timestep-aware KD objective) over the feature pairs of :func:`pair_taps`;
  :class:`NoiseProcess` -- noise, v or flow targets.
* :func:`load_supernet` (:class:`Supernet`, :class:`SupernetError`, :func:`plan_supernet`,
  :func:`supernet_key`) -- the space's supernet, trained once with SnapFusion's robust training
  through the same loop and cached; ``Supernet.score(candidate)`` evaluates a candidate's
  sub-network on the proxy runs' held-out batch (``proxy.kind: supernet``);
  :func:`check_supernet` checks a space without weights.
* :func:`train` (:class:`TrainConfig`, :class:`TrainResult`, :func:`list_checkpoints`) -- full
  training of a chosen backbone through the same loop and objective (accelerate, EMA,
  checkpoints, resume, logs, sample grids); :func:`init_from_teacher` -- BK-SDM's copy of
  matching teacher weights; :func:`load_spatial` -- a video student's spatial layers from an
  image model, frozen (``spatial_from``, the temporal search; :func:`spatial_candidate`,
  :func:`spatial_difference`); :func:`export_pipeline`, :func:`load_pipeline`, :func:`generate`
  -- the diffusers pipeline of a trained model; :func:`find_pipeline` / :func:`pipeline_info`
  (:class:`PipelineInfo`) -- a pipeline folder and its drawing defaults, read without diffusers.
* :func:`step_distill` (:class:`FewStepConfig`) -- few-step generation (``archsearch fewstep``):
  a trained model distilled to draw in 8, 4 or 1 steps through the same :func:`train`, with the
  objectives ``step`` (SnapFusion's CFG-aware step distillation), ``adversarial`` (SnapGen's)
  and ``lcm`` (latent consistency; :class:`FewStepSettings`, :class:`GuidanceEmbedding`);
  :func:`draw_latents` / :func:`teacher_latents` / :func:`evaluate_fewstep` compare its samples
  with the teacher's; :func:`fewstep_defaults` -- the steps and guidance a pipeline records.

The data -- sources, ``prepare``, the latent cache, the synthetic data, the text encoders, the
batches and the held-out batch, devices and seeded RNG scopes -- live in :mod:`archsearch.data`.

Progress is a callback, ``progress(phase, description, done, total)`` (:data:`Progress`), as in
:mod:`archsearch.cost.latency`; the CLI draws the bars. Errors name the parameter
(:class:`~archsearch.errors.ParameterError`: ``proxy.steps``, ``device``), never a
command-line flag.
"""

from __future__ import annotations

from archsearch.distill._config import ProxyConfig
from archsearch.distill._distill import DistillResult, distill, holdout_for
from archsearch.distill._drawing import PipelineInfo, find_pipeline, pipeline_info
from archsearch.distill._fewstep import (
    FEWSTEP_FILE,
    FEWSTEP_METHODS,
    FewStepSettings,
    GuidanceEmbedding,
    draw_latents,
    fewstep_defaults,
    sample_mse,
    teacher_latents,
)
from archsearch.distill._fewstep_train import FewStepConfig, evaluate_fewstep, step_distill
from archsearch.distill._generate import export_pipeline, generate, load_pipeline
from archsearch.distill._init_from_teacher import init_from_teacher
from archsearch.distill._loop import LoopCallback, LoopOptions, Progress, StepState, TrialFailed, train_loop
from archsearch.distill._losses import distill_loss, pair_taps
from archsearch.distill._noise import NoiseProcess
from archsearch.distill._objective import KDObjective, Objective
from archsearch.distill._spatial import load_spatial, spatial_candidate, spatial_difference
from archsearch.distill._student import OBJECTIVES, ObjectiveContext, proxy_scale
from archsearch.distill._supernet import (
    Supernet,
    SupernetError,
    check_supernet,
    load_supernet,
    plan_supernet,
    supernet_key,
)
from archsearch.distill._teacher import (
    BuiltinTeacherConfig,
    Teacher,
    builtin_teacher_candidate,
    check_teacher,
    load_teacher,
)
from archsearch.distill._train import TrainConfig, TrainResult, list_checkpoints, train

__all__ = [
    "FEWSTEP_FILE",
    "FEWSTEP_METHODS",
    "OBJECTIVES",
    "BuiltinTeacherConfig",
    "DistillResult",
    "FewStepConfig",
    "FewStepSettings",
    "GuidanceEmbedding",
    "KDObjective",
    "LoopCallback",
    "LoopOptions",
    "NoiseProcess",
    "Objective",
    "ObjectiveContext",
    "Progress",
    "ProxyConfig",
    "StepState",
    "Supernet",
    "SupernetError",
    "PipelineInfo",
    "Teacher",
    "TrainConfig",
    "TrainResult",
    "TrialFailed",
    "builtin_teacher_candidate",
    "check_supernet",
    "check_teacher",
    "distill",
    "distill_loss",
    "draw_latents",
    "evaluate_fewstep",
    "export_pipeline",
    "fewstep_defaults",
    "find_pipeline",
    "generate",
    "holdout_for",
    "init_from_teacher",
    "list_checkpoints",
    "load_pipeline",
    "load_spatial",
    "load_supernet",
    "load_teacher",
    "pipeline_info",
    "pair_taps",
    "plan_supernet",
    "proxy_scale",
    "sample_mse",
    "spatial_candidate",
    "spatial_difference",
    "step_distill",
    "supernet_key",
    "teacher_latents",
    "train",
    "train_loop",
]
