"""Light entry points to the diffusers pipeline of a trained model (diffusers is imported on use).

See :mod:`archsearch.distill._pipeline` for the adapter and the pipeline layout, and
:mod:`archsearch.distill._drawing` for what :func:`generate` checks and how it names its files
(never over an existing one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["export_pipeline", "generate", "load_pipeline"]


def export_pipeline(model: Any, teacher_root: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The teacher checkpoint's pipeline with ``model`` (an ``ArchUNet``) as its UNet, written to ``out``."""
    from archsearch.distill._pipeline import export_pipeline as run

    return run(model, teacher_root, out)


def load_pipeline(path: str | os.PathLike, device: Any = "cpu", dtype: Any = None) -> Any:
    """The diffusers pipeline ``archsearch train`` wrote (``path`` or ``path/pipeline``)."""
    from archsearch.distill._pipeline import load_pipeline as run

    return run(path, device, dtype)


def generate(model: str | os.PathLike, prompt: str, out: str | os.PathLike | None = None, **kw: Any) -> list[Path]:
    """Draw pictures (GIFs or MP4s for video) of ``prompt`` with a trained pipeline into ``out``
    (default: ``generated/`` beside the pipeline), never over an existing file; see
    :func:`archsearch.distill._pipeline.generate` (``steps``, ``guidance``, ``seed``, ``n``,
    ``frames``, ``format``, ...)."""
    from archsearch.distill._pipeline import generate as run

    return run(model, prompt, out, **kw)
