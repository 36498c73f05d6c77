"""The distillation run: one short, seeded training of a candidate against the teacher.

:func:`distill` trains the candidate at proxy scale (``candidate.for_proxy(...)``: width
multiplier, latent resolution, frames; the teacher's text encoder and latent channels) for
``config.steps`` steps of :func:`~archsearch.distill.train_loop` on the built-in synthetic data
or the spec's latent cache (:func:`~archsearch.data.run_data`),
with the task loss, output KD and feature KD rescaled per timestep
(:mod:`archsearch.distill._losses`). A search trial and ``archsearch train`` both call it.

**Quality** (lower is better) is the output-KD MSE ``mean((student - teacher)^2)`` on the
fixed held-out batch of :func:`~archsearch.data.run_data`, computed after the last step:
``holdout`` items of the ``holdout`` split, noise from a constant seed and timesteps spread
evenly over the schedule, all independent of the training seed; the same candidate, proxy
settings, teacher and device give the same score.

Training: AdamW (``lr``, ``weight_decay``), gradient norm clipped to 1, constant learning rate;
the student's initialisation is seeded by ``seed`` and step ``k``'s batch, noise and timesteps
by ``(seed, k)`` alone (common random numbers: the teacher's outputs on them are computed once
per process and reused). CUDA runs under bf16 autocast.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from archsearch.data import autocast, resolve_device, run_data, seeded, torch_threads
from archsearch.distill._config import ProxyConfig
from archsearch.distill._loop import Progress, TrialFailed, train_loop
from archsearch.distill._student import build_student, check_student, proxy_scale, score_holdout
from archsearch.distill._teacher import Teacher

if TYPE_CHECKING:
    from archsearch.candidate import Candidate

__all__ = ["DistillResult", "distill", "holdout_for", "training_batches"]


@dataclass
class DistillResult:
    """The outcome of one distillation run.

    ``quality``: held-out output-KD MSE against the teacher (lower is better);
    ``loss_curve``: the training objective per step; ``params``: of the proxy-scale student;
    ``metrics``: extra figures (held-out task MSE, feature pairs, steps/s, ...).
    """

    quality: float
    loss_curve: list[float]
    wall_time_s: float
    steps: int
    params: int
    device: str
    metrics: dict[str, Any] = field(default_factory=dict)
    student: Any = field(default=None, repr=False, compare=False)  # the trained model, if kept

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in ("quality", "loss_curve", "wall_time_s", "steps", "params",
                                              "device", "metrics")}


# --------------------------------------------------------------------------- data


def holdout_for(teacher: Teacher, proxy: ProxyConfig, device: torch.device,
                progress: Progress | None = None) -> dict[str, Any]:
    """The fixed held-out batch of the proxy runs (and the teacher's predictions on it)."""
    teacher.to(device)
    return run_data(teacher, proxy, device, progress).holdout


def training_batches(teacher: Teacher, proxy: ProxyConfig, device: torch.device,
                     progress: Progress | None = None, uses_teacher: bool | None = None) -> Any:
    """The proxy runs' training batches (``uses_teacher``: KD targets; default: any KD weight > 0)."""
    teacher.to(device)
    if uses_teacher is None:
        uses_teacher = proxy.kd_output > 0 or proxy.kd_feature > 0
    return run_data(teacher, proxy, device, progress).batches(uses_teacher)


# --------------------------------------------------------------------------- the run


def distill(
    candidate: "Candidate",
    teacher: Teacher,
    config: ProxyConfig,
    progress: Progress | None = None,
    *,
    device: str | torch.device | None = "cpu",
    threads: int | None = None,
    keep_student: bool = False,
    prepare_student: Callable[[nn.Module], None] | None = None,
) -> DistillResult:
    """Train ``candidate`` at proxy scale against ``teacher`` for ``config.steps`` steps.

    Args:
        candidate: a full-scale :class:`~archsearch.candidate.Candidate` (scaled here with
            ``candidate.for_proxy``).
        teacher: from :func:`~archsearch.distill.load_teacher`.
        config: the proxy settings.
        progress: ``progress(phase, description, done, total)`` (phases ``captions``,
            ``distill``); ``None``: quiet.
        device: ``'cpu'``, ``'cuda'`` (bf16 autocast), ``'mps'``, or ``None``/``'auto'``.
        threads: torch intra-op threads for this run (restored afterwards); ``None`` leaves them.
        keep_student: return the trained model in ``result.student``.
        prepare_student: called with the freshly built student (an ``ArchUNet`` on the device)
            before training, e.g. to load weights into it and freeze some (the temporal
            search's frozen spatial layers: only parameters that still require gradients train).

    Raises:
        TrialFailed: the loss or the score is NaN / inf.
        ArchsearchError: the candidate's kind or ``config.prediction`` differs from the teacher's.
        torch.OutOfMemoryError, RuntimeError: propagated (a search records the trial failed).
    """
    dev = resolve_device(device)
    # every random draw of the run is seeded here; the caller's RNG state is left as it was
    with torch_threads(threads), seeded(config.seed, dev):
        return _run(candidate, teacher, config, dev, progress, keep_student, prepare_student)


def _run(candidate: "Candidate", teacher: Teacher, proxy: ProxyConfig, dev: torch.device, progress: Progress | None,
         keep_student: bool, prepare_student: Callable[[nn.Module], None] | None = None) -> DistillResult:
    check_student(candidate, teacher, proxy)
    t_start = time.perf_counter()
    small = proxy_scale(candidate, teacher, proxy)
    teacher.to(dev)
    src = run_data(teacher, proxy, dev, progress)
    hold = src.holdout
    student, objective = build_student(small, teacher, proxy, dev, hold, prepare=prepare_student)
    params = sum(p.numel() for p in student.parameters())
    pairs = getattr(objective, "pairs", [])

    batches = src.batches(objective.uses_teacher)
    log = train_loop(student, batches, proxy, device=dev, objective=objective, progress=progress, phase="distill",
                     label=f"{candidate.id} ")

    held = score_holdout(student, hold, lambda: autocast(dev))
    quality = held.quality
    teacher_task = float(torch.mean((hold["teacher"] - hold["target"]) ** 2))
    if not math.isfinite(quality):
        raise TrialFailed(f"held-out score is {quality} after {proxy.steps} steps")
    wall = time.perf_counter() - t_start
    parts, train_s = log.parts, log.train_s
    return DistillResult(
        quality=quality,
        loss_curve=log.loss_curve,
        wall_time_s=wall,
        steps=proxy.steps,
        params=int(params),
        device=str(dev),
        metrics={
            "holdout_task_mse": held.task,
            "quality_se": held.quality_se,
            "teacher_holdout_task_mse": teacher_task,
            "final_task": parts.get("task", float("nan")),
            "final_kd_output": parts.get("kd_output", float("nan")),
            "final_kd_feature": parts.get("kd_feature", float("nan")),
            "feature_pairs": [list(p) for p in pairs],
            "train_s": train_s,
            "steps_per_s": proxy.steps / train_s if train_s > 0 else float("nan"),
            "proxy_candidate": small.id,
            "teacher": teacher.fingerprint,
            "data": src.source,
            **({"holdout_split": hold["split"]} if src.cache is not None else {}),
        },
        student=student if keep_student else None,
    )
