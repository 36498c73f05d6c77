"""``archsearch fewstep``: step distillation of a trained model to a few steps, through ``train``.

:func:`step_distill` reads a trained model folder (``archsearch train``'s output: the model, its
``metrics.json`` naming the teacher, data and settings; or a pipeline folder, whose ``unet/`` is
the model), loads its teacher (or the one given), and runs :func:`~archsearch.distill.train` --
the same loop, accelerate, EMA, checkpoints, resume, logs -- with the student initialised from
the trained weights (``TrainConfig.init_from``), the chosen few-step objective
(``step`` / ``adversarial`` / ``lcm``, :mod:`archsearch.distill._fewstep`) and its settings.
The output folder is a train output: the model with the default guidance folded in,
``fewstep.json`` (scheduler, default steps and guidance, one UNet call per step), the guidance
embedding where there is one, and for a diffusers teacher ``pipeline/`` that draws in that
many steps. ``metrics.json`` gains a ``fewstep`` entry: the method, steps, guidance, calls per
step, and (``evaluate``) the latent MSE of the distilled model's samples and of the trained
model's own samples at the same steps against the teacher's 50-step samples (same prompts and
seeds).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from archsearch._util import atomic_write_text
from archsearch.distill._fewstep import (
    DEFAULT_PROMPTS,
    FEWSTEP_FILE,
    REFERENCE_STEPS,
    FewStepSettings,
    draw_latents,
    fewstep_scheduler,
    sample_mse,
    student_prediction,
    teacher_latents,
)
from archsearch.errors import ArchsearchError, ParameterError

if TYPE_CHECKING:
    from archsearch.distill._loop import LoopCallback, Progress
    from archsearch.distill._teacher import Teacher
    from archsearch.distill._train import TrainResult

__all__ = ["FewStepConfig", "evaluate_fewstep", "step_distill"]

#: TrainConfig settings a few-step run may change (the rest are set by it)
_TRAIN_KEYS = ("warmup", "schedule", "grad_accum", "mixed_precision", "teacher_dtype", "gradient_checkpointing",
               "ema_decay", "optimizer", "clip", "checkpoint_every", "keep", "log_every", "nan", "distributed")


@dataclass
class FewStepConfig:
    """A step-distillation run.

    Attributes:
        method: ``step`` | ``adversarial`` | ``lcm``.
        steps: the steps the distilled model draws in (``--steps-to``).
        train_steps: optimizer steps of the distillation.
        lr, batch, seed: ``None``: the trained run's.
        options: the objective's settings (:class:`~archsearch.distill._fewstep.FewStepSettings`:
            ``guidance``, ``guidance_range``, ``plain_ratio``, ``progressive``, ...).
        train: :class:`~archsearch.distill.TrainConfig` settings (``ema_decay``,
            ``checkpoint_every``, ``mixed_precision``, ...).
        evaluate: draw the comparison of ``metrics.json`` (``prompts``, seeds 0..n-1).
    """

    method: str = "step"
    steps: int = 4
    train_steps: int = 1000
    lr: float | None = None
    batch: int | None = None
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: bool = True
    prompts: tuple[str, ...] = DEFAULT_PROMPTS

    def settings(self) -> FewStepSettings:
        return FewStepSettings.from_options(self.method, {**self.options, "steps": self.steps})

    def check(self) -> FewStepSettings:
        """One-line errors naming the parameter; returns the objective's settings."""
        if not (isinstance(self.train_steps, int) and self.train_steps >= 1):
            raise ParameterError("train_steps", f": bad value {self.train_steps!r} (allowed: an integer >= 1)")
        if self.lr is not None and not self.lr > 0:
            raise ParameterError("lr", f": bad value {self.lr!r} (allowed: a number > 0)")
        if self.batch is not None and self.batch < 1:
            raise ParameterError("batch", f": bad value {self.batch!r} (allowed: an integer >= 1)")
        for key in self.train:
            if key not in _TRAIN_KEYS:
                raise ParameterError(key, f": not a setting of a few-step run (allowed: {', '.join(_TRAIN_KEYS)})")
        return self.settings()


def trained_model(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The model folder of a train output (or of a pipeline folder: its ``unet/``) and the
    run's ``metrics.json`` (``{}`` when there is none)."""
    p = Path(path)
    model_dir = None
    for cand in (p, p / "unet"):
        cfg = cand / "config.json"
        if cfg.is_file():
            try:
                if json.loads(cfg.read_text()).get("_class_name") == "ArchUNet":
                    model_dir = cand
                    break
            except (OSError, ValueError):
                pass
    if model_dir is None:
        raise ParameterError("model", f": {p}: no trained model here (allowed: an archsearch train output folder, "
                                      "or its pipeline folder)")
    if (model_dir / FEWSTEP_FILE).is_file() or (model_dir.parent / FEWSTEP_FILE).is_file():
        raise ParameterError("model", f": {model_dir} is already a few-step model ({FEWSTEP_FILE}); distil the "
                                      "trained model it came from")
    record: dict[str, Any] = {}
    for cand in (model_dir / "metrics.json", model_dir.parent / "metrics.json", model_dir.parent.parent / "metrics.json"):
        if cand.is_file():
            try:
                record = json.loads(cand.read_text())
            except (OSError, ValueError):
                raise ArchsearchError(f"{cand}: not readable JSON (the train run's record)") from None
            break
    return model_dir, record


def _teacher_for(model_dir: Path, record: dict[str, Any], teacher: "Teacher | str | os.PathLike | None", kind: str,
                 device: Any, progress: "Progress | None") -> tuple["Teacher", Any]:
    """The teacher and the proxy settings the trained run used (the teacher may be replaced)."""
    from archsearch.distill._config import ProxyConfig
    from archsearch.distill._teacher import Teacher, load_teacher

    proxy_d = dict(((record.get("settings") or {}).get("proxy")) or {})
    source = str(model_dir / "metrics.json")
    if isinstance(teacher, Teacher):
        base = ProxyConfig.from_dict({k: v for k, v in proxy_d.items() if k != "teacher"}, kind, source)
        return teacher, base
    if teacher is not None:
        proxy_d["teacher"] = {"diffusers": str(teacher)}
        proxy_d.pop("data", None)
    elif not proxy_d.get("teacher"):
        raise ParameterError("teacher", f": {model_dir} has no metrics.json naming its teacher (allowed: a diffusers "
                                        "checkpoint folder)")
    base = ProxyConfig.from_dict(proxy_d, kind, source)
    return load_teacher(base, kind, progress=progress, device=device), base


def step_distill(model: str | os.PathLike, out: str | os.PathLike, config: FewStepConfig | None = None, *,
                 teacher: "Teacher | str | os.PathLike | None" = None, data: str | os.PathLike | None = None,
                 device: Any = "auto", resume: str | os.PathLike | None = None, progress: "Progress | None" = None,
                 callbacks: "list[LoopCallback] | tuple" = (), log: Callable[[str], None] | None = None,
                 overwrite: bool = False) -> "TrainResult":
    """Distil the trained ``model`` into one that draws in ``config.steps`` steps, into ``out``
    (see the module docstring); returns the run's :class:`~archsearch.distill.TrainResult`
    (``metrics["fewstep"]``: method, steps, guidance, calls per step and the comparison).

    Args:
        model: an ``archsearch train`` output folder (or its ``pipeline/``).
        out: the output folder (new or empty; or this run's, with ``resume`` / ``overwrite``).
        config: :class:`FewStepConfig` (default: ``step`` to 4 steps, 1000 training steps).
        teacher: a loaded teacher or a diffusers checkpoint folder (``None``: the trained run's).
        data: a latent cache (``None``: the trained run's data).
        device, resume, progress, callbacks, log, overwrite: as :func:`~archsearch.distill.train`.
    """
    from archsearch.candidate import Candidate
    from archsearch.data import resolve_device
    from archsearch.distill._train import TrainConfig, train

    config = config or FewStepConfig()
    settings = config.check()
    model_dir, record = trained_model(model)
    if Path(out).resolve() == model_dir.resolve() or model_dir.resolve() in Path(out).resolve().parents:
        raise ParameterError("out", f": {out} is the trained model's folder (allowed: a new folder)")
    cand = Candidate.from_dict(json.loads((model_dir / "config.json").read_text())["candidate"],
                               str(model_dir / "config.json"))
    dev = resolve_device(device)
    t, base = _teacher_for(model_dir, record, teacher, cand.kind, dev, progress)
    # refused before any work: a flow teacher's student is flow; lcm needs a DDPM teacher
    fewstep_scheduler(t.process, settings.method, student_prediction(settings, t.process), settings.ddim_steps)
    if data is None and record.get("data") not in (None, "synthetic") and teacher is None:
        data = record["data"]
    proxy = replace(base, steps=config.train_steps, width_mult=1.0, kd_output=0.0, kd_feature=0.0,
                    frames=cand.frames if cand.kind == "video" else base.frames,
                    lr=float(config.lr) if config.lr is not None else base.lr,
                    batch=int(config.batch) if config.batch is not None else base.batch,
                    seed=int(config.seed) if config.seed is not None else base.seed)
    info = {"method": settings.method, "steps": settings.steps, "calls_per_step": 1,
            "guidance": settings.guidance, "trained_from": str(model_dir)}
    known = {f.name for f in fields(TrainConfig)}
    train_kw = {k: v for k, v in config.train.items() if k in known}
    cfg = TrainConfig(proxy=proxy, resolution=cand.resolution, objective=settings.method,
                      objective_options=settings.to_options(), init_from=str(model_dir), init_from_teacher=False,
                      eval_every=0, sample_every=0, meta={"fewstep": info}, **train_kw)
    result = train(cand, t, data, cfg, out, progress, device=device, resume=resume, callbacks=callbacks, log=log,
                   overwrite=overwrite)
    out = Path(out)
    main = int(os.environ.get("RANK", "0")) == 0
    if main and not result.metrics.get("stopped_early") and (out / FEWSTEP_FILE).is_file():
        rec = json.loads((out / FEWSTEP_FILE).read_text())
        info.update(guidance=rec["guidance"], distilled_guidance=rec["distilled_guidance"],
                    scheduler=rec["scheduler"]["class"], prediction=rec["prediction"])
        if config.evaluate:
            info["quality"] = evaluate_fewstep(out, model_dir, t, steps=settings.steps, prompts=config.prompts,
                                               device=dev)
        metrics = json.loads((out / "metrics.json").read_text())
        metrics["fewstep"] = info
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str))
    result.metrics["fewstep"] = info
    return result


def evaluate_fewstep(distilled: str | os.PathLike, trained: str | os.PathLike | None, teacher: "Teacher", *,
                     steps: int | None = None, guidance: float | None = None,
                     prompts: tuple[str, ...] | list[str] = DEFAULT_PROMPTS, seeds: list[int] | None = None,
                     reference_steps: int = REFERENCE_STEPS, device: Any = "cpu") -> dict[str, Any]:
    """The latent MSE against the teacher's ``reference_steps``-step samples (same prompts and
    seeds, guidance ``guidance``: default the distilled one) of the distilled model at ``steps``
    (default its own) and at 1 step, and of the ``trained`` model it came from at the same
    steps, classifier-free guided (two calls per step), with its own sampler (``trained``: what
    ``generate`` draws with it) and with the distilled model's (``trained_same_scheduler``).

    Returns ``{"steps", "guidance", "reference_steps", "prompts", "calls_per_step": {...},
    "mse": {"<n>": {"distilled", "trained", "trained_same_scheduler"}}, "mse_distilled",
    "mse_trained"}`` (the last two at ``steps``). Step distillation follows the teacher's
    trajectory; adversarial and LCM draw as consistency models (fresh noise between steps), so
    their same-seed comparison is their first step."""
    from archsearch.model import ArchUNet

    rec = json.loads((Path(distilled) / FEWSTEP_FILE).read_text())
    steps = int(steps or rec["steps"])
    g = float(guidance if guidance is not None else rec.get("distilled_guidance", 1.0))
    net = ArchUNet.from_pretrained(distilled)
    c = net.candidate
    shape = (c.latent_channels, c.frames, c.resolution, c.resolution) if c.kind == "video" else \
        (c.latent_channels, c.resolution, c.resolution)
    seeds = list(seeds if seeds is not None else range(len(prompts)))
    prompts = list(prompts)
    ref = teacher_latents(teacher, shape, prompts, seeds, reference_steps, g, device)
    mse: dict[str, dict[str, float]] = {}
    for n in sorted({1, steps}):
        row = {"distilled": sample_mse(draw_latents(distilled, teacher, prompts, seeds, n,
                                                    g if rec.get("guidance_embedding") else None, device), ref)}
        if trained is not None:
            row["trained"] = sample_mse(draw_latents(trained, teacher, prompts, seeds, n, g, device), ref)
            row["trained_same_scheduler"] = sample_mse(draw_latents(trained, teacher, prompts, seeds, n, g, device,
                                                                    scheduler_of=distilled), ref)
        mse[str(n)] = row
    out: dict[str, Any] = {"steps": steps, "guidance": g, "reference_steps": reference_steps, "prompts": len(prompts),
                           "calls_per_step": {"distilled": 1, "trained": 2 if g != 1 else 1}, "mse": mse,
                           "mse_distilled": mse[str(steps)]["distilled"]}
    if trained is not None:
        out["mse_trained"] = mse[str(steps)]["trained"]
    return out
