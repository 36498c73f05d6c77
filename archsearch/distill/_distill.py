"""The distillation run: one short, seeded training of a candidate against the teacher.

:func:`distill` trains the candidate at proxy scale (``candidate.for_proxy(...)``: width
multiplier, latent resolution, frames; the teacher's text encoder and latent channels) for
``config.steps`` steps of :func:`~archsearch.distill.train_loop` on the built-in synthetic data,
with the task loss, output KD and feature KD rescaled per timestep
(:mod:`archsearch.distill._losses`). A search trial and ``archsearch train`` both call it.

**Quality** (lower is better) is the output-KD MSE ``mean((student - teacher)^2)`` on a fixed
held-out batch, computed after the last step: ``holdout`` items of the ``holdout`` split of the
synthetic data, noise from a constant seed and timesteps spread evenly over the schedule, all
independent of the training seed; the same candidate, proxy settings, teacher and device give
the same score.

Training: AdamW (``lr``, ``weight_decay``), gradient norm clipped to 1, constant learning rate;
the student's initialisation is seeded by ``seed`` and step ``k``'s batch, noise and timesteps
by ``(seed, k)`` alone (common random numbers: the teacher's outputs on them are computed once
per process and reused). CUDA runs under bf16 autocast.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from archsearch._util import short_hash
from archsearch.distill._cache import LatentCache
from archsearch.distill._cachedata import CacheBatches, cache_holdout, check_resolution, open_cache_for
from archsearch.distill._config import ProxyConfig
from archsearch.distill._device import autocast, resolve_device, seeded, torch_threads
from archsearch.distill._loop import Progress, StepBatches, TrialFailed, clear_step_cache, train_loop
from archsearch.distill._losses import make_projections, pair_taps
from archsearch.distill._noise import check_prediction
from archsearch.distill._teacher import Teacher
from archsearch.errors import ArchsearchError

__all__ = ["HOLDOUT_SEED", "DistillResult", "clear_caches", "distill"]

HOLDOUT_SEED = 20_240_617  # the held-out noise: constant, independent of every training seed


@dataclass
class DistillResult:
    """The outcome of one distillation run.

    ``quality``: held-out output-KD MSE against the teacher (lower is better);
    ``loss_curve``: the training objective per step; ``params``: of the proxy-scale student;
    ``metrics``: extra figures (held-out task MSE, feature pairs, steps/s, ...).
    """

    quality: float
    loss_curve: list[float]
    wall_time_s: float
    steps: int
    params: int
    device: str
    metrics: dict[str, Any] = field(default_factory=dict)
    student: Any = field(default=None, repr=False, compare=False)  # the trained model, if kept

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in ("quality", "loss_curve", "wall_time_s", "steps", "params",
                                              "device", "metrics")}


# --------------------------------------------------------------------------- caches (per process)

_EMB_CACHE: dict[str, torch.Tensor] = {}
_HOLDOUT_CACHE: dict[str, dict[str, torch.Tensor]] = {}


def _embeddings(teacher: Teacher, data: Any, progress: Progress | None = None) -> torch.Tensor:
    """Caption embeddings of a dataset: memory, then disk cache, then the encoder."""
    key = short_hash([teacher.fingerprint, data.fingerprint, teacher.text.fingerprint])
    if key not in _EMB_CACHE:
        if len(_EMB_CACHE) >= 4:
            _EMB_CACHE.pop(next(iter(_EMB_CACHE)))
        root = teacher.info.get("cache_root")
        _EMB_CACHE[key] = teacher.text.encode_dataset(
            data.captions(), cache_dir=Path(root) / "text" if root else None, progress=progress
        )
    return _EMB_CACHE[key]


def _holdout(teacher: Teacher, proxy: ProxyConfig, device: torch.device,
             progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """The fixed held-out batch and the teacher's predictions on it (memoised per process)."""
    frames = proxy.frames if teacher.kind == "video" else 1
    key = short_hash([teacher.fingerprint, proxy.resolution, frames, proxy.holdout, str(device)])
    if key in _HOLDOUT_CACHE:
        return _HOLDOUT_CACHE[key]
    data = teacher.dataset(proxy.resolution, frames, split="holdout", size=proxy.holdout)
    x0 = data.latents(range(len(data)))
    g = torch.Generator().manual_seed(HOLDOUT_SEED)
    noise = torch.randn(x0.shape, generator=g)
    t = teacher.process.even_timesteps(len(data))
    ctx = _embeddings(teacher, data, progress).float()
    xt = teacher.process.add_noise(x0, noise, t)
    preds = []
    for i in range(0, len(data), 16):
        with autocast(device):
            p = teacher(xt[i : i + 16].to(device), t[i : i + 16].to(device), ctx[i : i + 16].to(device))
        preds.append(p.float())
    out = {
        "xt": xt.to(device),
        "t": t.to(device),
        "ctx": ctx.to(device),
        "target": teacher.process.target(x0, noise, t).to(device),
        "teacher": torch.cat(preds),
    }
    if len(_HOLDOUT_CACHE) >= 4:
        _HOLDOUT_CACHE.pop(next(iter(_HOLDOUT_CACHE)))
    _HOLDOUT_CACHE[key] = out
    return out


_CACHES: dict[str, LatentCache] = {}


def _open_cache(proxy: ProxyConfig, teacher: Teacher) -> LatentCache:
    """The spec's latent cache, opened and checked against the teacher once per process."""
    path = proxy.data_path()
    key = f"{path}|{teacher.fingerprint}"
    if key not in _CACHES:
        _CACHES[key] = open_cache_for(path, teacher, kind=teacher.kind, latent_channels=teacher.latent_channels,
                                      frames=proxy.frames if teacher.kind == "video" else None)
    return _CACHES[key]


def _cache_holdout(teacher: Teacher, cache: LatentCache, proxy: ProxyConfig, factor: int | None,
                   device: torch.device) -> dict[str, Any]:
    """The fixed held-out batch of a latent cache and the teacher's predictions on it."""
    key = short_hash(["cache", teacher.fingerprint, str(cache.root), factor, proxy.holdout, str(device)])
    if key in _HOLDOUT_CACHE:
        return _HOLDOUT_CACHE[key]
    x0, ctx, split = cache_holdout(cache, proxy.holdout, factor, bool(getattr(teacher.module, "pooled_dim", 0)))
    out = _holdout_batch(teacher, x0, ctx, device)
    out["split"] = split
    if len(_HOLDOUT_CACHE) >= 4:
        _HOLDOUT_CACHE.pop(next(iter(_HOLDOUT_CACHE)))
    _HOLDOUT_CACHE[key] = out
    return out


def _holdout_batch(teacher: Teacher, x0: torch.Tensor, ctx: torch.Tensor, device: torch.device) -> dict[str, Any]:
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
class _Sources:
    """Where a run's data comes from: the synthetic set or a latent cache, and the held-out batch."""

    teacher: Teacher
    device: torch.device
    hold: dict[str, Any]
    data_fp: Any
    data: Any = None
    emb: torch.Tensor | None = None
    cache: LatentCache | None = None
    factor: int | None = None

    def batches(self, proxy: ProxyConfig, uses_teacher: bool) -> Any:
        """Step ``k``'s training batch (shared, with the teacher's outputs, by every run of the
        process with the same teacher, data, batch and seed)."""
        dev, teacher = self.device, self.teacher
        cache_key = short_hash([teacher.fingerprint, self.data_fp, proxy.batch, proxy.seed, str(dev),
                                str(torch.get_default_dtype()), uses_teacher])
        if self.cache is None:
            return StepBatches(self.data, self.emb, teacher.process, proxy.batch, proxy.seed, dev,
                               teacher=teacher if uses_teacher else None, cache_key=cache_key)
        return CacheBatches(self.cache, teacher, proxy.batch, proxy.seed, dev, use_teacher=uses_teacher,
                            factor=self.factor, cache_key=cache_key)


def _sources(teacher: Teacher, proxy: ProxyConfig, dev: torch.device, progress: Progress | None) -> _Sources:
    frames = proxy.frames if teacher.kind == "video" else None
    cache = _open_cache(proxy, teacher) if proxy.data is not None else None
    if cache is None:
        data = teacher.dataset(proxy.resolution, frames or 1)
        emb = _embeddings(teacher, data, progress)
        hold = _holdout(teacher, proxy, dev, progress)
        return _Sources(teacher, dev, hold, data.fingerprint, data=data, emb=emb)
    factor = check_resolution(cache, proxy.resolution)
    hold = _cache_holdout(teacher, cache, proxy, factor, dev)
    data_fp = {"cache": str(cache.root), "teacher_hash": cache.index.teacher_hash, "n": len(cache), "factor": factor}
    return _Sources(teacher, dev, hold, data_fp, cache=cache, factor=factor)


def holdout_for(teacher: Teacher, proxy: ProxyConfig, device: torch.device,
                progress: Progress | None = None) -> dict[str, Any]:
    """The fixed held-out batch of the proxy runs (and the teacher's predictions on it)."""
    teacher.to(device)
    return _sources(teacher, proxy, device, progress).hold


def training_batches(teacher: Teacher, proxy: ProxyConfig, device: torch.device,
                     progress: Progress | None = None, uses_teacher: bool | None = None) -> Any:
    """The proxy runs' training batches (``uses_teacher``: KD targets; default: any KD weight > 0)."""
    teacher.to(device)
    if uses_teacher is None:
        uses_teacher = proxy.kd_output > 0 or proxy.kd_feature > 0
    return _sources(teacher, proxy, device, progress).batches(proxy, uses_teacher)


def clear_caches() -> None:
    """Drop the per-process caches (caption embeddings, held-out batches, teacher outputs)."""
    _EMB_CACHE.clear()
    _HOLDOUT_CACHE.clear()
    _CACHES.clear()
    clear_step_cache()


# --------------------------------------------------------------------------- the run


def distill(
    candidate: Any,
    teacher: Teacher,
    config: ProxyConfig,
    progress: Progress | None = None,
    *,
    device: str | torch.device | None = "cpu",
    threads: int | None = None,
    keep_student: bool = False,
    prepare_student: Callable[[Any], None] | None = None,
) -> DistillResult:
    """Train ``candidate`` at proxy scale against ``teacher`` for ``config.steps`` steps.

    Args:
        candidate: a full-scale :class:`~archsearch.candidate.Candidate` (scaled here with
            ``candidate.for_proxy``).
        teacher: from :func:`~archsearch.distill.load_teacher`.
        config: the proxy settings.
        progress: ``progress(phase, description, done, total)`` (phases ``captions``,
            ``distill``); ``None``: quiet.
        device: ``'cpu'``, ``'cuda'`` (bf16 autocast), ``'mps'``, or ``None``/``'auto'``.
        threads: torch intra-op threads for this run (restored afterwards); ``None`` leaves them.
        keep_student: return the trained model in ``result.student``.
        prepare_student: called with the freshly built student (an ``ArchUNet`` on the device)
            before training, e.g. to load weights into it and freeze some (the temporal
            search's frozen spatial layers: only parameters that still require gradients train).

    Raises:
        TrialFailed: the loss or the score is NaN / inf.
        ArchsearchError: the candidate's kind or ``config.prediction`` differs from the teacher's.
        torch.OutOfMemoryError, RuntimeError: propagated (a search records the trial failed).
    """
    dev = resolve_device(device)
    # every random draw of the run is seeded here; the caller's RNG state is left as it was
    with torch_threads(threads), seeded(config.seed, dev):
        return _run(candidate, teacher, config, dev, progress, keep_student, prepare_student)


def _run(candidate: Any, teacher: Teacher, proxy: ProxyConfig, dev: torch.device, progress: Progress | None,
         keep_student: bool, prepare_student: Callable[[Any], None] | None = None) -> DistillResult:
    from archsearch.model import build_model

    if candidate.kind != teacher.kind:
        raise ArchsearchError(f"candidate {candidate.id} is kind {candidate.kind!r} but the teacher is "
                              f"{teacher.kind!r} (allowed: a {teacher.kind} teacher)")
    check_prediction(proxy.prediction, teacher.prediction, proxy.source)
    t_start = time.perf_counter()
    frames = proxy.frames if teacher.kind == "video" else None
    small = candidate.for_proxy(
        width_mult=proxy.width_mult,
        resolution=proxy.resolution,
        frames=frames,
        context_dim=teacher.context_dim,
        context_length=teacher.context_length,
        latent_channels=teacher.latent_channels,
    )
    teacher.to(dev)
    src = _sources(teacher, proxy, dev, progress)
    cache, hold, data_fp = src.cache, src.hold, src.data_fp

    torch.manual_seed(proxy.seed)
    student = build_model(small).to(dev)
    if prepare_student is not None:
        prepare_student(student)
    params = sum(p.numel() for p in student.parameters())

    # pair feature taps from one probe forward (no randomness consumed)
    with torch.no_grad(), autocast(dev):
        _, s_feats = student.forward_features(hold["xt"][:1], hold["t"][:1], hold["ctx"][:1])
        _, t_feats = teacher.forward_features(hold["xt"][:1], hold["t"][:1], hold["ctx"][:1])
    pairs = pair_taps({k: tuple(v.shape) for k, v in s_feats.items()},
                      {k: tuple(v.shape) for k, v in t_feats.items()}) if proxy.kd_feature > 0 else []
    torch.manual_seed(proxy.seed + 1)
    projections = make_projections(pairs, s_feats, t_feats).to(dev)
    del s_feats, t_feats

    batches = src.batches(proxy, proxy.kd_output > 0 or bool(pairs))
    log = train_loop(student, batches, proxy, device=dev, pairs=pairs, projections=projections,
                     progress=progress, phase="distill", label=f"{candidate.id} ")

    with torch.no_grad():
        preds = []
        for i in range(0, hold["xt"].shape[0], 16):
            with autocast(dev):
                preds.append(student(hold["xt"][i : i + 16], hold["t"][i : i + 16], hold["ctx"][i : i + 16]).float())
        pred = torch.cat(preds)
        quality = float(torch.mean((pred - hold["teacher"]) ** 2))
        hold_task = float(torch.mean((pred - hold["target"]) ** 2))
        teacher_task = float(torch.mean((hold["teacher"] - hold["target"]) ** 2))
    if not math.isfinite(quality):
        raise TrialFailed(f"held-out score is {quality} after {proxy.steps} steps")
    wall = time.perf_counter() - t_start
    parts, train_s = log.parts, log.train_s
    return DistillResult(
        quality=quality,
        loss_curve=log.loss_curve,
        wall_time_s=wall,
        steps=proxy.steps,
        params=int(params),
        device=str(dev),
        metrics={
            "holdout_task_mse": hold_task,
            "teacher_holdout_task_mse": teacher_task,
            "final_task": parts.get("task", float("nan")),
            "final_kd_output": parts.get("kd_output", float("nan")),
            "final_kd_feature": parts.get("kd_feature", float("nan")),
            "feature_pairs": [list(p) for p in pairs],
            "train_s": train_s,
            "steps_per_s": proxy.steps / train_s if train_s > 0 else float("nan"),
            "proxy_candidate": small.id,
            "teacher": teacher.fingerprint,
            "data": str(cache.root) if cache is not None else "synthetic",
            **({"holdout_split": hold["split"]} if cache is not None else {}),
        },
        student=student if keep_student else None,
    )
