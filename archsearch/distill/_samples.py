"""Sample grids from fixed prompts and seeds: the first health check of a diffusion run.

With a diffusers teacher the student draws through the teacher's own pipeline (its scheduler,
text encoder(s) and VAE; :class:`~archsearch.distill._pipeline.ArchUNetDiffusers` as the UNet).
The built-in teacher has no VAE: its latents are the pictures (RGB + coverage channels), so the
student samples with a DDIM (or flow-matching Euler) scheduler of the teacher's noise process and
the first three channels are shown as they are. Picture ``i`` starts from
``torch.Generator().manual_seed(seeds[i])``.

The grid has one column per prompt, its prompt written under it, and two rows: the student and,
below it with the same seeds, the teacher (drawn once per run and kept in ``cache``), so a grid
says at a glance how far the student is from what it learns.

A video model samples clips of its own frame count (a text-to-video pipeline's default of 16
frames would not fit a model built for 4); its grid is a list of frames, one grid per frame
(:func:`save_grid` writes it as an animated GIF).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["make_grid", "sample_grid", "save_grid"]


def make_grid(images: list[Any], cols: int | None = None, *, labels: list[str] | None = None,
              rows: list[str] | None = None) -> Any:
    """PIL pictures side by side, ``cols`` per row (default: all in one row up to 4).

    ``labels``: one caption per column, written under the grid (cut to fit the column);
    ``rows``: one name per row, written in a strip on the left (``student``, ``teacher``).
    """
    from PIL import Image, ImageDraw

    cols = cols or min(4, len(images))
    n_rows = -(-len(images) // cols)
    w, h = images[0].size
    left = 8 * max((len(r) for r in rows), default=0) + 6 if rows else 0
    line = 12
    text_h = (line * 2 + 4) if labels else 0
    grid = Image.new("RGB", (left + cols * w, n_rows * h + text_h), "white")
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), (left + (i % cols) * w, (i // cols) * h))
    draw = ImageDraw.Draw(grid)
    for r, name in enumerate(rows or []):
        draw.text((3, r * h + h // 2 - line // 2), name, fill="black")
    per_line = max(1, w // 6)  # the default bitmap font is ~6 px a character
    for c, text in enumerate((labels or [])[:cols]):
        first, rest = text[:per_line], text[per_line:]
        second = rest if len(rest) <= per_line else rest[:max(0, per_line - 1)] + "…"
        for k, part in enumerate((first, second)):
            if part:
                draw.text((left + c * w + 2, n_rows * h + 2 + k * line), part, fill="black")
    return grid


def save_grid(grid: Any, path: Path) -> Path:
    """Write what :func:`sample_grid` returned: a PNG for a picture, an animated GIF for a list
    of frames (``path``'s suffix is replaced); temp file, then rename."""
    from archsearch.distill._drawing import write_gif

    path = path.with_suffix(".gif" if isinstance(grid, list) else ".png")
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(grid, list):
        write_gif(grid, tmp)
    else:
        grid.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


@torch.no_grad()
def sample_grid(student: Any, teacher: Any, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                device: torch.device, cache: dict | None = None) -> Any:
    """One grid of ``len(prompts)`` pictures (prompt ``i`` with seed ``seeds[i % len(seeds)]``):
    a PIL picture, or for a video model a list of them (one grid per frame, the model's frame
    count)."""
    cache = cache if cache is not None else {}
    was = student.training
    student.eval()
    try:
        root = Path(teacher.info.get("path", "")) if teacher.source == "diffusers" else None
        if root is not None and (root / "model_index.json").is_file() and (root / "vae").is_dir():
            clips = _with_pipeline(student, root, prompts, seeds, steps, guidance, device, cache)
            if "teacher_clips" not in cache:
                cache["teacher_clips"] = _with_pipeline(None, root, prompts, seeds, steps, guidance, device, cache,
                                                        frames=_frames(student))
        else:
            cache["teacher"] = teacher
            clips = _builtin(student, student.candidate, prompts, seeds, steps, guidance, device, cache)
            if "teacher_clips" not in cache:
                cache["teacher_clips"] = _builtin(teacher, student.candidate, prompts, seeds, steps, guidance,
                                                  device, cache)
    finally:
        student.train(was)
    both = clips + cache["teacher_clips"]
    kw = {"cols": len(clips), "labels": list(prompts), "rows": ["student", "teacher"]}
    if student.candidate.kind != "video":
        return make_grid([clip[0] for clip in both], **kw)
    return [make_grid([clip[f] for clip in both], **kw) for f in range(min(len(clip) for clip in both))]


def _frames(student: Any) -> int | None:
    return int(student.candidate.frames) if student.candidate.kind == "video" else None


def _with_pipeline(student: Any, root: Path, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                   device: torch.device, cache: dict, frames: int | None = None) -> list[Any]:
    """The clips ``student`` draws through the teacher's pipeline; ``student=None``: the teacher's
    own pipeline (loaded for this one call, not kept)."""
    from archsearch.distill._pipeline import ArchUNetDiffusers

    pipe = cache.get("pipe") if student is not None else None
    if pipe is None:
        from archsearch.data import DiffusersFolder

        folder = DiffusersFolder(root)
        cls = folder.pipeline_class()
        cfg = folder.config("unet")
        pooled = folder.pooled_dim if folder.text_time else 0
        kw: dict[str, Any] = {}
        if student is not None:
            kw["unet"] = ArchUNetDiffusers.from_archunet(student, pooled, cfg.get("addition_time_embed_dim"))
        if cls.__name__ == "StableDiffusionPipeline":
            kw.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        from diffusers.utils import logging as dlog

        from archsearch.distill._drawing import quiet_loading

        dlog.set_verbosity_error()
        with quiet_loading():
            pipe = cls.from_pretrained(str(root), local_files_only=True, **kw).to(device)
        pipe.set_progress_bar_config(disable=True)
        if student is not None:
            cache["pipe"] = pipe
    gens = [torch.Generator("cpu").manual_seed(int(seeds[i % len(seeds)])) for i in range(len(prompts))]
    kw: dict[str, Any] = {}
    frames = _frames(student) if student is not None else frames
    if frames:  # the model's frame count, not the pipeline's default (16)
        kw["num_frames"] = frames
    res = pipe(list(prompts), num_inference_steps=steps, guidance_scale=guidance, generator=gens, **kw)
    if hasattr(res, "images"):
        return [[im] for im in res.images]
    from archsearch.distill._pipeline import _to_pil

    return [[_to_pil(f) for f in clip] for clip in res.frames]


def _builtin(model: Any, c: Any, prompts: list[str], seeds: list[int], steps: int, guidance: float,
             device: torch.device, cache: dict) -> list[Any]:
    """The clips ``model`` (the student, or the teacher: both are called ``model(x, t, context)``)
    draws at candidate ``c``'s latent shape with the teacher's noise process and text encoder
    (``cache["teacher"]``)."""
    from PIL import Image

    from archsearch.distill._fewstep import _sample, reference_scheduler  # the one guided sampling loop

    teacher = cache["teacher"]
    proc = teacher.process
    if "ctx" not in cache:
        cache["ctx"] = teacher.text.encode(list(prompts)).float()
        cache["uncond"] = teacher.text.encode([""]).float()
    ctx, uncond = cache["ctx"].to(device), cache["uncond"].to(device)
    shape = (c.latent_channels, c.frames, c.resolution, c.resolution) if c.kind == "video" else \
        (c.latent_channels, c.resolution, c.resolution)
    picture_seeds = [int(seeds[i % len(seeds)]) for i in range(len(prompts))]
    x = _sample(model, reference_scheduler(proc), steps, ctx, uncond, picture_seeds, shape, guidance, device,
                proc.prediction == "flow")
    clips = x[:, :3] if c.kind == "video" else x[:, :3, None]  # (B, 3, F, H, W)
    rgb = ((clips.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
    scale = max(1, 64 // c.resolution)
    return [[Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST) for a in clip]
            for clip in rgb]
