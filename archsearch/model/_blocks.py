"""The block registry: every block the walker emits, built from diffusers/torch pieces.

Every block is called ``block(x, temb, context)`` and returns a tensor; blocks ignore the
inputs they do not need. Spatial tensors are ``(B*T, C, H, W)`` (T = 1 for images);
temporal blocks know T and fold it out themselves. This single calling convention lets
the profiler time any block alone with :func:`example_inputs`.
"""

from __future__ import annotations

import contextvars
import importlib
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from archsearch.errors import CandidateError

__all__ = ["BLOCK_TYPES", "block_numel", "create_block", "register_block"]

# diffusers' layers are imported where a block is built (``_layer``), not with this module:
# importing diffusers pulls in torch's compile stack (torch._dynamo, seconds), which `validate`,
# `show -n 0`, `predict` and `--help` never need. Counting a block's parameters (the memory
# check every command makes) uses ``_TWINS`` instead: the same parameter shapes, no diffusers.

#: True while :func:`block_numel` builds: diffusers layers are replaced by their twins
_COUNTING: contextvars.ContextVar[bool] = contextvars.ContextVar("archsearch_block_counting", default=False)


class _Shapes(nn.Module):
    """Parameters of the given shapes and nothing else: a diffusers layer's twin for counting."""

    def __init__(self, *shapes: tuple[int, ...]) -> None:
        super().__init__()
        self.p = nn.ParameterList(nn.Parameter(torch.empty(s)) for s in shapes)


def _linear(n_in: int, n_out: int) -> list[tuple[int, ...]]:
    return [(n_out, n_in), (n_out,)]


def _conv(n_in: int, n_out: int, k: int) -> list[tuple[int, ...]]:
    return [(n_out, n_in, k, k), (n_out,)]


def _resnet_twin(*, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float) -> nn.Module:
    # norm1, conv1, time_emb_proj, norm2, conv2 (+ a 1x1 conv_shortcut when the widths differ)
    shapes = [(in_channels,), (in_channels,), *_conv(in_channels, out_channels, 3),
              *_linear(temb_channels, out_channels), (out_channels,), (out_channels,),
              *_conv(out_channels, out_channels, 3)]
    if in_channels != out_channels:
        shapes += _conv(in_channels, out_channels, 1)
    return _Shapes(*shapes)


def _feedforward_twin(dim: int, *, activation_fn: str, inner_dim: int) -> nn.Module:
    # GEGLU projects to 2 x inner (value and gate), GELU to inner; then inner -> dim
    glu = activation_fn in ("geglu", "swiglu")
    return _Shapes(*_linear(dim, inner_dim * (2 if glu else 1)), *_linear(inner_dim, dim))


#: diffusers layer name -> a module with the same parameter shapes (see block_numel)
_TWINS: dict[str, Callable[..., nn.Module]] = {
    "Timesteps": lambda *a, **kw: _Shapes(),
    "TimestepEmbedding": lambda in_channels, time_embed_dim: _Shapes(*_linear(in_channels, time_embed_dim),
                                                                     *_linear(time_embed_dim, time_embed_dim)),
    "ResnetBlock2D": _resnet_twin,
    "FeedForward": _feedforward_twin,
    "Downsample2D": lambda channels, *, out_channels, **kw: _Shapes(*_conv(channels, out_channels, 3)),
    "Upsample2D": lambda channels, *, out_channels, **kw: _Shapes(*_conv(channels, out_channels, 3)),
}


def _layer(module: str, name: str, *args: Any, **kwargs: Any) -> nn.Module:
    """diffusers' ``module.name(*args, **kwargs)``, imported now; its twin while counting."""
    if _COUNTING.get():
        return _TWINS[name](*args, **kwargs)
    return getattr(importlib.import_module(module), name)(*args, **kwargs)


def block_numel(type_: str, hparams: dict[str, Any]) -> tuple[int, int]:
    """(parameters, parameters + buffers) of a block, counted on ``meta`` without importing
    diffusers: its diffusers layers are replaced by twins of the same parameter shapes
    (``tests/test_cli_ux.py`` checks every block type against the real build)."""
    token = _COUNTING.set(True)
    try:
        with torch.device("meta"):
            block = create_block(type_, hparams)
    finally:
        _COUNTING.reset(token)
    n_params = sum(p.numel() for p in block.parameters())
    return n_params, n_params + sum(b.numel() for b in block.buffers())

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_block(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a block factory under ``name`` (the ``type`` of a BlockSpec)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return deco


def create_block(type_: str, hparams: dict[str, Any]) -> nn.Module:
    """Build a block from its type and hyperparameters."""
    try:
        factory = _REGISTRY[type_]
    except KeyError:
        raise CandidateError(
            f"block type {type_!r} does not exist (allowed: {', '.join(sorted(_REGISTRY))})"
        ) from None
    return factory(**hparams)


# --------------------------------------------------------------------------- stem and head


class ConvIn(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, temb: Any = None, context: Any = None) -> torch.Tensor:
        return self.conv(x)


class TimeEmbed(nn.Module):
    """Sinusoidal timestep features + MLP (diffusers ``Timesteps`` + ``TimestepEmbedding``)."""

    def __init__(self, in_channels: int, time_embed_dim: int) -> None:
        super().__init__()
        self.proj = _layer("diffusers.models.embeddings", "Timesteps", in_channels, flip_sin_to_cos=True,
                           downscale_freq_shift=0)
        self.embedding = _layer("diffusers.models.embeddings", "TimestepEmbedding", in_channels, time_embed_dim)

    def forward(self, x: torch.Tensor, temb: Any = None, context: Any = None) -> torch.Tensor:
        t = self.proj(x)
        return self.embedding(t.to(self.embedding.linear_1.weight.dtype))


class ConvOut(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, in_channels, eps=1e-5)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, temb: Any = None, context: Any = None) -> torch.Tensor:
        return self.conv(F.silu(self.norm(x)))


# --------------------------------------------------------------------------- ResNet blocks


class PlainResnet(nn.Module):
    """SD-style ResNet block (diffusers ``ResnetBlock2D``: two 3x3 convs + time projection)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int) -> None:
        super().__init__()
        self.block = _layer(
            "diffusers.models.resnet", "ResnetBlock2D", in_channels=in_channels, out_channels=out_channels,
            temb_channels=temb_channels, groups=groups, eps=1e-5,
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None, context: Any = None) -> torch.Tensor:
        return self.block(x, temb)


class SeparableResnet(nn.Module):
    """SnapGen-style ResNet block with depthwise-separable convolutions.

    norm → SiLU → depthwise 3x3 → pointwise (in → expansion·out) → +time → norm → SiLU →
    depthwise 3x3 → pointwise (→ out), plus a 1x1 shortcut when widths differ.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int,
                 expansion: float) -> None:
        super().__init__()
        hidden = max(groups, int(round(out_channels * expansion / groups)) * groups)
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-5)
        self.dw1 = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels)
        self.pw1 = nn.Conv2d(in_channels, hidden, 1)
        self.time_emb_proj = nn.Linear(temb_channels, hidden)
        self.norm2 = nn.GroupNorm(groups, hidden, eps=1e-5)
        self.dw2 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.pw2 = nn.Conv2d(hidden, out_channels, 1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None, context: Any = None) -> torch.Tensor:
        h = self.pw1(self.dw1(F.silu(self.norm1(x))))
        if temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.pw2(self.dw2(F.silu(self.norm2(h))))
        skip = self.shortcut(x) if self.shortcut is not None else x
        return skip + h


@register_block("resnet")
def _resnet(in_channels: int, out_channels: int, temb_channels: int, groups: int,
            variant: str, expansion: float) -> nn.Module:
    if variant == "plain":
        return PlainResnet(in_channels, out_channels, temb_channels, groups)
    if variant == "separable":
        return SeparableResnet(in_channels, out_channels, temb_channels, groups, expansion)
    raise CandidateError(f"resnet variant {variant!r} does not exist (allowed: plain, separable)")


# --------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """Multi-head or multi-query attention with optional QK RMSNorm, through SDPA.

    Parameter layout matches diffusers' ``Attention`` (to_q/to_k/to_v without bias,
    to_out with bias), so an MHA block has exactly diffusers' parameter count.
    """

    def __init__(self, query_dim: int, heads: int, head_dim: int, kv_dim: int | None = None,
                 multi_query: bool = False, qk_norm: bool = False) -> None:
        super().__init__()
        kv_dim = kv_dim or query_dim
        self.heads, self.head_dim = heads, head_dim
        self.kv_heads = 1 if multi_query else heads
        self.to_q = nn.Linear(query_dim, heads * head_dim, bias=False)
        self.to_k = nn.Linear(kv_dim, self.kv_heads * head_dim, bias=False)
        self.to_v = nn.Linear(kv_dim, self.kv_heads * head_dim, bias=False)
        self.norm_q = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.norm_k = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.to_out = nn.Linear(heads * head_dim, query_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        kv = x if context is None else context
        q = self.to_q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.to_k(kv).view(b, kv.shape[1], self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.to_v(kv).view(b, kv.shape[1], self.kv_heads, self.head_dim).transpose(1, 2)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        if rope is not None:  # self-attention only: queries and keys share the token grid
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.kv_heads != self.heads:
            k = k.expand(b, self.heads, kv.shape[1], self.head_dim)
            v = v.expand(b, self.heads, kv.shape[1], self.head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


def rope_2d(h: int, w: int, head_dim: int, device: Any = None, dtype: torch.dtype | None = None,
            theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``(h*w, r/2)`` of 2D rotary embeddings for an ``h x w`` token grid.

    The first ``r = head_dim - head_dim % 4`` features of each head rotate in pairs: half of
    the pairs by the token's row, half by its column (frequencies ``theta^(-i/(r/4))``); any
    remaining features pass unrotated. No parameters.
    """
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1))
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None].expand(h, w).reshape(-1)
    xs = torch.arange(w, device=device, dtype=torch.float32)[None, :].expand(h, w).reshape(-1)
    angles = torch.cat([ys[:, None] * freqs, xs[:, None] * freqs], dim=1)  # (h*w, r/2)
    dtype = dtype or torch.float32
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate feature pairs of ``t`` ``(b, heads, n, d)`` by the tables of :func:`rope_2d`."""
    r = 2 * cos.shape[-1]
    if r == 0:
        return t
    rot, rest = t[..., :r], t[..., r:]
    a, b = rot[..., 0::2], rot[..., 1::2]
    rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    return torch.cat([rotated, rest], dim=-1)


class TransformerLayer(nn.Module):
    """Self-attention and/or cross-attention, then a feed-forward (pre-norm, residual)."""

    def __init__(self, dim: int, attention: str, heads: int, head_dim: int, context_dim: int,
                 multi_query: bool, qk_norm: bool, ffn_ratio: float, ffn_type: str) -> None:
        super().__init__()
        self.has_self = attention in ("self", "self_cross")
        self.has_cross = attention in ("cross", "self_cross")
        if self.has_self:
            self.norm1 = nn.LayerNorm(dim)
            self.attn1 = Attention(dim, heads, head_dim, None, multi_query, qk_norm)
        if self.has_cross:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads, head_dim, context_dim, multi_query, qk_norm)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = _layer("diffusers.models.attention", "FeedForward", dim, activation_fn=ffn_type,
                         inner_dim=int(round(dim * ffn_ratio)))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.has_self:
            x = x + self.attn1(self.norm1(x), None, rope)
        if self.has_cross:
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


@register_block("transformer")
class SpatialTransformer(nn.Module):
    """GroupNorm → linear in → ``depth`` transformer layers over H·W tokens → linear out (+x).

    The projections are linear layers (SDXL's ``use_linear_projection``; SD-v1.5's 1x1
    convolutions hold the same parameters). ``rope``: 2D RoPE in the self-attention.
    """

    def __init__(self, channels: int, depth: int, attention: str, heads: int, head_dim: int,
                 context_dim: int, context_length: int, variant: str, qk_norm: bool,
                 ffn_ratio: float, ffn_type: str, groups: int, rope: bool = False) -> None:
        super().__init__()
        self.rope = rope and attention in ("self", "self_cross")
        self.head_dim = head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.layers = nn.ModuleList(
            TransformerLayer(channels, attention, heads, head_dim, context_dim, variant == "mqa",
                             qk_norm, ffn_ratio, ffn_type)
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, temb: Any = None, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        t = self.proj_in(t)
        rope = rope_2d(h, w, self.head_dim, x.device, t.dtype) if self.rope else None
        for layer in self.layers:
            t = layer(t, context, rope)
        t = self.proj_out(t)
        return x + t.reshape(b, h, w, c).permute(0, 3, 1, 2)


@register_block("cross_ffn")
class CrossFFN(SpatialTransformer):
    """A cross-attention + FFN block, no self-attention (SnapGen's first stage turns a ResNet
    into one): GroupNorm → linear in → LayerNorm → cross-attention → LayerNorm → FFN →
    linear out, residual."""

    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int, context_length: int,
                 variant: str, qk_norm: bool, ffn_ratio: float, ffn_type: str, groups: int) -> None:
        super().__init__(channels, 1, "cross", heads, head_dim, context_dim, context_length, variant, qk_norm,
                         ffn_ratio, ffn_type, groups)


# --------------------------------------------------------------------------- temporal layers


@register_block("temporal_conv1d")
class TemporalConv1d(nn.Module):
    """GroupNorm → SiLU → conv over time only (kernel 3x1x1), residual; starts as identity."""

    def __init__(self, channels: int, frames: int, groups: int) -> None:
        super().__init__()
        self.frames = frames
        self.norm = nn.GroupNorm(groups, channels, eps=1e-5)
        self.conv = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, temb: Any = None, context: Any = None) -> torch.Tensor:
        bt, c, h, w = x.shape
        b = bt // self.frames
        v = x.reshape(b, self.frames, c, h, w).permute(0, 2, 1, 3, 4)
        v = self.conv(F.silu(self.norm(v)))
        return x + v.permute(0, 2, 1, 3, 4).reshape(bt, c, h, w)


@register_block("temporal_conv3d")
class TemporalConv3d(nn.Module):
    """GroupNorm → SiLU → 3x3x3 conv over time and space, residual; starts as identity."""

    def __init__(self, channels: int, frames: int, groups: int) -> None:
        super().__init__()
        self.frames = frames
        self.norm = nn.GroupNorm(groups, channels, eps=1e-5)
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, temb: Any = None, context: Any = None) -> torch.Tensor:
        bt, c, h, w = x.shape
        b = bt // self.frames
        v = x.reshape(b, self.frames, c, h, w).permute(0, 2, 1, 3, 4)
        v = self.conv(F.silu(self.norm(v)))
        return x + v.permute(0, 2, 1, 3, 4).reshape(bt, c, h, w)


@register_block("temporal_attn1d")
class TemporalAttention1d(nn.Module):
    """Self-attention across frames at every pixel (tokens = T), with frame positions."""

    def __init__(self, channels: int, frames: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.frames = frames
        self.pos = nn.Parameter(torch.zeros(frames, channels))
        self.norm = nn.LayerNorm(channels)
        self.attn = Attention(channels, heads, head_dim)

    def forward(self, x: torch.Tensor, temb: Any = None, context: Any = None) -> torch.Tensor:
        bt, c, h, w = x.shape
        b = bt // self.frames
        t = x.reshape(b, self.frames, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, self.frames, c)
        t = t + self.attn(self.norm(t + self.pos))
        return t.reshape(b, h * w, self.frames, c).permute(0, 2, 3, 1).reshape(bt, c, h, w)


@register_block("temporal_attn3d")
class TemporalAttention3d(nn.Module):
    """Spatio-temporal self-attention over all T·H·W tokens of a clip."""

    def __init__(self, channels: int, frames: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.frames = frames
        self.pos = nn.Parameter(torch.zeros(frames, 1, channels))
        self.norm = nn.LayerNorm(channels)
        self.attn = Attention(channels, heads, head_dim)

    def forward(self, x: torch.Tensor, temb: Any = None, context: Any = None) -> torch.Tensor:
        bt, c, h, w = x.shape
        b = bt // self.frames
        t = x.reshape(b, self.frames, c, h * w).permute(0, 1, 3, 2)  # b, T, hw, c
        t = t + self.pos
        t = t.reshape(b, self.frames * h * w, c)
        t = t + self.attn(self.norm(t))
        return t.reshape(b, self.frames, h * w, c).permute(0, 1, 3, 2).reshape(bt, c, h, w)


class _TemporalCross(nn.Module):
    """Temporal self-attention (1D: over the frames of each pixel; 3D: over all T·H·W tokens
    of a clip), then cross-attention of every token to the text, each pre-norm, residual."""

    spatio_temporal = False

    def __init__(self, channels: int, frames: int, heads: int, head_dim: int, context_dim: int,
                 context_length: int) -> None:
        super().__init__()
        self.frames = frames
        self.pos = nn.Parameter(torch.zeros(frames, 1, channels))
        self.norm1 = nn.LayerNorm(channels)
        self.attn1 = Attention(channels, heads, head_dim)
        self.norm2 = nn.LayerNorm(channels)
        self.attn2 = Attention(channels, heads, head_dim, context_dim)

    def forward(self, x: torch.Tensor, temb: Any = None, context: torch.Tensor | None = None) -> torch.Tensor:
        bt, c, h, w = x.shape
        b, f = bt // self.frames, self.frames
        t = x.reshape(b, f, c, h * w).permute(0, 1, 3, 2) + self.pos  # b, T, hw, c
        if self.spatio_temporal:
            s = t.reshape(b, f * h * w, c)
            s = s + self.attn1(self.norm1(s))
        else:
            s = t.permute(0, 2, 1, 3).reshape(b * h * w, f, c)
            s = s + self.attn1(self.norm1(s))
            s = s.reshape(b, h * w, f, c).permute(0, 2, 1, 3).reshape(b, f * h * w, c)
        # every frame of a clip carries the same text: attend to it once per clip
        ctx = context.reshape(b, f, *context.shape[1:])[:, 0]
        s = s + self.attn2(self.norm2(s), ctx)
        return s.reshape(b, f, h * w, c).permute(0, 1, 3, 2).reshape(bt, c, h, w)


@register_block("temporal_cross1d")
class TemporalCross1d(_TemporalCross):
    """Temporal self-attention over frames (per pixel), then cross-attention to the text."""


@register_block("temporal_cross3d")
class TemporalCross3d(_TemporalCross):
    """Spatio-temporal self-attention over T·H·W tokens, then cross-attention to the text."""

    spatio_temporal = True


# --------------------------------------------------------------------------- added conditioning


@register_block("text_time_embed")
class TextTimeEmbed(nn.Module):
    """SDXL's ``text_time`` conditioning, added to the time embedding.

    Called ``block(x, temb, None)`` with ``x = cat(pooled_text, time_ids)`` of shape
    ``(B, pooled_dim + time_ids)``: each time id gets ``time_id_dim`` sinusoidal features
    (diffusers' ``add_time_proj``), they are concatenated after the pooled text and projected
    by an MLP (``add_embedding``) to the time embedding's width; returns ``temb`` + that.
    """

    def __init__(self, pooled_dim: int, time_ids: int, time_id_dim: int, time_embed_dim: int) -> None:
        super().__init__()
        self.pooled_dim, self.time_ids = pooled_dim, time_ids
        self.add_time_proj = _layer("diffusers.models.embeddings", "Timesteps", time_id_dim, flip_sin_to_cos=True,
                                    downscale_freq_shift=0)
        self.add_embedding = _layer("diffusers.models.embeddings", "TimestepEmbedding",
                                    pooled_dim + time_ids * time_id_dim, time_embed_dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None, context: Any = None) -> torch.Tensor:
        pooled, ids = x[:, : self.pooled_dim], x[:, self.pooled_dim:]
        feats = self.add_time_proj(ids.flatten()).reshape(x.shape[0], -1)
        emb = self.add_embedding(torch.cat([pooled, feats.to(pooled.dtype)], dim=-1))
        return emb if temb is None else temb + emb


# --------------------------------------------------------------------------- resampling


class Down(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = _layer("diffusers.models.resnet", "Downsample2D", channels, use_conv=True, out_channels=channels,
                         padding=1)

    def forward(self, x: torch.Tensor, temb: Any = None, context: Any = None) -> torch.Tensor:
        return self.op(x)


class Up(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = _layer("diffusers.models.resnet", "Upsample2D", channels, use_conv=True, out_channels=channels)

    def forward(self, x: torch.Tensor, temb: Any = None, context: Any = None) -> torch.Tensor:
        return self.op(x)


register_block("conv_in")(ConvIn)
register_block("time_embed")(TimeEmbed)
register_block("conv_out")(ConvOut)
register_block("downsample")(Down)
register_block("upsample")(Up)

BLOCK_TYPES = tuple(sorted(_REGISTRY))
