"""How a model is called when it is converted: a whole UNet's example inputs
(:func:`model_inputs`), and a block called from its non-``None`` inputs only
(:class:`PositionalCall`: ``torch.export``, ``torch.jit`` and converters take tensors)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["PositionalCall", "model_inputs"]


class PositionalCall(nn.Module):
    """Calls ``block(x, temb, context)`` from only the non-None inputs (for jit tracing)."""

    def __init__(self, block: nn.Module, present: list[bool]) -> None:
        super().__init__()
        self.block = block
        self.present = present

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        it = iter(args)
        full = [next(it) if p else None for p in self.present]
        return self.block(*full)


def model_inputs(candidate: Any, batch: int = 1, device: Any = None,
                 dtype: torch.dtype | None = None) -> tuple:
    """``(sample, timestep, encoder_hidden_states)`` for a whole model of ``candidate``."""
    c = candidate
    dtype = dtype or torch.float32
    g = torch.Generator().manual_seed(0)
    if c.kind == "video":
        shape = (batch, c.latent_channels, c.frames, c.resolution, c.resolution)
    else:
        shape = (batch, c.latent_channels, c.resolution, c.resolution)
    sample = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    timestep = torch.full((batch,), 500.0, device=device)
    context = torch.randn(batch, c.context_length, c.context_dim, generator=g).to(device=device, dtype=dtype)
    return sample, timestep, context
