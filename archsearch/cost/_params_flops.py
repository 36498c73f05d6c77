"""Exact parameter counts and FLOPs (fvcore), per block and in total.

Counts are taken on ``torch.device("meta")``: no memory, no compute, any model size.
FLOPs follow fvcore's convention (one multiply-add = one flop). fvcore skips
``aten::scaled_dot_product_attention``; we register a handler that counts its two
matmuls (Q·Kᵀ and P·V).

Block FLOPs are also kept on disk (:class:`FlopCache`, ``<cache_root>/flops/``), keyed by the
block's canonical key: a search's trials and later runs reuse what fvcore traced once, so a
trial does not spend seconds tracing blocks that an earlier trial already counted.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archsearch._util import cache_root
from archsearch.candidate import Candidate
from archsearch.export import PositionalCall
from archsearch.model import BlockSpec, build_block, build_model, example_inputs, walk

__all__ = ["FlopCache", "FlopReport", "block_flops", "block_params", "count_params", "flops", "sdpa_flop_handle"]


def sdpa_flop_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for SDPA: B·H·N·M·(d_k + d_v) multiply-adds."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    *batch, n, dk = q
    m = k[-2]
    dv = v[-1]
    b = 1
    for s in batch:
        b *= s
    return int(b * n * m * (dk + dv))


@dataclass(frozen=True)
class FlopReport:
    """FLOPs of a candidate: total and per block name (batch 1)."""

    total: int
    by_block: dict[str, int] = field(default_factory=dict)
    by_stage: dict[str, int] = field(default_factory=dict)


def count_params(obj: Candidate | nn.Module) -> int:
    """Exact parameter count of a candidate (built on meta) or of a module."""
    if isinstance(obj, Candidate):
        return sum(block_params(s) for s in walk(obj))
    return sum(p.numel() for p in obj.parameters())


@lru_cache(maxsize=65536)
def block_params(spec: BlockSpec) -> int:
    """Parameters of one block (cached by its spec)."""
    return sum(p.numel() for p in build_block(spec, device="meta").parameters())


def _fvcore():
    with warnings.catch_warnings():  # fvcore imports torch.jit.script, deprecated in torch 2.x
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis
    return FlopCountAnalysis


#: bump when the way a block is counted changes: old cache files are then ignored
_COUNT_VERSION = 1


class FlopCache:
    """Block key → fvcore FLOPs, persisted as JSON lines (one ``{"key": ..., "flops": ...}``).

    The file name carries the counting version and the fvcore and torch versions, so a
    changed counter never reads stale numbers. Lines are appended with one ``write`` on an
    ``O_APPEND`` descriptor, so processes that share the cache (search workers) interleave
    whole lines; a line cut by a crash is ignored when the file is read. A cache that cannot
    be written (read-only home) only costs the tracing again.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self._path = None if path is None else Path(path)
        self._data: dict[str, int] | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        if self._path is None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                fv = version("fvcore")
            except PackageNotFoundError:  # pragma: no cover - fvcore is a dependency
                fv = "unknown"
            tv = torch.__version__.split("+")[0]
            self._path = cache_root() / "flops" / f"blocks-v{_COUNT_VERSION}-fvcore{fv}-torch{tv}.jsonl"
        return self._path

    def _load(self) -> dict[str, int]:
        if self._data is None:
            data: dict[str, int] = {}
            try:
                text = self.path.read_text(encoding="utf-8")
            except OSError:
                text = ""
            for line in text.splitlines():
                try:
                    row = json.loads(line)
                    key, value = row["key"], row["flops"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a crash, or foreign content: count again
                if isinstance(key, str) and isinstance(value, int) and value >= 0:
                    data[key] = value
            self._data = data
        return self._data

    def get(self, key: str) -> int | None:
        with self._lock:
            return self._load().get(key)

    def put(self, key: str, value: int) -> None:
        with self._lock:
            data = self._load()
            if key in data:
                return
            data[key] = int(value)
            line = (json.dumps({"key": key, "flops": int(value)}) + "\n").encode("utf-8")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
            except OSError:
                pass

    def __len__(self) -> int:
        with self._lock:
            return len(self._load())


_DISK = FlopCache()


@lru_cache(maxsize=65536)
def _flops_by_key(spec: BlockSpec) -> int:
    cached = _DISK.get(spec.key)
    if cached is not None:
        return cached
    value = _trace_flops(spec)
    _DISK.put(spec.key, value)
    return value


def _trace_flops(spec: BlockSpec) -> int:
    """fvcore's count for one block, traced on the CPU (what :class:`FlopCache` stores)."""
    FlopCountAnalysis = _fvcore()

    # fvcore traces with torch.jit, which cannot trace convolutions on meta tensors:
    # blocks are traced on the CPU once per distinct block and cached.
    # Weights are left uninitialised (to_empty): FLOPs do not depend on their values.
    block = build_block(spec, device="meta").to_empty(device="cpu").eval()
    inputs = example_inputs(spec, batch=1, device="cpu", generator=torch.Generator().manual_seed(0))
    # fvcore traces positional inputs; None entries are fine for jit.trace only as absent args.
    args = tuple(a for a in inputs if a is not None)
    wrapper = PositionalCall(block, [a is not None for a in inputs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        fa = FlopCountAnalysis(wrapper, args)
        fa.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_handle)
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        with torch.no_grad():
            return int(fa.total())


_PROBE_SIZES = (2, 4, 6)


def block_flops(spec: BlockSpec) -> int:
    """FLOPs of one block for a batch of one (fvcore, SDPA counted).

    Every block's FLOPs are a polynomial of degree <= 2 in the number of pixels s = H·W
    (convolutions, norms and linear layers are linear in s, self-attention quadratic), so
    for large inputs fvcore traces the block at H = 2, 4, 6 and the quadratic through those
    three exact counts gives the exact count at the real size — without running a
    full-resolution forward pass on the CPU (a 1024 px UNet takes 30 s that way).
    ``tests/test_cost.py`` checks this against direct tracing.
    """
    if len(spec.in_shape) != 4 or spec.in_shape[2] <= _PROBE_SIZES[-1]:
        return _flops_by_key(_keyed(spec, spec.in_shape))
    lead, c, h, _ = spec.in_shape
    xs = [hh * hh for hh in _PROBE_SIZES]
    ys = [_flops_by_key(_keyed(spec, (lead, c, hh, hh))) for hh in _PROBE_SIZES]
    s = Fraction(h * h)
    total = Fraction(0)
    for i in range(3):  # Lagrange interpolation, exact in rationals
        term = Fraction(ys[i])
        for j in range(3):
            if j != i:
                term *= (s - xs[j]) / Fraction(xs[i] - xs[j])
        total += term
    return int(round(total))


def _keyed(spec: BlockSpec, shape: tuple[int, ...]) -> BlockSpec:
    """A routing-free copy of ``spec`` (so the cache is keyed by what defines the cost)."""
    return BlockSpec("block", spec.type, spec.params, tuple(shape), "")


def flops(candidate: Candidate) -> FlopReport:
    """FLOPs of the whole candidate = the sum over its blocks (the walker's decomposition)."""
    by_block: dict[str, int] = {}
    by_stage: dict[str, int] = {}
    for spec in walk(candidate):
        f = block_flops(spec)
        by_block[spec.name] = f
        by_stage[spec.stage] = by_stage.get(spec.stage, 0) + f
    return FlopReport(sum(by_block.values()), by_block, by_stage)


def model_flops(candidate: Candidate) -> int:
    """FLOPs of the whole assembled model traced at once (checks the per-block sum)."""
    FlopCountAnalysis = _fvcore()

    c = candidate
    model = build_model(c).eval()
    shape = (1, c.latent_channels, c.frames, c.resolution, c.resolution) if c.kind == "video" else \
        (1, c.latent_channels, c.resolution, c.resolution)
    x = torch.randn(shape)
    t = torch.ones(1)
    ctx = torch.randn(1, c.context_length, c.context_dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fa = FlopCountAnalysis(model, (x, t, ctx))
        fa.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_handle)
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        with torch.no_grad():
            return int(fa.total())
