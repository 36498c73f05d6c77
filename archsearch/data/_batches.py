"""Training batches, one type over the synthetic data and a latent cache.

:class:`StepBatches` gives training step ``k``'s :class:`Batch` from ``(seed, k)`` alone: the
samples of the global batch of ``batch * world`` (every process draws the same global batch
and takes its slice ``rank``), their noise and timesteps, and -- with a teacher -- its
prediction and feature taps on them. Where the samples come from is its *feed*:

* :class:`SyntheticFeed` -- ``batch * world`` items of a synthetic dataset drawn from the
  step's generator, and their caption embeddings;
* :class:`CacheFeed` -- batch ``k`` of ``LatentCache.split("train").batches(batch * world,
  seed, start=k)`` (epoch after epoch, each shuffled from ``(seed, epoch)``), so the data
  position of a run is its step and a resumed run reads what an uninterrupted one would have.

A feed has ``check(batch, world)`` (a one-line error when it cannot give such batches) and
``draw(step, n, g, part, seed) -> (x0, ctx)``. Noise and timesteps come from the step's generator after the feed's own draws, so N processes
at ``batch`` see what one process sees at ``N * batch``. Every candidate of a study sees the
same batches (common random numbers): with a ``cache_key`` the batches, the teacher's outputs
included, are computed once per process and shared (:class:`_StepCache`).
"""

from __future__ import annotations

import os
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch

from archsearch.data._cachedata import cache_context, downscale
from archsearch.data._device import autocast
from archsearch.errors import ParameterError

__all__ = [
    "Batch",
    "CacheFeed",
    "StepBatches",
    "SyntheticFeed",
    "clear_step_cache",
    "make_batch",
    "step_seed",
]


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


# --------------------------------------------------------------------------- feeds


class SyntheticFeed:
    """The samples of a synthetic dataset (``latents(indices)``, ``len``) and their caption
    ``embeddings`` ``(N, L, D)`` (kept on ``device``)."""

    def __init__(self, data: Any, embeddings: torch.Tensor, device: torch.device) -> None:
        self.data = data
        self.embeddings = embeddings.to(device)

    def check(self, batch: int, world: int) -> None:
        """Nothing to check: items are drawn with replacement."""

    def draw(self, step: int, n: int, g: torch.Generator, part: slice, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, ctx)`` of this process's ``part`` of the ``n`` items drawn from ``g``."""
        idx = torch.randint(0, len(self.data), (n,), generator=g)[part]
        x0 = self.data.latents(idx)
        return x0, self.embeddings[idx.to(self.embeddings.device)].float()


class CacheFeed:
    """The samples of a latent cache's ``split`` (see the module docstring): latents
    downscaled by ``factor`` (:func:`~archsearch.data._cachedata.downscale`), the conditioning
    as the teacher takes it (``pooled``: SDXL's pooled embedding as one more context token)."""

    def __init__(self, cache: Any, factor: int | None = None, pooled: bool = False, split: str = "train") -> None:
        self.cache = cache
        self.split = cache.split(split)
        self.factor = factor
        self.pooled = bool(pooled)
        self._stream: tuple[int, int, int] | None = None  # (global batch, seed, next position)
        self._it: Iterator[dict[str, torch.Tensor]] | None = None

    def check(self, batch: int, world: int) -> None:
        if self.split.batches_per_epoch(batch * world) == 0:
            raise ParameterError("batch", f": {batch} x {world} processes is larger than the {len(self.split)} "
                                 f"training samples of the cache {self.cache.root} (allowed: a smaller batch)")

    def read(self, position: int, n: int, seed: int) -> dict[str, torch.Tensor]:
        """Global batch ``position`` of the stream (sequential reads reuse one iterator)."""
        if self._it is None or self._stream != (n, seed, position):
            self._it = self.split.batches(n, seed=seed, start=position)
        self._stream = (n, seed, position + 1)
        return next(self._it)

    def draw(self, step: int, n: int, g: torch.Generator, part: slice, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, ctx)`` of this process's ``part`` of global batch ``step`` (``g`` is not used)."""
        raw = {k: v[part] for k, v in self.read(step, n, seed).items()}
        return downscale(raw["latents"].float(), self.factor), cache_context(raw, self.pooled)


# --------------------------------------------------------------------------- the batches


class StepBatches:
    """Step ``k``'s batch: ``batch`` samples from ``feed``, their noise and timesteps, from ``(seed, k)``.

    Args:
        feed: where the samples come from (:class:`SyntheticFeed`, :class:`CacheFeed`).
        process: the :class:`~archsearch.distill.NoiseProcess`.
        batch, seed: batch size (per process) and seed.
        device: where the batch goes.
        teacher: computes ``forward_features`` on each batch (``None``: no KD targets).
        cache_key: share the batches (teacher outputs included) with every run in this
            process under the same key (:class:`_StepCache`); ``None``: no sharing.
        rank, world: this process's slice of the global batch of ``batch * world`` samples
            that ``(seed, k)`` draws, so N processes at ``batch`` see what one process sees at
            ``N * batch`` (the default 0, 1 is a single process).
    """

    def __init__(self, feed: Any, process: Any, batch: int, seed: int, device: torch.device,
                 teacher: Any | None = None, cache_key: str | None = None, rank: int = 0, world: int = 1) -> None:
        self.feed = feed
        self.process = process
        self.batch = int(batch)
        self.seed = int(seed)
        self.device = device
        self.teacher = teacher
        self.cache_key = cache_key
        self.rank, self.world = int(rank), int(world)
        feed.check(self.batch, self.world)

    @classmethod
    def synthetic(cls, data: Any, embeddings: torch.Tensor, process: Any, batch: int, seed: int,
                  device: torch.device, **kw: Any) -> "StepBatches":
        """Batches of a synthetic dataset and its caption embeddings (the built-in teacher's)."""
        return cls(SyntheticFeed(data, embeddings, device), process, batch, seed, device, **kw)

    @property
    def has_teacher(self) -> bool:
        return self.teacher is not None

    def __call__(self, step: int) -> Batch:
        if self.cache_key is not None:
            hit = _StepCache.get(self.cache_key, step)
            if hit is not None:
                return hit
        n = self.batch * self.world
        part = slice(self.rank * self.batch, (self.rank + 1) * self.batch) if self.world > 1 else slice(None)
        g = torch.Generator().manual_seed(step_seed(self.seed, step))
        x0, ctx = self.feed.draw(step, n, g, part, self.seed)
        noise = torch.randn((n, *x0.shape[1:]), generator=g)[part]
        t = self.process.sample_timesteps(n, g)[part]
        out = make_batch(self.process, x0, noise, t, ctx, self.device, self.teacher)
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
