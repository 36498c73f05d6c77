"""Devices, precision, threads and seeded RNG scopes of the training runs (and of ``prepare``)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from archsearch.errors import ParameterError

__all__ = ["DEVICES", "autocast", "resolve_device", "seeded", "torch_threads"]

#: What ``device`` may name (``cuda:N`` too).
DEVICES = ("auto", "cpu", "cuda", "mps")
_ALLOWED = "auto, cpu, cuda, cuda:N, mps"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``'cuda'`` when available, else ``'mps'``, else ``'cpu'``; an explicit name is checked.

    Errors name the parameter (``device: ...``); the CLI turns that into its flag.
    """
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ParameterError("device", f": bad value {device!r} (allowed: {_ALLOWED})") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ParameterError("device", f": bad value {device!r} (allowed: {_ALLOWED})")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device", ": cuda is not available on this machine (allowed: auto, cpu)")
    if dev.type == "mps" and not _mps_available():
        raise ParameterError("device", ": mps is not available on this machine (allowed: auto, cpu)")
    return dev


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` inside the block, restored after (``None``: left)."""
    if not threads:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Torch's global RNG seeded with ``seed`` inside the block; the caller's state is restored.

    ``device``: a CUDA device whose RNG is forked and seeded too.
    """
    cuda = []
    if device is not None and device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield
