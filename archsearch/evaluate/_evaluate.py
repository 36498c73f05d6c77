"""``evaluate``: draw from a prompt file with a trained model's pipeline (and the teacher's), then
score the pictures: FID, CLIP score and agreement with the teacher. See the package docstring.

The output folder:

* ``eval.json`` -- what the samples were drawn with (model, teacher, prompts, seeds, steps,
  guidance, size; the UNet weight files' sizes and times), written before the first sample; a
  later run into the same folder must match it (it resumes) or stops with one line naming
  what differs;
* ``student/`` and ``teacher/`` -- ``<item>.png`` and ``latents/<item>.safetensors`` per item
  (:mod:`archsearch.evaluate._samples`);
* ``metrics.json`` -- the metrics, written atomically at the end of every run (recomputed from
  the samples on disk: a resumed run reaches the same figures as a straight one).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from archsearch._util import atomic_write_text, first_line
from archsearch.errors import ArchsearchError, ParameterError
from archsearch.evaluate import _metrics as M
from archsearch.evaluate._samples import (
    Item,
    batches_of,
    draw_batches,
    is_done,
    load_latents,
    plan_items,
    read_prompts,
)

__all__ = ["EVAL_FILE", "METRICS_FILE", "EvalResult", "EvalRun", "evaluate", "load_eval", "model_id", "parse_seeds"]

Progress = Callable[[str, str, int, int], None]

EVAL_FILE = "eval.json"
METRICS_FILE = "metrics.json"
_VERSION = 1
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: the generation settings a resumed run must share with the samples on disk
_KEYS = ("version", "model", "model_weights", "teacher", "teacher_weights", "prompts_sha256", "n_prompts", "seeds",
         "steps", "guidance", "height", "width", "dtype")


# --------------------------------------------------------------------------- small parts



def _image_pipeline(info: Any, param: str) -> None:
    """Refuse a video pipeline (eval draws pictures) in one line naming ``param``."""
    if info.video:
        raise ParameterError(param, f": {info.root}: a {info.class_name} draws clips (allowed: an image pipeline such as "
                                    "StableDiffusionPipeline or StableDiffusionXLPipeline)")


def _weights_signature(root: Path) -> list[list[Any]]:
    """The UNet weight files (name, bytes, mtime): a retrained model is not mistaken for this one."""
    unet = root / "unet"
    files = sorted(p for p in unet.glob("*") if p.suffix in (".safetensors", ".bin")) if unet.is_dir() else []
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def model_id(path: str | os.PathLike) -> str:
    """The candidate id of an archsearch pipeline's UNet (the folder's name for another UNet)."""
    from archsearch.candidate import Candidate
    from archsearch.distill import find_pipeline

    root = find_pipeline(path)
    try:
        cfg = json.loads((root / "unet" / "config.json").read_text())
        if isinstance(cfg.get("candidate"), dict):
            return Candidate.from_dict(cfg["candidate"], str(root / "unet" / "config.json")).id
    except (OSError, json.JSONDecodeError, ArchsearchError):
        pass
    base = root.parent if root.name == "pipeline" else root
    return base.resolve().name


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    """``"0,1,2"``, ``"0-7"`` (both ends included) or a list of integers; each seed once, order kept."""
    bad = ParameterError("seeds", f": bad value {text!r} (allowed: integers >= 0 such as 0,1,2 or a range 0-7)")
    vals: list[int] = []
    if isinstance(text, (list, tuple)):
        vals = [int(v) for v in text]
    else:
        for part in str(text).replace(" ", "").split(","):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise bad
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise bad
            vals.extend(range(lo, hi + 1))
    if not vals or any(v < 0 for v in vals):
        raise bad
    return list(dict.fromkeys(vals))


def _processes() -> tuple[int, int, Any, Callable[[], None]]:
    """(rank, world, accelerate's device or None, barrier): several only under ``accelerate launch``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        st = PartialState()
        return st.process_index, st.num_processes, st.device, st.wait_for_everyone
    return 0, 1, None, lambda: None


# --------------------------------------------------------------------------- results


@dataclass
class EvalResult:
    """What :func:`evaluate` leaves (also in ``out/metrics.json``)."""

    out: Path
    metrics: dict[str, Any]
    drawn: dict[str, int] = field(default_factory=dict)  # items drawn by this run, per set
    reused: dict[str, int] = field(default_factory=dict)  # items already on disk, per set
    main: bool = True  # False in the other processes of an `accelerate launch` run

    @property
    def metrics_path(self) -> Path:
        return self.out / METRICS_FILE


@dataclass
class EvalRun:
    """An evaluation folder read back (:func:`load_eval`): its settings, items and metrics."""

    out: Path
    settings: dict[str, Any]
    metrics: dict[str, Any] | None
    items: list[Item]

    def picture(self, which: str, item: Item) -> Path | None:
        """``student`` or ``teacher`` picture of ``item`` (``None`` when not drawn)."""
        p = self.out / which / f"{item.name}.png"
        return p if p.is_file() else None


def load_eval(out: str | os.PathLike) -> EvalRun:
    """An :func:`evaluate` output folder (``eval.json``, the samples, ``metrics.json`` if written)."""
    d = Path(out)
    path = d / EVAL_FILE
    if not path.is_file():
        raise ArchsearchError(f"{d}: not an evaluation folder (no {EVAL_FILE}; `archsearch eval` writes one)")
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArchsearchError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    metrics = None
    if (d / METRICS_FILE).is_file():
        try:
            metrics = json.loads((d / METRICS_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise ArchsearchError(f"{d / METRICS_FILE}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    items = plan_items(settings.get("prompts", []), settings.get("seeds", []))
    return EvalRun(d, settings, metrics, items)


# --------------------------------------------------------------------------- evaluate


def _check_settings(out: Path, new: dict[str, Any]) -> None:
    path = out / EVAL_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return  # never written whole (atomic writes): treat as absent
    for k in _KEYS:
        if old.get(k) != new.get(k):
            if k == "teacher" and old.get(k) is None and not (out / "teacher").exists():
                continue  # a teacher added to an evaluation without one
            if k == "teacher_weights" and old.get("teacher") is None:
                continue
            raise ParameterError("out", f": {out} holds samples drawn with {k} {_show(old.get(k))} (now "
                                        f"{_show(new.get(k))}): give another out folder, or delete {out}")


def _show(v: Any) -> str:
    s = json.dumps(v)
    return s if len(s) <= 60 else s[:57] + "..."


def evaluate(model: str | os.PathLike, prompts_file: str | os.PathLike, out: str | os.PathLike, *,
             teacher: str | os.PathLike | None = None, steps: int | None = None, guidance: float | None = None,
             seeds: Sequence[int] | str = (0,), reference: str | os.PathLike | None = None,
             inception: str | os.PathLike | nn.Module | None = None, clip: str | os.PathLike | None = None,
             fid: bool | None = None, batch: int = 8, limit: int | None = None, height: int | None = None,
             width: int | None = None, device: str | torch.device | None = "auto", dtype: str | None = None,
             progress: Progress | None = None) -> EvalResult:
    """Draw ``prompts x seeds`` with ``model``'s pipeline (and ``teacher``'s), then score them.

    Args:
        model: an ``archsearch train`` output (its ``pipeline/``) or a diffusers pipeline folder.
        prompts_file: one caption a line (blank lines skipped); ``limit``: its first N captions.
        out: the output folder (resumes the samples already there).
        teacher: a pipeline folder drawn with the same prompts and seeds (a diffusers checkpoint,
            or another trained model): its samples, FID student-teacher, latent MSE, PSNR, LPIPS.
        steps, guidance, seeds: sampling settings; item (prompt p, seed s) starts from
            ``torch.Generator().manual_seed(s)``. ``height``/``width``: pixels (default: the
            student pipeline's own size; the teacher draws at the same size).
        reference: a folder of pictures (e.g. COCO val2017) for FID; each is centre-cropped and
            resized to the samples' size.
        inception: the FID Inception weights file (default: torch-fidelity's cache path) or an
            ``nn.Module`` feature extractor (uint8 ``(N, 3, H, W)`` -> ``(N, D)``).
        clip: a local CLIP folder (transformers) for the CLIP score; ``None``: no CLIP score.
        fid: ``None`` computes FID when there is a reference or a teacher; ``False`` skips it.
        batch: pictures per pipeline call (a kill -9 loses at most one batch).
        device, dtype: where and in what precision the pipelines run (``fp32``, ``fp16``, ``bf16``).
        progress: ``progress(phase, description, done, total)``; phases ``student``, ``teacher``,
            ``metrics``.

    Under ``accelerate launch`` the batches are spread over the processes (batch ``k`` to
    process ``k mod N``); the main process then computes the metrics. Raises one-line
    :class:`~archsearch.errors.ParameterError` naming the parameter for bad input.
    """
    from archsearch.data import resolve_device
    from archsearch.distill import find_pipeline, pipeline_info

    root = find_pipeline(model, "model")
    t_root = find_pipeline(teacher, "teacher") if teacher is not None else None
    # unless asked, each pipeline draws with its own defaults (generate's): a few-step model in
    # the steps and guidance its fewstep.json records, any other (the teacher) in 25 at 7.5
    own = pipeline_info(root)
    t_own = pipeline_info(t_root) if t_root is not None else own
    t_steps = int(steps) if steps is not None else t_own.default_steps
    t_guidance = float(guidance) if guidance is not None else t_own.default_guidance
    steps = int(steps) if steps is not None else own.default_steps
    guidance = float(guidance) if guidance is not None else own.default_guidance
    if int(steps) < 1:
        raise ParameterError("steps", f": bad value {steps} (allowed: an integer >= 1)")
    if int(batch) < 1:
        raise ParameterError("batch", f": bad value {batch} (allowed: an integer >= 1)")
    if not float(guidance) >= 0:
        raise ParameterError("guidance", f": bad value {guidance} (allowed: a number >= 0)")
    if dtype is not None and dtype not in _DTYPES:
        raise ParameterError("dtype", f": bad value {dtype!r} (allowed: {', '.join(_DTYPES)})")
    for name, v in (("height", height), ("width", width)):
        if v is not None and (int(v) < 8 or int(v) % 8):
            raise ParameterError(name, f": bad value {v} (allowed: a multiple of 8 pixels, >= 8)")
    seed_list = parse_seeds(seeds)
    prompts = read_prompts(prompts_file, limit)
    _image_pipeline(own, "model")
    if t_root is not None:
        _image_pipeline(t_own, "teacher")
    ref_files = M.reference_images(reference) if reference is not None else []
    if fid and not ref_files and t_root is None:
        raise ParameterError("fid", ": FID needs a reference folder or a teacher to compare with")
    want_fid = bool(ref_files or t_root is not None) if fid is None else bool(fid)

    rank, world, acc_device, barrier = _processes()
    dev = acc_device if acc_device is not None else resolve_device(device)
    main = rank == 0
    # the metric tools first: a missing weight file stops the run before anything is drawn
    extractor, extractor_desc = M.load_inception(inception, dev) if (main and want_fid) else (None, None)
    scorer = M.load_clip(clip, dev) if (main and clip is not None) else None

    out = Path(out)
    items = plan_items(prompts, seed_list)
    batches = batches_of(items, int(batch))
    mine = [b for k, b in enumerate(batches) if k % world == rank]
    torch_dtype = _DTYPES[dtype] if dtype else None

    t0 = time.perf_counter()
    pipe = _load(root, dev, torch_dtype, "model")
    if height is None or width is None:
        size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        height, width = int(height or size), int(width or size)
    settings = {
        "version": _VERSION, "model": str(root.resolve()), "model_weights": _weights_signature(root),
        "teacher": str(t_root.resolve()) if t_root is not None else None,
        "teacher_weights": _weights_signature(t_root) if t_root is not None else None,
        "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(), "n_prompts": len(prompts),
        "seeds": seed_list, "steps": int(steps), "guidance": float(guidance),
        "teacher_steps": t_steps if t_root is not None else None,
        "teacher_guidance": t_guidance if t_root is not None else None, "height": int(height),
        "width": int(width), "dtype": dtype or "fp32", "model_id": model_id(root), "prompts_file": str(prompts_file),
        "pipeline": type(pipe).__name__, "prompts": prompts,
    }
    if main:
        _check_settings(out, settings)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / EVAL_FILE, json.dumps(settings, indent=1))
    barrier()

    drawn: dict[str, int] = {}
    reused: dict[str, int] = {}
    timing: dict[str, float] = {}
    for which in ("student", "teacher") if t_root is not None else ("student",):
        p = pipe if which == "student" else _load(t_root, dev, torch_dtype, "teacher")  # type: ignore[arg-type]
        pipe = None  # one pipeline in memory at a time
        total = sum(len(b) for b in mine)
        n_steps, g = (int(steps), float(guidance)) if which == "student" else (t_steps, t_guidance)
        label = f"{which} samples ({n_steps} steps, guidance {g:g}, {height}x{width})"
        report = (lambda done, _w=which, _l=label, _t=total: progress(_w, _l, done, _t)) if progress and main else None
        t = time.perf_counter()
        drawn[which], reused[which] = draw_batches(p, mine, out / which, steps=n_steps, guidance=g,
                                                   height=int(height), width=int(width), progress=report)
        timing[f"{which}_s"] = time.perf_counter() - t
        del p
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    timing["generate_s"] = time.perf_counter() - t0
    barrier()

    metrics: dict[str, Any] = {}
    if main:
        t = time.perf_counter()
        metrics = _score(out, items, settings, reference, ref_files, extractor, extractor_desc, scorer, dev,
                         max(int(batch), 16), progress)
        timing["metrics_s"] = time.perf_counter() - t
        n_drawn = sum(drawn.values())
        metrics["timing"] = {**{k: round(v, 3) for k, v in timing.items()},
                             "drawn": drawn, "reused": reused, "processes": world,
                             "images_per_s": round(n_drawn / timing["generate_s"], 4) if n_drawn else None}
        atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=1))
    barrier()
    if not main and (out / METRICS_FILE).is_file():
        metrics = json.loads((out / METRICS_FILE).read_text())
    return EvalResult(out, metrics, drawn, reused, main)


def _load(root: Path, dev: torch.device, dtype: torch.dtype | None, param: str) -> Any:
    from archsearch.distill import load_pipeline

    try:
        pipe = load_pipeline(root, dev, dtype)
    except ArchsearchError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ParameterError(param, f": {root}: cannot load the pipeline ({first_line(exc)})") from None
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # it blanks pictures: the metrics would score the blanking
    return pipe


def _missing(out: Path, which: str, items: Sequence[Item]) -> list[Item]:
    return [it for it in items if not is_done(out / which, it)]


def _score(out: Path, items: list[Item], settings: dict[str, Any], reference: Any, ref_files: list[Path], extractor: nn.Module | None,
           extractor_desc: str | None, scorer: M.ClipScorer | None, dev: torch.device, chunk: int,
           progress: Progress | None) -> dict[str, Any]:
    """Every metric from the samples on disk (and the reference pictures)."""
    from PIL import Image

    has_teacher = settings["teacher"] is not None
    for which in ("student", "teacher") if has_teacher else ("student",):
        gone = _missing(out, which, items)
        if gone:
            raise ArchsearchError(f"{out / which}: {len(gone)} samples missing (e.g. {gone[0].name}.png): "
                                  "run the evaluation again to draw them")
    w, h = settings["width"], settings["height"]
    notes: list[str] = []
    pairs = []
    if extractor is not None:
        if ref_files:
            pairs.append(("reference", "student"))
            if has_teacher:
                pairs.append(("reference", "teacher"))
        if has_teacher:
            pairs.append(("teacher", "student"))
    fids = None
    lp_model = None
    if has_teacher:
        lp_model, note = M.load_lpips(dev)
        if note:
            notes.append(note)
    clip_sum = {"student": 0.0, "teacher": 0.0}
    sq_err = 0.0
    n_lat = 0
    psnrs: list[torch.Tensor] = []
    total = len(items) * (2 if has_teacher else 1) + (len(ref_files) if pairs else 0)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress("metrics", "metrics (FID, CLIP, agreement)", done, total)

    @torch.no_grad()
    def features(imgs: torch.Tensor) -> torch.Tensor:
        assert extractor is not None
        return extractor(imgs.to(dev))

    tick(0)
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        pics: dict[str, list[Any]] = {}
        for which in ("student", "teacher") if has_teacher else ("student",):
            pics[which] = [Image.open(out / which / f"{it.name}.png").convert("RGB") for it in part]
            x = M.image_tensor(pics[which])
            if pairs:
                f = features(x)
                if fids is None:
                    fids = M.FidPairs(pairs, f.shape[1])
                fids.update(which, f)
            if scorer is not None:
                clip_sum[which] += float(scorer.scores(pics[which], [it.prompt for it in part]).sum())
            tick(len(part))
        if has_teacher:
            a, b = M.image_tensor(pics["student"]), M.image_tensor(pics["teacher"])
            psnrs.append(M.psnr(a, b))
            for it in part:
                ls, lt = load_latents(out / "student", it), load_latents(out / "teacher", it)
                if ls.shape != lt.shape:
                    raise ArchsearchError(f"{out}: student and teacher latents differ in shape ({tuple(ls.shape)} vs "
                                          f"{tuple(lt.shape)}) for {it.name}")
                sq_err += float((ls.double() - lt.double()).pow(2).sum())
                n_lat += ls.numel()
            if lp_model is not None:
                try:
                    lp_model.update(a.float().div(255).to(dev), b.float().div(255).to(dev))
                except (RuntimeError, ValueError) as exc:  # e.g. pictures too small for AlexNet
                    notes.append(f"LPIPS skipped: {first_line(exc)}")
                    lp_model = None
    if pairs and ref_files:
        for i in range(0, len(ref_files), chunk):
            part_files = ref_files[i:i + chunk]
            x = M.image_tensor([M.open_reference(p, w, h) for p in part_files])
            f = features(x)
            if fids is None:
                fids = M.FidPairs(pairs, f.shape[1])
            fids.update("reference", f)
            tick(len(part_files))
    fid_values = fids.compute() if fids is not None else {}
    n = len(items)

    def fid_of(a: str, b: str) -> float | None:
        v = fid_values.get((a, b))
        return None if v is None else M.finite(v)

    metrics: dict[str, Any] = {
        "model": settings["model"], "model_id": settings["model_id"], "teacher_model": settings["teacher"],
        "prompts_file": settings["prompts_file"], "n_prompts": settings["n_prompts"], "seeds": settings["seeds"],
        "images": n, "steps": settings["steps"], "guidance": settings["guidance"], "height": h, "width": w,
        "dtype": settings["dtype"],
        "student": {"fid": fid_of("reference", "student"),
                    "clip_score": (clip_sum["student"] / n) if scorer is not None else None},
        "teacher": None,
        "agreement": None,
        "reference": None,
        "fid_extractor": extractor_desc if pairs else None,
        "clip_model": scorer.path if scorer is not None else None,
        "notes": notes,
    }
    if ref_files:
        metrics["reference"] = {"folder": str(reference), "images": len(ref_files)}
    if has_teacher:
        metrics["teacher"] = {"fid": fid_of("reference", "teacher"),
                              "clip_score": (clip_sum["teacher"] / n) if scorer is not None else None}
        metrics["agreement"] = {
            "fid": fid_of("teacher", "student"),
            "latent_mse": M.finite(sq_err / n_lat) if n_lat else None,
            "psnr": M.finite(float(torch.cat(psnrs).mean())) if psnrs else None,
            "lpips": M.finite(float(lp_model.compute())) if lp_model is not None else None,
        }
    if extractor is None and (ref_files or has_teacher):
        notes.append("FID skipped (turned off)")
    return metrics
