"""Few-step generation: what the step-distillation objectives share.

A trained student drawn by its scheduler in 25-50 guided steps (2 UNet calls each) is
distilled into one that draws in ``steps`` (8, 4, 1) with one call per step. Three objectives
(``TrainConfig.objective``, registered in :data:`~archsearch.distill.OBJECTIVES`) go through the
one training loop: ``step`` (SnapFusion's CFG-aware step distillation, :mod:`._step_distill`),
``adversarial`` (SnapGen / SnapGen-V, :mod:`._adversarial`) and ``lcm`` (latent consistency
distillation, :mod:`._lcm`). This module holds what they share:

* :class:`FewStepSettings` -- the objective's settings (``TrainConfig.objective_options``),
  one-line errors naming the setting;
* the schedules: :func:`fewstep_scheduler` (the diffusers scheduler the distilled model draws
  with: DDIM with ``trailing`` spacing and the clean end as its last target, ``LCMScheduler``
  for ``lcm``, flow-matching Euler for a flow teacher) and :class:`FewStepSchedule` (its
  timesteps and where each step lands, what the objectives train on);
  :func:`reference_scheduler` (the teacher's own DDIM / Euler sampler: the 50-step reference);
* the parameterisations: the student predicts ``v`` (``flow`` for a flow teacher; SnapFusion's
  choice: an epsilon network cannot say where a step from pure noise lands), the teacher's
  output is read as ``(x0, eps)`` (:func:`~archsearch.distill._noise.to_x0_eps`) and converted;
  an epsilon teacher is never asked above its own 50-step sampler's first timestep (where its
  ``x0`` is ``(x - eps) / 5e-5`` on a cosine schedule): a noisier input is read there, as its
  own sampler reads pure noise;
* :class:`GuidanceEmbedding` -- LCM's guidance-scale embedding (``w`` as Fourier features, a
  zero-initialised projection added to the student's timestep features, diffusers'
  ``time_cond_proj_dim`` / ``timestep_cond``) without touching the model: a forward hook on the
  time embedding. The saved model has the default guidance folded into the time embedding's
  bias (a plain ``ArchUNet`` that draws at it, exportable as any other); the embedding file
  beside it changes the guidance (the delta from the folded one);
* :class:`FewStepObjective` -- the base of the three objectives: the batch's clean sample and
  noise, the teacher's guided denoising and multi-step DDIM moves, a seeded random stream
  carried by checkpoints, and :meth:`FewStepObjective.export` (``fewstep.json``: scheduler,
  steps, guidance, calls per step);
* :func:`draw_latents` / :func:`teacher_latents` -- latents drawn from fixed prompts and seeds (what the
  tests, the benchmark and ``metrics.json`` compare), :func:`fewstep_defaults` -- the
  default steps and guidance a pipeline folder records.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from archsearch._util import atomic_write_text
from archsearch.distill._noise import from_x0_eps, to_x0_eps
from archsearch.distill._objective import Objective
from archsearch.errors import ArchsearchError, ParameterError

if TYPE_CHECKING:
    from archsearch.data import Batch
    from archsearch.distill._objective import ObjectiveContext
    from archsearch.distill._teacher import Teacher

__all__ = [
    "FEWSTEP_FILE",
    "GUIDANCE_FILE",
    "FEWSTEP_METHODS",
    "FewStepObjective",
    "FewStepSchedule",
    "FewStepSettings",
    "GuidanceEmbedding",
    "draw_latents",
    "fewstep_scheduler",
    "guidance_scale_embedding",
    "fewstep_defaults",
    "reference_scheduler",
    "sample_mse",
    "teacher_latents",
]

#: The few-step objectives (``TrainConfig.objective``).
FEWSTEP_METHODS = ("step", "adversarial", "lcm")
#: beside a distilled model and in its pipeline folder: how it draws (steps, guidance, scheduler)
FEWSTEP_FILE = "fewstep.json"
#: beside a distilled model: the guidance-scale embedding's projection (safetensors)
GUIDANCE_FILE = "guidance_embedding.safetensors"
#: the teacher's reference sampler: its own DDIM / Euler steps
REFERENCE_STEPS = 50
DEFAULT_PROMPTS = ("a red circle", "a blue square at the top", "a green cat", "a small red dog")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class FewStepSettings:
    """Settings of a few-step objective (``TrainConfig.objective_options``; absent keys take
    these defaults).

    Attributes:
        steps: the steps the distilled model draws in.
        prediction: the student's parameterisation (``None``: ``v_prediction``, ``flow`` for a
            flow teacher; ``epsilon`` is allowed where the schedule's last ``alpha`` is not tiny).
        guidance: the guidance scale drawn with by default (folded into the saved model;
            ``adversarial``: the one guidance distilled).
        guidance_range: ``[lo, hi]``: the guidance scale sampled per sample (``step``, ``lcm``;
            SnapFusion samples in [2, 14]); the student takes it through :class:`GuidanceEmbedding`.
        embed_dim: the guidance embedding's width (LCM's ``time_cond_proj_dim``).
        plain_ratio: ``step``: share of samples with the plain (unguided, scale 1) target.
        steps_from: ``step``: the teacher's steps (default ``2 * steps``: its two-step move).
        progressive: ``step``: halve from ``steps_from`` to ``steps`` in rounds (32 -> 16 -> 8 ...),
            the previous round's student as the next round's teacher; else one direct round.
        teacher_steps: ``adversarial``: the teacher's DDIM steps over the whole range for the KD
            target (its multi-step result from the student's input).
        kd_weight, adv_weight: ``adversarial``: the KD and the adversarial (hinge) terms.
        disc_lr: ``adversarial``: the discriminator heads' learning rate (default: the run's).
        disc_backbone: ``teacher`` | ``student`` (a frozen copy of the initial student): whose
            encoder features the discriminator heads read.
        disc_width: ``adversarial``: the heads' channels.
        ddim_steps: ``lcm``: the DDIM solver's skipping schedule (LCMScheduler's
            ``original_inference_steps``).
        loss: ``lcm``: ``huber`` | ``l2``; ``huber_c``: the Huber constant.
        target_decay: ``lcm``: the EMA decay of the target network.
        freeze_spatial: keep a video student's spatial (non-temporal) layers frozen.
    """

    method: str = "step"
    steps: int = 4
    prediction: str | None = None
    guidance: float = 7.5
    guidance_range: tuple[float, float] = (2.0, 14.0)
    embed_dim: int = 256
    plain_ratio: float = 0.25
    steps_from: int | None = None
    progressive: bool = False
    teacher_steps: int = 16
    kd_weight: float = 1.0
    adv_weight: float = 0.1
    disc_lr: float | None = None
    disc_backbone: str = "teacher"
    disc_width: int = 32
    ddim_steps: int = 50
    loss: str = "huber"
    huber_c: float = 0.001
    target_decay: float = 0.95
    freeze_spatial: bool = False

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "method"]

    @classmethod
    def from_options(cls, method: str, options: dict[str, Any] | None) -> "FewStepSettings":
        """Validated settings of ``method`` (:data:`FEWSTEP_METHODS`); a bad value raises a one-line
        :class:`~archsearch.errors.ParameterError` naming the setting and what is allowed."""
        if method not in FEWSTEP_METHODS:
            raise ParameterError("method", f": bad value {method!r} (allowed: {', '.join(FEWSTEP_METHODS)})")
        opts = dict(options or {})
        known = cls.keys()
        for key in opts:
            if key not in known:
                raise ParameterError(key, f": unknown setting of a few-step objective (allowed: {', '.join(known)})")

        def bad(key: str, allowed: str) -> None:
            raise ParameterError(key, f": bad value {opts[key]!r} (allowed: {allowed})")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for key, lo in (("steps", 1), ("embed_dim", 2), ("teacher_steps", 1), ("disc_width", 8), ("ddim_steps", 2)):
            if key in opts and not (is_int(opts[key]) and opts[key] >= lo):
                bad(key, f"an integer >= {lo}")
        for key in ("guidance",):
            if key in opts and not (is_num(opts[key]) and opts[key] >= 1):
                bad(key, "a number >= 1")
        for key in ("kd_weight", "adv_weight", "huber_c"):
            if key in opts and not (is_num(opts[key]) and opts[key] >= 0):
                bad(key, "a number >= 0")
        for key in ("plain_ratio", "target_decay"):
            if key in opts and not (is_num(opts[key]) and 0 <= opts[key] <= 1):
                bad(key, "a number in [0, 1]")
        if opts.get("disc_lr") is not None and not (is_num(opts["disc_lr"]) and opts["disc_lr"] > 0):
            bad("disc_lr", "a number > 0")
        if "guidance_range" in opts:
            r = opts["guidance_range"]
            if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(is_num(v) for v in r) and 1 <= r[0] <= r[1]):
                bad("guidance_range", "two numbers lo <= hi, lo >= 1")
            opts["guidance_range"] = (float(r[0]), float(r[1]))
        if opts.get("prediction") is not None and opts["prediction"] not in ("epsilon", "v_prediction", "flow"):
            bad("prediction", "epsilon, v_prediction, flow")
        if "disc_backbone" in opts and opts["disc_backbone"] not in ("teacher", "student"):
            bad("disc_backbone", "teacher, student")
        if "loss" in opts and opts["loss"] not in ("huber", "l2"):
            bad("loss", "huber, l2")
        for key in ("progressive", "freeze_spatial"):
            if key in opts and not isinstance(opts[key], bool):
                bad(key, "true, false")
        out = cls(method=method, **{k: (float(v) if k in ("guidance",) else v) for k, v in opts.items()})
        if out.steps_from is not None:
            if not (is_int(out.steps_from) and out.steps_from > out.steps):
                raise ParameterError("steps_from", f": bad value {out.steps_from!r} (allowed: an integer > steps "
                                                   f"({out.steps}))")
            ratio = out.steps_from // out.steps
            if out.steps_from % out.steps or (out.progressive and ratio & (ratio - 1)):
                allowed = f"steps x 2^k ({out.steps * 2}, {out.steps * 4}, ...)" if out.progressive else \
                    f"a multiple of steps ({out.steps})"
                raise ParameterError("steps_from", f": bad value {out.steps_from} (allowed: {allowed})")
        return out

    @property
    def teacher_from(self) -> int:
        """``step``: the teacher's steps of the first round."""
        return int(self.steps_from or 2 * self.steps)

    @property
    def embeds_guidance(self) -> bool:
        """Whether the student takes the guidance scale as an input (``step``, ``lcm``)."""
        return self.method in ("step", "lcm")

    def to_options(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("method")
        d["guidance_range"] = list(self.guidance_range)
        return d


def student_prediction(settings: FewStepSettings, process: Any) -> str:
    """The student's parameterisation: the setting, else ``v_prediction`` (``flow`` for a flow
    teacher). A flow teacher's student stays ``flow``; a DDPM teacher's cannot be ``flow``."""
    pred = settings.prediction
    if process.prediction == "flow":
        if pred not in (None, "flow"):
            raise ParameterError("prediction", f": bad value {pred!r} for a flow teacher (allowed: flow)")
        return "flow"
    if pred == "flow":
        raise ParameterError("prediction", ": bad value 'flow' for an epsilon or v teacher (allowed: epsilon, "
                                           "v_prediction)")
    return pred or "v_prediction"


# --------------------------------------------------------------------------- schedules


def _betas(process: Any) -> dict[str, Any]:
    cfg = process.config
    return {k: cfg[k] for k in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end",
                                "rescale_betas_zero_snr") if k in cfg}


def fewstep_scheduler(process: Any, method: str, prediction: str, ddim_steps: int = 50) -> Any:
    """The diffusers scheduler a distilled model draws with (its config is what the exported
    pipeline ships): flow-matching Euler for a flow teacher; ``LCMScheduler`` for ``lcm`` (a
    ``ddim_steps`` skipping schedule) and ``adversarial`` (``ddim_steps`` = its steps: exactly
    the timesteps it was trained at; the estimate re-noised with fresh noise between steps);
    else (``step``) DDIM with ``trailing`` spacing (the first step at the last timestep) whose
    last step lands on the clean sample (``set_alpha_to_one``)."""
    import diffusers

    if process.prediction == "flow":
        if method == "lcm":
            raise ParameterError("method", ": lcm needs an epsilon or v_prediction teacher (LCMScheduler); this "
                                           "teacher is flow (allowed: step, adversarial)")
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=process.num_train_timesteps,
                                                         shift=process.shift)
    if method in ("lcm", "adversarial"):  # adversarial: its own timesteps as the "skipping schedule"
        return diffusers.LCMScheduler(**_betas(process), prediction_type=prediction,
                                      original_inference_steps=int(ddim_steps), clip_sample=False,
                                      set_alpha_to_one=True, timestep_scaling=10.0)
    return diffusers.DDIMScheduler(**_betas(process), prediction_type=prediction, clip_sample=False,
                                   set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing")


def reference_scheduler(process: Any, prediction: str | None = None) -> Any:
    """The teacher's own sampler (as the sample grids draw): DDIM (``leading`` spacing) or
    flow-matching Euler; ``prediction``: another network's parameterisation."""
    import diffusers

    if process.prediction == "flow":
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=process.num_train_timesteps,
                                                         shift=process.shift)
    return diffusers.DDIMScheduler(**_betas(process), prediction_type=prediction or process.prediction,
                                   clip_sample=False, set_alpha_to_one=False)


def _scheduler_from(record: dict[str, Any]) -> Any:
    import diffusers

    cls = getattr(diffusers, record["class"], None)
    if cls is None:
        raise ArchsearchError(f"{FEWSTEP_FILE}: scheduler.class: {record['class']!r} is not a diffusers scheduler")
    return cls.from_config(record["config"])


def scheduler_record(scheduler: Any) -> dict[str, Any]:
    """``{"class": name, "config": {...}}``: what ``fewstep.json`` records of a scheduler."""
    cfg = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    return {"class": type(scheduler).__name__, "config": json.loads(json.dumps(cfg, default=float))}


class FewStepSchedule:
    """The timesteps a distilled model draws at (its :func:`fewstep_scheduler` at ``steps``)
    and where each step lands (DDIM / Euler: the next timestep; ``clean`` at the end).

    ``timesteps`` / ``landing``: ``(steps,)`` model timesteps (ints, ``-1`` = clean, for a
    DDPM process; ``s * T`` floats, ``0`` = clean, for flow)."""

    def __init__(self, process: Any, steps: int, prediction: str) -> None:
        sched = fewstep_scheduler(process, "step", prediction)
        sched.set_timesteps(int(steps))
        self.steps = int(steps)
        self.process = process
        if process.prediction == "flow":
            sig = sched.sigmas.float()
            self.timesteps = sig[:-1] * process.num_train_timesteps
            self.landing = sig[1:] * process.num_train_timesteps
        else:
            ts = sched.timesteps.long()
            prev = ts - process.num_train_timesteps // self.steps
            self.timesteps = ts
            self.landing = torch.where(prev < 0, torch.full_like(prev, -1), prev)

    @property
    def clean(self) -> float:
        """The model timestep of the clean end (``-1`` for DDPM, ``0`` for flow)."""
        return 0.0 if self.process.prediction == "flow" else -1.0


def _between(t0: torch.Tensor, t1: torch.Tensor, i: int, n: int, flow: bool) -> torch.Tensor:
    """Point ``i`` of ``n`` equal parts from ``t0`` to ``t1`` (rounded to timesteps for DDPM)."""
    t = t0.double() + (t1.double() - t0.double()) * (i / n)
    return t.float() if flow else t.round().long()


def lcm_scalings(t: torch.Tensor, sigma_data: float = 0.5, scaling: float = 10.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's boundary condition ``(c_skip, c_out)`` at timesteps ``t`` (LCMScheduler's)."""
    st = t.float() * scaling
    return sigma_data ** 2 / (st ** 2 + sigma_data ** 2), st / (st ** 2 + sigma_data ** 2) ** 0.5


# --------------------------------------------------------------------------- guidance embedding


def guidance_scale_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Diffusers' guidance-scale embedding (``get_guidance_scale_embedding``; pipelines pass
    ``guidance_scale - 1``): sin / cos features of ``1000 w``, ``(len(w), dim)``, float32."""
    w = w.float().reshape(-1) * 1000.0
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device)
                     * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


def _time_embed(model: nn.Module) -> nn.Module:
    for spec, block in zip(model.block_specs, model.blocks):
        if spec.type == "time_embed":
            return block
    raise ArchsearchError("the model has no time_embed block (not an ArchUNet)")


class GuidanceEmbedding(nn.Module):
    """The guidance scale as an input of an ``ArchUNet`` (LCM's ``w`` embedding): a
    zero-initialised ``Linear(dim, C, bias=False)`` of :func:`guidance_scale_embedding(g - 1)`
    added to the model's sinusoidal timestep features (diffusers' ``cond_proj``), through a
    forward hook (:meth:`attach`) so the model's own weights and files are unchanged.

    ``reference``: the guidance already folded into the model (:meth:`fold`; the hook adds the
    difference from it); ``default``: the guidance used when none is set. :meth:`set` (per-sample
    scales) or :meth:`set_embedding` (a pipeline's ``timestep_cond``) hold until the next call,
    and apply only to a batch of their size (a held-out batch or a sample grid falls back to
    ``default``)."""

    def __init__(self, dim: int, channels: int, default: float | None = None, reference: float | None = None) -> None:
        super().__init__()
        self.dim = int(dim)
        self.cond_proj = nn.Linear(self.dim, int(channels), bias=False)
        nn.init.zeros_(self.cond_proj.weight)
        self.default = default
        self.reference = reference
        self._emb: torch.Tensor | None = None

    def set(self, guidance: torch.Tensor | None) -> None:
        """Per-sample guidance scales for the next calls (``None``: the default)."""
        self._emb = None if guidance is None else guidance_scale_embedding(guidance - 1.0, self.dim)

    def set_embedding(self, emb: torch.Tensor | None) -> None:
        self._emb = emb

    def _term(self, emb: torch.Tensor) -> torch.Tensor:
        w = self.cond_proj.weight
        return self.cond_proj(emb.to(w.device, w.dtype))

    def _const(self, g: float) -> torch.Tensor:
        return self._term(guidance_scale_embedding(torch.tensor([g - 1.0], device=self.cond_proj.weight.device),
                                                   self.dim))

    def _hook(self, _module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        b = out.shape[0]
        emb = self._emb if self._emb is not None and self._emb.shape[0] == b else None
        if emb is None:
            if self.default is None or self.default == self.reference:
                return out
            term = self._const(self.default).expand(b, -1)
        else:
            term = self._term(emb)
        if self.reference is not None:
            term = term - self._const(self.reference)
        return out + term.to(out.dtype)

    def attach(self, model: nn.Module) -> Any:
        """Add this embedding to ``model``'s timestep features; returns the hook's handle."""
        return _time_embed(model).proj.register_forward_hook(self._hook)

    @torch.no_grad()
    def fold(self, model: nn.Module, guidance: float) -> None:
        """Fold ``guidance`` into ``model``'s time embedding (``linear_1.bias += W c``): the
        plain model then draws at it; this embedding's ``reference`` becomes ``guidance``."""
        lin = _time_embed(model).embedding.linear_1
        c = self._const(guidance)[0].to(lin.weight.dtype)
        if self.reference is not None:
            c = c - self._const(self.reference)[0].to(lin.weight.dtype)
        lin.bias.add_(lin.weight @ c)
        self.reference = float(guidance)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"cond_proj.weight": self.cond_proj.weight.detach().float().cpu().contiguous()}, str(tmp),
                  metadata={"dim": str(self.dim), "reference": str(self.reference)})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, default: float | None = None) -> "GuidanceEmbedding":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
                w = fh.get_tensor("cond_proj.weight")
        except Exception as exc:  # truncated, or not a safetensors file
            raise ArchsearchError(f"{path}: not a readable guidance embedding ({str(exc).splitlines()[0]})") from None
        ref = meta.get("reference")
        out = cls(w.shape[1], w.shape[0], default=default, reference=None if ref in (None, "None") else float(ref))
        out.cond_proj.weight.data.copy_(w)
        return out


# --------------------------------------------------------------------------- the objectives' base


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mean((a.float() - b.float()) ** 2)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


class FewStepObjective(Objective):
    """The base of the few-step objectives (see the module docstring): subclasses implement
    :meth:`step_loss`. The teacher runs without gradients; ``uses_teacher`` is False (the
    objective asks the teacher itself, at its own timesteps)."""

    def __init__(self, ctx: "ObjectiveContext", settings: FewStepSettings) -> None:
        self.settings = settings
        self.teacher: "Teacher" = ctx.teacher
        self.process = ctx.teacher.process
        self.prediction = student_prediction(settings, self.process)
        self.device = ctx.device
        self.seed = int(ctx.config.seed)
        self.total_steps = int(ctx.config.steps)
        self.student = ctx.student
        self.amp = ctx.amp
        self.calls = 0
        self.flow = self.process.prediction == "flow"
        T = self.process.num_train_timesteps
        # an epsilon teacher is asked no higher than its own 50-step sampler's first timestep
        self.t_cap: float | None = None
        if self.process.prediction == "epsilon":
            ref = reference_scheduler(self.process)
            ref.set_timesteps(REFERENCE_STEPS)
            self.t_cap = float(ref.timesteps[0])
        self.t_max = float(T - 1) if not self.flow else float(T)
        uncond = encode(ctx.teacher, [""])
        h = ctx.holdout.get("ctx")
        if h is not None and tuple(uncond.shape[1:]) != tuple(h.shape[1:]):
            raise ArchsearchError(f"the teacher's empty-prompt encoding is {tuple(uncond.shape[1:])} but the run's "
                                  f"text states are {tuple(h.shape[1:])}: classifier-free guidance needs both")
        self.uncond = uncond.to(ctx.device)
        self.embedding: GuidanceEmbedding | None = None
        if settings.embeds_guidance:
            ch = _time_embed(ctx.student).proj.num_channels
            self.embedding = GuidanceEmbedding(settings.embed_dim, ch, default=settings.guidance).to(ctx.device)
            self.embedding.attach(ctx.student)
        self.frozen = freeze_spatial(ctx.student) if settings.freeze_spatial else 0

    # -- the seam -------------------------------------------------------------------------
    @property
    def uses_teacher(self) -> bool:
        return False

    def trainable_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"guidance": self.embedding} if self.embedding is not None else {})

    def base_state(self) -> dict[str, Any]:
        return {"calls": self.calls, "settings": json.dumps(self.settings.to_options(), sort_keys=True)}

    def state_dict(self) -> dict[str, Any]:
        return self.base_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("settings")
        mine = json.dumps(self.settings.to_options(), sort_keys=True)
        if saved is not None and saved != mine:
            theirs = json.loads(saved)
            diff = [k for k in sorted(set(theirs) | set(self.settings.to_options()))
                    if theirs.get(k) != self.settings.to_options().get(k)]
            raise ParameterError("resume", f": the checkpoint was trained with other {self.name} settings "
                                           f"({', '.join(diff)}); resume with the same ones, or start a new out")
        self.calls = int(state.get("calls", 0))

    def after_step(self, step: int) -> None:
        if self.embedding is not None:
            self.embedding.set(None)

    # -- shared pieces ----------------------------------------------------------------------
    def generator(self) -> torch.Generator:
        """This micro-batch's random stream (from the seed and the micro-batches seen: resumable)."""
        g = torch.Generator().manual_seed(_seed(self.seed, self.calls, 0xFE57))
        self.calls += 1
        return g

    def clean_and_noise(self, batch: "Batch") -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's clean sample and noise, read back from its noisy input and target."""
        return self.process.split(batch.target, batch.xt, batch.t)

    def noisy(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, b = self.process.coefficients(t.to(x0.device))
        shape = (-1,) + (1,) * (x0.dim() - 1)
        return a.view(shape) * x0 + b.view(shape) * eps

    def sample_guidance(self, n: int, g: torch.Generator, plain_ratio: float = 0.0) -> torch.Tensor:
        """Per-sample guidance scales: uniform in ``guidance_range``, 1 (plain) with ``plain_ratio``."""
        lo, hi = self.settings.guidance_range
        w = lo + (hi - lo) * torch.rand(n, generator=g)
        if plain_ratio > 0:
            w = torch.where(torch.rand(n, generator=g) < plain_ratio, torch.ones_like(w), w)
        return w.to(self.device)

    def student_x0_eps(self, pred: torch.Tensor, x: torch.Tensor, t: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.process.coefficients(t.to(x.device))
        return to_x0_eps(pred, x, a, b, self.prediction)

    def to_student(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, b = self.process.coefficients(t.to(x0.device))
        return from_x0_eps(x0, eps, a, b, self.prediction)

    @torch.no_grad()
    def teacher_x0_eps(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, g: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's guided ``(x0, eps)`` at ``(x, t)`` (``u + g (c - u)``, one batched call
        of conditional and unconditional; one call where every ``g`` is 1)."""
        tq = t.float().clamp(max=self.t_cap) if self.t_cap is not None else t.float()
        tq = tq if self.flow else tq.round().long()
        if bool((g == 1).all()):
            out = self.teacher(x, tq, ctx).float()
        else:
            u = self.uncond.to(ctx.dtype).expand(ctx.shape[0], -1, -1)
            both = self.teacher(torch.cat([x, x]), torch.cat([tq, tq]), torch.cat([u, ctx])).float()
            pu, pc = both.chunk(2)
            shape = (-1,) + (1,) * (x.dim() - 1)
            out = pu + g.view(shape).float() * (pc - pu)
        a, b = self.process.coefficients(tq)
        return to_x0_eps(out, x, a, b, self.process.prediction)

    @torch.no_grad()
    def move(self, denoise: Callable[..., tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, t0: torch.Tensor,
             t1: torch.Tensor, ctx: torch.Tensor, g: torch.Tensor, parts: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``parts`` DDIM (Euler) steps of ``denoise`` from ``t0`` to ``t1`` (per sample);
        returns the landing point and the last step's ``x0`` estimate."""
        x = x.float()
        x0 = x
        shape = (-1,) + (1,) * (x.dim() - 1)
        for i in range(parts):
            ti = _between(t0, t1, i, parts, self.flow)
            tn = t1 if i == parts - 1 else _between(t0, t1, i + 1, parts, self.flow)
            x0, eps = denoise(x, ti, ctx, g)
            a, b = self.process.coefficients(tn.to(x.device))
            x = a.view(shape) * x0 + b.view(shape) * eps
        return x, x0

    def one_step_target(self, x: torch.Tensor, t: torch.Tensor, t1: torch.Tensor, x1: torch.Tensor
                        ) -> torch.Tensor:
        """The student's target at ``(x, t)``: the output whose one DDIM step lands on ``x1``
        at ``t1`` (Salimans & Ho's progressive-distillation target), in its parameterisation."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        a0, b0 = (c.view(shape) for c in self.process.coefficients(t.to(x.device)))
        a1, b1 = (c.view(shape) for c in self.process.coefficients(t1.to(x.device)))
        x0 = (x1 - (b1 / b0) * x) / (a1 - b1 * a0 / b0)
        eps = (x - a0 * x0) / b0
        return from_x0_eps(x0, eps, a0, b0, self.prediction)

    # -- outputs ----------------------------------------------------------------------------
    def scheduler(self) -> Any:
        s = self.settings
        return fewstep_scheduler(self.process, s.method, self.prediction,
                                 s.steps if s.method == "adversarial" else s.ddim_steps)

    def record(self) -> dict[str, Any]:
        """What ``fewstep.json`` says (see :meth:`export`)."""
        s = self.settings
        return {
            "method": s.method,
            "steps": s.steps,
            "guidance": s.guidance if self.embedding is not None else 1.0,
            "distilled_guidance": s.guidance,
            "guidance_range": list(s.guidance_range) if self.embedding is not None else None,
            "calls_per_step": 1,
            "prediction": self.prediction,
            "scheduler": scheduler_record(self.scheduler()),
            "guidance_embedding": {"file": GUIDANCE_FILE, "dim": s.embed_dim, "reference": s.guidance}
            if self.embedding is not None else None,
            "settings": s.to_options(),
        }

    def export(self, model: nn.Module, out: Path) -> None:
        """The guidance folded into the saved model (a plain ``ArchUNet`` drawing at
        ``guidance``), the embedding beside it, and ``fewstep.json``."""
        out = Path(out)
        if self.embedding is not None:
            emb = GuidanceEmbedding(self.embedding.dim, self.embedding.cond_proj.out_features)
            emb.cond_proj.weight.data.copy_(self.embedding.cond_proj.weight.detach().cpu())
            emb.fold(model, self.settings.guidance)
            model.save_pretrained(out)
            emb.save(out / GUIDANCE_FILE)
        elif (out / GUIDANCE_FILE).exists():  # left by an earlier run in this folder (overwrite)
            (out / GUIDANCE_FILE).unlink()
        atomic_write_text(out / FEWSTEP_FILE, json.dumps(self.record(), indent=2))


def freeze_spatial(model: nn.Module) -> int:
    """Freeze every non-temporal block of a video ``ArchUNet``; returns the tensors frozen."""
    from archsearch.distill._spatial import is_temporal

    n = 0
    for spec, block in zip(model.block_specs, model.blocks):
        if not is_temporal(spec.type):
            for p in block.parameters():
                p.requires_grad_(False)
                n += 1
    return n


def copy_student(student: nn.Module, embedding: GuidanceEmbedding | None, device: torch.device
                 ) -> tuple[nn.Module, GuidanceEmbedding | None]:
    """A frozen copy of the student (and of its guidance embedding, attached to the copy)."""
    from archsearch.model import build_model

    twin = build_model(student.candidate).to(device)
    twin.load_state_dict(student.state_dict())
    twin.eval().requires_grad_(False)
    emb = None
    if embedding is not None:
        emb = GuidanceEmbedding(embedding.dim, embedding.cond_proj.out_features, default=embedding.default).to(device)
        emb.load_state_dict(embedding.state_dict())
        emb.requires_grad_(False)
        emb.attach(twin)
    return twin, emb


# --------------------------------------------------------------------------- drawing


def _latent_shape(candidate: Any) -> tuple[int, ...]:
    c = candidate
    if c.kind == "video":
        return (c.latent_channels, c.frames, c.resolution, c.resolution)
    return (c.latent_channels, c.resolution, c.resolution)


@torch.no_grad()
def _sample(model: Callable[..., torch.Tensor], scheduler: Any, steps: int, ctx: torch.Tensor,
            uncond: torch.Tensor | None, seeds: list[int], shape: tuple[int, ...], guidance: float,
            device: torch.device, flow: bool, embedding: GuidanceEmbedding | None = None) -> torch.Tensor:
    x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)
    x = x * float(getattr(scheduler, "init_noise_sigma", 1.0))
    scheduler.set_timesteps(int(steps))
    gen = torch.Generator().manual_seed(int(seeds[0]) + 7919)  # LCM's re-noising between steps
    n = x.shape[0]
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t) if hasattr(type(scheduler), "scale_model_input") else x
        tt = torch.full((n,), float(t) if flow else int(t), device=device)
        if embedding is not None:
            embedding.set(torch.full((n,), float(guidance), device=device))
            pred = model(inp, tt, ctx).float()
        elif guidance != 1.0 and uncond is not None:
            both = model(torch.cat([inp, inp]), torch.cat([tt, tt]),
                         torch.cat([uncond.expand(n, -1, -1), ctx])).float()
            pu, pc = both.chunk(2)
            pred = pu + guidance * (pc - pu)
        else:
            pred = model(inp, tt, ctx).float()
        x = scheduler.step(pred, t, x, generator=gen).prev_sample
    if embedding is not None:
        embedding.set(None)
    return x.float().cpu()


def encode(teacher: "Teacher", prompts: list[str]) -> torch.Tensor:
    """The teacher's text states of ``prompts`` (float32), cached on disk as the data's captions
    are (the teacher's cache root, else the user's): the text model loads once, not per run."""
    root = teacher.info.get("cache_root")
    return teacher.text.encode_dataset(list(prompts), cache_dir=Path(root) / "text" if root else None).float()


def _prompts_ctx(teacher: "Teacher", prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return encode(teacher, list(prompts)).to(device), encode(teacher, [""]).to(device)


def teacher_latents(teacher: "Teacher", shape: tuple[int, ...], prompts: list[str] | tuple[str, ...] = DEFAULT_PROMPTS,
                 seeds: list[int] | None = None, steps: int = REFERENCE_STEPS, guidance: float = 7.5,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """The teacher's latents of ``prompts`` (prompt ``i`` from seed ``seeds[i]``) with its own
    sampler (:func:`reference_scheduler`) at ``steps`` and classifier-free ``guidance``."""
    dev = torch.device(device)
    seeds = list(seeds if seeds is not None else range(len(prompts)))
    ctx, uncond = _prompts_ctx(teacher, list(prompts), dev)
    was = teacher.device
    teacher.to(dev)
    try:
        return _sample(teacher, reference_scheduler(teacher.process), steps, ctx, uncond, seeds, shape, guidance, dev,
                       teacher.process.prediction == "flow")
    finally:
        teacher.to(was)


def draw_latents(model: str | os.PathLike | nn.Module, teacher: "Teacher",
         prompts: list[str] | tuple[str, ...] = DEFAULT_PROMPTS, seeds: list[int] | None = None,
         steps: int | None = None, guidance: float | None = None, device: str | torch.device = "cpu",
         prediction: str | None = None, scheduler_of: str | os.PathLike | None = None) -> torch.Tensor:
    """A model's latents of ``prompts`` (prompt ``i`` from seed ``seeds[i]``), with the teacher's
    text encoder.

    A distilled folder (with ``fewstep.json``) draws with its scheduler, its guidance embedding
    and one call per step (``steps`` / ``guidance``: its recorded defaults when ``None``); any
    other model (a folder or an ``ArchUNet``) with the teacher's own sampler (or the scheduler of
    the distilled folder ``scheduler_of``) at ``steps`` (default 25) and classifier-free
    ``guidance`` (default 7.5; two calls per step) in ``prediction`` (default: the teacher's)."""
    from archsearch.model import ArchUNet

    dev = torch.device(device)
    seeds = list(seeds if seeds is not None else range(len(prompts)))
    record = None
    if isinstance(model, (str, os.PathLike)):
        folder = Path(model)
        if (folder / FEWSTEP_FILE).is_file():
            record = _read_record(folder / FEWSTEP_FILE)
        net = ArchUNet.from_pretrained(folder)
    else:
        folder, net = None, model
    was = net.training
    net.eval()
    net.to(dev)
    ctx, uncond = _prompts_ctx(teacher, list(prompts), dev)
    shape = _latent_shape(net.candidate)
    flow = teacher.process.prediction == "flow"
    try:
        if record is None:
            sched = reference_scheduler(teacher.process, prediction)
            if scheduler_of is not None:
                other = _read_record(Path(scheduler_of) / FEWSTEP_FILE)["scheduler"]
                cfg = dict(other["config"])
                if "prediction_type" in cfg:
                    cfg["prediction_type"] = prediction or teacher.process.prediction
                sched = _scheduler_from({"class": other["class"], "config": cfg})
            return _sample(net, sched, steps or 25, ctx, uncond, seeds, shape, 7.5 if guidance is None else guidance,
                           dev, flow)
        sched = _scheduler_from(record["scheduler"])
        most = fewstep_max_steps(record)
        if steps is not None and most is not None and steps > most:
            raise ParameterError("steps", f": bad value {steps} (allowed: 1 to {most}: {folder} draws on the "
                                          f"{most} timesteps it was distilled at)")
        g = float(record.get("distilled_guidance", 1.0) if guidance is None else guidance)
        emb, handle = None, None
        if record.get("guidance_embedding") and folder is not None:
            emb = GuidanceEmbedding.load(folder / record["guidance_embedding"]["file"]).to(dev)
            handle = emb.attach(net)
        elif guidance is not None and abs(g - float(record.get("distilled_guidance", 1.0))) > 1e-9:
            raise ParameterError("guidance", f": {folder} draws at guidance {record.get('distilled_guidance')} "
                                             "only (distilled without a guidance embedding)")
        try:
            return _sample(net, sched, int(steps or record["steps"]), ctx, None, seeds, shape, g, dev, flow,
                           embedding=emb)
        finally:
            if handle is not None:
                handle.remove()
    finally:
        net.train(was)


def sample_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """The latent MSE between two draws of the same prompts and seeds."""
    return float(_mse(a, b))


def _read_record(path: Path) -> dict[str, Any]:
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArchsearchError(f"{path}: not readable ({str(exc).splitlines()[0]})") from None
    if not isinstance(rec, dict) or "steps" not in rec or "scheduler" not in rec:
        raise ArchsearchError(f"{path}: not a few-step record (expected steps and scheduler)")
    return rec


def fewstep_max_steps(record: dict[str, Any]) -> int | None:
    """The most steps a few-step record's scheduler takes (``LCMScheduler``: its
    ``original_inference_steps``), ``None``: no limit."""
    if record["scheduler"]["class"] == "LCMScheduler":
        return int(record["scheduler"]["config"].get("original_inference_steps", 50))
    return None


def fewstep_defaults(path: str | os.PathLike) -> dict[str, Any]:
    """The default ``steps`` and ``guidance`` a distilled pipeline (or model) folder records
    (``{}`` when it records none): what ``generate`` uses when the user gives none."""
    p = Path(path)
    for cand in (p / FEWSTEP_FILE, p / "pipeline" / FEWSTEP_FILE):
        if cand.is_file():
            rec = _read_record(cand)
            return {"steps": int(rec["steps"]), "guidance": float(rec.get("guidance", 1.0)),
                    "calls_per_step": int(rec.get("calls_per_step", 1)), "method": rec.get("method")}
    return {}
