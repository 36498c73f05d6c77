"""The one training loop: the proxy runs and the built-in teacher's training both go through it.

:func:`train_loop` trains a model for ``config.steps`` AdamW steps (``config.lr``,
``config.weight_decay``, gradient norm clipped to 1) on the objective of
:func:`~archsearch.distill.distill_loss` with ``config.kd_output`` / ``config.kd_feature``; the
built-in teacher is trained with both weights at 0 (the task loss alone) and a warm-up + cosine
learning rate, a proxy run with the KD terms and a constant one.

Step ``k``'s batch, noise and timesteps come from ``(config.seed, k)`` alone
(:class:`StepBatches`), so every candidate of a study sees the same batches (common random
numbers) and the teacher's outputs on them are computed once per process and reused.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from archsearch.distill._device import autocast
from archsearch.distill._losses import distill_loss

__all__ = [
    "SCHEDULES",
    "NAN_POLICIES",
    "Batch",
    "LoopCallback",
    "LoopLog",
    "Progress",
    "StepBatches",
    "StepState",
    "TrialFailed",
    "clear_step_cache",
    "make_batch",
    "make_optimizer",
    "step_seed",
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


# --------------------------------------------------------------------------- batches


class Batch(NamedTuple):
    """One training step's inputs on the device; the teacher's outputs when a teacher is given."""

    xt: torch.Tensor
    t: torch.Tensor
    ctx: torch.Tensor
    target: torch.Tensor
    teacher_pred: torch.Tensor | None = None
    teacher_feats: dict[str, torch.Tensor] | None = None


def step_seed(seed: int, step: int) -> int:
    """The seed of training step ``step``'s batch, noise and timesteps (independent streams)."""
    return int(np.random.SeedSequence([seed, step, 0x5EED]).generate_state(1, dtype=np.uint64)[0] >> 1)


class StepBatches:
    """Step ``k``'s batch: ``batch`` items of ``data``, their noise and timesteps, from ``(seed, k)``.

    Args:
        data: a synthetic dataset (``latents(indices)``, ``len``).
        embeddings: the caption embeddings of ``data`` (``(N, L, D)``, any dtype).
        process: the :class:`~archsearch.distill.NoiseProcess`.
        batch, seed: batch size (per process) and seed.
        device: where the batch goes.
        teacher: computes ``forward_features`` on each batch (``None``: no KD targets).
        cache_key: share the batches (teacher outputs included) with every run in this
            process under the same key (:class:`_StepCache`); ``None``: no sharing.
        rank, world: this process's slice of the global batch of ``batch * world`` items that
            ``(seed, k)`` draws, so N processes at ``batch`` see what one process sees at
            ``N * batch`` (the default 0, 1 is a single process).
    """

    def __init__(self, data: Any, embeddings: torch.Tensor, process: Any, batch: int, seed: int,
                 device: torch.device, teacher: Any | None = None, cache_key: str | None = None,
                 rank: int = 0, world: int = 1) -> None:
        self.data = data
        self.embeddings = embeddings.to(device)
        self.process = process
        self.batch = int(batch)
        self.seed = int(seed)
        self.device = device
        self.teacher = teacher
        self.cache_key = cache_key
        self.rank, self.world = int(rank), int(world)

    @property
    def has_teacher(self) -> bool:
        return self.teacher is not None

    def __call__(self, step: int) -> Batch:
        if self.cache_key is not None:
            hit = _StepCache.get(self.cache_key, step)
            if hit is not None:
                return hit
        dev = self.device
        n = self.batch * self.world
        g = torch.Generator().manual_seed(step_seed(self.seed, step))
        idx = torch.randint(0, len(self.data), (n,), generator=g)
        x0 = self.data.latents(idx)
        noise = torch.randn(x0.shape, generator=g)
        t = self.process.sample_timesteps(n, g)
        if self.world > 1:
            part = slice(self.rank * self.batch, (self.rank + 1) * self.batch)
            idx, x0, noise, t = idx[part], x0[part], noise[part], t[part]
        ctx = self.embeddings[idx.to(dev)].float()
        out = make_batch(self.process, x0, noise, t, ctx, dev, self.teacher)
        if self.cache_key is not None:
            _StepCache.put(self.cache_key, step, out)
        return out


def make_batch(process: Any, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor,
               device: torch.device, teacher: Any | None) -> Batch:
    """Noisy inputs, targets and (with a teacher) its prediction and taps for clean ``x0``."""
    xt = process.add_noise(x0, noise, t).to(device)
    target = process.target(x0, noise, t).to(device)
    t = t.to(device)
    ctx = ctx.to(device)
    out = Batch(xt, t, ctx, target)
    if teacher is not None:
        with autocast(device):
            t_pred, t_feats = teacher.forward_features(xt, t, ctx)
        out = out._replace(teacher_pred=t_pred, teacher_feats=t_feats)
    return out


class _StepCache:
    """Training batches with the teacher's outputs on them, shared by the runs of a process.

    Every run with the same teacher, data, batch and seed sees the same batch at step ``k``
    (common random numbers), so the teacher's forward pass is computed once per step and
    reused. Bounded by ``$ARCHSEARCH_TEACHER_CACHE_MB`` (default 1024) over all runs; once
    full, further steps are computed afresh (identical values).
    """

    budget = int(os.environ.get("ARCHSEARCH_TEACHER_CACHE_MB", "1024")) * 2**20
    used = 0
    runs: dict[str, dict[int, Batch]] = {}

    @classmethod
    def get(cls, key: str, step: int) -> Batch | None:
        return cls.runs.get(key, {}).get(step)

    @classmethod
    def put(cls, key: str, step: int, entry: Batch) -> None:
        size = sum(_nbytes(x) for x in entry)
        if cls.used + size > cls.budget:
            return
        cls.runs.setdefault(key, {})[step] = entry
        cls.used += size

    @classmethod
    def clear(cls) -> None:
        cls.runs.clear()
        cls.used = 0


def _nbytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    return 0


def clear_step_cache() -> None:
    """Drop the shared training batches (and the teacher outputs on them)."""
    _StepCache.clear()


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
            from archsearch.errors import ArchsearchError

            raise ArchsearchError("optimizer: adamw8bit needs bitsandbytes (pip install bitsandbytes; "
                                  "allowed: adamw, adamw8bit)") from None
        opt: torch.optim.Optimizer = bnb.optim.AdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        from archsearch.errors import ArchsearchError

        raise ArchsearchError(f"optimizer: bad value {optimizer!r} (allowed: adamw, adamw8bit)")
    factor = _lr_factor(schedule, int(config.steps), warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor) if factor is not None else None
    return opt, sched


def train_loop(
    model: nn.Module,
    batches: Callable[[int], Batch],
    config: Any,
    *,
    device: torch.device,
    pairs: list[tuple[str, str]] | None = None,
    projections: nn.ModuleDict | None = None,
    schedule: str = "constant",
    progress: Progress | None = None,
    phase: str = "distill",
    label: str = "",
    forward: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any = None,
    start_step: int = 0,
    accumulate: int = 1,
    accelerator: Any = None,
    clip: float | None = 1.0,
    nan: str = "raise",
    callbacks: list[LoopCallback] | tuple = (),
    samples_per_batch: int | None = None,
) -> LoopLog:
    """Train ``model`` (and ``projections``) for ``config.steps`` steps; see the module docstring.

    ``config`` supplies ``steps``, ``lr``, ``weight_decay``, ``kd_output`` and ``kd_feature`` (a
    :class:`~archsearch.distill.ProxyConfig`). KD terms need ``batches`` with a teacher;
    ``pairs`` / ``projections`` are the feature pairs and their projections
    (:func:`~archsearch.distill.pair_taps`). ``progress(phase, label + "loss L", done, total)``
    after every step. The model is left in eval mode.

    The same loop runs full training (:func:`~archsearch.distill.train`) with the options
    below; their defaults are the proxy runs' exact behaviour:

    * ``forward(xt, t, ctx) -> (prediction, features)`` instead of ``model.forward_features``
      (a DDP-wrapped student with its projections);
    * ``optimizer`` / ``lr_scheduler`` built by the caller (restored from a checkpoint), else
      :func:`make_optimizer`; ``start_step``: the first step to run (resume);
    * ``accumulate``: micro-batches per optimizer step (step ``k`` reads batches
      ``k * accumulate ... + accumulate - 1``); ``accelerator``: an ``accelerate.Accelerator``
      that owns backward, gradient sync, clipping, mixed precision and the loss average over
      processes; ``clip``: gradient-norm limit (``None``: none);
    * ``nan``: ``raise`` (:class:`TrialFailed` naming the step) or ``skip`` the step;
    * ``callbacks``: :class:`LoopCallback` hooks after each step (EMA, logs, checkpoints).

    Raises:
        TrialFailed: the loss is NaN / inf (``nan="raise"``).
    """
    if nan not in NAN_POLICIES:
        raise ValueError(f"nan: bad value {nan!r} (allowed: {', '.join(NAN_POLICIES)})")
    pairs = list(pairs or [])
    projections = projections if projections is not None else nn.ModuleDict()
    kd_output = float(config.kd_output)
    kd_feature = float(config.kd_feature) if pairs else 0.0
    if (kd_output > 0 or kd_feature > 0) and not getattr(batches, "has_teacher", False):
        raise ValueError("KD terms need batches with a teacher (or kd_output = kd_feature = 0)")
    steps = int(config.steps)
    accumulate = max(1, int(accumulate))
    params, seen = [], set()
    for p in list(model.parameters()) + list(projections.parameters()):
        if p.requires_grad and id(p) not in seen:  # projections may sit inside ``model`` (full training)
            seen.add(id(p))
            params.append(p)
    if optimizer is None:
        opt, sched = make_optimizer(params, config, schedule)
    else:
        opt, sched = optimizer, lr_scheduler
    fwd = forward if forward is not None else model.forward_features
    amp = accelerator.autocast if accelerator is not None else (lambda: autocast(device))
    per_batch = samples_per_batch or int(getattr(batches, "batch", 0) or 0) * int(getattr(batches, "world", 1) or 1)
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
                    s_pred, s_feats = fwd(b.xt, b.t, b.ctx)
                    loss, parts = distill_loss(s_pred, b.target, b.teacher_pred, s_feats, b.teacher_feats or {},
                                               pairs, projections, kd_output, kd_feature)
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
            if clip is not None:
                if accelerator is not None:
                    accelerator.clip_grad_norm_(params, clip)
                else:
                    torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
        if sched is not None:
            sched.step()
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
