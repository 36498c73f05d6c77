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
    "Batch",
    "LoopLog",
    "Progress",
    "StepBatches",
    "TrialFailed",
    "clear_step_cache",
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
        batch, seed: batch size and seed.
        device: where the batch goes.
        teacher: computes ``forward_features`` on each batch (``None``: no KD targets).
        cache_key: share the batches (teacher outputs included) with every run in this
            process under the same key (:class:`_StepCache`); ``None``: no sharing.
    """

    def __init__(self, data: Any, embeddings: torch.Tensor, process: Any, batch: int, seed: int,
                 device: torch.device, teacher: Any | None = None, cache_key: str | None = None) -> None:
        self.data = data
        self.embeddings = embeddings.to(device)
        self.process = process
        self.batch = int(batch)
        self.seed = int(seed)
        self.device = device
        self.teacher = teacher
        self.cache_key = cache_key

    @property
    def has_teacher(self) -> bool:
        return self.teacher is not None

    def __call__(self, step: int) -> Batch:
        if self.cache_key is not None:
            hit = _StepCache.get(self.cache_key, step)
            if hit is not None:
                return hit
        dev = self.device
        g = torch.Generator().manual_seed(step_seed(self.seed, step))
        idx = torch.randint(0, len(self.data), (self.batch,), generator=g)
        x0 = self.data.latents(idx)
        noise = torch.randn(x0.shape, generator=g)
        t = self.process.sample_timesteps(self.batch, g)
        xt = self.process.add_noise(x0, noise, t).to(dev)
        target = self.process.target(x0, noise, t).to(dev)
        ctx = self.embeddings[idx.to(dev)].float()
        t = t.to(dev)
        out = Batch(xt, t, ctx, target)
        if self.teacher is not None:
            with autocast(dev):
                t_pred, t_feats = self.teacher.forward_features(xt, t, ctx)
            out = out._replace(teacher_pred=t_pred, teacher_feats=t_feats)
        if self.cache_key is not None:
            _StepCache.put(self.cache_key, step, out)
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
    """What :func:`train_loop` leaves: the objective per step, the last step's parts, the time."""

    loss_curve: list[float]
    parts: dict[str, float] = field(default_factory=dict)
    train_s: float = 0.0


def _lr_factor(schedule: str, steps: int) -> Callable[[int], float] | None:
    if schedule == "constant":
        return None
    if schedule != "cosine":
        raise ValueError(f"schedule: bad value {schedule!r} (allowed: {', '.join(SCHEDULES)})")
    warmup = max(1, min(100, steps // 10))

    def factor(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

    return factor


def train_loop(
    model: nn.Module,
    batches: StepBatches,
    config: Any,
    *,
    device: torch.device,
    pairs: list[tuple[str, str]] | None = None,
    projections: nn.ModuleDict | None = None,
    schedule: str = "constant",
    progress: Progress | None = None,
    phase: str = "distill",
    label: str = "",
) -> LoopLog:
    """Train ``model`` (and ``projections``) for ``config.steps`` steps; see the module docstring.

    ``config`` supplies ``steps``, ``lr``, ``weight_decay``, ``kd_output`` and ``kd_feature`` (a
    :class:`~archsearch.distill.ProxyConfig`). KD terms need ``batches`` with a teacher;
    ``pairs`` / ``projections`` are the feature pairs and their projections
    (:func:`~archsearch.distill.pair_taps`). ``progress(phase, label + "loss L", done, total)``
    after every step. The model is left in eval mode.

    Raises:
        TrialFailed: the loss is NaN / inf.
    """
    pairs = list(pairs or [])
    projections = projections if projections is not None else nn.ModuleDict()
    kd_output = float(config.kd_output)
    kd_feature = float(config.kd_feature) if pairs else 0.0
    if (kd_output > 0 or kd_feature > 0) and not batches.has_teacher:
        raise ValueError("KD terms need batches with a teacher (or kd_output = kd_feature = 0)")
    steps = int(config.steps)
    params = list(model.parameters()) + list(projections.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    factor = _lr_factor(schedule, steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor) if factor is not None else None
    curve: list[float] = []
    parts: dict[str, float] = {}
    avg = 0.0
    if progress is not None:
        progress(phase, f"{label}loss -", 0, steps)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        b = batches(step)
        with autocast(device):
            s_pred, s_feats = model.forward_features(b.xt, b.t, b.ctx)
            loss, parts = distill_loss(s_pred, b.target, b.teacher_pred, s_feats, b.teacher_feats or {}, pairs,
                                       projections, kd_output, kd_feature)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrialFailed(f"loss is {value} at step {step + 1} of {steps}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if sched is not None:
            sched.step()
        curve.append(value)
        if progress is not None:
            avg = 0.98 * avg + 0.02 * value  # bias-corrected running mean: display only
            progress(phase, f"{label}loss {avg / (1 - 0.98 ** (step + 1)):.4f}", step + 1, steps)
    train_s = time.perf_counter() - t0
    model.eval()
    return LoopLog(curve, parts, train_s)
