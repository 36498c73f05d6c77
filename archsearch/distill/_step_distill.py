"""``step``: SnapFusion's CFG-aware step distillation (progressive distillation with guidance).

At a timestep ``t`` of the distilled schedule (:class:`~archsearch.distill._fewstep.FewStepSchedule`,
``steps`` steps) the student's target is the teacher's ``r``-step DDIM move from ``x_t`` to the
next timestep of that schedule (``r = 2``: the two-step move of progressive distillation),
written as the one output whose single DDIM step lands on the same point (Salimans & Ho), in
the student's parameterisation (``v`` by default; an epsilon or flow teacher is read as
``(x0, eps)`` and converted). Classifier-free guidance is folded into the target: the teacher's
moves are guided at a scale drawn per sample from ``guidance_range`` (SnapFusion: [2, 14]),
and with probability ``plain_ratio`` at scale 1 (the plain distillation loss, mixed in by that
ratio). The student takes the scale as an input (the guidance-scale embedding, LCM's ``w``), so
the distilled model runs one UNet call per step at any scale of the range.

``progressive``: rounds ``steps_from -> steps_from / 2 -> ... -> steps`` sharing the training
steps equally; round 1's teacher is the real one (guided), each later round's is the previous
round's student, frozen (its weights are part of the checkpoint). Otherwise one direct round
from the teacher's ``steps_from`` steps (default ``2 * steps``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from archsearch.distill._fewstep import FewStepObjective, FewStepSchedule, FewStepSettings, _mse, copy_student
from archsearch.distill._noise import to_x0_eps

if TYPE_CHECKING:
    from archsearch.data import Batch
    from archsearch.distill._objective import Forward, ObjectiveContext

__all__ = ["StepDistillObjective", "create"]


class StepDistillObjective(FewStepObjective):
    """See the module docstring."""

    name = "step"

    def __init__(self, ctx: "ObjectiveContext", settings: FewStepSettings) -> None:
        super().__init__(ctx, settings)
        s = settings
        if s.progressive:
            self.rounds: list[tuple[int, int]] = []
            n = s.teacher_from
            while n > s.steps:
                self.rounds.append((n // 2, 2))
                n //= 2
        else:
            self.rounds = [(s.steps, s.teacher_from // s.steps)]
        self.schedules = [FewStepSchedule(self.process, n, self.prediction) for n, _ in self.rounds]
        r = len(self.rounds)
        self.boundaries = [round(i * self.total_steps / r) for i in range(1, r)]
        self.round = 0
        self.twin: Any = None  # the previous round's student, frozen
        self.twin_embedding: Any = None

    def _twin_denoise(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, g: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.twin_embedding is not None:
            self.twin_embedding.set(g)
        out = self.twin(x, t, ctx).float()
        a, b = self.process.coefficients(t)
        return to_x0_eps(out, x, a, b, self.prediction)

    def step_loss(self, forward: "Forward", batch: "Batch") -> tuple[torch.Tensor, dict[str, float]]:
        x0, eps = self.clean_and_noise(batch)
        gen = self.generator()
        n, ratio = self.rounds[self.round]
        sched = self.schedules[self.round]
        b = x0.shape[0]
        k = torch.randint(0, n, (b,), generator=gen)
        t, t1 = sched.timesteps[k].to(x0.device), sched.landing[k].to(x0.device)
        x = self.noisy(x0, eps, t)
        g = self.sample_guidance(b, gen, self.settings.plain_ratio)
        denoise = self.teacher_x0_eps if self.twin is None else self._twin_denoise
        with torch.no_grad():
            x1, _ = self.move(denoise, x, t, t1, batch.ctx, g, ratio)
            target = self.one_step_target(x, t, t1, x1)
        if self.embedding is not None:
            self.embedding.set(g)
        pred, _ = forward(x.to(batch.xt.dtype), t, batch.ctx)
        loss = _mse(pred, target)
        return loss, {"distill": float(loss.detach()), "round": float(self.round + 1), "steps": float(n)}

    def after_step(self, step: int) -> None:
        super().after_step(step)
        while self.round < len(self.boundaries) and step >= self.boundaries[self.round]:
            self.twin, self.twin_embedding = copy_student(self.student, self.embedding, self.device)
            self.round += 1

    def state_dict(self) -> dict[str, Any]:
        state = {**self.base_state(), "round": self.round}
        if self.twin is not None:
            state["twin"] = {k: v.detach().clone() for k, v in self.twin.state_dict().items()}
            if self.twin_embedding is not None:
                state["twin_embedding"] = {k: v.detach().clone() for k, v in self.twin_embedding.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.round = int(state.get("round", 0))
        if "twin" in state:
            self.twin, self.twin_embedding = copy_student(self.student, self.embedding, self.device)
            self.twin.load_state_dict(state["twin"])
            if self.twin_embedding is not None and "twin_embedding" in state:
                self.twin_embedding.load_state_dict(state["twin_embedding"])


def create(ctx: "ObjectiveContext") -> StepDistillObjective:
    """``OBJECTIVES["step"]``: settings from ``ctx.options``."""
    return StepDistillObjective(ctx, FewStepSettings.from_options("step", ctx.options))
