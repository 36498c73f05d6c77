"""Training objectives of the one training loop (:func:`~archsearch.distill.train_loop`).

An :class:`Objective` turns a student's output on a batch into ``(loss, parts)``. It may own
modules trained with the student by the loop's optimizer (:meth:`Objective.trainable_modules`,
e.g. KD's feature projections), run its own optimizer step after the student's
(:meth:`Objective.after_step`: a discriminator, an EMA target network) and carry extra state
that full training's checkpoints save and resume restores (:meth:`Objective.state_dict`; none:
the checkpoint is written as without it), and add its own files to full training's output
(:meth:`Objective.export`: the few-step objectives' scheduler, steps and guidance).

Objectives are registered by name in :data:`~archsearch.distill.OBJECTIVES`
(``TrainConfig.objective``), each with the function that builds it for a run from an
:class:`~archsearch.distill.ObjectiveContext` (the student, the teacher, the settings).
``kd`` (:class:`KDObjective`) is the default: the task loss, output KD and feature KD with
SnapGen's timestep-aware rescaling (:func:`~archsearch.distill.distill_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, ContextManager

import torch
from torch import nn

from archsearch.distill._losses import distill_loss

if TYPE_CHECKING:
    from archsearch.data import Batch

__all__ = ["KDObjective", "Objective", "ObjectiveContext"]

#: ``forward(xt, t, ctx) -> (prediction, features)``: the student as the loop runs it.
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class ObjectiveContext:
    """What a run's objective is built from: the freshly built student (unwrapped, on
    ``device``), the teacher, the run's settings and the held-out batch (to probe feature
    shapes with, under ``amp``), and the objective's own settings (``options``:
    ``TrainConfig.objective_options``). Torch's global RNG is seeded (``config.seed + 1``)."""

    student: nn.Module
    teacher: Any  # the run's Teacher
    config: Any  # the run's ProxyConfig
    device: torch.device
    holdout: dict[str, Any]
    amp: Callable[[], ContextManager]
    options: dict[str, Any] = field(default_factory=dict)

    def features(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The student's and the teacher's feature taps on the first held-out sample (no grad)."""
        h = self.holdout
        with torch.no_grad(), self.amp():
            _, s_feats = self.student.forward_features(h["xt"][:1], h["t"][:1], h["ctx"][:1])
            _, t_feats = self.teacher.forward_features(h["xt"][:1], h["t"][:1], h["ctx"][:1])
        return s_feats, t_feats


class Objective:
    """A training objective of :func:`~archsearch.distill.train_loop`; subclasses set ``name``
    and implement :meth:`loss` (or :meth:`step_loss` to run the student more than once)."""

    name: ClassVar[str] = ""

    @property
    def uses_teacher(self) -> bool:
        """Whether the batches must carry the teacher's outputs (``Batch.teacher_pred`` / ``_feats``)."""
        return False

    def step_loss(self, forward: Forward, batch: "Batch") -> tuple[torch.Tensor, dict[str, float]]:
        """One micro-batch's loss: by default the student once on the batch, then :meth:`loss`."""
        pred, feats = forward(batch.xt, batch.t, batch.ctx)
        return self.loss(pred, feats, batch)

    def loss(self, pred: torch.Tensor, feats: dict[str, torch.Tensor], batch: "Batch"
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """``(loss, parts)``: the scalar to back-propagate and named figures for the logs."""
        raise NotImplementedError

    def trainable_modules(self) -> nn.ModuleDict:
        """Modules trained with the student by the loop's optimizer (none by default)."""
        return nn.ModuleDict()

    def parameters(self) -> list[nn.Parameter]:
        """The parameters of :meth:`trainable_modules`."""
        return list(self.trainable_modules().parameters())

    def after_step(self, step: int) -> None:
        """After each optimizer step of the student (``step`` = steps done; not after a skipped
        one): the objective's own update (a discriminator's step, an EMA target network)."""

    def state_dict(self) -> dict[str, Any]:
        """Extra state for checkpoints (tensors, numbers, strings, lists, dicts); ``{}``: none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` gave (resume)."""

    def export(self, model: nn.Module, out: Path) -> None:
        """Full training's output, on the main process: ``model`` (the output weights) is saved
        in ``out``; add the objective's own files there (and re-save ``model`` if it changes it)
        before the pipeline is written from it. Nothing by default."""


class KDObjective(Objective):
    """The task loss + output KD + feature KD (:func:`~archsearch.distill.distill_loss`) over
    the feature ``pairs`` (:func:`~archsearch.distill.pair_taps`) and their ``projections``."""

    name = "kd"

    def __init__(self, kd_output: float = 1.0, kd_feature: float = 1.0, pairs: list[tuple[str, str]] | None = None,
                 projections: nn.ModuleDict | None = None) -> None:
        self.pairs = list(pairs or [])
        self.projections = projections if projections is not None else nn.ModuleDict()
        self.kd_output = float(kd_output)
        self.kd_feature = float(kd_feature) if self.pairs else 0.0

    @classmethod
    def from_config(cls, config: Any) -> "KDObjective":
        """``config.kd_output`` with no feature pairs (the supernet, the built-in teacher)."""
        return cls(config.kd_output, config.kd_feature)

    @property
    def uses_teacher(self) -> bool:
        return self.kd_output > 0 or self.kd_feature > 0

    def loss(self, pred: torch.Tensor, feats: dict[str, torch.Tensor], batch: "Batch"
             ) -> tuple[torch.Tensor, dict[str, float]]:
        return distill_loss(pred, batch.target, batch.teacher_pred, feats, batch.teacher_feats or {}, self.pairs,
                            self.projections, self.kd_output, self.kd_feature)

    def trainable_modules(self) -> nn.ModuleDict:
        return self.projections
