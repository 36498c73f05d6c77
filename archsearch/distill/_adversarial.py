"""``adversarial``: SnapGen's / SnapGen-V's adversarial step distillation (LADD-style).

The student predicts the clean sample in one call at the timesteps of its schedule (``steps``,
:class:`~archsearch.distill._fewstep.FewStepSchedule`) and draws as ADD / SDXL-Turbo do: the
estimate re-noised with fresh noise to the next timestep (diffusers' ``LCMScheduler`` with
``original_inference_steps = steps``: exactly those timesteps; flow Euler for a flow teacher).
Training follows: the teacher draws a sample from pure noise (the batch's noise;
``teacher_steps`` guided DDIM steps at the one distilled ``guidance``); at the first timestep the
student's input is that noise, at a later one the teacher's sample re-noised there (fresh
noise). Its ``x0`` estimate is pulled towards

* the teacher's multi-step result from the same input (the sample itself from the noise; from
  a re-noised sample, the teacher's guided DDIM steps down from there): the KD term
  (``kd_weight``, MSE);
* the teacher's samples, through a discriminator (``adv_weight``, hinge loss; LADD's synthetic
  "real" data): the frozen teacher's (or the initial student's, ``disc_backbone``) UNet encoder
  features (its down-stage and mid taps) of the re-noised estimate, each read by a light
  trainable head -- a 2D residual head for images; for video the head adds temporal
  self-attention over the frames at each position (SnapGen-V's temporal discriminator). Real
  and fake are re-noised with the same noise and timestep.

The generator's adversarial gradient flows through the frozen backbone into the student; the
heads take their own AdamW step after the student's (:meth:`AdversarialObjective.after_step`) on
the same step's samples. Heads, their optimizer and the objective's random stream are the
objective's state: checkpoints carry them and resume continues exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from archsearch.distill._fewstep import FewStepObjective, FewStepSchedule, FewStepSettings, _mse, copy_student

if TYPE_CHECKING:
    from archsearch.data import Batch
    from archsearch.distill._objective import Forward, ObjectiveContext

__all__ = ["AdversarialObjective", "DiscriminatorHead", "create"]


def _groups(c: int) -> int:
    for g in (8, 4, 2):
        if c % g == 0:
            return g
    return 1


class DiscriminatorHead(nn.Module):
    """One feature tap's head: 1x1 in, a residual 3x3 block, (video) temporal self-attention
    over the frames at each position, 1x1 to a logit map, averaged to one logit per sample."""

    def __init__(self, channels: int, width: int, frames: int = 1, heads: int = 4) -> None:
        super().__init__()
        self.frames = int(frames)
        self.inp = nn.Conv2d(channels, width, 1)
        self.res = nn.Sequential(nn.GroupNorm(_groups(width), width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
                                 nn.GroupNorm(_groups(width), width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))
        self.temporal: nn.MultiheadAttention | None = None
        if self.frames > 1:
            h = heads if width % heads == 0 else 1
            self.tnorm = nn.LayerNorm(width)
            self.temporal = nn.MultiheadAttention(width, h, batch_first=True)
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if f.dim() == 5:  # (B, C, T, H, W) -> frames as batch
            b, c, t = f.shape[:3]
            f = f.permute(0, 2, 1, 3, 4).reshape(b * t, c, *f.shape[3:])
        h = self.inp(f.float())
        h = h + self.res(h)
        if self.temporal is not None:
            bt, c, hh, ww = h.shape
            b = bt // self.frames
            seq = h.view(b, self.frames, c, hh, ww).permute(0, 3, 4, 1, 2).reshape(b * hh * ww, self.frames, c)
            q = self.tnorm(seq)
            seq = seq + self.temporal(q, q, q, need_weights=False)[0]
            h = seq.view(b, hh, ww, self.frames, c).permute(0, 3, 4, 1, 2).reshape(bt, c, hh, ww)
        logits = self.out(h).flatten(1).mean(1)
        return logits.view(-1, self.frames).mean(1) if self.frames > 1 else logits


class AdversarialObjective(FewStepObjective):
    """See the module docstring."""

    name = "adversarial"

    def __init__(self, ctx: "ObjectiveContext", settings: FewStepSettings) -> None:
        super().__init__(ctx, settings)
        self.schedule = FewStepSchedule(self.process, settings.steps, self.prediction)
        if settings.disc_backbone == "student":
            self.backbone, _ = copy_student(ctx.student, None, ctx.device)
        else:
            self.backbone = ctx.teacher.module
        self.backbone.eval()
        c = ctx.student.candidate
        self.frames = c.frames if c.kind == "video" else 1
        h = ctx.holdout
        with torch.no_grad(), ctx.amp():
            _, feats = self.backbone.forward_features(h["xt"][:1], h["t"][:1], h["ctx"][:1])
        self.taps = [k for k in feats if k.startswith("down") or k == "mid"]
        if not self.taps:
            raise ValueError("the discriminator backbone gives no down / mid feature taps")
        self.heads = nn.ModuleDict({
            k.replace(".", "_"): DiscriminatorHead(feats[k].shape[1], settings.disc_width, self.frames)
            for k in self.taps}).to(ctx.device)
        lr = settings.disc_lr or float(ctx.config.lr)
        self.disc_opt = torch.optim.AdamW(self.heads.parameters(), lr=lr, betas=(0.0, 0.99), weight_decay=0.0)
        self.pending: list[tuple[torch.Tensor, ...]] = []
        self.last_d = float("nan")
        T = self.process.num_train_timesteps
        self.disc_t_max = self.t_cap if self.t_cap is not None else (T if self.flow else T - 1)

    def _logits(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        _, feats = self.backbone.forward_features(x, t, ctx)
        return torch.stack([self.heads[k.replace(".", "_")](feats[k]) for k in self.taps]).mean(0)

    @torch.no_grad()
    def targets(self, x0: torch.Tensor, eps: torch.Tensor, k: torch.Tensor, ctx: torch.Tensor, g: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The student's inputs at steps ``k`` and their KD targets, and the teacher's samples
        (see the module docstring)."""
        sched = self.schedule
        b = x0.shape[0]
        first = sched.timesteps[:1].expand(b).to(x0.device)
        clean = torch.full_like(first, sched.clean)
        x_T = self.noisy(x0, eps, first)
        _, sample = self.move(self.teacher_x0_eps, x_T, first, clean, ctx, g, self.settings.teacher_steps)
        if int(k.max()) == 0:
            return x_T, sample, sample
        t = sched.timesteps[k].to(x0.device)
        z = torch.randn(x0.shape, generator=gen).to(x0.device)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        later = (k > 0).to(x0.device).view(shape)
        x = torch.where(later, self.noisy(sample, z, t), x_T)
        parts = max(1, round(self.settings.teacher_steps * float(t.float().max()) / float(first[0])))
        _, again = self.move(self.teacher_x0_eps, x, t, clean, ctx, g, parts)
        return x, torch.where(later, again, sample), sample

    def step_loss(self, forward: "Forward", batch: "Batch") -> tuple[torch.Tensor, dict[str, float]]:
        x0, eps = self.clean_and_noise(batch)
        gen = self.generator()
        s = self.settings
        b = x0.shape[0]
        k = torch.randint(0, s.steps, (b,), generator=gen)
        t = self.schedule.timesteps[k].to(x0.device)
        g = torch.full((b,), float(s.guidance), device=x0.device)
        x, kd_target, sample = self.targets(x0, eps, k, batch.ctx, g, gen)
        pred, _ = forward(x.to(batch.xt.dtype), t, batch.ctx)
        x0_s, _ = self.student_x0_eps(pred, x, t)
        kd = _mse(x0_s, kd_target)
        # the discriminator's timestep and noise
        if self.flow:
            td = torch.rand(b, generator=gen) * self.disc_t_max
        else:
            td = torch.randint(0, int(self.disc_t_max) + 1, (b,), generator=gen)
        nd = torch.randn(x0.shape, generator=gen).to(x0.device)
        td = td.to(x0.device)
        fake = self.noisy(x0_s, nd, td)
        adv = torch.zeros((), device=x0.device)
        if s.adv_weight > 0:
            adv = -self._logits(fake.to(batch.xt.dtype), td, batch.ctx).mean()
        self.pending.append((x0_s.detach(), sample.detach(), td, nd, batch.ctx.detach()))
        loss = s.kd_weight * kd + s.adv_weight * adv
        return loss, {"kd": float(kd.detach()), "adv_g": float(adv.detach()), "adv_d": self.last_d}

    def after_step(self, step: int) -> None:
        super().after_step(step)
        pending, self.pending = [p for p in self.pending if bool(torch.isfinite(p[0]).all())], []  # not a skipped step's
        if self.settings.adv_weight <= 0 or not pending:
            return
        self.disc_opt.zero_grad(set_to_none=True)
        total = 0.0
        for fake0, real0, td, nd, ctx in pending:
            with torch.no_grad():
                fake, real = self.noisy(fake0, nd, td), self.noisy(real0, nd, td)
            with self.amp():
                d_real = self._logits(real, td, ctx)
                d_fake = self._logits(fake, td, ctx)
            loss = (torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean()) / len(pending)
            loss.backward()
            total += float(loss.detach())
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # one discriminator
            world = torch.distributed.get_world_size()
            for p in self.heads.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
        torch.nn.utils.clip_grad_norm_(self.heads.parameters(), 1.0)
        self.disc_opt.step()
        self.disc_opt.zero_grad(set_to_none=True)
        self.last_d = total

    def state_dict(self) -> dict[str, Any]:
        return {**self.base_state(), "heads": {k: v.detach().clone() for k, v in self.heads.state_dict().items()},
                "optimizer": self.disc_opt.state_dict(), "last_d": self.last_d}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.heads.load_state_dict(state["heads"])
        self.disc_opt.load_state_dict(state["optimizer"])
        self.last_d = float(state.get("last_d", float("nan")))


def create(ctx: "ObjectiveContext") -> AdversarialObjective:
    """``OBJECTIVES["adversarial"]``: settings from ``ctx.options``."""
    return AdversarialObjective(ctx, FewStepSettings.from_options("adversarial", ctx.options))
