"""Full training of a chosen backbone: ``archsearch train``.

:func:`train` distils a candidate against the teacher through the one training loop
(:func:`~archsearch.distill.train_loop`, the same objective as a proxy run: task + output KD +
feature KD with SnapGen's timestep-aware scaling, or another one of
:data:`~archsearch.distill.OBJECTIVES` named by ``config.objective``) with what a long run needs.
It is set-up (:func:`_set_up`, one typed :class:`_Run`), resume (:func:`_restore`), the loop with
its callbacks (:func:`_fit`) and the outputs (:func:`_finish`):

* ``accelerate`` owns devices, processes and precision: the same call runs in one process, under
  ``accelerate launch --multi_gpu`` / ``torchrun`` on one node or many (DDP by default,
  ``distributed="fsdp"`` for FSDP), bf16/fp16 autocast; gradient accumulation, gradient
  checkpointing (every block re-computed in backward), EMA of the weights (diffusers' ``EMAModel``),
  AdamW (``adamw8bit`` with bitsandbytes), linear warm-up + cosine schedule, gradient clipping.
  Step ``k`` reads the global batch ``k`` (``batch x processes`` samples, from ``(seed, k)`` for the
  synthetic data, batch ``k`` of the cache's stream for a latent cache); each process takes its
  slice, so N processes at ``batch`` see what one process sees at ``N x batch``.
* The teacher runs in eval mode without gradients (``teacher_dtype`` for lower precision).
* The student starts from the teacher's weights where blocks match
  (:func:`~archsearch.distill.init_from_teacher`, a printed report); a video student can take its
  spatial layers from an image ``train`` output (``spatial_from``) and freeze them.
* Checkpoints every ``checkpoint_every`` steps to ``out/checkpoints/step-NNNNNNNN/``: accelerate's
  ``save_state`` (model, optimizer, its RNG states) plus ``ema.safetensors``, ``rng-<rank>.safetensors``
  (torch RNG states), and ``state.json`` (step, data position, LR schedule, settings) written
  last, all into a temp folder renamed into place, so a folder without ``state.json`` never
  exists and ``kill -9`` at any moment leaves the previous checkpoint loadable; the last
  ``keep`` are kept; an objective with state of its own adds ``objective.pt``; ``losses.safetensors``
  holds the loss of every step before it (``metrics.json`` keeps the whole curve across resumes).
  ``resume="latest"`` (or a folder) continues exactly. ``latest`` reads the newest checkpoint's
  files first (headers only) and, when one is damaged (truncated, garbage, deleted), names it in
  one line and falls back to the one before; another ``steps`` than the checkpoint's is said in
  one line (the schedule is re-fitted), fewer steps than its step is refused.
* The output folder (:func:`check_out`): new or empty, or an earlier train output (its marker
  ``.archsearch-train.json``, or the checkpoints / ``metrics.json`` / ``log.csv`` train writes)
  with ``resume`` or ``overwrite`` (train's own files removed, nothing else). A folder holding
  anything else (a user's model, a data set), or inside the data folder, is refused. One run per
  folder at a time: the main process holds ``out/.lock``; a second run refuses at once.
* A NaN / inf loss stops with a message naming the step (``nan="skip"`` skips the step); a
  checkpoint is never written from non-finite weights.
* Logs: ``out/log.csv`` and TensorBoard (``out/tb/``, when tensorboard or tensorboardX is
  installed) with losses, learning rate, throughput and the held-out KD loss every
  ``eval_every`` steps; sample grids ``out/samples/step-NNNNNNNN.png`` (an animated ``.gif`` of
  the model's frames for video) from fixed prompts and seeds every ``sample_every`` steps (decoded
  with the teacher's VAE through its scheduler; the built-in teacher's latents are pictures and
  are shown as they are). The first grid of a call comes after a checkpoint of its step; a grid
  or an evaluation that fails is one logged line and is skipped, never the end of the run.
* Output: ``out/config.json`` + ``out/model.safetensors`` (``ArchUNet.from_pretrained``, the EMA
  weights; the raw ones in ``out/raw/``), ``out/candidate.yaml`` (the candidate trained: the
  requested one adapted to the teacher's text encoder and latents and to the run's width and
  resolution, said in the log when they differ; ``metrics.json`` names both ids,
  ``candidate_id`` and ``requested_candidate_id``), ``out/metrics.json``, and for a diffusers teacher
  ``out/pipeline/``: a diffusers pipeline with the teacher's VAE, text encoder(s),
  tokenizer(s) and scheduler and the trained UNet (:mod:`archsearch.distill._pipeline`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import shutil
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from archsearch._util import atomic_write_text, file_lock, first_line
from archsearch.data import resolve_device, run_data
from archsearch.distill._config import ProxyConfig
from archsearch.distill._loop import (
    SCHEDULES,
    LoopCallback,
    LoopLog,
    LoopOptions,
    Progress,
    StepState,
    TrialFailed,
    make_optimizer,
    train_loop,
)
from archsearch.distill._objective import Objective
from archsearch.distill._student import OBJECTIVES, build_student, check_student, proxy_scale, score_holdout
from archsearch.distill._teacher import Teacher
from archsearch.errors import ArchsearchError, ParameterError

if TYPE_CHECKING:
    from archsearch.candidate import Candidate
    from archsearch.data import RunData

__all__ = ["CANDIDATE_FILE", "CHECKPOINT_PREFIX", "TrainConfig", "TrainResult", "find_checkpoint", "list_checkpoints",
           "train"]

CHECKPOINT_PREFIX = "step-"
#: a checkpoint's file of the objective's own state (only when it has any)
OBJECTIVE_STATE = "objective.pt"
#: a checkpoint's file of the loss of every step before it (``loss``, float64)
LOSSES_FILE = "losses.safetensors"
MIXED_PRECISION = ("no", "bf16", "fp16")
DISTRIBUTED = ("ddp", "fsdp")
DEFAULT_PROMPTS = ("a red circle", "a blue square at the top", "a green cat", "a small red dog")


@dataclass
class TrainConfig:
    """Settings of a full training run beyond the ``proxy`` ones (steps, batch, lr, width, ...).

    Attributes:
        proxy: the run's :class:`~archsearch.distill.ProxyConfig` (steps, per-process batch, lr,
            weight_decay, seed, width_mult, frames, holdout size, KD weights, data).
        resolution: latent side of the student (``None``: the cache's latent side, a divisor of
            it downscales the latents; for the synthetic data ``proxy.resolution``).
        warmup: linear warm-up steps (``None``: ``min(500, steps // 20)``, at least 1).
        schedule: ``cosine`` (decay to 10 %) or ``constant`` after the warm-up.
        grad_accum: micro-batches per optimizer step.
        mixed_precision: ``no`` | ``bf16`` | ``fp16``; ``teacher_dtype``: ``None`` | ``bf16`` | ``fp16``.
        gradient_checkpointing: re-compute each block in backward (less memory, ~30 % slower).
        ema_decay: EMA of the weights (``0`` turns it off; the EMA weights are the output).
        optimizer: ``adamw`` | ``adamw8bit``; ``clip``: gradient-norm limit (``None``: off).
        checkpoint_every, keep: checkpoint interval (``0``: only at the end) and how many to keep.
        log_every, eval_every, sample_every: intervals (steps; ``0`` turns eval / samples off).
        sample_prompts, sample_seeds, sample_steps, sample_guidance: the sample grid.
        nan: ``raise`` | ``skip``.
        init_from_teacher: copy matching teacher tensors into the student first.
        spatial_from: an image ``train`` output whose spatial layers a video student takes;
            ``unfreeze_spatial``: train them too (default: frozen, only temporal layers train).
        distributed: ``ddp`` | ``fsdp`` (several processes only).
        objective: the training objective, a name in :data:`~archsearch.distill.OBJECTIVES`
            (``kd``: task + output KD + feature KD; in ``settings`` only when not ``kd``);
            ``objective_options``: its own settings (e.g. the few-step objectives').
        init_from: a trained model folder (``ArchUNet.save_pretrained``, the same candidate)
            whose weights the student starts from (step distillation of a trained model).
        meta: extra entries for ``metrics.json`` (e.g. the spec it came from); not a setting.
    """

    proxy: ProxyConfig
    resolution: int | None = None
    warmup: int | None = None
    schedule: str = "cosine"
    grad_accum: int = 1
    mixed_precision: str = "no"
    teacher_dtype: str | None = None
    gradient_checkpointing: bool = False
    ema_decay: float = 0.999
    optimizer: str = "adamw"
    clip: float | None = 1.0
    checkpoint_every: int = 500
    keep: int = 3
    log_every: int = 10
    eval_every: int = 0
    sample_every: int = 0
    sample_prompts: tuple[str, ...] = DEFAULT_PROMPTS
    sample_seeds: tuple[int, ...] = (0, 1, 2, 3)
    sample_steps: int = 20
    sample_guidance: float = 5.0
    nan: str = "raise"
    init_from_teacher: bool = True
    spatial_from: str | None = None
    unfreeze_spatial: bool = False
    distributed: str = "ddp"
    objective: str = "kd"
    objective_options: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def check(self, out: str | os.PathLike | None = None, *, data: str | os.PathLike | None = None,
              resume: str | os.PathLike | None = None, overwrite: bool = False) -> None:
        """One-line errors naming the parameter; with ``out``, also whether :func:`train` may
        write there (:func:`check_out`: nothing is written)."""
        def bad(name: str, value: Any, allowed: str) -> None:
            raise ParameterError(name, f": bad value {value!r} (allowed: {allowed})")

        if self.schedule not in SCHEDULES:
            bad("schedule", self.schedule, ", ".join(SCHEDULES))
        if self.mixed_precision not in MIXED_PRECISION:
            bad("mixed_precision", self.mixed_precision, ", ".join(MIXED_PRECISION))
        if self.teacher_dtype not in (None, "bf16", "fp16", "fp32"):
            bad("teacher_dtype", self.teacher_dtype, "bf16, fp16, fp32")
        if self.distributed not in DISTRIBUTED:
            bad("distributed", self.distributed, ", ".join(DISTRIBUTED))
        if self.nan not in ("raise", "skip"):
            bad("nan", self.nan, "raise, skip")
        for name in ("grad_accum", "keep", "sample_steps"):
            if int(getattr(self, name)) < 1:
                bad(name, getattr(self, name), "an integer >= 1")
        for name in ("checkpoint_every", "log_every", "eval_every", "sample_every"):
            if int(getattr(self, name)) < 0:
                bad(name, getattr(self, name), "an integer >= 0")
        if self.warmup is not None and self.warmup < 0:
            bad("warmup", self.warmup, "an integer >= 0")
        if not 0 <= self.ema_decay < 1:
            bad("ema_decay", self.ema_decay, "a number in [0, 1)")
        if not (math.isfinite(self.sample_guidance) and self.sample_guidance >= 0):
            bad("sample_guidance", self.sample_guidance, "a finite number >= 0")
        if self.objective not in OBJECTIVES:
            bad("objective", self.objective, ", ".join(sorted(OBJECTIVES)))
        if out is not None:
            check_out(out, data=data if data is not None else self.proxy.data, resume=resume, overwrite=overwrite)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["meta"]
        if self.objective == "kd":  # the settings of a KD run as they always were
            del d["objective"]
        for key in ("objective_options", "init_from"):
            if not d[key]:
                del d[key]
        d["proxy"] = self.proxy.to_dict()
        d["sample_prompts"], d["sample_seeds"] = list(self.sample_prompts), list(self.sample_seeds)
        return d


@dataclass
class TrainResult:
    """What :func:`train` leaves (also in ``out/metrics.json``, whose ``loss_curve`` holds every
    step of the run, those before a resume too)."""

    out: Path
    steps: int
    start_step: int
    loss_curve: list[float]  # the steps this call ran (from start_step)
    quality: float  # held-out KD MSE of the output (EMA) weights against the teacher
    quality_raw: float
    params: int
    wall_time_s: float
    samples_per_s: float
    skipped_steps: int
    copy_report: dict[str, Any] | None
    pipeline: Path | None
    processes: int
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("steps", "start_step", "loss_curve", "quality", "quality_raw", "params",
                                           "wall_time_s", "samples_per_s", "skipped_steps", "copy_report",
                                           "processes")}
        d["pipeline"] = str(self.pipeline) if self.pipeline else None
        return {**d, **self.metrics}


# --------------------------------------------------------------------------- checkpoints


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The complete checkpoints in ``folder`` (those with a ``state.json``), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name)
             and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def find_checkpoint(resume: str | os.PathLike, out: str | os.PathLike) -> Path | None:
    """``resume``: ``latest`` (the newest complete checkpoint under ``out/checkpoints``, or
    ``None`` when there is none) or a checkpoint folder."""
    if str(resume) == "latest":
        found = list_checkpoints(Path(out) / "checkpoints")
        return found[-1] if found else None
    p = Path(resume)
    if not (p / "state.json").is_file():
        raise ParameterError("resume", f": {p}: not a complete checkpoint (no state.json; allowed: latest or a "
                                       f"{CHECKPOINT_PREFIX}N folder under OUT/checkpoints)")
    return p


# --------------------------------------------------------------------------- the output folder

#: written into ``out`` when :func:`train` claims it: what marks a folder as a train output
MARKER = ".archsearch-train.json"
#: what a train output holds: the names ``overwrite=True`` removes (nothing else is touched)
_OWN_NAMES = ("checkpoints", "samples", "tb", "raw", "pipeline", "log.csv", "metrics.json", "config.json",
              "model.safetensors", "candidate.yaml", "fewstep.json", "guidance_embedding.safetensors")


def is_train_output(out: str | os.PathLike) -> bool:
    """Whether ``out`` is a folder :func:`train` wrote: its marker, or (runs from before the
    marker) a complete checkpoint, a ``metrics.json`` with the run's settings or a ``log.csv``
    with train's columns."""
    out = Path(out)
    if (out / MARKER).is_file() or list_checkpoints(out / "checkpoints"):
        return True
    try:
        metrics = json.loads((out / "metrics.json").read_text())
        if isinstance(metrics, dict) and "settings" in metrics and "loss_curve" in metrics:
            return True
    except (OSError, ValueError):
        pass
    try:
        with open(out / "log.csv", newline="") as fh:
            return tuple(next(csv.reader(fh), [])) == _Logger.COLUMNS
    except (OSError, ValueError):
        return False


def check_out(out: str | os.PathLike, *, data: str | os.PathLike | None = None,
              resume: str | os.PathLike | None = None, overwrite: bool = False) -> str:
    """Whether :func:`train` may write into ``out``; nothing is written. Returns ``fresh``
    (missing or empty: hidden files do not count), ``resume`` or ``overwrite`` (an earlier
    train output, with ``resume`` / ``overwrite`` given).

    The rule: a folder holding anything train did not write (a model of the user's, a data
    set, a diffusers checkpoint) is refused, ``overwrite`` or not; an earlier train output is
    refused unless ``resume`` (continue it) or ``overwrite`` (remove train's own files, then
    start again) says what to do; ``out`` inside the data folder is refused.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ParameterError("out", f": {out} is a file (allowed: a new or empty folder, or an earlier archsearch "
                                    "train output)")
    if resume is not None and overwrite:
        raise ParameterError("overwrite", ": and resume both given (allowed: one of them: resume continues the run "
                                          "in OUT, overwrite starts it again)")
    if data is not None and Path(data).is_dir():
        d, o = Path(data).resolve(), out.resolve()
        if o == d or d in o.parents:
            raise ParameterError("out", f": {out} is inside the data folder {data} (allowed: a folder outside it)")
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    if int(os.environ.get("RANK", "0")) == 0 and _held(out / ".lock"):
        raise _busy(out)
    if is_train_output(out):
        if resume is not None:
            return "resume"
        if overwrite:
            return "overwrite"
        last = list_checkpoints(out / "checkpoints")
        at = f", last checkpoint {last[-1].name}" if last else ""
        raise ParameterError("out", f": {out} holds an earlier archsearch train run{at} (allowed: resume latest to "
                                    "continue it, overwrite to start it again, or a new folder)")
    if not entries:
        return "fresh"
    what = ("a latent cache (archsearch data prepare)" if (out / "index.json").is_file()
            else "a diffusers checkpoint" if (out / "model_index.json").is_file()
            else "files archsearch train did not write")
    shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
    raise ParameterError("out", f": {out} holds {what} ({shown}); nothing was changed (allowed: a new or empty "
                                "folder, or an earlier archsearch train output)")


def _claim_out(out: Path, mode: str, candidate_id: str) -> None:
    """On the main process: make ``out``; for ``overwrite`` remove train's own files (the
    marker stays); write the marker."""
    out.mkdir(parents=True, exist_ok=True)
    if mode == "overwrite":
        for name in _OWN_NAMES:
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    marker = out / MARKER
    info = {}
    if marker.is_file():
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(marker.read_text())
    info = info if isinstance(info, dict) else {}
    info.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    info.update({"written_by": "archsearch train", "candidate": candidate_id})
    atomic_write_text(marker, json.dumps(info, indent=1))


def _busy(out: Path) -> ParameterError:
    return ParameterError("out", f": {out} is being trained into by another archsearch train right now (allowed: "
                                 "one run per folder at a time)")


def _held(lock: Path) -> bool:
    """Whether another run holds ``lock`` now (tried without waiting, released at once)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        return False
    if not lock.is_file():
        return False
    with open(lock) as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return False


def _out_lock(out: Path) -> Any:
    """One train per folder at a time (held by the main process, ``RANK`` 0, for the run)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return file_lock(out / ".lock", busy=lambda: _busy(out))


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def _set_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)


class _Checkpointer(LoopCallback):
    """Every ``every`` steps (and at the end): an atomic, self-describing checkpoint."""

    def __init__(self, run: "_Run") -> None:
        self.run = run
        self.last_saved = -1

    def on_step(self, state: StepState) -> None:
        self.run.losses.append(state.loss)  # the run's whole loss curve: in every checkpoint
        every = self.run.cfg.checkpoint_every
        if every and state.step % every == 0:
            self.save(state.step)

    def on_end(self, state: StepState | None) -> None:
        if state is not None and self.last_saved != state.step and not self.run.stopped_early:
            self.save(state.step)

    def save(self, step: int) -> Path:
        run = self.run
        acc = run.accelerator
        for p in run.student.parameters():
            if not torch.isfinite(p).all():
                raise ArchsearchError(f"the weights are not finite at step {step}: no checkpoint written "
                                      "(lower the learning rate, or nan='skip')")
        root = run.out / "checkpoints"
        final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
        tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step:08d}"
        if acc.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        acc.wait_for_everyone()
        with _quiet("accelerate"):  # "removed shared tensor" notes about diffusers' Downsample2D alias
            acc.save_state(str(tmp / "accelerate"), safe_serialization=True)
        from safetensors.torch import save_file

        save_file(_rng_tensors(), str(tmp / f"rng-{acc.process_index}.safetensors"))
        acc.wait_for_everyone()
        if acc.is_main_process:
            if run.ema is not None:
                names = [n for n, _ in run.student.named_parameters()]
                save_file({n: t.detach().cpu().contiguous() for n, t in zip(names, run.ema.shadow_params)},
                          str(tmp / "ema.safetensors"))
            # the loss of every step so far (NaN: skipped), so metrics.json after a resume has them all
            save_file({"loss": torch.tensor(run.losses[:step], dtype=torch.float64)}, str(tmp / LOSSES_FILE))
            extra = run.objective.state_dict()
            if extra:  # an objective's own state (none for KD: the files are as they always were)
                torch.save(extra, tmp / OBJECTIVE_STATE)
            state = {
                "step": step,
                "data_position": step * run.cfg.grad_accum,  # batches read (the stream is a function of it)
                "steps": run.cfg.proxy.steps,
                "processes": acc.num_processes,
                "lr_scheduler": _sched_state(run.sched),
                "ema_step": run.ema.optimization_step if run.ema is not None else None,
                "candidate": run.candidate_id,
                "teacher": run.teacher.fingerprint,
                "settings": run.cfg.to_dict(),
                "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            atomic_write_text(tmp / "state.json", json.dumps(state, indent=1, default=str))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(root)[: -run.cfg.keep]:
                shutil.rmtree(old, ignore_errors=True)
            for stale in root.glob(f".tmp-{CHECKPOINT_PREFIX}*"):
                if stale != tmp:
                    shutil.rmtree(stale, ignore_errors=True)
        acc.wait_for_everyone()
        self.last_saved = step
        return final


class _Damaged(Exception):
    """A checkpoint file that cannot be read: ``str(exc)`` is ``"<file>: <reason>"``."""


def _readable_safetensors(path: Path, required: bool = True) -> None:
    from safetensors import safe_open

    if not path.is_file():
        if required:
            raise _Damaged(f"{path}: missing")
        return
    try:
        with safe_open(str(path), "pt"):
            pass
    except Exception as exc:  # truncated, a header of garbage, not a safetensors file
        raise _Damaged(f"{path}: not a readable safetensors file ({first_line(exc)})") from None


def _readable_zip(path: Path, required: bool = True) -> None:
    """A ``torch.save`` file (a zip archive): its directory is at the end, so a cut-short file fails."""
    import zipfile

    if not path.is_file():
        if required:
            raise _Damaged(f"{path}: missing")
        return
    try:
        with zipfile.ZipFile(path) as zf:
            zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _Damaged(f"{path}: not a readable torch file ({first_line(exc)})") from None


def _read_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / "state.json"
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _Damaged(f"{path}: not readable JSON ({first_line(exc)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise _Damaged(f"{path}: no step (not a state.json archsearch train wrote)")
    return state


def _check_files(run: "_Run", ckpt: Path, state: dict[str, Any]) -> None:
    """Every file the checkpoint must hold is there and readable (cheap: headers only)."""
    acc = ckpt / "accelerate"
    _readable_safetensors(acc / "model.safetensors")
    _readable_zip(acc / "optimizer.bin")
    if run.ema is not None and state.get("ema_step") is not None:
        _readable_safetensors(ckpt / "ema.safetensors")
    for i in range(int(state.get("processes") or 1)):
        _readable_safetensors(ckpt / f"rng-{i}.safetensors")
    _readable_safetensors(ckpt / LOSSES_FILE, required=False)


def _check_resumable(run: "_Run", ckpt: Path, state: dict[str, Any]) -> None:
    """A checkpoint of another candidate or objective, or past this run's steps: one line, no fallback."""
    if state.get("candidate") not in (None, run.candidate_id):
        raise ParameterError("resume", f": {ckpt} is a checkpoint of candidate {state.get('candidate')}, "
                                       f"not {run.candidate_id}")
    saved_objective = (state.get("settings") or {}).get("objective", "kd")
    if saved_objective != run.cfg.objective:
        raise ParameterError("resume", f": {ckpt} was trained with the objective {saved_objective!r}, this run "
                                       f"asks for {run.cfg.objective!r} (resume with the same objective, or "
                                       "start a new --out)")
    steps, step = int(run.cfg.proxy.steps), int(state["step"])
    if steps < step:
        raise ParameterError("proxy.steps", f": bad value {steps} (allowed: an integer >= {step}, the step of "
                                            f"the checkpoint {ckpt} it resumes from)")


def _load(run: "_Run", ckpt: Path, state: dict[str, Any]) -> None:
    """Model, optimizer, schedule, EMA, objective and RNG from ``ckpt`` (checked by :func:`_check_files`)."""
    from safetensors.torch import load_file

    try:
        with _quiet("accelerate"):
            run.accelerator.load_state(str(ckpt / "accelerate"))
    except Exception as exc:
        raise _Damaged(f"{ckpt / 'accelerate'}: cannot load ({first_line(exc)})") from None
    sched = run.sched
    if sched is not None and state.get("lr_scheduler"):
        try:
            sched.load_state_dict({**state["lr_scheduler"], "lr_lambdas": [None] * len(sched.lr_lambdas)})
        except (TypeError, ValueError, KeyError) as exc:
            raise _Damaged(f"{ckpt / 'state.json'}: lr_scheduler: {first_line(exc)}") from None
    if run.ema is not None and (ckpt / "ema.safetensors").is_file():
        saved = load_file(str(ckpt / "ema.safetensors"))
        names = [n for n, _ in run.student.named_parameters()]
        lost = [n for n in names if n not in saved]
        if lost:
            raise _Damaged(f"{ckpt / 'ema.safetensors'}: {len(lost)} tensors missing (e.g. {lost[0]})")
        for name, shadow in zip(names, run.ema.shadow_params):
            shadow.data.copy_(saved[name].to(shadow.device))
        run.ema.optimization_step = int(state.get("ema_step") or 0)
    if (ckpt / OBJECTIVE_STATE).is_file():
        try:
            extra = torch.load(ckpt / OBJECTIVE_STATE, weights_only=True, map_location=run.accelerator.device)
        except Exception as exc:  # truncated, or not a tensor file: name it, one line
            raise _Damaged(f"{ckpt / OBJECTIVE_STATE}: cannot read the objective's state ({first_line(exc)})") from None
        run.objective.load_state_dict(extra)
    rng = ckpt / f"rng-{run.accelerator.process_index}.safetensors"
    if rng.is_file():
        _set_rng(load_file(str(rng)))
    run.losses[:] = _prior_losses(run.out, ckpt, int(state["step"]))


def _prior_losses(out: Path, ckpt: Path, step: int) -> list[float]:
    """The loss of steps 1..``step``: the checkpoint's ``losses.safetensors``, else (checkpoints
    from before it) the rows of ``log.csv``, NaN where a step was not logged."""
    if (ckpt / LOSSES_FILE).is_file():
        from safetensors.torch import load_file

        curve = [float(v) for v in load_file(str(ckpt / LOSSES_FILE))["loss"].tolist()]
        if len(curve) == step:
            return curve
    curve = [float("nan")] * step
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(out / "log.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                k = int(row["step"])
                if 1 <= k <= step and row.get("loss") not in (None, ""):
                    curve[k - 1] = float(row["loss"])
    return curve


def _restore(run: "_Run", resume: str | os.PathLike | None) -> int:
    """Load the checkpoint ``resume`` names into the run (model, optimizer, schedule, EMA,
    objective, RNG, the loss curve before it); returns the step to start from (0: none).

    ``latest``: the newest complete checkpoint whose files all read; a damaged one (a truncated
    tensor file, a ``state.json`` of garbage, a deleted file) is named in one line and the one
    before it is taken; none left is an error. A folder named explicitly is not replaced by
    another: its damage is the error.
    """
    if resume is None:
        return 0
    latest = str(resume) == "latest"
    if latest:
        found = list_checkpoints(run.out / "checkpoints")[::-1]
        if not found:
            run.say(f"no checkpoint in {run.out / 'checkpoints'}: starting at step 0")
            return 0
    else:
        found = [find_checkpoint(resume, run.out)]
    damaged: list[str] = []
    for ckpt in found:
        try:
            state = _read_state(ckpt)
            _check_resumable(run, ckpt, state)
            _check_files(run, ckpt, state)
            _load(run, ckpt, state)
        except _Damaged as exc:
            damaged.append(str(exc))
            if latest and ckpt != found[-1]:
                nxt = found[found.index(ckpt) + 1]
                run.say(f"checkpoint {ckpt.name} is damaged ({exc}): falling back to {nxt.name}")
            continue
        step = int(state["step"])
        saved_steps = int(state.get("steps") or run.cfg.proxy.steps)
        if saved_steps != int(run.cfg.proxy.steps):
            run.say(f"note: {ckpt.name} is of a {saved_steps}-step run and this run has {run.cfg.proxy.steps} steps: "
                    f"the learning-rate schedule now spans {run.cfg.proxy.steps} steps from step {step + 1} on "
                    f"(resume with {saved_steps} steps to continue exactly)")
        run.say(f"resumed from {ckpt} at step {step}")
        return step
    if latest:
        raise ArchsearchError(f"{damaged[0]}; no earlier complete checkpoint in {run.out / 'checkpoints'} to fall "
                              "back to (start again with overwrite)")
    raise ArchsearchError(f"{damaged[0]}; resume from another checkpoint (or latest)")


@contextlib.contextmanager
def _quiet(name: str):
    import logging

    lg = logging.getLogger(name)
    old = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(old)


def _sched_state(sched: Any) -> dict[str, Any] | None:
    if sched is None:
        return None
    return {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}


# --------------------------------------------------------------------------- logging, EMA, samples


class _EMA(LoopCallback):
    def __init__(self, run: "_Run") -> None:
        self.run = run

    def on_step(self, state: StepState) -> None:
        if not state.skipped:
            self.run.ema.step(self.run.student.parameters())


class _Logger(LoopCallback):
    """Progress (loss, samples/s), ``log.csv`` and TensorBoard; the held-out KD loss at intervals."""

    COLUMNS = ("step", "loss", "task", "kd_output", "kd_feature", "lr", "samples_per_s", "holdout_kd", "elapsed_s")

    def __init__(self, run: "_Run", progress: Progress | None) -> None:
        self.run = run
        self.progress = progress
        self.avg = 0.0
        self.n = 0
        self.t_last = time.perf_counter()
        self.samples = 0
        self.writer: Any = None
        self.rate = float("nan")

    def on_start(self, step: int, steps: int) -> None:
        if not self.run.accelerator.is_main_process:
            return
        path = self.run.out / "log.csv"
        if not path.exists() or step == 0:
            with open(path, "w", newline="") as fh:
                csv.writer(fh).writerow(self.COLUMNS)
        else:  # resumed: drop rows past the checkpoint
            with open(path, newline="") as fh:
                rows = [r for r in csv.reader(fh)]
            keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
            with open(path, "w", newline="") as fh:
                csv.writer(fh).writerows(keep)
        self.writer = _tensorboard(self.run.out / "tb")
        if self.progress is not None:
            self.progress("train", f"{self.run.label}loss -", step, steps)

    def on_step(self, state: StepState) -> None:
        run = self.run
        self.samples += state.samples
        if not state.skipped:
            self.n += 1
            self.avg = 0.98 * self.avg + 0.02 * state.loss
        every = run.cfg.log_every or 1
        evaluate = run.cfg.eval_every and state.step % run.cfg.eval_every == 0
        hold = None
        if evaluate:
            try:
                hold = run.holdout_kd()
            except Exception as exc:  # an evaluation that fails is logged and skipped, never the end of a run
                run.say(f"held-out evaluation at step {state.step} failed, skipped: {type(exc).__name__}: "
                        f"{first_line(exc)}")
        if not run.accelerator.is_main_process:
            return
        if state.step % every == 0 or state.step == state.steps or hold is not None:
            now = time.perf_counter()
            self.rate = self.samples / max(now - self.t_last, 1e-9)
            self.t_last, self.samples = now, 0
            row = [state.step, state.loss, state.parts.get("task", ""), state.parts.get("kd_output", ""),
                   state.parts.get("kd_feature", ""), state.lr, self.rate, "" if hold is None else hold,
                   state.elapsed_s]
            with open(run.out / "log.csv", "a", newline="") as fh:
                csv.writer(fh).writerow(row)
            if self.writer is not None:
                for name, value in zip(self.COLUMNS[1:-1], row[1:-1]):
                    if value != "":
                        self.writer.add_scalar(f"train/{name}", float(value), state.step)
                self.writer.flush()
        if self.progress is not None:
            shown = self.avg / (1 - 0.98 ** self.n) if self.n else float("nan")
            rate = f", {self.rate:.1f} samples/s" if math.isfinite(self.rate) else ""  # none before the first log row
            self.progress("train", f"{run.label}loss {shown:.4f}{rate}", state.step, state.steps)

    def on_end(self, state: StepState | None) -> None:
        if self.writer is not None:
            self.writer.close()


def _tensorboard(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return None
    return SummaryWriter(str(folder))


class _Samples(LoopCallback):
    """A sample grid every ``sample_every`` steps and at the last one. The first of a call comes
    after a checkpoint of its step (written then if none is due), so a grid that takes the
    process down loses nothing; a grid that fails is one logged line, and the run goes on."""

    def __init__(self, run: "_Run", checkpointer: "_Checkpointer") -> None:
        self.run = run
        self.checkpointer = checkpointer
        self.first = True

    def on_step(self, state: StepState) -> None:
        run = self.run
        every = run.cfg.sample_every
        if not (every and (state.step % every == 0 or state.step == state.steps)):
            return
        if self.first and self.checkpointer.last_saved != state.step:
            self.checkpointer.save(state.step)
        self.first = False
        if run.accelerator.is_main_process:
            try:
                run.sample_grid(state.step)
            except Exception as exc:  # a health check: never the end of a run
                run.say(f"sample grid at step {state.step} failed, skipped: {type(exc).__name__}: {first_line(exc)}")
        run.accelerator.wait_for_everyone()


class _Student(nn.Module):
    """The student and its feature projections as one module: what DDP wraps and syncs."""

    def __init__(self, student: nn.Module, projections: nn.ModuleDict) -> None:
        super().__init__()
        self.student = student
        self.projections = projections

    def forward(self, xt: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor):
        return self.student.forward_features(xt, t, ctx)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Re-compute every block of an ``ArchUNet`` in backward (``torch.utils.checkpoint``)."""
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        orig = block.forward

        def fwd(self: nn.Module, x: Any, temb: Any = None, context: Any = None, _orig: Callable = orig) -> Any:
            if not (torch.is_grad_enabled() and self.training):
                return _orig(x, temb, context)
            return checkpoint(_orig, x, temb, context, use_reentrant=False)

        block.forward = types.MethodType(fwd, block)


# --------------------------------------------------------------------------- the run


@dataclass
class _Run:
    """One :func:`train` call, set up: what its callbacks share."""

    cfg: TrainConfig
    accelerator: Any  # accelerate.Accelerator
    teacher: Teacher
    candidate: "Candidate"  # as requested
    small: "Candidate"  # as trained: adapted to the teacher and to the run's width and resolution
    student: nn.Module  # the unwrapped student
    objective: Objective
    wrapper: nn.Module  # the student and the objective's trainable modules, as accelerate prepared them
    optimizer: torch.optim.Optimizer
    sched: Any  # the learning-rate schedule, or None
    ema: Any  # diffusers' EMAModel, or None
    out: Path
    data: "RunData"
    say: Callable[[str], None]
    reports: dict[str, Any]  # metrics.json: params, trainable_params, copy and spatial reports, adapted
    sample_cache: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    losses: list[float] = field(default_factory=list)  # the loss of every step of the run (resumed ones too)

    @property
    def candidate_id(self) -> str:
        return self.small.id

    @property
    def label(self) -> str:
        return f"{self.candidate.id} "

    def holdout_kd(self, weights: str = "raw") -> float:
        """The held-out KD MSE of the raw or the EMA weights."""
        model = self.student
        was = model.training
        model.eval()
        ctx = self.ema_weights() if weights == "ema" and self.ema is not None else contextlib.nullcontext()
        with ctx:
            quality = score_holdout(model, self.data.holdout, self.accelerator.autocast).quality
        model.train(was)
        return quality

    @contextlib.contextmanager
    def ema_weights(self):
        """The EMA weights in the student inside the block, the raw ones restored after."""
        params = list(self.student.parameters())
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            yield
        finally:
            self.ema.restore(params)

    def sample_grid(self, step: int) -> Path | None:
        """``samples/step-N.png`` (``.gif`` for a video model, the model's frames); the
        training RNG is left as it was."""
        from archsearch.distill._samples import sample_grid, save_grid

        folder = self.out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        ctx = self.ema_weights() if self.ema is not None else contextlib.nullcontext()
        dev = self.accelerator.device
        with ctx, torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            grid = sample_grid(self.student, self.teacher, list(self.cfg.sample_prompts),
                               list(self.cfg.sample_seeds), self.cfg.sample_steps, self.cfg.sample_guidance, dev,
                               cache=self.sample_cache)
        return save_grid(grid, folder / f"step-{step:08d}.png")


def _accelerator(cfg: TrainConfig, device: torch.device) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not distributed:  # one process: a fresh state per run (tests run several in one process)
        AcceleratorState._reset_state(reset_partial_state=True)
    kw: dict[str, Any] = {"mixed_precision": cfg.mixed_precision, "cpu": device.type == "cpu"}
    if cfg.distributed == "fsdp" and distributed:
        from accelerate import FullyShardedDataParallelPlugin

        kw["fsdp_plugin"] = FullyShardedDataParallelPlugin()
    return Accelerator(**kw)


def _freeze_teacher(teacher: Teacher, device: torch.device, dtype: str | None) -> None:
    """The teacher on ``device``, in eval mode, without gradients, optionally in lower precision."""
    teacher.to(device)
    teacher.module.eval().requires_grad_(False)
    tdtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(dtype or "")
    if tdtype is not None:
        teacher.module.to(tdtype)


#: beside the model: the candidate that was trained (the requested one adapted to the teacher)
CANDIDATE_FILE = "candidate.yaml"


def _announce_adaptation(requested: "Candidate", trained: "Candidate", out: Path, main: bool,
                         say: Callable[[str], None]) -> list[str]:
    """Save the candidate actually trained beside the model; when it is not the requested one
    (the teacher's text encoder and latents, the run's width and resolution), say so in one
    line naming both ids and what changed. Returns the changes (``metrics.json: adapted``)."""
    from archsearch.candidate import describe_changes

    changes = describe_changes(requested, trained)
    if main:
        trained.save(out / CANDIDATE_FILE)
    if trained.id != requested.id:
        say(f"adapted candidate {requested.id} to the teacher and this run: training {trained.id} "
            f"({', '.join(changes)}); saved as {out / CANDIDATE_FILE}")
    return changes


def _init_student(student: nn.Module, teacher: Teacher, cfg: TrainConfig, small: "Candidate",
                  say: Callable[[str], None]) -> dict[str, Any]:
    """BK-SDM's copy of matching teacher weights and a video student's spatial layers from an
    image model (``spatial_from``); returns the reports and the parameter counts."""
    from archsearch.distill._init_from_teacher import init_from_teacher
    from archsearch.distill._spatial import load_spatial
    from archsearch.model import ArchUNet

    out: dict[str, Any] = {"copy_report": None, "spatial_report": None}
    if cfg.init_from:  # a trained model of this candidate (step distillation)
        init = ArchUNet.from_pretrained(cfg.init_from)
        if init.candidate.id != small.id:
            raise ParameterError("init_from", f": {cfg.init_from} holds candidate {init.candidate.id}, this run "
                                              f"trains {small.id} (allowed: a model of the same candidate and teacher)")
        student.load_state_dict(init.state_dict())
        say(f"init from {cfg.init_from}")
    if cfg.init_from_teacher:
        rep = init_from_teacher(student, teacher)
        out["copy_report"] = rep.to_dict()
        say(rep.summary())
    if cfg.spatial_from:
        if small.kind != "video":
            raise ParameterError("spatial_from", ": only a video candidate takes spatial layers from an image model")
        rep = load_spatial(student, ArchUNet.from_pretrained(cfg.spatial_from), freeze=not cfg.unfreeze_spatial)
        out["spatial_report"] = rep.to_dict()
        say(f"spatial layers from {cfg.spatial_from}: " + rep.summary().split(": ", 1)[1])
    out["params"] = sum(p.numel() for p in student.parameters())
    out["trainable_params"] = sum(p.numel() for p in student.parameters() if p.requires_grad)
    return out


def _set_up(candidate: "Candidate", teacher: Teacher, data: str | os.PathLike | None, cfg: TrainConfig, out: Path,
            device: str | torch.device | None, log: Callable[[str], None] | None, mode: str = "fresh") -> _Run:
    """The accelerator, ``out`` claimed (``mode``: :func:`check_out`'s answer), the teacher, the
    data, the student with its objective, the optimizer and schedule (prepared by accelerate)
    and the EMA."""
    proxy = cfg.proxy
    acc = _accelerator(cfg, resolve_device(device))
    dev = acc.device
    if acc.is_main_process:
        _claim_out(out, mode, candidate.id)
    acc.wait_for_everyone()
    say = (log if acc.is_main_process else None) or (lambda _msg: None)
    _freeze_teacher(teacher, dev, cfg.teacher_dtype)
    source = run_data(teacher, proxy, dev, data=data, resolution=cfg.resolution, training=True)
    small = proxy_scale(candidate, teacher, proxy, source.resolution)
    reports: dict[str, Any] = {"adapted": _announce_adaptation(candidate, small, out, acc.is_main_process, say)}
    student, objective = build_student(small, teacher, proxy, dev, source.holdout, amp=acc.autocast,
                                       objective=cfg.objective, objective_options=cfg.objective_options,
                                       prepare=lambda m: reports.update(_init_student(m, teacher, cfg, small, say)))
    reports["trainable_params"] = sum(p.numel() for p in student.parameters() if p.requires_grad)  # after its objective (may freeze)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    wrapper = _Student(student, objective.trainable_modules())
    warmup = cfg.warmup if cfg.warmup is not None else max(1, min(500, int(proxy.steps) // 20))
    opt, sched = make_optimizer([p for p in wrapper.parameters() if p.requires_grad], proxy, cfg.schedule, warmup,
                                cfg.optimizer)
    wrapper, opt = acc.prepare(wrapper, opt)
    ema = None
    if cfg.ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(student.parameters(), decay=cfg.ema_decay)
        ema.to(dev)
    return _Run(cfg, acc, teacher, candidate, small, student, objective, wrapper, opt, sched, ema, out, source, say,
                reports)


def _fit(run: _Run, start: int, progress: Progress | None, callbacks: list[LoopCallback] | tuple) -> LoopLog:
    """The loop with the run's callbacks: EMA, logs, the caller's, checkpoints, sample grids."""
    acc, cfg = run.accelerator, run.cfg
    cbs: list[LoopCallback] = [_EMA(run)] if run.ema is not None else []
    cbs.append(_Logger(run, progress if acc.is_main_process else None))
    cbs += list(callbacks)
    checkpointer = _Checkpointer(run)  # after these: a checkpoint holds the EMA step and the logs before it
    cbs += [checkpointer, _Samples(run, checkpointer)]  # samples last: a grid comes after its checkpoint
    batches = run.data.batches(run.objective.uses_teacher, rank=acc.process_index, world=acc.num_processes)
    options = LoopOptions(forward=run.wrapper, optimizer=run.optimizer, lr_scheduler=run.sched, start_step=start,
                          accumulate=cfg.grad_accum, accelerator=acc, clip=cfg.clip, nan=cfg.nan, callbacks=cbs,
                          samples_per_batch=cfg.proxy.batch * acc.num_processes)
    try:
        loop_log = train_loop(run.wrapper, batches, cfg.proxy, device=acc.device, objective=run.objective,
                              options=options)
    except TrialFailed as exc:
        last = list_checkpoints(run.out / "checkpoints")
        raise ArchsearchError(f"training stopped: the {exc.reason} (no checkpoint written from it; last good: "
                              f"{last[-1] if last else 'none'}; lower the learning rate, or nan='skip' to skip "
                              "such steps)") from None
    run.stopped_early = loop_log.stopped
    acc.wait_for_everyone()
    return loop_log


def _finish(run: _Run, loop_log: LoopLog, start: int, t_start: float) -> TrainResult:
    """The held-out scores, the result, and on the main process the model (EMA weights; the raw
    ones in ``raw/``), the pipeline of a diffusers teacher and ``metrics.json``."""
    from archsearch.model import build_model

    acc, cfg, teacher, out, reps = run.accelerator, run.cfg, run.teacher, run.out, run.reports
    quality_raw = run.holdout_kd("raw")
    quality = run.holdout_kd("ema") if run.ema is not None else quality_raw
    ran, world = len(loop_log.loss_curve), acc.num_processes
    sps = ran * cfg.grad_accum * cfg.proxy.batch * world / loop_log.train_s if loop_log.train_s > 0 else float("nan")
    result = TrainResult(out=out, steps=start + ran, start_step=start, loss_curve=loop_log.loss_curve,
                         quality=quality, quality_raw=quality_raw, params=int(reps["params"]),
                         wall_time_s=time.perf_counter() - t_start, samples_per_s=sps,
                         skipped_steps=loop_log.skipped, copy_report=reps["copy_report"], pipeline=None,
                         processes=world,
                         metrics={"trainable_params": int(reps["trainable_params"]),
                                  "spatial_report": reps["spatial_report"], "data": run.data.source,
                                  "resolution": run.data.resolution, "train_s": loop_log.train_s,
                                  "feature_pairs": [list(p) for p in getattr(run.objective, "pairs", [])],
                                  "proxy_candidate": run.small.id, "candidate_id": run.small.id,
                                  "requested_candidate_id": run.candidate.id, "adapted": reps["adapted"],
                                  "teacher": teacher.fingerprint, "stopped_early": loop_log.stopped})
    if acc.is_main_process and not loop_log.stopped:
        (out / "raw").mkdir(exist_ok=True)
        final = build_model(run.small)
        final.load_state_dict(run.student.state_dict())
        final.cpu().save_pretrained(out / "raw")
        if run.ema is not None:
            run.ema.copy_to(final.parameters())
        final.save_pretrained(out)  # the EMA weights: what the pipeline ships
        run.objective.export(final, out)  # the objective's own files (few-step: scheduler, steps, guidance)
        if teacher.source == "diffusers" and (Path(teacher.info["path"]) / "model_index.json").is_file():
            from archsearch.distill._drawing import quiet_loading
            from archsearch.distill._pipeline import export_pipeline

            with quiet_loading():
                result.pipeline = export_pipeline(final, teacher.info["path"], out / "pipeline", model_dir=out)
        metrics = {"candidate": run.candidate.id, **cfg.meta, "settings": cfg.to_dict(), **result.to_dict(),
                   "loss_curve": list(run.losses)}  # every step of the run, before a resume too
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str))
    acc.wait_for_everyone()
    if not math.isfinite(quality):
        raise ArchsearchError(f"the held-out KD loss is {quality} after {result.steps} steps")
    return result


def train(
    candidate: "Candidate",
    teacher: Teacher,
    data: str | os.PathLike | None,
    config: TrainConfig,
    out: str | os.PathLike,
    progress: Progress | None = None,
    *,
    device: str | torch.device | None = "auto",
    resume: str | os.PathLike | None = None,
    callbacks: list[LoopCallback] | tuple = (),
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``candidate`` against ``teacher`` (see the module docstring) into ``out``.

    Args:
        candidate: a full-scale :class:`~archsearch.candidate.Candidate`, built at
            ``config.proxy.width_mult`` and ``resolution`` (``None``: the cache's latent side,
            else ``proxy.resolution``) with the teacher's text width and latent channels.
        teacher: from :func:`~archsearch.distill.load_teacher`.
        data: a latent cache folder (``archsearch data prepare``); ``None``: ``config.proxy.data``,
            else the built-in synthetic data.
        config: the settings (:class:`TrainConfig`; ``config.objective``: the training
            objective, ``config.meta``: extra entries for ``metrics.json``).
        out: the output folder: new or empty, or an earlier train output with ``resume`` or
            ``overwrite`` (:func:`check_out`); one run per folder at a time (a lock).
        progress: ``progress(phase, description, done, total)`` (phase ``train``; main process only).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``mps`` (under ``accelerate launch`` each process
            takes its own GPU).
        resume: ``latest`` or a checkpoint folder (``None``: start afresh).
        callbacks: extra :class:`~archsearch.distill.LoopCallback` hooks.
        log: where one-line reports go (the copy report); ``None``: quiet.
        overwrite: start again in an earlier train output (its checkpoints, logs, samples and
            model are removed first; files train did not write are never touched).
    """
    config.check()
    out = Path(out)
    mode = check_out(out, data=data if data is not None else config.proxy.data, resume=resume, overwrite=overwrite)
    t_start = time.perf_counter()
    check_student(candidate, teacher, config.proxy)
    with _out_lock(out):
        run = _set_up(candidate, teacher, data, config, out, device, log, mode)
        start = _restore(run, resume)
        loop_log = _fit(run, start, progress, callbacks)
        return _finish(run, loop_log, start, t_start)
