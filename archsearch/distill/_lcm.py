"""``lcm``: latent consistency distillation, as diffusers' ``train_lcm_distill_sd_wds.py`` does it.

A DDIM solver over a skipping schedule of ``ddim_steps`` timesteps (``k = T // ddim_steps``:
``k - 1, 2k - 1, ..., T - 1``). Per sample: a start timestep ``t_n`` of that schedule, its
predecessor ``t_{n-1} = max(t_n - k, 0)``, a guidance scale ``w`` uniform in ``guidance_range``
(the student takes it through the guidance-scale embedding, diffusers' ``time_cond_proj_dim``);

* online: ``f(x_n) = c_skip(t_n) x_n + c_out(t_n) x0_student(x_n, t_n, w)``;
* the teacher's guided ``(x0, eps)`` at ``x_n`` (``u + w (c - u)``), one DDIM step to ``x_{n-1}``;
* target: ``c_skip(t_{n-1}) x_{n-1} + c_out(t_{n-1}) x0_target(x_{n-1}, t_{n-1}, w)`` from the
  target network, an EMA (``target_decay``, 0.95 as diffusers) of the student updated after
  each step;

Huber (``sqrt(d^2 + c^2) - c``, ``huber_c``) or L2 loss. ``c_skip`` / ``c_out`` are
LCMScheduler's boundary scalings (``sigma_data`` 0.5, timestep scaling 10), so the exported
pipeline draws with ``LCMScheduler`` (``original_inference_steps = ddim_steps``). The target
network's weights are the objective's state (checkpoints carry them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from archsearch.distill._fewstep import FewStepObjective, FewStepSettings, copy_student, lcm_scalings
from archsearch.distill._noise import to_x0_eps

if TYPE_CHECKING:
    from archsearch.data import Batch
    from archsearch.distill._objective import Forward, ObjectiveContext

__all__ = ["LCMObjective", "create"]


class LCMObjective(FewStepObjective):
    """See the module docstring."""

    name = "lcm"

    def __init__(self, ctx: "ObjectiveContext", settings: FewStepSettings) -> None:
        super().__init__(ctx, settings)
        self.scheduler()  # a flow teacher is refused here, in one line
        T = self.process.num_train_timesteps
        self.k = T // settings.ddim_steps
        self.ddim_timesteps = torch.arange(1, settings.ddim_steps + 1) * self.k - 1
        self.target, self.target_embedding = copy_student(ctx.student, self.embedding, ctx.device)

    def _x0(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, b = self.process.coefficients(t)
        return to_x0_eps(out, x, a, b, self.prediction)[0]

    def step_loss(self, forward: "Forward", batch: "Batch") -> tuple[torch.Tensor, dict[str, float]]:
        x0, eps = self.clean_and_noise(batch)
        gen = self.generator()
        s = self.settings
        b = x0.shape[0]
        dev = x0.device
        index = torch.randint(0, s.ddim_steps, (b,), generator=gen)
        t = self.ddim_timesteps[index].to(dev)
        tp = (t - self.k).clamp(min=0)
        w = self.sample_guidance(b, gen)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        c_skip0, c_out0 = (c.view(shape) for c in lcm_scalings(t))
        c_skip1, c_out1 = (c.view(shape) for c in lcm_scalings(tp))
        x = self.noisy(x0, eps, t)
        with torch.no_grad():
            tx0, teps = self.teacher_x0_eps(x, t, batch.ctx, w)
            a, bb = self.process.coefficients(tp)
            x_prev = a.view(shape) * tx0 + bb.view(shape) * teps
            if self.target_embedding is not None:
                self.target_embedding.set(w)
            tout = self.target(x_prev.to(batch.xt.dtype), tp, batch.ctx).float()
            target = c_skip1 * x_prev + c_out1 * self._x0(tout, x_prev, tp)
        if self.embedding is not None:
            self.embedding.set(w)
        pred, _ = forward(x.to(batch.xt.dtype), t, batch.ctx)
        online = c_skip0 * x + c_out0 * self._x0(pred, x, t)
        d = online.float() - target.float()
        if s.loss == "huber":
            loss = torch.mean(torch.sqrt(d ** 2 + s.huber_c ** 2) - s.huber_c)
        else:
            loss = torch.mean(d ** 2)
        return loss, {"consistency": float(loss.detach())}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        super().after_step(step)
        decay = self.settings.target_decay
        pairs = [(self.target, self.student)]
        if self.embedding is not None:
            pairs.append((self.target_embedding, self.embedding))
        for tgt, src in pairs:
            for pt, ps in zip(tgt.parameters(), src.parameters()):
                pt.mul_(decay).add_(ps.detach().to(pt.dtype), alpha=1 - decay)
            for bt, bs in zip(tgt.buffers(), src.buffers()):
                bt.copy_(bs)

    def state_dict(self) -> dict[str, Any]:
        state = {**self.base_state(), "target": {k: v.detach().clone() for k, v in self.target.state_dict().items()}}
        if self.target_embedding is not None:
            state["target_embedding"] = {k: v.detach().clone() for k, v in self.target_embedding.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.target.load_state_dict(state["target"])
        if self.target_embedding is not None and "target_embedding" in state:
            self.target_embedding.load_state_dict(state["target_embedding"])


def create(ctx: "ObjectiveContext") -> LCMObjective:
    """``OBJECTIVES["lcm"]``: settings from ``ctx.options``."""
    return LCMObjective(ctx, FewStepSettings.from_options("lcm", ctx.options))
