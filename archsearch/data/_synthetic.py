"""Built-in synthetic text-to-image and text-to-video data (no downloads, deterministic).

Every item is drawn procedurally from ``(seed, split, index)`` alone: one or more shapes
(circle, square, triangle, diamond, ring, cross) with a colour, a size and a position, and a
caption that says exactly that (``"a large red circle at the top left"``). The video set moves
each shape along a straight line over the frames (``"a small blue square moving right along
the top"``).

There is no VAE. The "latent" is the picture itself, rendered directly at the latent resolution
(anti-aliased by supersampling, then average-pooled), as ``latent_channels`` channels:

* four base channels ``[R, G, B, mask]`` in ``[-1, 1]`` (mask = 1 where a shape covers the pixel),
  on a black background;
* ``latent = W @ base`` per pixel, with ``W`` a fixed ``(latent_channels, 4)`` matrix: the first
  ``min(latent_channels, 4)`` rows are the identity, any further rows are fixed random unit-norm
  mixtures of the base channels (drawn from a constant seed, so every run agrees). With fewer
  than four channels the first rows of the identity are kept (``1`` channel = red only).

A dataset is a finite pool of ``size`` items (``torch.utils.data.Dataset``); the same
``(seed, split, index)`` always gives the same latent and caption, on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "COLOURS",
    "SHAPES",
    "SIZES",
    "SyntheticImageText",
    "SyntheticVideoText",
    "synthetic_dataset",
]

# name -> RGB in [0, 1]; no black (the background is black)
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.10, 0.10),
    "green": (0.10, 0.80, 0.20),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "orange": (1.00, 0.55, 0.05),
    "cyan": (0.10, 0.85, 0.90),
    "white": (1.00, 1.00, 1.00),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring", "cross")
# name -> half-extent as a fraction of the image side
SIZES: dict[str, float] = {"small": 0.11, "medium": 0.17, "large": 0.25}
# 3x3 grid: name -> (x, y) centre in [0, 1], y down
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top": (0.5, 0.25),
    "top right": (0.75, 0.25),
    "left": (0.25, 0.5),
    "center": (0.5, 0.5),
    "right": (0.75, 0.5),
    "bottom left": (0.25, 0.75),
    "bottom": (0.5, 0.75),
    "bottom right": (0.75, 0.75),
}
_POSITION_PHRASE = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
# video: direction -> unit velocity (dx, dy); lane -> the fixed coordinate of the path
_DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "down": (0.0, 1.0),
    "up": (0.0, -1.0),
}
_LANES_H = {"along the top": 0.25, "across the middle": 0.5, "along the bottom": 0.75}
_LANES_V = {"along the left side": 0.25, "through the center": 0.5, "along the right side": 0.75}
_SPLITS = {"train": 0, "holdout": 1}
_BASE_CHANNELS = 4
_JITTER = 0.04  # position jitter, fraction of the side


@dataclass(frozen=True)
class _Shape:
    shape: str
    colour: str
    size: str
    x: float  # centre, [0, 1]
    y: float
    dx: float = 0.0  # displacement per frame (video)
    dy: float = 0.0

    @property
    def words(self) -> str:
        """``"large red circle"``: what a caption says of it."""
        return f"{self.size} {self.colour} {self.shape}"


def _draw_shape(rng: np.random.Generator, x: float, y: float, dx: float = 0.0, dy: float = 0.0) -> _Shape:
    """A shape, colour and size drawn from ``rng`` (in that order), placed at ``(x, y)``."""
    return _Shape(
        shape=SHAPES[int(rng.integers(len(SHAPES)))],
        colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
        size=list(SIZES)[int(rng.integers(len(SIZES)))],
        x=x,
        y=y,
        dx=dx,
        dy=dy,
    )


def _channel_matrix(latent_channels: int) -> torch.Tensor:
    """The fixed ``(latent_channels, 4)`` map from ``[R, G, B, mask]`` to the latent."""
    w = torch.zeros(latent_channels, _BASE_CHANNELS)
    n = min(latent_channels, _BASE_CHANNELS)
    w[:n, :n] = torch.eye(n)
    if latent_channels > _BASE_CHANNELS:
        g = torch.Generator().manual_seed(1234)
        extra = torch.randn(latent_channels - _BASE_CHANNELS, _BASE_CHANNELS, generator=g)
        w[_BASE_CHANNELS:] = extra / extra.norm(dim=1, keepdim=True)
    return w


def _coverage(shape: str, dx: torch.Tensor, dy: torch.Tensor, r: float) -> torch.Tensor:
    """Boolean mask of ``shape`` with half-extent ``r`` at offsets ``(dx, dy)`` from its centre."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) <= r * 0.85
    if shape == "diamond":
        return dx.abs() + dy.abs() <= r * 1.1
    if shape == "triangle":  # pointing up
        return (dy <= r * 0.8) & (dx.abs() <= (dy + r) * 0.6)
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    if shape == "cross":
        t = r / 3.0
        return ((dx.abs() <= t) & (dy.abs() <= r)) | ((dy.abs() <= t) & (dx.abs() <= r))
    raise ValueError(f"unknown shape {shape!r}")


class _SyntheticBase(Dataset):
    """Shared machinery: scene sampling, rendering, captions."""

    kind: str = "image"

    def __init__(
        self,
        resolution: int = 16,
        latent_channels: int = 4,
        size: int = 2048,
        seed: int = 0,
        split: str = "train",
        max_objects: int = 2,
        frames: int = 1,
    ) -> None:
        if int(resolution) < 4:
            raise ValueError(f"resolution must be an integer >= 4, got {resolution!r}")
        if int(latent_channels) < 1:
            raise ValueError(f"latent_channels must be >= 1, got {latent_channels!r}")
        if int(size) < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        if int(max_objects) < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects!r}")
        if int(frames) < 1:
            raise ValueError(f"frames must be >= 1, got {frames!r}")
        self.resolution = int(resolution)
        self.latent_channels = int(latent_channels)
        self.size = int(size)
        self.seed = int(seed)
        self.split = split
        self.max_objects = int(max_objects)
        self.frames = int(frames)
        self._w = _channel_matrix(self.latent_channels)
        # supersample to about 64 px a side (at least 2x) for anti-aliased edges
        self._ss = max(2, math.ceil(64 / self.resolution))
        n = self.resolution * self._ss
        coords = (torch.arange(n, dtype=torch.float32) + 0.5) / n
        self._gy, self._gx = torch.meshgrid(coords, coords, indexing="ij")

    # -- identity ---------------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict[str, Any]:
        """Everything that defines the items (part of every cache key that uses the data)."""
        return {
            "data": type(self).__name__,
            "version": 1,
            "resolution": self.resolution,
            "latent_channels": self.latent_channels,
            "size": self.size,
            "seed": self.seed,
            "split": self.split,
            "max_objects": self.max_objects,
            "frames": self.frames,
        }

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.fingerprint.items() if k not in ("data", "version"))
        return f"{type(self).__name__}({args})"

    # -- sampling ---------------------------------------------------------------------------
    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of {self.size} items")
        return np.random.default_rng([self.seed, _SPLITS[self.split], index, 0xA5C11])

    def _scene_and_words(self, index: int) -> list[tuple]:
        """The shapes of item ``index``, each with what its phrase needs: ``(shape, *words)``."""
        raise NotImplementedError

    def _phrase(self, shape: _Shape, *words: str) -> str:
        raise NotImplementedError

    def _scene(self, index: int) -> list[_Shape]:
        return [item[0] for item in self._scene_and_words(index)]

    def caption(self, index: int) -> str:
        """The caption of item ``index`` (cheap: nothing is rendered)."""
        return " and ".join(self._phrase(*item) for item in self._scene_and_words(int(index)))

    def captions(self, indices: Sequence[int] | None = None) -> list[str]:
        """Captions of ``indices`` (all items when ``None``)."""
        idx = range(self.size) if indices is None else indices
        return [self.caption(int(i)) for i in idx]

    # -- rendering --------------------------------------------------------------------------
    def _render_frame(self, shapes: Sequence[_Shape], frame: int) -> torch.Tensor:
        """``(4, H, W)`` base channels in ``[-1, 1]`` for one frame."""
        n = self._gx.shape[0]
        rgb = torch.zeros(3, n, n)
        mask = torch.zeros(n, n)
        for s in shapes:  # later shapes are drawn on top
            cx = s.x + s.dx * frame
            cy = s.y + s.dy * frame
            cov = _coverage(s.shape, self._gx - cx, self._gy - cy, SIZES[s.size]).float()
            colour = torch.tensor(COLOURS[s.colour]).view(3, 1, 1)
            rgb = rgb * (1 - cov) + colour * cov
            mask = torch.maximum(mask, cov)
        base = torch.cat([rgb, mask[None]], dim=0)
        base = F.avg_pool2d(base[None], self._ss)[0]  # anti-alias down to the latent grid
        return base * 2.0 - 1.0

    def _render(self, index: int) -> torch.Tensor:
        """``(4, T, H, W)`` base channels of item ``index``, every frame."""
        shapes = self._scene(int(index))
        return torch.stack([self._render_frame(shapes, f) for f in range(self.frames)], dim=1)

    def _shaped(self, x: torch.Tensor) -> torch.Tensor:
        """``(C, T, H, W)`` -> ``(C, H, W)`` for images; video stays as it is."""
        return x[:, 0] if self.kind == "image" else x

    def latent(self, index: int) -> torch.Tensor:
        """The latent of item ``index``: ``(C, H, W)`` (image) or ``(C, T, H, W)`` (video)."""
        return self._shaped(torch.einsum("cb,bthw->cthw", self._w, self._render(index)))

    def latents(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """A batch of latents ``(B, C, H, W)`` / ``(B, C, T, H, W)`` in the order given."""
        idx = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
        return torch.stack([self.latent(int(i)) for i in idx])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"latent": self.latent(index), "caption": self.caption(index), "index": int(index)}

    def rgb(self, index: int) -> torch.Tensor:
        """The picture of item ``index`` as RGB in ``[0, 1]`` (``(3, H, W)`` or ``(3, T, H, W)``)."""
        return self._shaped((self._render(index)[:3] + 1) / 2)


class SyntheticImageText(_SyntheticBase):
    """Procedural text-to-image set: 1..``max_objects`` shapes on a black background.

    Args:
        resolution: latent side (H = W) the items are rendered at.
        latent_channels: channels of the latent (see the module docstring: no VAE).
        size: number of items in the pool.
        seed: item ``i`` is a function of ``(seed, split, i)`` only.
        split: ``"train"`` or ``"holdout"`` (disjoint random streams).
        max_objects: most shapes in one picture (each item draws 1..max_objects).
    """

    kind = "image"

    def __init__(
        self,
        resolution: int = 16,
        latent_channels: int = 4,
        size: int = 2048,
        seed: int = 0,
        split: str = "train",
        max_objects: int = 2,
    ) -> None:
        super().__init__(resolution, latent_channels, size, seed, split, max_objects, frames=1)

    def _scene_and_words(self, index: int) -> list[tuple[_Shape, str]]:
        rng = self._rng(index)
        n = min(int(rng.integers(1, self.max_objects + 1)), len(POSITIONS))
        names = list(POSITIONS)
        cells = rng.choice(len(names), size=n, replace=False)  # distinct grid cells
        out = []
        for c in cells:
            pos = names[int(c)]
            x, y = POSITIONS[pos]
            jx, jy = rng.uniform(-_JITTER, _JITTER, size=2)
            out.append((_draw_shape(rng, float(x + jx), float(y + jy)), pos))
        return out

    def _phrase(self, shape: _Shape, pos: str) -> str:  # type: ignore[override]
        return f"a {shape.words} {_POSITION_PHRASE[pos]}"


class SyntheticVideoText(_SyntheticBase):
    """Procedural text-to-video set: shapes moving in straight lines over ``frames`` frames.

    Each shape crosses (most of) the picture along a lane, e.g. ``"a large red circle moving
    right along the top"``; latents are ``(C, T, H, W)``. Arguments as
    :class:`SyntheticImageText`, plus ``frames`` (T).
    """

    kind = "video"

    def __init__(
        self,
        resolution: int = 16,
        latent_channels: int = 4,
        frames: int = 4,
        size: int = 2048,
        seed: int = 0,
        split: str = "train",
        max_objects: int = 1,
    ) -> None:
        super().__init__(resolution, latent_channels, size, seed, split, max_objects, frames=frames)

    def _scene_and_words(self, index: int) -> list[tuple[_Shape, str, str]]:
        rng = self._rng(index)
        n = int(rng.integers(1, self.max_objects + 1))
        out = []
        travel = 0.5  # fraction of the side covered over the clip
        step = travel / max(self.frames - 1, 1)
        for _ in range(n):
            direction = list(_DIRECTIONS)[int(rng.integers(len(_DIRECTIONS)))]
            vx, vy = _DIRECTIONS[direction]
            lanes = _LANES_H if vy == 0 else _LANES_V
            lane = list(lanes)[int(rng.integers(len(lanes)))]
            fixed = lanes[lane] + float(rng.uniform(-_JITTER, _JITTER))
            start = 0.5 - travel / 2 * (vx + vy)  # start on the side it leaves from
            start += float(rng.uniform(-_JITTER, _JITTER))
            x, y = (start, fixed) if vy == 0 else (fixed, start)
            out.append((_draw_shape(rng, x, y, vx * step, vy * step), direction, lane))
        return out

    def _phrase(self, shape: _Shape, direction: str, lane: str) -> str:  # type: ignore[override]
        return f"a {shape.words} moving {direction} {lane}"


def synthetic_dataset(
    kind: str,
    resolution: int,
    latent_channels: int,
    frames: int = 1,
    size: int = 2048,
    seed: int = 0,
    split: str = "train",
) -> SyntheticImageText | SyntheticVideoText:
    """The built-in dataset for a space of ``kind`` (``"image"`` or ``"video"``)."""
    if kind == "image":
        return SyntheticImageText(resolution, latent_channels, size=size, seed=seed, split=split)
    if kind == "video":
        return SyntheticVideoText(resolution, latent_channels, frames=frames, size=size, seed=seed, split=split)
    raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
