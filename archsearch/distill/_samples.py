"""Sample grids from fixed prompts and seeds: the first health check of a diffusion run.

With a diffusers teacher the student draws through the teacher's own pipeline (its scheduler,
text encoder(s) and VAE; :class:`~archsearch.distill._pipeline.ArchUNetDiffusers` as the UNet).
The built-in teacher has no VAE: its latents are the pictures (RGB + coverage channels), so the
student samples with a DDIM (or flow-matching Euler) scheduler of the teacher's noise process and
the first three channels are shown as they are. Picture ``i`` starts from
``torch.Generator().manual_seed(seeds[i])``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["make_grid", "sample_grid"]


def make_grid(images: list[Any], cols: int | None = None) -> Any:
    """PIL pictures side by side, ``cols`` per row (default: all in one row up to 4)."""
    from PIL import Image

    cols = cols or min(4, len(images))
    rows = -(-len(images) // cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), ((i % cols) * w, (i // cols) * h))
    return grid


@torch.no_grad()
def sample_grid(student: Any, teacher: Any, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                device: torch.device, cache: dict | None = None) -> Any:
    """One grid of ``len(prompts)`` pictures (prompt ``i`` with seed ``seeds[i % len(seeds)]``)."""
    cache = cache if cache is not None else {}
    was = student.training
    student.eval()
    try:
        root = Path(teacher.info.get("path", "")) if teacher.source == "diffusers" else None
        if root is not None and (root / "model_index.json").is_file() and (root / "vae").is_dir():
            images = _with_pipeline(student, root, prompts, seeds, steps, guidance, device, cache)
        else:
            images = _builtin(student, teacher, prompts, seeds, steps, guidance, device, cache)
    finally:
        student.train(was)
    return make_grid(images)


def _with_pipeline(student: Any, root: Path, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                   device: torch.device, cache: dict) -> list[Any]:
    from archsearch.distill._pipeline import ArchUNetDiffusers

    pipe = cache.get("pipe")
    if pipe is None:
        from archsearch.data import DiffusersFolder

        folder = DiffusersFolder(root)
        cls = folder.pipeline_class()
        cfg = folder.config("unet")
        pooled = folder.pooled_dim if folder.text_time else 0
        unet = ArchUNetDiffusers.from_archunet(student, pooled, cfg.get("addition_time_embed_dim"))
        kw: dict[str, Any] = {"unet": unet}
        if cls.__name__ == "StableDiffusionPipeline":
            kw.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        pipe = cls.from_pretrained(str(root), local_files_only=True, **kw).to(device)
        pipe.set_progress_bar_config(disable=True)
        cache["pipe"] = pipe
    gens = [torch.Generator("cpu").manual_seed(int(seeds[i % len(seeds)])) for i in range(len(prompts))]
    res = pipe(list(prompts), num_inference_steps=steps, guidance_scale=guidance, generator=gens)
    if hasattr(res, "images"):
        return list(res.images)
    from archsearch.distill._pipeline import _to_pil

    return [_to_pil(f[0]) for f in res.frames]


def _builtin(student: Any, teacher: Any, prompts: list[str], seeds: list[int], steps: int, guidance: float,
             device: torch.device, cache: dict) -> list[Any]:
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
    from PIL import Image

    proc = teacher.process
    if "ctx" not in cache:
        cache["ctx"] = teacher.text.encode(list(prompts)).float()
        cache["uncond"] = teacher.text.encode([""]).float()
    ctx, uncond = cache["ctx"].to(device), cache["uncond"].to(device)
    c = student.candidate
    shape = (c.latent_channels, c.frames, c.resolution, c.resolution) if c.kind == "video" else \
        (c.latent_channels, c.resolution, c.resolution)
    x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(seeds[i % len(seeds)])))
                     for i in range(len(prompts))]).to(device)
    if proc.prediction == "flow":
        sched: Any = FlowMatchEulerDiscreteScheduler(num_train_timesteps=proc.num_train_timesteps, shift=proc.shift)
    else:
        cfg = {k: v for k, v in proc.config.items() if k in ("num_train_timesteps", "beta_schedule", "beta_start",
                                                           "beta_end", "rescale_betas_zero_snr")}
        sched = DDIMScheduler(**cfg, prediction_type=proc.prediction, clip_sample=False, set_alpha_to_one=False)
    sched.set_timesteps(steps)
    both = torch.cat([uncond.expand(len(prompts), -1, -1), ctx])
    for t in sched.timesteps:
        inp = torch.cat([x, x])
        tt = torch.full((inp.shape[0],), float(t) if proc.prediction == "flow" else int(t), device=device)
        pred = student(inp, tt, both).float()
        pu, pc = pred.chunk(2)
        x = sched.step(pu + guidance * (pc - pu), t, x).prev_sample
    pics = x[:, :3, 0] if c.kind == "video" else x[:, :3]
    rgb = ((pics.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    scale = max(1, 64 // c.resolution)
    return [Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST) for a in rgb]
