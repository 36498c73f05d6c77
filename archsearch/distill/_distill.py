"""The proxy distillation run: one short, seeded training of a candidate against the teacher.

A trial trains the candidate at proxy scale (``candidate.for_proxy(...)``: width multiplier,
latent resolution, frames; the teacher's text encoder and latent channels) for ``steps``
AdamW steps on the built-in synthetic data, with, per sample ``i`` of a batch:

* ``task_i = mean((s_i - y_i)^2)`` -- the task loss against the teacher's target ``y`` (noise,
  velocity or flow, :class:`~archsearch.search._teacher.NoiseProcess`);
* ``out_i = mean((s_i - p_i)^2)`` -- output KD against the teacher's prediction ``p``;
* ``feat_i = (1/P) sum_k mean((proj_k(f^s_k,i) - f^t_k,i)^2)`` -- feature KD over the ``P`` pairs
  of stage outputs (:func:`pair_taps`: within the down / mid / up path, taps of the same
  spatial size paired in order, aligned at the deepest one; ``proj_k`` a 1x1 convolution,
  trained with the student, when the widths differ, else the identity);

and the timestep-aware rescaling of SnapGen: every KD term is rescaled to the task loss of the
same sample (so, of the same timestep) with a detached ratio::

    loss = mean_i [ task_i + kd_output * sg(task_i / (out_i + eps)) * out_i
                           + kd_feature * sg(task_i / (feat_i + eps)) * feat_i ],   eps = 1e-8

(``sg`` = stop-gradient). Each KD term thus carries the task loss's magnitude at that timestep,
and ``kd_output`` / ``kd_feature`` weigh them relative to it.

**Quality** (lower is better) is the output-KD MSE ``mean((student - teacher)^2)`` on a fixed
held-out batch, computed after the last step: ``holdout`` items of the ``holdout`` split of the
synthetic data, noise from a constant seed and timesteps spread evenly over the schedule, all
independent of the training seed; the same candidate, proxy settings, teacher and device give
the same score.

Training: AdamW (``lr``, ``weight_decay``), gradient norm clipped to 1, constant learning rate;
the student's initialisation is seeded by ``seed`` and step ``k``'s batch, noise and timesteps
by ``(seed, k)`` alone, so every candidate of a study sees the same batches (common random
numbers) and the teacher's outputs on them are computed once per process and reused. CUDA runs
under bf16 autocast.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from archsearch._util import short_hash
from archsearch.errors import ArchsearchError, SpecError
from archsearch.search._teacher import PREDICTIONS, Teacher, autocast, resolve_device

__all__ = [
    "HOLDOUT_SEED",
    "ProxyConfig",
    "ProxyResult",
    "TrialFailed",
    "clear_caches",
    "distill_loss",
    "pair_taps",
    "run_proxy",
]

HOLDOUT_SEED = 20_240_617  # the held-out noise: constant, independent of every training seed
_EPS = 1e-8


class TrialFailed(RuntimeError):
    """A proxy run that cannot give a score (NaN / inf loss). ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- configuration

_TEACHER_BUILTIN_KEYS = ("builtin", "train_steps", "width", "batch", "lr", "seed", "latent_channels", "data_size")
_TEACHER_DIFFUSERS_KEYS = ("diffusers", "subfolder", "scheduler", "data_size")


@dataclass
class ProxyConfig:
    """The ``proxy:`` section of a spec (defaults below are used for absent keys).

    Attributes:
        width_mult: channel multiplier of the proxy-scale student (``0 < w <= 4``).
        resolution: latent side (H = W) of the proxy run.
        frames: frames of the proxy run (video spaces).
        steps: training steps K per trial.
        batch: batch size (default 8 for image, 2 clips for video).
        lr, weight_decay: AdamW settings.
        seed: seed of the student's initialisation and of the training batches.
        holdout: size of the fixed held-out batch that gives the quality score.
        kd_output, kd_feature: weights of the rescaled KD terms (0 turns one off).
        prediction: ``epsilon | v_prediction | flow``; ``None`` = the teacher's (built-in: epsilon).
        teacher: ``{builtin: image|video, train_steps, width, batch, lr, seed}`` or
            ``{diffusers: PATH, subfolder: unet}``.
        source: the spec file (error messages).
    """

    width_mult: float = 0.5
    resolution: int = 16
    frames: int = 4
    steps: int = 40
    batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.01
    seed: int = 0
    holdout: int = 32
    kd_output: float = 1.0
    kd_feature: float = 1.0
    prediction: str | None = None
    teacher: dict[str, Any] = field(default_factory=dict)
    source: str = "<proxy>"

    @classmethod
    def from_space(cls, space: Any) -> "ProxyConfig":
        """Read and validate ``space.proxy``; bad values raise the spec's one-line SpecError."""
        n_stages = getattr(space, "n_stages", None)
        return cls._parse(space.proxy, space.kind, str(space.path), space.fail, n_stages)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, kind: str = "image", source: str = "<proxy>") -> "ProxyConfig":
        """Validate a plain ``proxy:`` mapping (tests, notebooks)."""

        def fail(path: tuple, value: Any, allowed: str | None = None, message: str | None = None):
            key = ".".join(str(p) for p in path)
            msg = message or f"bad value {value!r}"
            raise SpecError(f"{source}: {key}: {msg}" + (f" (allowed: {allowed})" if allowed else ""))

        return cls._parse(d or {}, kind, source, fail, None)

    @classmethod
    def _parse(cls, d: dict[str, Any], kind: str, source: str, fail: Callable, n_stages: int | None) -> "ProxyConfig":
        if not isinstance(d, dict):
            fail(("proxy",), d, "a mapping")
        known = [f for f in cls.__dataclass_fields__ if f != "source"]
        for key in d:
            if key not in known:
                fail(("proxy", key), key, ", ".join(known), message="unknown key")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        out: dict[str, Any] = {"source": source}
        ints = {"resolution": 4, "frames": 1, "steps": 1, "batch": 1, "holdout": 1, "seed": 0}
        for key, lo in ints.items():
            if key in d:
                if not (is_int(d[key]) and d[key] >= lo):
                    fail(("proxy", key), d[key], f"an integer >= {lo}")
                out[key] = int(d[key])
        if "width_mult" in d:
            v = d["width_mult"]
            if not (is_num(v) and 0 < v <= 4):
                fail(("proxy", "width_mult"), v, "a number in (0, 4]")
            out["width_mult"] = float(v)
        for key in ("lr",):
            if key in d:
                if not (is_num(d[key]) and d[key] > 0):
                    fail(("proxy", key), d[key], "a number > 0")
                out[key] = float(d[key])
        for key in ("weight_decay", "kd_output", "kd_feature"):
            if key in d:
                if not (is_num(d[key]) and d[key] >= 0):
                    fail(("proxy", key), d[key], "a number >= 0")
                out[key] = float(d[key])
        if d.get("prediction") is not None:
            if d["prediction"] not in PREDICTIONS:
                fail(("proxy", "prediction"), d["prediction"], ", ".join(PREDICTIONS))
            out["prediction"] = d["prediction"]
        res = out.get("resolution", cls.resolution)
        if n_stages:
            q = 2 ** (n_stages - 1)
            if res % q:
                fail(("proxy", "resolution"), res, f"a multiple of {q} (the space has {n_stages} stages)")
        if kind == "video" and "batch" not in out:
            out["batch"] = 2
        out["teacher"] = cls._parse_teacher(d.get("teacher"), kind, fail)
        return cls(**out)

    @staticmethod
    def _parse_teacher(t: Any, kind: str, fail: Callable) -> dict[str, Any]:
        path = ("proxy", "teacher")
        if t is None:
            return {"builtin": kind}
        if isinstance(t, str):  # shorthand: teacher: builtin
            if t != "builtin":
                fail(path, t, "builtin, or a mapping {builtin: image|video} / {diffusers: PATH, subfolder: unet}")
            return {"builtin": kind}
        if not isinstance(t, dict):
            fail(path, t, "a mapping {builtin: image|video} or {diffusers: PATH, subfolder: unet}")
        if "builtin" in t and "diffusers" in t:
            fail(path + ("diffusers",), t["diffusers"], "either builtin or diffusers, not both")
        if "diffusers" in t:
            for key in t:
                if key not in _TEACHER_DIFFUSERS_KEYS:
                    fail(path + (key,), key, ", ".join(_TEACHER_DIFFUSERS_KEYS), message="unknown key")
            for key in ("diffusers", "subfolder", "scheduler"):
                if key in t and not (isinstance(t[key], str) and (t[key] or key == "subfolder")):
                    fail(path + (key,), t[key], "a folder path (string)")
            if "data_size" in t and not (isinstance(t["data_size"], int) and not isinstance(t["data_size"], bool)
                                         and t["data_size"] >= 1):
                fail(path + ("data_size",), t["data_size"], "an integer >= 1")
            return {"subfolder": "unet", **t}
        for key in t:
            if key not in _TEACHER_BUILTIN_KEYS:
                fail(path + (key,), key, ", ".join(_TEACHER_BUILTIN_KEYS + ("diffusers",)), message="unknown key")
        out = dict(t)
        b = out.setdefault("builtin", kind)
        if b != kind:
            fail(path + ("builtin",), b, f"{kind} (the space's kind)")
        mins = {"train_steps": 1, "width": 8, "batch": 1, "seed": 0, "latent_channels": 1, "data_size": 1}
        for key, lo in mins.items():
            if key in out:
                v = out[key]
                if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
                    fail(path + (key,), v, f"an integer >= {lo}")
        if "width" in out and out["width"] % 32:
            fail(path + ("width",), out["width"], "a multiple of 32 (attention head size)")
        if "lr" in out:
            v = out["lr"]
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
                fail(path + ("lr",), v, "a number > 0")
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data (recorded with the study)."""
        d = asdict(self)
        d.pop("source")
        return d


@dataclass
class ProxyResult:
    """The outcome of one proxy run.

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


# --------------------------------------------------------------------------- losses


def _segment(tap: str) -> tuple[str, int]:
    head, _, idx = tap.partition(".")
    return head, int(idx) if idx.isdigit() else 0


def pair_taps(
    student: dict[str, tuple[int, ...]], teacher: dict[str, tuple[int, ...]]
) -> list[tuple[str, str]]:
    """Pair student and teacher feature taps of the same spatial size, in order, path by path.

    ``student`` / ``teacher`` map tap name (``'down.i'``, ``'mid'``, ``'up.i'``) to a feature
    shape ``(B, C, *spatial)``. Within each path (down, mid, up) the taps of one spatial size
    are paired in network order, aligned at the end of that size's run: the last student tap
    at 16x16 with the last teacher tap at 16x16 (the deepest features at that resolution), the
    one before with the one before, and so on. Taps with no partner are left out.
    """
    pairs: list[tuple[str, str]] = []
    for seg in ("down", "mid", "up"):
        s_taps = sorted((k for k in student if _segment(k)[0] == seg), key=lambda k: _segment(k)[1])
        t_taps = sorted((k for k in teacher if _segment(k)[0] == seg), key=lambda k: _segment(k)[1])
        by_size: dict[tuple[int, ...], list[str]] = {}
        for k in t_taps:
            by_size.setdefault(tuple(teacher[k][2:]), []).append(k)
        s_by_size: dict[tuple[int, ...], list[str]] = {}
        for k in s_taps:
            s_by_size.setdefault(tuple(student[k][2:]), []).append(k)
        seg_pairs = []
        for size, s_list in s_by_size.items():
            t_list = by_size.get(size, [])
            n = min(len(s_list), len(t_list))
            if n:
                seg_pairs += list(zip(s_list[-n:], t_list[-n:]))
        pairs += sorted(seg_pairs, key=lambda p: s_taps.index(p[0]))
    return pairs


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.float() - b.float()) ** 2).flatten(1).mean(1)


def distill_loss(
    student_pred: torch.Tensor,
    target: torch.Tensor,
    teacher_pred: torch.Tensor,
    student_feats: dict[str, torch.Tensor],
    teacher_feats: dict[str, torch.Tensor],
    pairs: list[tuple[str, str]],
    projections: nn.ModuleDict,
    kd_output: float = 1.0,
    kd_feature: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The rescaled multi-level objective of the module docstring; returns ``(loss, parts)``."""
    task = _per_sample_mse(student_pred, target)
    loss = task
    parts: dict[str, float] = {"task": float(task.mean().detach())}
    if kd_output > 0:
        out = _per_sample_mse(student_pred, teacher_pred)
        w = (task / (out + _EPS)).detach()
        loss = loss + kd_output * w * out
        parts["kd_output"] = float(out.mean().detach())
    if kd_feature > 0 and pairs:
        terms = []
        for s, t in pairs:
            fs = student_feats[s]
            proj = projections[_key(s)] if _key(s) in projections else None
            if proj is not None:
                fs = proj(fs)
            per_row = _per_sample_mse(fs, teacher_feats[t])
            # video features are (B * T, C, H, W), sample-major: average each sample's frames
            terms.append(per_row.view(task.shape[0], -1).mean(1))
        feat = torch.stack(terms).mean(0)
        w = (task / (feat + _EPS)).detach()
        loss = loss + kd_feature * w * feat
        parts["kd_feature"] = float(feat.mean().detach())
    return loss.mean(), parts


def _key(tap: str) -> str:
    return tap.replace(".", "_")  # ModuleDict keys cannot hold dots


def _projection(c_in: int, c_out: int, ndim: int) -> nn.Module:
    conv = nn.Conv3d if ndim == 5 else nn.Conv2d
    return conv(c_in, c_out, kernel_size=1)


# --------------------------------------------------------------------------- caches (per process)

_EMB_CACHE: dict[str, torch.Tensor] = {}
_HOLDOUT_CACHE: dict[str, dict[str, torch.Tensor]] = {}


def _embeddings(teacher: Teacher, data: Any) -> torch.Tensor:
    """Caption embeddings of a dataset: memory, then disk cache, then the encoder."""
    key = short_hash([teacher.fingerprint, data.fingerprint, teacher.text.fingerprint])
    if key not in _EMB_CACHE:
        if len(_EMB_CACHE) >= 4:
            _EMB_CACHE.pop(next(iter(_EMB_CACHE)))
        root = teacher.info.get("cache_root")
        _EMB_CACHE[key] = teacher.text.encode_dataset(
            data.captions(), cache_dir=Path(root) / "text" if root else None
        )
    return _EMB_CACHE[key]


def _holdout(teacher: Teacher, proxy: ProxyConfig, device: torch.device) -> dict[str, torch.Tensor]:
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
    ctx = _embeddings(teacher, data).float()
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


class _StepCache:
    """Training batches with the teacher's outputs on them, shared by the trials of a process.

    Every trial with the same teacher, data, batch and seed sees the same batch at step ``k``
    (common random numbers), so the teacher's forward pass is computed once per step and
    reused. Bounded by ``$ARCHSEARCH_TEACHER_CACHE_MB`` (default 1024) over all runs; once
    full, further steps are computed afresh (identical values).
    """

    budget = int(os.environ.get("ARCHSEARCH_TEACHER_CACHE_MB", "1024")) * 2**20
    used = 0
    runs: dict[str, dict[int, tuple]] = {}

    @classmethod
    def get(cls, key: str, step: int) -> tuple | None:
        return cls.runs.get(key, {}).get(step)

    @classmethod
    def put(cls, key: str, step: int, entry: tuple) -> None:
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


def clear_caches() -> None:
    """Drop the per-process caches (caption embeddings, held-out batches, teacher outputs)."""
    _EMB_CACHE.clear()
    _HOLDOUT_CACHE.clear()
    _StepCache.clear()


def _step_seed(seed: int, step: int) -> int:
    """The seed of training step ``step``'s batch, noise and timesteps (independent streams)."""
    return int(np.random.SeedSequence([seed, step, 0x5EED]).generate_state(1, dtype=np.uint64)[0] >> 1)


# --------------------------------------------------------------------------- the run


def run_proxy(
    candidate: Any,
    teacher: Teacher,
    proxy: ProxyConfig,
    device: str | torch.device | None = "cpu",
    threads: int | None = None,
    progress: bool = False,
    keep_student: bool = False,
) -> ProxyResult:
    """Train ``candidate`` at proxy scale against ``teacher`` for ``proxy.steps`` steps.

    Args:
        candidate: a full-scale :class:`~archsearch.candidate.Candidate` (scaled here with
            ``candidate.for_proxy``).
        teacher: from :func:`~archsearch.search._teacher.load_teacher`.
        proxy: the proxy settings.
        device: ``'cpu'``, ``'cuda'`` (bf16 autocast), ``'mps'``, or ``None``/``'auto'``.
        threads: torch intra-op threads for this run (restored afterwards); ``None`` leaves them.
        progress: show a rich progress bar.
        keep_student: return the trained model in ``result.student`` (``archsearch train``).

    Raises:
        TrialFailed: the loss or the score is NaN / inf.
        ArchsearchError: the candidate's kind differs from the teacher's.
        torch.OutOfMemoryError, RuntimeError: propagated (the caller records the trial failed).
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        # every random draw of the run is seeded here; the caller's RNG state is left as it was
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(proxy.seed)
            return _run(candidate, teacher, proxy, dev, progress, keep_student)
    finally:
        if threads:
            torch.set_num_threads(old_threads)


def _run(candidate: Any, teacher: Teacher, proxy: ProxyConfig, dev: torch.device, progress: bool,
         keep_student: bool = False) -> ProxyResult:
    from archsearch.model import build_model

    if candidate.kind != teacher.kind:
        raise ArchsearchError(f"candidate {candidate.id} is kind {candidate.kind!r} but the teacher is "
                              f"{teacher.kind!r} (allowed: a {teacher.kind} teacher)")
    if proxy.prediction is not None and proxy.prediction != teacher.prediction:
        raise ArchsearchError(f"{proxy.source}: proxy.prediction: {proxy.prediction!r} does not match the "
                              f"teacher's (allowed: {teacher.prediction})")
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
    process = teacher.process
    data = teacher.dataset(proxy.resolution, frames or 1)
    emb = _embeddings(teacher, data)
    hold = _holdout(teacher, proxy, dev)

    torch.manual_seed(proxy.seed)
    student = build_model(small).to(dev)
    params = sum(p.numel() for p in student.parameters())

    # pair feature taps from one probe forward (no randomness consumed)
    with torch.no_grad(), autocast(dev):
        _, s_feats = student.forward_features(hold["xt"][:1], hold["t"][:1], hold["ctx"][:1])
        _, t_feats = teacher.forward_features(hold["xt"][:1], hold["t"][:1], hold["ctx"][:1])
    pairs = pair_taps({k: tuple(v.shape) for k, v in s_feats.items()},
                      {k: tuple(v.shape) for k, v in t_feats.items()}) if proxy.kd_feature > 0 else []
    torch.manual_seed(proxy.seed + 1)
    projections = nn.ModuleDict({
        _key(s): _projection(s_feats[s].shape[1], t_feats[t].shape[1], s_feats[s].dim())
        for s, t in pairs if s_feats[s].shape[1] != t_feats[t].shape[1]
    }).to(dev)
    del s_feats, t_feats

    params_all = list(student.parameters()) + list(projections.parameters())
    opt = torch.optim.AdamW(params_all, lr=proxy.lr, weight_decay=proxy.weight_decay)
    emb_dev = emb.to(dev)
    cache_key = short_hash([teacher.fingerprint, data.fingerprint, proxy.batch, proxy.seed, str(dev),
                            str(torch.get_default_dtype())])
    curve: list[float] = []
    parts: dict[str, float] = {}
    student.train()
    t_train = time.perf_counter()
    bar, task = _progress(progress, proxy.steps, candidate.id)
    try:
        for step in range(proxy.steps):
            entry = _StepCache.get(cache_key, step)
            if entry is None:
                g = torch.Generator().manual_seed(_step_seed(proxy.seed, step))
                idx = torch.randint(0, len(data), (proxy.batch,), generator=g)
                x0 = data.latents(idx)
                noise = torch.randn(x0.shape, generator=g)
                t = process.sample_timesteps(proxy.batch, g)
                xt = process.add_noise(x0, noise, t).to(dev)
                target = process.target(x0, noise, t).to(dev)
                ctx = emb_dev[idx.to(dev)].float()
                t = t.to(dev)
                with autocast(dev):
                    t_pred, t_feats = teacher.forward_features(xt, t, ctx)
                entry = (xt, t, ctx, target, t_pred, t_feats)
                _StepCache.put(cache_key, step, entry)
            xt, t, ctx, target, t_pred, t_feats = entry
            with autocast(dev):
                s_pred, s_feats = student.forward_features(xt, t, ctx)
                loss, parts = distill_loss(s_pred, target, t_pred, s_feats, t_feats, pairs, projections,
                                           proxy.kd_output, proxy.kd_feature)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrialFailed(f"loss is {value} at step {step + 1} of {proxy.steps}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params_all, 1.0)
            opt.step()
            curve.append(value)
            if bar is not None:
                bar.update(task, advance=1, loss=value)
    finally:
        if bar is not None:
            bar.stop()
    train_s = time.perf_counter() - t_train

    student.eval()
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
    return ProxyResult(
        quality=quality,
        loss_curve=curve,
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
        },
        student=student if keep_student else None,
    )


def _progress(enabled: bool, total: int, name: str) -> tuple[Any, Any]:
    if not enabled:
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn(f"proxy {name}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), transient=True)
    bar.start()
    return bar, bar.add_task("proxy", total=total, loss=float("nan"))
