"""Memory, as SnapGen-V's search needs it: each block's weights and peak activations, and a
candidate's peak memory with the UNet's skip tensors held from the down path to the up path.

A table row holds, at the table's dtype and batch:

* ``weight_bytes``: the block's parameters and buffers;
* ``act_bytes``: the peak of memory allocated during one call beyond its inputs and weights
  (intermediates, kernel workspaces, and the output, which is still alive at the end);
* ``out_bytes``: the output tensor;
* ``mem_source``: ``measured`` (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the
  allocations torch's profiler records with ``profile_memory=True``) or ``estimate``
  (tensors alive during a ``meta`` run, followed by a dispatch mode: no workspaces; where
  nothing can run, e.g. the Neural Engine off macOS).

:func:`model_peak` walks a candidate's blocks in the model's own order (``walk``): weights
all resident, the inputs, the time embedding, the skip tensors pushed and not yet popped,
the block's input, and the block's ``act_bytes``; the peak is the largest such sum.
:func:`measure_model_memory` measures a whole model the same way, to check it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "MEM_SOURCES",
    "BlockMemory",
    "PeakMemory",
    "estimate_block_memory",
    "estimate_memory",
    "measure_block_memory",
    "measure_model_memory",
    "measure_peak",
    "model_peak",
    "weight_bytes",
]

MEM_SOURCES = ("measured", "estimate")


@dataclass(frozen=True)
class BlockMemory:
    """One block's memory at a dtype and batch (bytes)."""

    weight_bytes: int
    act_bytes: int
    out_bytes: int
    source: str

    def row(self) -> dict[str, Any]:
        """The table columns."""
        return {"weight_bytes": self.weight_bytes, "act_bytes": self.act_bytes, "out_bytes": self.out_bytes,
                "mem_source": self.source}


#: the source of a candidate's peak computed from measured block rows (as a latency summed
#: from measured blocks is ``sum of measured blocks``): the candidate itself was not measured
FROM_MEASURED_BLOCKS = "from measured blocks"

@dataclass(frozen=True)
class PeakMemory:
    """A candidate's peak memory during one forward call (bytes).

    ``peak_bytes`` = ``weight_bytes`` (every block's weights, resident) + ``activation_bytes``
    (inputs, time embedding, live skip tensors, the block input and its activations at the
    peak); ``at_block``: the block where the peak is; ``skip_bytes``: skip tensors alive
    there; ``source``: ``from measured blocks`` (every row's memory was measured on the device;
    the candidate's peak is computed from them, never measured whole), ``estimate`` or ``mixed``.
    """

    peak_bytes: int
    weight_bytes: int
    activation_bytes: int
    skip_bytes: int
    at_block: str
    source: str

    @property
    def peak_mb(self) -> float:
        """Peak in MiB (``max_memory_mb`` compares against this)."""
        return self.peak_bytes / 2**20

    def as_dict(self) -> dict[str, Any]:
        return {"peak_mb": round(self.peak_mb, 3), "weight_mb": round(self.weight_bytes / 2**20, 3),
                "activation_mb": round(self.activation_bytes / 2**20, 3),
                "skip_mb": round(self.skip_bytes / 2**20, 3), "at_block": self.at_block, "source": self.source}


def weight_bytes(module: torch.nn.Module, elem_bytes: int | None = None) -> int:
    """Bytes of ``module``'s parameters and buffers (shared tensors once), at ``elem_bytes``
    per element if given, else at their own dtype."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * (elem_bytes or t.element_size())
    return int(total)


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


class _LiveTensors(TorchDispatchMode):
    """Bytes of the tensors ops create and that are still alive, and their peak (works on
    ``meta`` tensors: a run that allocates nothing still frees what Python drops)."""

    def __init__(self, elem_bytes: int | None = None) -> None:
        super().__init__()
        self.elem_bytes = elem_bytes
        self.live = 0
        self.peak = 0
        self._owners: set[int] = set()

    def _drop(self, key: int, n: int) -> None:
        self.live -= n
        self._owners.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if getattr(func, "is_view", False):
            return out
        ins = {id(t) for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            if id(t) in ins or t._base is not None:  # in-place results and views own no new memory
                continue
            key = id(t)
            if key in self._owners:
                continue
            n = t.numel() * (self.elem_bytes or t.element_size())
            self._owners.add(key)
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._drop, key, n)
        return out


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence fd 2 (the profiler's C++ start/stop lines) while profiling."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak(fn: Callable[[], Any]) -> tuple[int, int, Any]:
    """(peak, net) bytes allocated during ``fn()`` on the CPU, from torch's profiler."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    allocs: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        extra = node.extra_fields
        if type(extra).__name__ == "_ExtraFields_Allocation" and str(getattr(extra, "device", "cpu")).startswith("cpu"):
            allocs.append((node.start_time_ns, int(extra.alloc_size)))
        stack.extend(node.children)
    allocs.sort()
    cur = peak = 0
    for _, size in allocs:
        cur += size
        peak = max(peak, cur)
    return peak, cur, out


def measure_peak(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[int, int, Any]:
    """``(peak, net, result)``: bytes allocated during ``fn()`` above what was allocated
    before it, at the peak and at the end (the result still held). CUDA: the caching
    allocator's ``max_memory_allocated``; CPU: torch's memory profiler. Other devices
    (MPS): ``NotImplementedError``."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        return (int(torch.cuda.max_memory_allocated(device) - base), int(torch.cuda.memory_allocated(device) - base),
                out)
    if device.type == "cpu":
        return _cpu_peak(fn)
    raise NotImplementedError(f"no memory measurement on {device.type}")


def estimate_block_memory(spec: Any, batch: int = 1, dtype: torch.dtype = torch.float32,
                          elem_bytes: int | None = None) -> BlockMemory:
    """A block's memory from a ``meta`` run (nothing allocated): tensors alive during the
    call, at ``elem_bytes`` per element (default: ``dtype``'s size)."""
    from archsearch.model import build_block, example_inputs

    block = build_block(spec, device="meta", dtype=dtype)
    inputs = example_inputs(spec, batch, device="meta", dtype=dtype)
    tracker = _LiveTensors(elem_bytes)
    with torch.inference_mode(), tracker:
        out = block(*inputs)
    size = elem_bytes or out.element_size()
    return BlockMemory(weight_bytes(block, elem_bytes), int(tracker.peak), int(out.numel() * size), "estimate")


def measure_block_memory(spec: Any, batch: int = 1, device: Any = "cpu",
                         dtype: torch.dtype = torch.float32,
                         built: tuple[torch.nn.Module, tuple] | None = None) -> BlockMemory:
    """A block's memory, measured on ``device`` (CPU or CUDA; see :func:`measure_peak`);
    one warm-up call first, so lazily made caches do not count. ``built``: the block and
    its inputs, already built on ``device`` at ``dtype`` (a profiler times the same ones
    next, already warm)."""
    from archsearch.model import build_block, example_inputs

    device = torch.device(device)
    if built is not None:
        block, inputs = built
    else:
        block = build_block(spec, device=device, dtype=dtype).eval()
        inputs = example_inputs(spec, batch, device=device, dtype=dtype)
    with torch.inference_mode():
        block(*inputs)
        peak, _, out = measure_peak(lambda: block(*inputs), device)
    return BlockMemory(weight_bytes(block), int(peak), int(out.numel() * out.element_size()), "measured")


def _input_bytes(candidate: Any, batch: int, elem_bytes: int) -> int:
    c = candidate
    frames = c.frames if c.kind == "video" else 1
    sample = batch * c.latent_channels * frames * c.resolution ** 2
    context = batch * c.context_length * c.context_dim
    return int((sample + context) * elem_bytes + batch * 4)


def model_peak(candidate: Any, memory_of: Callable[[Any], tuple[int, int, int, str]], batch: int = 1,
               elem_bytes: int = 4) -> PeakMemory:
    """Peak memory of one forward call of ``candidate``, from its blocks' memory.

    ``memory_of(spec) -> (weight_bytes, act_bytes, out_bytes, source)`` (a table's row, or an
    estimate). The walk follows ``ArchUNet.forward``: a block that pops a skip tensor first
    concatenates it to its input (both and the result alive at once); a block that pushes
    keeps its output alive on the skip stack until an up block pops it. Video: spatial
    blocks see the frames as batch (their rows already do), and the time embedding and
    context are repeated per frame.
    """
    from archsearch.cost.latency._keys import candidate_blocks

    specs = candidate_blocks(candidate).specs
    mems = [memory_of(s) for s in specs]
    weights = int(sum(m[0] for m in mems))
    sources = {m[3] for m in mems}
    base = _input_bytes(candidate, batch, elem_bytes)
    frames = candidate.frames if candidate.kind == "video" else 1
    stacks: dict[int, list[int]] = {}
    stacked = 0
    x = 0  # the current activation, if it is not on a skip stack
    peak, at, skip_at = base, "inputs", 0
    for spec, (_, act, out, _) in zip(specs, mems):
        if spec.type in ("time_embed", "text_time_embed"):
            here = base + stacked + act
            if here > peak:
                peak, at, skip_at = here, spec.name, stacked
            if spec.type == "time_embed":  # kept for every block (text_time_embed replaces it)
                base += out * frames
                if frames > 1:  # the context repeated per frame
                    base += batch * frames * candidate.context_length * candidate.context_dim * elem_bytes
            continue
        if spec.pop_skip is not None and stacks.get(spec.pop_skip):
            skip = stacks[spec.pop_skip].pop()
            # torch.cat: x, the popped skip and the concatenation alive together
            cat = int(math.prod(spec.in_shape)) * batch * elem_bytes
            here = base + stacked + x + cat
            if here > peak:
                peak, at, skip_at = here, f"{spec.name} (skip concatenation)", stacked
            stacked -= skip
            x = cat
        here = base + stacked + x + act
        if here > peak:
            peak, at, skip_at = here, spec.name, stacked
        x = out
        if spec.push_skip is not None:
            stacks.setdefault(spec.push_skip, []).append(out)
            stacked += out
            x = 0
    source = sources.pop() if len(sources) == 1 else "mixed"
    if source == "measured":  # each block's memory was measured, the candidate's peak is computed from them
        source = FROM_MEASURED_BLOCKS
    return PeakMemory(int(weights + peak), weights, int(peak), int(skip_at), at, source)


def estimate_memory(candidate: Any, batch: int = 1, elem_bytes: int = 4) -> PeakMemory:
    """A candidate's peak memory with no latency table: :func:`model_peak` over every
    block's ``meta``-run estimate (``source="estimate"``; nothing is allocated)."""
    found: dict[Any, tuple[int, int, int, str]] = {}

    def memory_of(spec: Any) -> tuple[int, int, int, str]:
        if spec.key not in found:
            m = estimate_block_memory(spec, batch, elem_bytes=elem_bytes)
            found[spec.key] = (m.weight_bytes, m.act_bytes, m.out_bytes, m.source)
        return found[spec.key]

    return model_peak(candidate, memory_of, batch, elem_bytes)


def measure_model_memory(candidate: Any, device: Any = "cpu", dtype: torch.dtype = torch.float32,
                         batch: int = 1) -> int:
    """Measured peak bytes of one forward call of ``candidate``'s whole model: its weights and
    inputs plus the peak allocated during the call (see :func:`measure_peak`)."""
    from archsearch.export import model_inputs
    from archsearch.model import build_model

    device = torch.device(device)
    model = build_model(candidate, device=device, dtype=dtype).eval()
    inputs = model_inputs(candidate, batch, device, dtype)
    held = weight_bytes(model) + sum(t.numel() * t.element_size() for t in inputs)
    with torch.inference_mode():
        model(*inputs)
        peak, _, _ = measure_peak(lambda: model(*inputs), device)
    return int(held + peak)


def relative_errors(predicted: Any, measured: Any) -> np.ndarray:
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    return (p - m) / m
