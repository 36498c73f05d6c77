"""Training batches from a latent cache (``archsearch data prepare``): no VAE, no text encoder.

:class:`CacheBatches` is the cache's counterpart of :class:`~archsearch.distill.StepBatches`:
step ``k`` reads batch ``k`` of ``LatentCache.split("train").batches(batch * world, seed,
start=k)`` (epoch after epoch, each shuffled from ``(seed, epoch)``), so the data position of a
run is simply its step, and a resumed run reads exactly what an uninterrupted one would have.
Noise and timesteps come from ``(seed, k)`` as for the synthetic data.

The conditioning is what the teacher's UNet takes, as :class:`~archsearch.distill.Teacher`
expects it: ``text_states`` as the context; for an SDXL-style teacher the pooled text embedding
rides along as one extra zero-padded token at the end (the :class:`DualTextEncoder`
convention), which the teacher splits off into ``added_cond_kwargs``.

**Resolution.** A proxy student trains at the cache's latent size, or at ``resolution`` when
that divides it: the latents are then average-pooled by the integer factor (a documented
downscale, ``F.avg_pool2d`` per frame), and the teacher sees the same downscaled latents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from archsearch.distill._cache import LatentCache, teacher_hash
from archsearch.distill._loop import Batch, _StepCache, make_batch, step_seed
from archsearch.errors import ArchsearchError

__all__ = ["CacheBatches", "cache_context", "cache_holdout", "downscale", "open_cache_for"]


def open_cache_for(path: str | Path, teacher: Any, *, kind: str | None = None, latent_channels: int | None = None,
                   frames: int | None = None, param: str = "proxy.data") -> LatentCache:
    """Open the cache at ``path`` and check that it was made by this ``teacher`` (a diffusers
    checkpoint: same :func:`teacher_hash`) with these latent channels / frames; a one-line
    error naming ``param`` and every field that differs otherwise."""
    path = Path(path)
    try:
        cache = LatentCache.open(path)
    except ArchsearchError as exc:
        raise ArchsearchError(f"{param}: {exc}") from None
    root = teacher_root(teacher)
    if root is None:
        raise ArchsearchError(f"{param}: a latent cache needs a diffusers teacher (proxy.teacher: {{diffusers: PATH}}); "
                              "the built-in teacher trains on the synthetic data")
    ix = cache.index
    bad = []
    th = teacher_hash(root)
    if ix.teacher_hash != th:
        bad.append(f"teacher_hash {ix.teacher_hash} (needed: {th}, the teacher {root})")
    if kind is not None and ix.kind != kind:
        bad.append(f"kind {ix.kind} (needed: {kind})")
    if latent_channels is not None and ix.latent_channels != latent_channels:
        bad.append(f"latent_channels {ix.latent_channels} (needed: {latent_channels})")
    if frames is not None and kind == "video" and ix.frames != frames:
        bad.append(f"frames {ix.frames} (needed: {frames})")
    if bad:
        raise ArchsearchError(f"{param}: {path}: the latent cache does not match: it has " + ", ".join(bad)
                              + " (run archsearch data prepare again with this teacher)")
    return cache


def teacher_root(teacher: Any) -> Path | None:
    """The checkpoint folder of a diffusers teacher (``None`` for the built-in one)."""
    if getattr(teacher, "source", None) != "diffusers":
        return None
    return Path(teacher.info["path"])


def latent_side(cache: LatentCache) -> int:
    shape = cache.index.latent_shape
    if shape is None:
        raise ArchsearchError(f"proxy.data: {cache.root}: a cache with aspect-ratio buckets has no single latent size "
                              "(allowed for full training only; prepare without --buckets for a search)")
    return int(shape[-1])


def check_resolution(cache: LatentCache, resolution: int | None, param: str = "proxy.resolution") -> int | None:
    """The downscale factor from the cache's latent side to ``resolution`` (``None``: none)."""
    if resolution is None or cache.index.latent_shape is None:
        return None
    side = latent_side(cache)
    if resolution == side:
        return None
    if resolution > side or side % resolution:
        raise ArchsearchError(f"{param}: bad value {resolution} (allowed: the cache's latent side {side} or a divisor "
                              f"of it; {cache.root})")
    return side // resolution


def downscale(x: torch.Tensor, factor: int | None) -> torch.Tensor:
    """Average-pool latents ``(B, C, H, W)`` / ``(B, C, T, H, W)`` by ``factor`` (``None``: as is)."""
    if not factor or factor == 1:
        return x
    if x.dim() == 5:
        b, c, t, h, w = x.shape
        y = F.avg_pool2d(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), factor)
        return y.reshape(b, t, c, *y.shape[-2:]).permute(0, 2, 1, 3, 4).contiguous()
    return F.avg_pool2d(x, factor)


def cache_context(batch: dict[str, torch.Tensor], pooled_token: bool) -> torch.Tensor:
    """The teacher's context for a cache batch: ``text_states`` (+ the pooled token, SDXL)."""
    ctx = batch["text_states"].float()
    if pooled_token:
        pooled = batch.get("pooled")
        if pooled is None:
            raise ArchsearchError("proxy.data: the teacher is SDXL-style but the cache has no pooled text embedding "
                                  "(prepare the data again with this teacher)")
        tok = torch.zeros(ctx.shape[0], 1, ctx.shape[-1], dtype=ctx.dtype)
        tok[:, 0, : pooled.shape[-1]] = pooled.float()
        ctx = torch.cat([ctx, tok], dim=1)
    return ctx


def _pooled_token(teacher: Any) -> bool:
    return bool(getattr(teacher.module, "pooled_dim", 0))


class CacheBatches:
    """Step ``k``'s batch from a latent cache (see the module docstring).

    Args:
        cache: the :class:`~archsearch.distill.LatentCache`.
        teacher: gives the noise process, the conditioning convention and (``use_teacher``)
            the KD targets on each batch.
        batch, seed: per-process batch size and seed; ``rank``, ``world``: this process's
            slice of the global batch of ``batch * world`` samples.
        factor: latent downscale factor (:func:`check_resolution`).
        cache_key: share batches with the other runs of this process (as StepBatches).
    """

    def __init__(self, cache: LatentCache, teacher: Any, batch: int, seed: int, device: torch.device, *,
                 use_teacher: bool = True, factor: int | None = None, rank: int = 0, world: int = 1,
                 cache_key: str | None = None, split: str = "train") -> None:
        self.cache = cache
        self.split = cache.split(split)
        self.teacher = teacher if use_teacher else None
        self.process = teacher.process
        self.pooled = _pooled_token(teacher)
        self.batch, self.seed, self.device = int(batch), int(seed), device
        self.factor = factor
        self.rank, self.world = int(rank), int(world)
        self.cache_key = cache_key
        self._it: Iterator[dict[str, torch.Tensor]] | None = None
        self._next = -1
        need = self.batch * self.world
        if self.split.batches_per_epoch(need) == 0:
            raise ArchsearchError(f"batch: {self.batch} x {self.world} processes is larger than the {len(self.split)} "
                                  f"training samples of the cache {cache.root} (allowed: a smaller batch)")

    @property
    def has_teacher(self) -> bool:
        return self.teacher is not None

    def read(self, position: int) -> dict[str, torch.Tensor]:
        """Global batch ``position`` of the stream (sequential reads reuse one iterator)."""
        if self._it is None or position != self._next:
            self._it = self.split.batches(self.batch * self.world, seed=self.seed, start=position)
        self._next = position + 1
        return next(self._it)

    def __call__(self, step: int) -> Batch:
        if self.cache_key is not None:
            hit = _StepCache.get(self.cache_key, step)
            if hit is not None:
                return hit
        raw = self.read(step)
        if self.world > 1:
            part = slice(self.rank * self.batch, (self.rank + 1) * self.batch)
            raw = {k: v[part] for k, v in raw.items()}
        x0 = downscale(raw["latents"].float(), self.factor)
        g = torch.Generator().manual_seed(step_seed(self.seed, step))
        n = self.batch * self.world
        noise = torch.randn((n, *x0.shape[1:]), generator=g)
        t = self.process.sample_timesteps(n, g)
        if self.world > 1:
            part = slice(self.rank * self.batch, (self.rank + 1) * self.batch)
            noise, t = noise[part], t[part]
        out = make_batch(self.process, x0, noise, t, cache_context(raw, self.pooled), self.device, self.teacher)
        if self.cache_key is not None:
            _StepCache.put(self.cache_key, step, out)
        return out


def cache_holdout(cache: LatentCache, n: int, factor: int | None, pooled: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The fixed held-out batch: the first ``n`` samples (by key) of the holdout split, or of the
    train split when the holdout split is empty (tiny caches). Returns ``(x0, ctx, split)``."""
    split = cache.split("holdout")
    name = "holdout"
    if len(split) == 0:
        split, name = cache.split("train"), "train"
    raw = split.head(n)
    return downscale(raw["latents"].float(), factor), cache_context(raw, pooled), name
