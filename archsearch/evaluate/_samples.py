"""The pictures an evaluation scores: the plan (prompt x seed), drawing them in batches with a
pipeline, and what is already on disk.

Item ``p{prompt:06d}_s{seed}`` is prompt line ``prompt`` (the prompt file's non-empty lines,
counted from 0) drawn from ``torch.Generator("cpu").manual_seed(seed)``: the same picture as
``archsearch generate --prompt P --seed S -n 1`` at the same steps, guidance and size, and the
same starting noise for the student and the teacher. Each item is two files in its set's folder
(``student/`` or ``teacher/``): ``latents/<name>.safetensors`` (the final latents, before the
VAE) and ``<name>.png``, each written atomically, the PNG last: an item is done when both are
there. The plan is cut into fixed batches of ``batch`` items; a batch with any item missing is
drawn again whole (a kill -9 loses at most the batch being drawn, and a resumed run draws the
same batches as a straight one).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from archsearch._util import atomic_write_bytes
from archsearch.errors import ArchsearchError, ParameterError

__all__ = ["Item", "batches_of", "draw_batches", "is_done", "load_latents", "plan_items", "read_prompts"]

LATENTS = "latents"


@dataclass(frozen=True)
class Item:
    """One picture of the plan: prompt line ``prompt_index`` drawn with ``seed``."""

    index: int
    prompt_index: int
    prompt: str
    seed: int

    @property
    def name(self) -> str:
        return f"p{self.prompt_index:06d}_s{self.seed}"


def read_prompts(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """The captions of a prompt file: one a line, blank lines skipped (``limit``: the first N)."""
    p = Path(path)
    if not p.is_file():
        raise ParameterError("prompts_file", f": {p}: no such file (allowed: a text file, one caption a line)")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ParameterError("prompts_file", f": {p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    prompts = [s.strip() for s in lines if s.strip()]
    if limit is not None:
        if limit < 1:
            raise ParameterError("limit", f": bad value {limit} (allowed: an integer >= 1)")
        prompts = prompts[:limit]
    if not prompts:
        raise ParameterError("prompts_file", f": {p}: no captions (allowed: a text file, one caption a line)")
    return prompts


def plan_items(prompts: Sequence[str], seeds: Sequence[int]) -> list[Item]:
    """Every (prompt, seed), prompt-major: prompt 0 with each seed, then prompt 1, ..."""
    out = []
    for p, text in enumerate(prompts):
        for s in seeds:
            out.append(Item(len(out), p, text, int(s)))
    return out


def batches_of(items: Sequence[Item], batch: int) -> list[list[Item]]:
    """The plan in fixed batches of ``batch`` items (the last one may be shorter)."""
    return [list(items[i:i + batch]) for i in range(0, len(items), batch)]


def is_done(folder: Path, item: Item) -> bool:
    return (folder / f"{item.name}.png").is_file() and (folder / LATENTS / f"{item.name}.safetensors").is_file()


def load_latents(folder: Path, item: Item) -> torch.Tensor:
    from safetensors.torch import load_file

    path = folder / LATENTS / f"{item.name}.safetensors"
    try:
        return load_file(str(path))["latents"]
    except Exception as exc:  # noqa: BLE001 - a damaged file: one line naming it
        raise ArchsearchError(f"{path}: unreadable latents ({type(exc).__name__}); delete it and run again") from None


def _write(folder: Path, item: Item, image: Any, latents: torch.Tensor) -> None:
    from safetensors.torch import save

    atomic_write_bytes(folder / LATENTS / f"{item.name}.safetensors",
                       save({"latents": latents.contiguous()}, metadata={"prompt": item.prompt, "seed": str(item.seed)}))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(folder / f"{item.name}.png", buf.getvalue())  # last: the item is done


def _clean_temps(folder: Path) -> None:
    """Temp files a killed run left behind (``.<name>.<random>.tmp`` of the atomic writes)."""
    for d in (folder, folder / LATENTS):
        if d.is_dir():
            for p in d.glob(".*.tmp"):
                p.unlink(missing_ok=True)


@torch.no_grad()
def draw(pipe: Any, items: Sequence[Item], steps: int, guidance: float, height: int, width: int) -> tuple[list, torch.Tensor]:
    """One pipeline call for ``items``: their pictures (PIL) and final latents (float32, CPU)."""
    captured: dict[str, torch.Tensor] = {}

    def grab(_pipe: Any, _step: int, _t: Any, kwargs: dict) -> dict:
        captured["latents"] = kwargs["latents"]
        return kwargs

    gens = [torch.Generator("cpu").manual_seed(it.seed) for it in items]
    res = pipe([it.prompt for it in items], num_inference_steps=steps, guidance_scale=guidance, generator=gens,
               height=height, width=width, callback_on_step_end=grab)
    return list(res.images), captured["latents"].detach().float().cpu()


def draw_batches(pipe: Any, batches: Sequence[Sequence[Item]], folder: Path, *, steps: int, guidance: float,
                 height: int, width: int, progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Draw every batch with an item missing in ``folder``; returns (items drawn, items reused).
    ``progress(done)`` after each batch, ``done`` counting reused items too."""
    folder.mkdir(parents=True, exist_ok=True)
    _clean_temps(folder)
    drawn = reused = done = 0
    todo = []
    for b in batches:
        if all(is_done(folder, it) for it in b):
            reused += len(b)
            done += len(b)
        else:
            todo.append(b)
    if progress:
        progress(done)
    for b in todo:
        images, latents = draw(pipe, b, steps, guidance, height, width)
        for it, img, lat in zip(b, images, latents):
            _write(folder, it, img, lat)
        drawn += len(b)
        done += len(b)
        if progress:
            progress(done)
    return drawn, reused
