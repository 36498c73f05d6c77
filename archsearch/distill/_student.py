"""The student of a run, in one place for the proxy runs, full training and the supernet: its
proxy scaling (:func:`proxy_scale`), its checks against the teacher (:func:`check_student`),
its set-up with the run's objective (:func:`build_student`; the objectives by name in
:data:`OBJECTIVES`, each built from an :class:`ObjectiveContext`) and its held-out score
(:func:`score_holdout`: output-KD MSE against the teacher on the fixed held-out batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ContextManager

import torch
from torch import nn

from archsearch.distill._adversarial import create as adversarial_objective
from archsearch.distill._config import ProxyConfig
from archsearch.distill._lcm import create as lcm_objective
from archsearch.distill._losses import make_projections, pair_taps
from archsearch.distill._noise import check_prediction
from archsearch.distill._objective import KDObjective, Objective, ObjectiveContext
from archsearch.distill._step_distill import create as step_objective
from archsearch.distill._teacher import Teacher
from archsearch.errors import ArchsearchError, ParameterError

if TYPE_CHECKING:
    from archsearch.candidate import Candidate

__all__ = ["HOLDOUT_CHUNK", "OBJECTIVES", "HeldOut", "ObjectiveContext", "build_student", "check_student",
           "make_objective", "proxy_scale", "score_holdout"]

#: held-out samples per forward when scoring
HOLDOUT_CHUNK = 16


def proxy_scale(candidate: "Candidate", teacher: Any, proxy: ProxyConfig, resolution: int | None = None
                ) -> "Candidate":
    """``candidate`` at the run's scale: ``proxy.width_mult``, ``resolution`` (default
    ``proxy.resolution``), ``proxy.frames`` for a video teacher, the teacher's text encoder and
    latent channels."""
    return candidate.for_proxy(
        width_mult=proxy.width_mult, resolution=proxy.resolution if resolution is None else resolution,
        frames=proxy.frames if teacher.kind == "video" else None,
        context_dim=teacher.context_dim, context_length=teacher.context_length,
        latent_channels=teacher.latent_channels,
    )


def check_student(candidate: "Candidate", teacher: Teacher, proxy: ProxyConfig) -> None:
    """The candidate's kind and ``proxy.prediction`` must be the teacher's (one-line errors)."""
    if candidate.kind != teacher.kind:
        raise ArchsearchError(f"candidate {candidate.id} is kind {candidate.kind!r} but the teacher is "
                              f"{teacher.kind!r} (allowed: a {teacher.kind} teacher)")
    check_prediction(proxy.prediction, teacher.prediction, proxy.source)


def kd_objective(ctx: ObjectiveContext) -> KDObjective:
    """KD with the feature pairs of the student and the teacher (:func:`pair_taps`) and the
    projections of those whose widths differ (when ``kd_feature > 0``)."""
    cfg = ctx.config
    if cfg.kd_feature <= 0:
        return KDObjective(cfg.kd_output, cfg.kd_feature)
    s_feats, t_feats = ctx.features()
    pairs = pair_taps({k: tuple(v.shape) for k, v in s_feats.items()},
                      {k: tuple(v.shape) for k, v in t_feats.items()})
    return KDObjective(cfg.kd_output, cfg.kd_feature, pairs, make_projections(pairs, s_feats, t_feats).to(ctx.device))


#: The training objectives by name (``TrainConfig.objective``): ``OBJECTIVES[name] = create``
#: with ``create(ctx: ObjectiveContext) -> Objective``. ``kd``: task + output KD + feature KD;
#: the few-step ones (:mod:`archsearch.distill._fewstep`, settings in ``ctx.options``): ``step``
#: (SnapFusion's CFG-aware step distillation), ``adversarial`` (SnapGen's), ``lcm`` (latent
#: consistency distillation).
OBJECTIVES: dict[str, Callable[[ObjectiveContext], Objective]] = {
    "kd": kd_objective,
    "step": step_objective,
    "adversarial": adversarial_objective,
    "lcm": lcm_objective,
}


def make_objective(name: str, ctx: ObjectiveContext) -> Objective:
    """The objective ``name`` of :data:`OBJECTIVES` for a run."""
    create = OBJECTIVES.get(name)
    if create is None:
        raise ParameterError("objective", f": bad value {name!r} (allowed: {', '.join(sorted(OBJECTIVES))})")
    return create(ctx)


def build_student(small: "Candidate", teacher: Teacher, proxy: ProxyConfig, device: torch.device,
                  holdout: dict[str, Any], *, prepare: Callable[[nn.Module], None] | None = None,
                  amp: Callable[[], ContextManager] | None = None, objective: str = "kd",
                  objective_options: dict[str, Any] | None = None) -> tuple[nn.Module, Objective]:
    """The proxy-scale student, initialised from ``proxy.seed``, and the run's objective (its
    trainable parts initialised from ``proxy.seed + 1``, e.g. KD's projections of the feature
    pairs probed on one held-out sample under ``amp``; its own settings ``objective_options``).
    ``prepare(student)`` runs after the build (loading weights, freezing), outside the seeded
    scopes."""
    from archsearch.data import autocast, seeded
    from archsearch.model import build_model

    with seeded(proxy.seed, device):
        student = build_model(small).to(device)
    if prepare is not None:
        prepare(student)
    ctx = ObjectiveContext(student, teacher, proxy, device, holdout, amp or (lambda: autocast(device)),
                           dict(objective_options or {}))
    with seeded(proxy.seed + 1, device):
        return student, make_objective(objective, ctx)


@dataclass(frozen=True)
class HeldOut:
    """A held-out score: ``quality`` = MSE against the teacher's prediction (lower is better),
    ``task`` = MSE against the noise process's target, ``quality_se`` = the standard error of
    ``quality`` over the held-out samples (NaN with one sample)."""

    quality: float
    task: float
    quality_se: float = float("nan")


def score_holdout(forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                  holdout: dict[str, Any], amp: Callable[[], ContextManager]) -> HeldOut:
    """``forward(xt, t, ctx) -> prediction`` on the held-out batch, in chunks, without gradients.

    ``quality_se``: the sample standard deviation of the per-sample MSEs over sqrt(samples),
    i.e. how far ``quality`` would move on another held-out batch of this size (free: the
    per-sample errors are at hand). It does not cover the proxy run's own seed-to-seed noise.
    """
    h = holdout
    with torch.no_grad():
        preds = []
        for i in range(0, h["xt"].shape[0], HOLDOUT_CHUNK):
            j = i + HOLDOUT_CHUNK
            with amp():
                preds.append(forward(h["xt"][i:j], h["t"][i:j], h["ctx"][i:j]).float())
        pred = torch.cat(preds)
        err = (pred - h["teacher"]) ** 2
        per_sample = err.flatten(1).mean(1).double()  # equal sizes: their mean is the quality
        n = per_sample.numel()
        se = float(per_sample.std() / n**0.5) if n > 1 else float("nan")
        return HeldOut(float(torch.mean(err)), float(torch.mean((pred - h["target"]) ** 2)), se)
