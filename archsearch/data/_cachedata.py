"""A latent cache (``archsearch data prepare``) as the data of a run: no VAE, no text encoder.

:func:`open_cache_for` opens a cache and checks it against the teacher; the training batches
read it through :class:`~archsearch.data.CacheFeed`, the held-out batch through
:func:`cache_holdout`.

The conditioning is what the teacher's UNet takes, as :class:`~archsearch.distill.Teacher`
expects it: ``text_states`` as the context; for an SDXL-style teacher the pooled text embedding
rides along as one extra zero-padded token at the end (the :class:`DualTextEncoder`
convention, :func:`~archsearch.data.pooled_token`), which the teacher splits off into
``added_cond_kwargs``.

**Resolution.** A proxy student trains at the cache's latent size, or at ``resolution`` when
that divides it: the latents are then average-pooled by the integer factor (a documented
downscale, ``F.avg_pool2d`` per frame), and the teacher sees the same downscaled latents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from archsearch.data._cache import LatentCache, teacher_hash
from archsearch.data._text import pooled_token
from archsearch.errors import ArchsearchError, ParameterError

__all__ = ["cache_context", "cache_holdout", "check_resolution", "downscale", "latent_side", "open_cache_for",
           "teacher_root"]


def open_cache_for(path: str | Path, teacher: Any, *, kind: str | None = None, latent_channels: int | None = None,
                   frames: int | None = None, param: str = "proxy.data") -> LatentCache:
    """Open the cache at ``path`` and check that it was made by this ``teacher`` (a diffusers
    checkpoint: same :func:`teacher_hash`) with these latent channels / frames; a one-line
    error naming ``param`` and every field that differs otherwise."""
    path = Path(path)
    try:
        cache = LatentCache.open(path)
    except ArchsearchError as exc:
        raise ParameterError(param, f": {exc}") from None
    root = teacher_root(teacher)
    if root is None:
        raise ParameterError(param, ": a latent cache needs a diffusers teacher (proxy.teacher: {diffusers: PATH}); "
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
        raise ParameterError(param, f": {path}: the latent cache does not match: it has " + ", ".join(bad)
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
        raise ParameterError("proxy.data", f": {cache.root}: a cache with aspect-ratio buckets has no single latent size "
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
        raise ParameterError(param, f": bad value {resolution} (allowed: the cache's latent side {side} or a divisor "
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


def cache_context(batch: dict[str, torch.Tensor], pooled: bool) -> torch.Tensor:
    """The teacher's context for a cache batch: ``text_states`` (+ the pooled token, SDXL)."""
    ctx = batch["text_states"].float()
    if pooled:
        emb = batch.get("pooled")
        if emb is None:
            raise ParameterError("proxy.data", ": the teacher is SDXL-style but the cache has no pooled text embedding "
                                 "(prepare the data again with this teacher)")
        ctx = pooled_token(ctx, emb.float())
    return ctx


def uses_pooled_token(teacher: Any) -> bool:
    """Whether ``teacher`` takes SDXL's pooled embedding as its last context token."""
    return bool(getattr(teacher.module, "pooled_dim", 0))


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
