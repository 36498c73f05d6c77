"""The forward noise process of teacher training and distillation: noise, v or flow targets.

DDPM (diffusers :class:`~diffusers.DDPMScheduler`, ``epsilon`` or ``v_prediction`` targets) or
rectified flow (``flow``: ``x_t = (1 - s) x0 + s * noise``, target ``noise - x0``, model timestep
``1000 * s``, SD3's convention and diffusers' ``FlowMatchEulerDiscreteScheduler``'s, with its
``shift`` applied to ``s``).
"""

from __future__ import annotations

from typing import Any

import torch

from archsearch.errors import ArchsearchError, ParameterError

__all__ = ["PREDICTIONS", "NoiseProcess", "check_prediction", "from_x0_eps", "to_x0_eps"]

PREDICTIONS = ("epsilon", "v_prediction", "flow")


def check_prediction(wanted: str | None, actual: str, source: str) -> None:
    """``proxy.prediction`` (``wanted``; ``None`` = any) must be the teacher's (``actual``)."""
    if wanted is not None and wanted != actual:
        raise ArchsearchError(f"{source}: proxy.prediction: {wanted!r} does not match the teacher's "
                              f"(allowed: {actual})")


def _col(c: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    if not torch.is_tensor(c):
        return c
    return c.to(x.device, torch.float32).view((-1,) + (1,) * (x.dim() - 1))


def to_x0_eps(pred: torch.Tensor, x: torch.Tensor, a: torch.Tensor | float, b: torch.Tensor | float,
              prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A network output ``pred`` at ``x = a x0 + b eps`` (``a``, ``b`` per sample or scalars) read
    as the clean sample and the noise ``(x0, eps)``: ``epsilon`` (``x0 = (x - b eps) / a``),
    ``v_prediction`` (``v = a eps - b x0``, with ``a^2 + b^2 = 1``) or ``flow`` (``u = eps - x0``,
    ``a = 1 - s``, ``b = s``). In float32."""
    pred, x = pred.float(), x.float()
    a, b = _col(a, x), _col(b, x)
    if prediction == "epsilon":
        return (x - b * pred) / a, pred
    if prediction == "v_prediction":
        return a * x - b * pred, b * x + a * pred
    if prediction == "flow":
        return x - b * pred, x + a * pred
    raise ParameterError("prediction", f": bad value {prediction!r} (allowed: {', '.join(PREDICTIONS)})")


def from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, a: torch.Tensor | float, b: torch.Tensor | float,
                prediction: str) -> torch.Tensor:
    """What a network of ``prediction`` type outputs at ``x = a x0 + b eps`` (the inverse of
    :func:`to_x0_eps`): an epsilon, v or flow teacher converted to a student's parameterisation."""
    a, b = _col(a, x0), _col(b, x0)
    if prediction == "epsilon":
        return eps
    if prediction == "v_prediction":
        return a * eps - b * x0
    if prediction == "flow":
        return eps - x0
    raise ParameterError("prediction", f": bad value {prediction!r} (allowed: {', '.join(PREDICTIONS)})")


class NoiseProcess:
    """Forward diffusion: timesteps, noisy inputs and training targets for one prediction type.

    ``epsilon`` / ``v_prediction`` use a diffusers :class:`~diffusers.DDPMScheduler` (the
    teacher's own for a diffusers checkpoint; ``squaredcos_cap_v2`` betas for the built-in
    teacher): ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`` with integer ``t`` in ``[0, T)``;
    target ``noise`` or ``sqrt(a_t) noise - sqrt(1 - a_t) x0``.
    ``flow`` (rectified flow): ``s`` uniform in ``(0, 1]``, shifted ``s' = k s / (1 + (k-1) s)``,
    ``x_t = (1 - s') x0 + s' noise``, target ``noise - x0``, model timestep ``T * s'``.
    """

    def __init__(self, prediction: str, scheduler_config: dict[str, Any] | None = None) -> None:
        if prediction not in PREDICTIONS:
            raise ParameterError("prediction", f": bad value {prediction!r} (allowed: {', '.join(PREDICTIONS)})")
        self.prediction = prediction
        cfg = dict(scheduler_config or {})
        self.num_train_timesteps = int(cfg.get("num_train_timesteps", 1000))
        self.shift = float(cfg.get("shift", 1.0) or 1.0)
        self._scheduler: Any = None
        if prediction != "flow":
            from diffusers import DDPMScheduler

            keep = {
                k: cfg[k]
                for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                          "rescale_betas_zero_snr")
                if k in cfg
            }
            keep.setdefault("beta_schedule", "squaredcos_cap_v2")
            self._scheduler = DDPMScheduler(**keep, prediction_type=prediction)
            self._alphas = self._scheduler.alphas_cumprod.to(torch.float32)

    @property
    def config(self) -> dict[str, Any]:
        """What defines the process (part of fingerprints)."""
        if self.prediction == "flow":
            return {"prediction": "flow", "num_train_timesteps": self.num_train_timesteps, "shift": self.shift}
        c = self._scheduler.config
        return {
            "prediction": self.prediction,
            "num_train_timesteps": int(c.num_train_timesteps),
            "beta_schedule": c.beta_schedule,
            "beta_start": float(c.beta_start),
            "beta_end": float(c.beta_end),
            "rescale_betas_zero_snr": bool(c.rescale_betas_zero_snr),
        }

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random training timesteps (CPU): ints (DDPM) or floats in ``(0, T]`` (flow)."""
        if self.prediction == "flow":
            s = 1.0 - torch.rand(n, generator=generator)  # (0, 1]
            return self._shifted(s) * self.num_train_timesteps
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator)

    def even_timesteps(self, n: int) -> torch.Tensor:
        """``n`` timesteps spread evenly over the range (the fixed held-out batch)."""
        u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        if self.prediction == "flow":
            return (self._shifted(u) * self.num_train_timesteps).float()
        return (u * self.num_train_timesteps).long().clamp_(0, self.num_train_timesteps - 1)

    def _shifted(self, s: torch.Tensor) -> torch.Tensor:
        k = self.shift
        return k * s / (1 + (k - 1) * s) if k != 1.0 else s

    def _coef(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1,) + (1,) * (x.dim() - 1)
        if self.prediction == "flow":
            s = (t.to(torch.float32) / self.num_train_timesteps).to(x.device).view(shape)
            return 1 - s, s
        a = self._alphas.to(x.device)[t.to(x.device).long()].view(shape)
        return a.sqrt(), (1 - a).sqrt()

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)`` of ``x_t = a x0 + b noise`` per timestep (float32, on ``t``'s device); a
        timestep below 0 is the clean end (``a = 1``, ``b = 0``: DDIM's last step)."""
        t = torch.as_tensor(t)
        if self.prediction == "flow":
            s = (t.to(torch.float32) / self.num_train_timesteps).clamp(0, 1)
            return 1 - s, s
        alphas = self._alphas.to(t.device)
        ab = torch.where(t < 0, torch.ones((), device=t.device), alphas[t.long().clamp(min=0)])
        return ab.sqrt(), (1 - ab).sqrt()

    def split(self, pred: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's network output at ``(x, t)`` as ``(x0, eps)`` (:func:`to_x0_eps`)."""
        a, b = self.coefficients(t)
        return to_x0_eps(pred, x, a, b, self.prediction)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noisy input ``x_t``."""
        a, b = self._coef(t, x0)
        return a * x0 + b * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to predict at ``x_t``."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "flow":
            return noise - x0
        a, b = self._coef(t, x0)
        return a * noise - b * x0
