"""How much memory a candidate's model takes, estimated on ``meta`` before anything is allocated.

:func:`check_memory` is the one guard every command goes through before it allocates a model:
:class:`~archsearch.model.ArchUNet` calls it when it builds on a real device (``build``,
``train``, the proxy runs of ``run``, ``export``, ``from_pretrained``), and ``show`` / ``build``
call it before they cost a candidate block by block. A model whose weights (plus its largest
block input) would not fit is refused with one line, instead of dying in the allocator.

The limit is the smaller of :data:`MAX_MODEL_BYTES` and this machine's RAM (the GPU's memory
when building on CUDA); ``ARCHSEARCH_MAX_MODEL_GB`` replaces both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from archsearch.candidate import Candidate
from archsearch.errors import CandidateError
from archsearch.model._blocks import block_numel
from archsearch.model._walker import walk

__all__ = ["MAX_MODEL_BYTES", "MEMORY_ENV", "MemoryEstimate", "check_memory", "estimate_memory", "memory_limit"]

#: the largest model (weights plus the largest block input, batch 1) any command builds:
#: 64 GiB, SDXL's UNet (10.3 GB in float32) six times over
MAX_MODEL_BYTES = 64 << 30
#: environment variable (GiB) that replaces the limit
MEMORY_ENV = "ARCHSEARCH_MAX_MODEL_GB"

_GIB = float(1 << 30)


@dataclass(frozen=True)
class MemoryEstimate:
    """A candidate's memory at one element size, counted on ``meta`` (nothing allocated).

    ``weights_bytes``: parameters and buffers of the whole model; ``largest_block_bytes`` and
    ``largest_block``: those of its largest block (what costing it block by block holds at
    once); ``activation_bytes``: its largest block input at batch 1.
    """

    params: int
    weights_bytes: int
    largest_block: str
    largest_block_bytes: int
    activation_bytes: int
    element_size: int

    @property
    def model_bytes(self) -> int:
        """What building the whole model holds at least: its weights and one activation."""
        return self.weights_bytes + self.activation_bytes

    @property
    def block_bytes(self) -> int:
        """What costing the largest block alone holds at least."""
        return self.largest_block_bytes + self.activation_bytes


@lru_cache(maxsize=65536)
def _block_numel(type_: str, params: tuple[tuple[str, Any], ...]) -> tuple[int, int]:
    """(parameters, parameters + buffers) of one block: its hyperparameters alone decide them
    (counted on meta without importing diffusers: validate stays quick)."""
    return block_numel(type_, dict(params))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def estimate_memory(candidate: Candidate, dtype: torch.dtype | None = None) -> MemoryEstimate:
    """The memory of ``candidate``'s model in ``dtype`` (default: torch's default dtype)."""
    elem = torch.empty((), dtype=dtype or torch.get_default_dtype(), device="meta").element_size()
    params = weights = 0
    largest, largest_numel, act = "", -1, 0
    for spec in walk(candidate):
        n_params, n_all = _block_numel(spec.type, spec.params)
        params += n_params
        weights += n_all
        if n_all > largest_numel:
            largest, largest_numel = spec.name, n_all
        act = max(act, _numel(spec.in_shape))
    return MemoryEstimate(params=params, weights_bytes=weights * elem, largest_block=largest,
                          largest_block_bytes=max(largest_numel, 0) * elem, activation_bytes=act * elem,
                          element_size=elem)


def _ram_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):  # not a POSIX system
        return None


def memory_limit(device: Any = None) -> tuple[int, str]:
    """The most bytes a model may take, and where that limit comes from (for the error).

    ``ARCHSEARCH_MAX_MODEL_GB`` if set; else :data:`MAX_MODEL_BYTES` or, if smaller, the
    machine's RAM (the GPU's memory for a CUDA ``device``).
    """
    env = os.environ.get(MEMORY_ENV)
    if env:
        try:
            gib = float(env)
        except ValueError:
            raise CandidateError(f"{MEMORY_ENV}={env!r}: bad value (allowed: a number of GiB > 0)") from None
        if not gib > 0:
            raise CandidateError(f"{MEMORY_ENV}={env!r}: bad value (allowed: a number of GiB > 0)")
        return int(gib * _GIB), f"{MEMORY_ENV}={env}"
    limit, where = MAX_MODEL_BYTES, f"archsearch's limit of {MAX_MODEL_BYTES / _GIB:.0f} GiB"
    try:
        dev = torch.device(device) if device is not None else None
    except (RuntimeError, TypeError):
        dev = None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(dev.index or 0).total_memory
        name = "the GPU's memory"
    else:
        total = _ram_bytes()
        name = "this machine's RAM"
    if total is not None and total < limit:
        limit, where = total, f"{name}, {total / _GIB:.1f} GiB"
    return limit, where


def _gib(n: int) -> str:
    return f"{n / _GIB:.3g} GiB" if n >= 0.01 * _GIB else f"{n / (1 << 20):.3g} MiB"


def check_memory(candidate: Candidate, dtype: torch.dtype | None = None, device: Any = None, *,
                 whole: bool = True) -> MemoryEstimate:
    """Refuse ``candidate`` (:class:`~archsearch.errors.CandidateError`, one line) if building
    it would exceed :func:`memory_limit`; returns the estimate otherwise.

    ``whole``: the whole model is built (its weights count); else it is only costed block by
    block (``show``, ``build`` without ``--save``): its largest block counts.
    """
    est = estimate_memory(candidate, dtype)
    limit, where = memory_limit(device)
    need = est.model_bytes if whole else est.block_bytes
    if need <= limit:
        return est
    origin = f" (from {candidate.origin})" if candidate.origin else ""
    if whole:
        what = f"its model needs {_gib(need)}: {est.params:,} parameters"
    else:
        what = f"its largest block, {est.largest_block}, needs {_gib(need)}"
    raise CandidateError(
        f"candidate {candidate.id}{origin}: {what} ({est.element_size}-byte weights and the largest "
        f"activation at batch 1), over the limit of {_gib(limit)} ({where}); nothing was allocated "
        f"(allowed: a smaller candidate, or set {MEMORY_ENV})"
    )
