"""The data of a training run: the one place that chooses the synthetic data or a latent cache.

:func:`run_data` gives a run against a teacher its :class:`RunData`: the training batches
(:meth:`RunData.batches`, one :class:`~archsearch.data.StepBatches` over either source) and the
**one held-out batch** (:attr:`RunData.holdout`) that the proxy runs, the supernet and full
training score on: ``proxy.holdout`` samples, noise from :data:`HOLDOUT_SEED`, timesteps spread
evenly over the schedule, all independent of the training seed, with the teacher's predictions
on them.

* The synthetic data (``proxy.data`` unset): the teacher's built-in dataset at the run's
  resolution, its captions encoded by the teacher's text encoder (cached on disk and per
  process); the held-out batch is the first items of its ``holdout`` split.
* A latent cache (``proxy.data``, or ``data`` for full training): opened and checked against
  the teacher (:func:`~archsearch.data.open_cache_for`), latents downscaled when the run's
  resolution divides the cache's latent side; the held-out batch is the first samples (by key)
  of the cache's holdout split (of its train split when that is empty).

The teacher must already be on ``device``. Per-process caches (caption embeddings, held-out
batches, opened caches, shared step batches) are dropped by :func:`clear_caches`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from archsearch._util import short_hash
from archsearch.data._batches import CacheFeed, StepBatches, SyntheticFeed, clear_step_cache
from archsearch.data._cache import LatentCache
from archsearch.data._cachedata import cache_holdout, check_resolution, latent_side, open_cache_for, uses_pooled_token
from archsearch.data._device import autocast

__all__ = ["HOLDOUT_SEED", "RunData", "clear_caches", "run_data"]

Progress = Callable[[str, str, int, int], None]

HOLDOUT_SEED = 20_240_617  # the held-out noise: constant, independent of every training seed

_EMB_CACHE: dict[str, torch.Tensor] = {}
_HOLDOUT_CACHE: dict[str, dict[str, Any]] = {}
_CACHES: dict[str, LatentCache] = {}


def _remember(memo: dict[str, Any], key: str, value: Any, size: int = 4) -> Any:
    if len(memo) >= size:
        memo.pop(next(iter(memo)))
    memo[key] = value
    return value


def embeddings(teacher: Any, data: Any, progress: Progress | None = None) -> torch.Tensor:
    """Caption embeddings of a synthetic dataset: memory, then disk cache, then the encoder."""
    key = short_hash([teacher.fingerprint, data.fingerprint, teacher.text.fingerprint])
    if key not in _EMB_CACHE:
        root = teacher.info.get("cache_root")
        emb = teacher.text.encode_dataset(data.captions(), cache_dir=Path(root) / "text" if root else None,
                                          progress=progress)
        _remember(_EMB_CACHE, key, emb)
    return _EMB_CACHE[key]


def holdout_batch(teacher: Any, x0: torch.Tensor, ctx: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """The held-out batch of clean ``x0`` and context ``ctx``: noisy inputs ``xt`` (noise from
    :data:`HOLDOUT_SEED`), evenly spread timesteps ``t``, the task ``target`` and the teacher's
    prediction ``teacher``, all on ``device``."""
    g = torch.Generator().manual_seed(HOLDOUT_SEED)
    noise = torch.randn(x0.shape, generator=g)
    t = teacher.process.even_timesteps(len(x0))
    xt = teacher.process.add_noise(x0, noise, t)
    preds = []
    for i in range(0, len(x0), 16):
        with autocast(device):
            p = teacher(xt[i : i + 16].to(device), t[i : i + 16].to(device), ctx[i : i + 16].to(device))
        preds.append(p.float())
    return {"xt": xt.to(device), "t": t.to(device), "ctx": ctx.to(device),
            "target": teacher.process.target(x0, noise, t).to(device), "teacher": torch.cat(preds)}


@dataclass
class RunData:
    """The data of one run (see the module docstring): ``holdout`` is the held-out batch
    (``xt``, ``t``, ``ctx``, ``target``, ``teacher``; ``split`` for a cache), ``resolution``
    the student's latent side, ``fingerprint`` what identifies the training data."""

    teacher: Any
    proxy: Any
    device: torch.device
    resolution: int
    holdout: dict[str, Any]
    fingerprint: Any
    data: Any = None  # the synthetic dataset
    embeddings: torch.Tensor | None = None  # its caption embeddings
    cache: LatentCache | None = None
    factor: int | None = None  # the latent downscale factor of a cache
    shared: bool = True  # batches shared with the other runs of the process

    @property
    def source(self) -> str:
        """``synthetic`` or the cache folder (what a result's ``data`` metric says)."""
        return "synthetic" if self.cache is None else str(self.cache.root)

    def batches(self, uses_teacher: bool, *, rank: int = 0, world: int = 1) -> StepBatches:
        """Step ``k``'s training batch, ``proxy.batch`` samples from ``(proxy.seed, k)`` (this
        process's slice ``rank`` of ``world``); ``uses_teacher``: with the KD targets. Shared
        runs (proxy runs, the supernet) share them, teacher outputs included, with every run of
        the process with the same teacher, data, batch and seed."""
        dev, teacher, proxy = self.device, self.teacher, self.proxy
        key = None
        if self.shared:
            key = short_hash([teacher.fingerprint, self.fingerprint, proxy.batch, proxy.seed, str(dev),
                              str(torch.get_default_dtype()), uses_teacher])
        if self.cache is None:
            feed: Any = SyntheticFeed(self.data, self.embeddings, dev)
        else:
            feed = CacheFeed(self.cache, self.factor, uses_pooled_token(teacher))
        return StepBatches(feed, teacher.process, proxy.batch, proxy.seed, dev,
                           teacher=teacher if uses_teacher else None, cache_key=key, rank=rank, world=world)


def run_data(teacher: Any, proxy: Any, device: torch.device, progress: Progress | None = None, *,
             data: str | Path | None = None, resolution: int | None = None, training: bool = False) -> RunData:
    """The data of a run of ``proxy`` settings against ``teacher`` on ``device``.

    Args:
        teacher: the :class:`~archsearch.distill.Teacher`, already on ``device``.
        proxy: the :class:`~archsearch.distill.ProxyConfig` (``data``, ``resolution``,
            ``frames``, ``holdout``, ``batch``, ``seed``).
        progress: ``progress(phase, description, done, total)`` while captions are encoded.
        data: a latent cache folder instead of ``proxy.data``.
        resolution: the student's latent side (default: ``proxy.resolution``; in ``training``,
            a cache's latent side).
        training: full training (``archsearch train``): errors name the parameters ``data`` and
            ``resolution`` rather than the spec keys, and nothing is shared with the other runs
            of the process (each process reads its own slice of the batches).
    """
    frames = proxy.frames if teacher.kind == "video" else None
    path = Path(data) if data is not None else proxy.data_path()
    if path is None:
        res = int(resolution or proxy.resolution)
        ds = teacher.dataset(res, frames or 1)
        emb = embeddings(teacher, ds, progress)
        key = short_hash([teacher.fingerprint, res, frames or 1, proxy.holdout, str(device)])
        hold = _HOLDOUT_CACHE.get(key)
        if hold is None:
            held = teacher.dataset(res, frames or 1, split="holdout", size=proxy.holdout)
            x0 = held.latents(range(len(held)))
            hold = _remember(_HOLDOUT_CACHE, key, holdout_batch(teacher, x0, embeddings(teacher, held, progress).float(),
                                                                device))
        return RunData(teacher, proxy, device, res, hold, ds.fingerprint, data=ds, embeddings=emb,
                       shared=not training)
    param, res_param = ("data", "resolution") if training else ("proxy.data", "proxy.resolution")
    cache = _open_cache(path, teacher, frames, param, memo=not training)
    if training:
        res = int(resolution or latent_side(cache))
    else:
        res = int(resolution or proxy.resolution)
    factor = check_resolution(cache, res, res_param)
    key = short_hash(["cache", teacher.fingerprint, str(cache.root), factor, proxy.holdout, str(device)])
    hold = _HOLDOUT_CACHE.get(key)
    if hold is None:
        x0, ctx, split = cache_holdout(cache, proxy.holdout, factor, uses_pooled_token(teacher))
        hold = _remember(_HOLDOUT_CACHE, key, {**holdout_batch(teacher, x0, ctx, device), "split": split})
    fp = {"cache": str(cache.root), "teacher_hash": cache.index.teacher_hash, "n": len(cache), "factor": factor}
    return RunData(teacher, proxy, device, res, hold, fp, cache=cache, factor=factor, shared=not training)


def _open_cache(path: Path, teacher: Any, frames: int | None, param: str, memo: bool) -> LatentCache:
    """The latent cache at ``path``, opened and checked against the teacher (once per process
    when ``memo``)."""
    key = f"{path}|{teacher.fingerprint}"
    if memo and key in _CACHES:
        return _CACHES[key]
    cache = open_cache_for(path, teacher, kind=teacher.kind, latent_channels=teacher.latent_channels, frames=frames,
                           param=param)
    if memo:
        _CACHES[key] = cache
    return cache


def clear_caches() -> None:
    """Drop the per-process caches (caption embeddings, held-out batches, opened caches, and the
    shared training batches with the teacher outputs on them)."""
    _EMB_CACHE.clear()
    _HOLDOUT_CACHE.clear()
    _CACHES.clear()
    clear_step_cache()
