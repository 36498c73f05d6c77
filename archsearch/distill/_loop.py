"""The one training loop: the proxy runs and the built-in teacher's training both go through it.

:func:`train_loop` trains a model for ``config.steps`` AdamW steps (``config.lr``,
``config.weight_decay``, gradient norm clipped to 1) on an objective
(:class:`~archsearch.distill.Objective`; the default, :class:`~archsearch.distill.KDObjective`, is
:func:`~archsearch.distill.distill_loss` with ``config.kd_output`` / ``config.kd_feature``); the
built-in teacher is trained with both weights at 0 (the task loss alone) and a warm-up + cosine
learning rate, a proxy run with the KD terms and a constant one. Full training's options
(accelerate, accumulation, resume, callbacks) are a :class:`LoopOptions`.

Step ``k``'s batch, noise and timesteps come from ``(config.seed, k)`` alone
(:class:`~archsearch.data.StepBatches`, :func:`~archsearch.data.run_data`), so every candidate
of a study sees the same batches (common random numbers) and the teacher's outputs on them are
computed once per process and reused.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from archsearch.data import Batch, autocast
from archsearch.distill._objective import KDObjective, Objective
from archsearch.errors import ParameterError

__all__ = [
    "SCHEDULES",
    "NAN_POLICIES",
    "Batch",
    "LoopCallback",
    "LoopLog",
    "LoopOptions",
    "Progress",
    "StepState",
    "TrialFailed",
    "make_optimizer",
    "train_loop",
]

#: ``progress(phase, description, done, total)``, as the latency profiler's callbacks; phases:
#: ``captions`` (encoding the data's captions), ``teacher`` (training the built-in teacher),
#: ``distill`` (a distillation run). The description ends with the running loss.
Progress = Callable[[str, str, int, int], None]

#: Learning-rate schedules: ``constant``; ``cosine`` = linear warm-up over
#: ``min(100, steps // 10)`` steps (at least 1), then cosine decay to 10 %.
SCHEDULES = ("constant", "cosine")


class TrialFailed(RuntimeError):
    """A run that cannot give a score (NaN / inf loss). ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- the loop


@dataclass
class LoopLog:
    """What :func:`train_loop` leaves: the objective per step, the last step's parts, the time.

    ``loss_curve`` holds the steps this call ran (from ``start_step``); ``skipped`` counts the
    steps left out for a NaN / inf loss under ``nan="skip"``.
    """

    loss_curve: list[float]
    parts: dict[str, float] = field(default_factory=dict)
    train_s: float = 0.0
    skipped: int = 0
    stopped: bool = False


@dataclass
class StepState:
    """What a :class:`LoopCallback` sees after each step (``step`` counts finished steps)."""

    step: int
    steps: int
    loss: float
    parts: dict[str, float]
    lr: float
    skipped: bool
    samples: int  # training samples this step consumed (over every process)
    elapsed_s: float


class LoopCallback:
    """A hook into :func:`train_loop` (checkpoints, EMA, logs, sample grids): no-op by default.

    ``on_step`` may return True to stop the loop after that step (``LoopLog.stopped``).
    """

    def on_start(self, step: int, steps: int) -> None:
        """Before the first step this call runs (``step`` = ``start_step``)."""

    def on_step(self, state: StepState) -> bool | None:
        """After each step (optimizer step, schedule step and every earlier callback done)."""

    def on_end(self, state: StepState | None) -> None:
        """After the last step (not called when the loop raises)."""


#: What :func:`train_loop` does with a NaN / inf loss: ``raise`` :class:`TrialFailed` naming
#: the step, or ``skip`` the step (no update; counted in ``LoopLog.skipped``).
NAN_POLICIES = ("raise", "skip")


def _lr_factor(schedule: str, steps: int, warmup: int | None = None) -> Callable[[int], float] | None:
    if schedule == "constant" and not warmup:
        return None
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: bad value {schedule!r} (allowed: {', '.join(SCHEDULES)})")
    if warmup is None:
        warmup = max(1, min(100, steps // 10))
    warmup = max(1, int(warmup))

    def factor(step: int) -> float:  # linear warm-up, then cosine decay to 10 % (or constant)
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        p = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

    return factor


def make_optimizer(params: list[nn.Parameter], config: Any, schedule: str = "constant",
                   warmup: int | None = None, optimizer: str = "adamw"
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """AdamW (``config.lr``, ``config.weight_decay``) and its learning-rate schedule over
    ``config.steps`` (``None`` for a constant rate with no warm-up). ``optimizer``: ``adamw`` or
    ``adamw8bit`` (bitsandbytes' ``AdamW8bit``, where installed)."""
    if optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ParameterError("optimizer", ": adamw8bit needs bitsandbytes (pip install bitsandbytes; "
                                 "allowed: adamw, adamw8bit)") from None
        opt: torch.optim.Optimizer = bnb.optim.AdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        raise ParameterError("optimizer", f": bad value {optimizer!r} (allowed: adamw, adamw8bit)")
    factor = _lr_factor(schedule, int(config.steps), warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor) if factor is not None else None
    return opt, sched


@dataclass
class LoopOptions:
    """How :func:`train_loop` runs beyond the proxy runs' defaults (full training, the supernet,
    the built-in teacher); the defaults are the proxy runs' exact behaviour.

    * ``schedule``: the learning-rate schedule of the optimizer :func:`make_optimizer` builds
      (:data:`SCHEDULES`);
    * ``forward(xt, t, ctx) -> (prediction, features)`` instead of ``model.forward_features``
      (a DDP-wrapped student with its projections);
    * ``optimizer`` / ``lr_scheduler`` built by the caller (restored from a checkpoint), else
      :func:`make_optimizer`; ``start_step``: the first step to run (resume);
    * ``accumulate``: micro-batches per optimizer step (step ``k`` reads batches
      ``k * accumulate ... + accumulate - 1``); ``accelerator``: an ``accelerate.Accelerator``
      that owns backward, gradient sync, clipping, mixed precision and the loss average over
      processes; ``clip``: gradient-norm limit (``None``: none);
    * ``nan``: ``raise`` (:class:`TrialFailed` naming the step) or ``skip`` the step;
    * ``callbacks``: :class:`LoopCallback` hooks after each step (EMA, logs, checkpoints);
    * ``samples_per_batch``: training samples of one batch over every process (``StepState.samples``).
    """

    schedule: str = "constant"
    forward: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
    optimizer: torch.optim.Optimizer | None = None
    lr_scheduler: Any = None
    start_step: int = 0
    accumulate: int = 1
    accelerator: Any = None
    clip: float | None = 1.0
    nan: str = "raise"
    callbacks: list[LoopCallback] | tuple = ()
    samples_per_batch: int | None = None


def train_loop(
    model: nn.Module,
    batches: Callable[[int], Batch],
    config: Any,
    *,
    device: torch.device,
    objective: Objective | None = None,
    options: LoopOptions | None = None,
    progress: Progress | None = None,
    phase: str = "distill",
    label: str = "",
) -> LoopLog:
    """Train ``model`` (and the objective's trainable modules) for ``config.steps`` steps; see
    the module docstring.

    ``config`` supplies ``steps``, ``lr``, ``weight_decay`` (and, for the default objective,
    ``kd_output``; a :class:`~archsearch.distill.ProxyConfig`). ``objective``: the loss
    (:class:`~archsearch.distill.Objective`; default: KD without feature pairs,
    ``KDObjective.from_config(config)``); one that uses the teacher needs ``batches`` with a
    teacher. ``options``: :class:`LoopOptions` (default: the proxy runs'). ``progress(phase,
    label + "loss L", done, total)`` after every step. The model is left in eval mode.

    Raises:
        TrialFailed: the loss is NaN / inf (``nan="raise"``).
    """
    o = options if options is not None else LoopOptions()
    if o.nan not in NAN_POLICIES:
        raise ValueError(f"nan: bad value {o.nan!r} (allowed: {', '.join(NAN_POLICIES)})")
    objective = objective if objective is not None else KDObjective.from_config(config)
    if objective.uses_teacher and not getattr(batches, "has_teacher", False):
        raise ValueError("KD terms need batches with a teacher (or kd_output = kd_feature = 0)")
    steps = int(config.steps)
    accumulate = max(1, int(o.accumulate))
    accelerator, nan, callbacks, start_step = o.accelerator, o.nan, o.callbacks, o.start_step
    params, seen = [], set()
    for p in list(model.parameters()) + list(objective.parameters()):
        if p.requires_grad and id(p) not in seen:  # projections may sit inside ``model`` (full training)
            seen.add(id(p))
            params.append(p)
    if o.optimizer is None:
        opt, sched = make_optimizer(params, config, o.schedule)
    else:
        opt, sched = o.optimizer, o.lr_scheduler
    fwd = o.forward if o.forward is not None else model.forward_features
    amp = accelerator.autocast if accelerator is not None else (lambda: autocast(device))
    per_batch = o.samples_per_batch or int(getattr(batches, "batch", 0) or 0) * int(getattr(batches, "world", 1) or 1)
    curve: list[float] = []
    parts: dict[str, float] = {}
    skipped = 0
    stopped = False
    state: StepState | None = None
    avg = 0.0
    if progress is not None:
        progress(phase, f"{label}loss -", start_step, steps)
    for cb in callbacks:
        cb.on_start(start_step, steps)
    model.train()
    t0 = time.perf_counter()
    for step in range(start_step, steps):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        bad = False
        for micro in range(accumulate):
            b = batches(step * accumulate + micro)
            sync = (accelerator.no_sync(model) if accelerator is not None and micro < accumulate - 1
                    else contextlib.nullcontext())
            with sync:
                with amp():
                    loss, parts = objective.step_loss(fwd, b)
                local = loss.detach()
                if accelerator is not None and accelerator.num_processes > 1:
                    local = accelerator.reduce(local.clone(), reduction="mean")
                value = float(local)
                if not math.isfinite(value):
                    bad = True
                    if nan == "raise":
                        raise TrialFailed(f"loss is {value} at step {step + 1} of {steps}")
                    break
                total += value
                scaled = loss / accumulate if accumulate > 1 else loss
                if accelerator is not None:
                    accelerator.backward(scaled)
                else:
                    scaled.backward()
        if bad:  # nan == "skip": no update from this step
            opt.zero_grad(set_to_none=True)
            skipped += 1
            value = float("nan")
        else:
            value = total / accumulate
            if o.clip is not None:
                if accelerator is not None:
                    accelerator.clip_grad_norm_(params, o.clip)
                else:
                    torch.nn.utils.clip_grad_norm_(params, o.clip)
            opt.step()
        if sched is not None:
            sched.step()
        if not bad:
            objective.after_step(step + 1)
        curve.append(value)
        if progress is not None and not bad:
            n = len(curve) - skipped
            avg = 0.98 * avg + 0.02 * value  # bias-corrected running mean: display only
            progress(phase, f"{label}loss {avg / (1 - 0.98 ** n):.4f}", step + 1, steps)
        if callbacks:
            state = StepState(step + 1, steps, value, dict(parts), float(opt.param_groups[0]["lr"]), bad,
                              per_batch * accumulate, time.perf_counter() - t0)
            for cb in callbacks:
                if cb.on_step(state):
                    stopped = True
            if stopped:
                break
    train_s = time.perf_counter() - t0
    model.eval()
    for cb in callbacks:
        cb.on_end(state)
    return LoopLog(curve, parts, train_s, skipped, stopped)
