"""The Neural-Engine layout of a block or a whole UNet, the way Apple runs diffusion UNets.

apple/ml-stable-diffusion (``python_coreml_stable_diffusion/unet.py``) rewrites the UNet for
the Neural Engine: every activation stays a channels-first 4-D tensor ``(B, C, 1, S)`` (the
ANE's native layout; the last axis is the one padded to 64 bytes), linear layers in
attention and the FFN become 1x1 convolutions, layer norms normalise over the channel axis,
and attention is split per head ("split-einsum": one einsum pair per head instead of a
batched matmul over a transposed head axis), with the queries cut into chunks for long
sequences (``SPLIT_EINSUM_V2``). Nothing is transposed inside a block: the text context is
turned into ``(B, D, 1, L)`` once, at the model's input.

:func:`ane_block` wraps one block, :func:`ane_model` a whole :class:`ArchUNet`; both are
numerically the same function as the torch module (same weights, reshaped), which
``tests/test_ane_layout.py`` checks. Blocks other than the transformer kinds (ResNets,
resampling, stem, head) are convolutional and channels-first already and are kept as they
are (their GroupNorms through a rank-4 view); temporal convolutions run at rank 4
(:class:`ANETemporalConv`: Core ML refuses their 5-D GroupNorm); temporal attention is kept
in its torch layout (rank <= 4; it converts as it is) and says so (:func:`ane_unsupported`).

The Core ML export converts this layout (``_coreml``); the roofline estimator counts its ops
(``archsearch.cost.latency.ane_layout_ops``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archsearch.model import ArchUNet, SpatialTransformer, rope_2d

__all__ = [
    "ANEAttention",
    "ANEGroupNorm",
    "ANELayerNorm",
    "ANESpatialTransformer",
    "ANETemporalConv",
    "ANEUNet",
    "DEFAULT_QUERY_CHUNK",
    "ane_block",
    "ane_model",
    "ane_unsupported",
]

#: queries per chunk of split-einsum attention (ml-stable-diffusion's SPLIT_EINSUM_V2 chunks
#: long sequences so that one head's score matrix stays small)
DEFAULT_QUERY_CHUNK = 512


def _conv_from_linear(linear: nn.Linear) -> nn.Conv2d:
    """A 1x1 convolution computing ``linear`` on ``(B, C, 1, S)`` tensors (same weights)."""
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


class ANELayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, 1, S)`` (ml-stable-diffusion's LayerNormANE)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        shape = (1, -1, 1, 1)
        self.weight = nn.Parameter(norm.weight.detach().clone().reshape(shape)) if norm.weight is not None else None
        self.bias = nn.Parameter(norm.bias.detach().clone().reshape(shape)) if norm.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=1, keepdim=True)
        out = centred * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            out = out * self.weight
        if self.bias is not None:
            out = out + self.bias
        return out


class ANEGroupNorm(nn.Module):
    """GroupNorm on ``(B, C, H, W)`` through a rank-4 view ``(B, G, C/G, H*W)``: coremltools
    lowers ``nn.GroupNorm`` through a rank-5 reshape, which the Neural Engine does not run."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.groups, self.eps = norm.num_groups, norm.eps
        self.weight = nn.Parameter(norm.weight.detach().clone().reshape(1, -1, 1, 1)) if norm.affine else None
        self.bias = nn.Parameter(norm.bias.detach().clone().reshape(1, -1, 1, 1)) if norm.affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        g = x.reshape(shape[0], self.groups, shape[1] // self.groups, -1)
        mean = g.mean(dim=(2, 3), keepdim=True)
        centred = g - mean
        var = (centred * centred).mean(dim=(2, 3), keepdim=True)
        out = (centred * torch.rsqrt(var + self.eps)).reshape(shape)
        if self.weight is not None:
            out = out * self.weight + self.bias
        return out


def _replace_group_norms(module: nn.Module) -> nn.Module:
    """Swap every 4-D ``nn.GroupNorm`` child of ``module`` for :class:`ANEGroupNorm` (in place)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, ANEGroupNorm(child))
        else:
            _replace_group_norms(child)
    return module


def _rms(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the channel axis of one head ``(B, d, 1, S)``."""
    out = x * torch.rsqrt((x * x).mean(dim=1, keepdim=True) + eps)
    return out * weight if weight is not None else out


def _rope_permutation(head_dim: int) -> torch.Tensor:
    """Feature order that puts each rotated pair's halves together: ``[0, 2, 4, ..., 1, 3, ...,
    rest]``. q·k is unchanged when q and k are permuted alike, so the rotation becomes two
    contiguous channel slices instead of strided ones."""
    r = 4 * (head_dim // 4)  # rope_2d rotates head_dim // 4 pairs by row and as many by column
    return torch.cat([torch.arange(0, r, 2), torch.arange(1, r, 2), torch.arange(r, head_dim)])


class ANEAttention(nn.Module):
    """``archsearch.model`` Attention on ``(B, C, 1, S)``: 1x1-conv projections, one einsum pair
    per head, queries in chunks of ``query_chunk``; MQA shares its one K/V head; QK RMSNorm
    and 2D RoPE as in the torch module."""

    def __init__(self, attn: nn.Module, query_chunk: int = DEFAULT_QUERY_CHUNK) -> None:
        super().__init__()
        self.heads, self.head_dim, self.kv_heads = attn.heads, attn.head_dim, attn.kv_heads
        self.query_chunk = max(1, int(query_chunk))
        self.to_q = _conv_from_linear(attn.to_q)
        self.to_k = _conv_from_linear(attn.to_k)
        self.to_v = _conv_from_linear(attn.to_v)
        self.to_out = _conv_from_linear(attn.to_out)
        self.qk_eps = attn.norm_q.eps if attn.norm_q is not None else None
        self.norm_q = (nn.Parameter(attn.norm_q.weight.detach().clone().reshape(1, -1, 1, 1))
                       if attn.norm_q is not None and attn.norm_q.weight is not None else None)
        self.norm_k = (nn.Parameter(attn.norm_k.weight.detach().clone().reshape(1, -1, 1, 1))
                       if attn.norm_k is not None and attn.norm_k.weight is not None else None)
        self.rope_ready = False

    def prepare_rope(self) -> None:
        """Permute the q/k features (and their norms) for the contiguous rotation (once)."""
        if self.rope_ready:
            return
        perm = _rope_permutation(self.head_dim)
        with torch.no_grad():
            for conv, heads in ((self.to_q, self.heads), (self.to_k, self.kv_heads)):
                idx = torch.cat([h * self.head_dim + perm for h in range(heads)])
                conv.weight.copy_(conv.weight[idx])
            for p in (self.norm_q, self.norm_k):
                if p is not None:
                    p.copy_(p[:, perm])
        self.rope_ready = True

    def _rotate(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = cos.shape[1]
        if half == 0:
            return t
        a, b = t[:, :half], t[:, half:2 * half]
        parts = [a * cos - b * sin, a * sin + b * cos]
        if t.shape[1] > 2 * half:
            parts.append(t[:, 2 * half:])
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        kv = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(kv), self.to_v(kv)
        d = self.head_dim
        scale = 1.0 / math.sqrt(d)
        def head(t: torch.Tensor, h: int) -> torch.Tensor:
            # a whole-axis slice would export as an `alias`, which coremltools refuses
            return t if t.shape[1] == d else t[:, h * d:(h + 1) * d]

        def query_or_key(t: torch.Tensor, h: int, norm: torch.Tensor | None) -> torch.Tensor:
            th = head(t, h)
            if self.qk_eps is not None:
                th = _rms(th, norm, self.qk_eps)
            return self._rotate(th, *rope) if rope is not None else th

        ks, vs = [], []
        for h in range(self.kv_heads):
            # (B, Lk, 1, d): the layout the einsum wants
            ks.append(query_or_key(k, h, self.norm_k).transpose(1, 3))
            vs.append(head(v, h))
        outs = []
        s = q.shape[-1]
        for h in range(self.heads):
            qh = query_or_key(q, h, self.norm_q)
            kh, vh = ks[h % self.kv_heads], vs[h % self.kv_heads]
            chunks = []
            for start in range(0, s, self.query_chunk):
                # (a whole-axis slice would export as an `alias`, which coremltools refuses)
                qc = qh if s <= self.query_chunk else qh[..., start:start + self.query_chunk]
                w = torch.einsum("bchq,bkhc->bkhq", qc, kh) * scale  # (B, Lk, 1, chunk)
                w = w.softmax(dim=1)
                chunks.append(torch.einsum("bkhq,bchk->bchq", w, vh))  # (B, d, 1, chunk)
            outs.append(chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=3))
        return self.to_out(torch.cat(outs, dim=1))


class _ANEFeedForward(nn.Module):
    def __init__(self, ff: nn.Module) -> None:
        super().__init__()
        act = ff.net[0]
        self.geglu = type(act).__name__ == "GEGLU"
        self.approximate = getattr(act, "approximate", "none")
        self.proj = _conv_from_linear(act.proj)
        self.out = _conv_from_linear(ff.net[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if self.geglu:
            h, gate = h.chunk(2, dim=1)
            h = h * F.gelu(gate)
        else:
            h = F.gelu(h, approximate=self.approximate)
        return self.out(h)


class _ANETransformerLayer(nn.Module):
    def __init__(self, layer: nn.Module, query_chunk: int) -> None:
        super().__init__()
        self.has_self, self.has_cross = layer.has_self, layer.has_cross
        if self.has_self:
            self.norm1, self.attn1 = ANELayerNorm(layer.norm1), ANEAttention(layer.attn1, query_chunk)
        if self.has_cross:
            self.norm2, self.attn2 = ANELayerNorm(layer.norm2), ANEAttention(layer.attn2, query_chunk)
        self.norm3, self.ff = ANELayerNorm(layer.norm3), _ANEFeedForward(layer.ff)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, rope: Any = None) -> torch.Tensor:
        if self.has_self:
            x = x + self.attn1(self.norm1(x), None, rope)
        if self.has_cross:
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


def _ane_context(context: torch.Tensor | None) -> torch.Tensor | None:
    """``(B, L, D)`` text context as ``(B, D, 1, L)`` (4-D contexts pass as they are)."""
    if context is None or context.dim() == 4:
        return context
    return context.transpose(1, 2).unsqueeze(2)


class ANESpatialTransformer(nn.Module):
    """A ``transformer`` / ``cross_ffn`` block on ``(B, C, 1, H*W)``: called like the block,
    ``block(x, temb, context)`` with ``x`` ``(B, C, H, W)``; the context may be ``(B, L, D)``
    or, as :class:`ANEUNet` passes it, ``(B, D, 1, L)``."""

    def __init__(self, block: nn.Module, query_chunk: int = DEFAULT_QUERY_CHUNK) -> None:
        super().__init__()
        self.rope = block.rope
        self.head_dim = block.head_dim
        self.norm = ANEGroupNorm(block.norm)
        self.proj_in = _conv_from_linear(block.proj_in)
        self.layers = nn.ModuleList(_ANETransformerLayer(layer, query_chunk) for layer in block.layers)
        self.proj_out = _conv_from_linear(block.proj_out)
        if self.rope:
            for layer in self.layers:
                if layer.has_self:
                    layer.attn1.prepare_rope()

    def _rope_tables(self, h: int, w: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = rope_2d(h, w, self.head_dim, x.device, x.dtype)  # (S, r/2)
        return cos.t()[None, :, None, :], sin.t()[None, :, None, :]  # (1, r/2, 1, S)

    def forward(self, x: torch.Tensor, temb: Any = None, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x).reshape(b, c, 1, h * w))
        ctx = _ane_context(context)
        rope = self._rope_tables(h, w, x) if self.rope else None
        for layer in self.layers:
            t = layer(t, ctx, rope)
        return x + self.proj_out(t).reshape(b, c, h, w)


class ANETemporalConv(nn.Module):
    """A ``temporal_conv1d`` / ``temporal_conv3d`` block (GroupNorm over each clip → SiLU →
    Conv3d over time, residual) with no tensor of rank > 4.

    The torch block goes through ``(B, C, T, H, W)``; coremltools lowers a GroupNorm of a 5-D
    tensor through a rank-6 reshape, which Core ML refuses ("only supports tensors with rank
    <= 5"), and the Neural Engine's layout is 4-D anyway. Here the clip is ``(B, T, C, H·W)``:
    the norm's statistics are taken over ``(T, C/G, H·W)`` of a ``(B, T, G, C/G·H·W)`` view,
    and the ``kt x kh x kw`` convolution is one 2-D convolution over ``kt`` time-shifted copies
    of the frames stacked along the channels (frames padded with zeros in time, as Conv3d's
    padding does): ``(B·T, kt·C, H, W)`` with the Conv3d's weight slices side by side
    (``kt·C`` input channels, the same multiply-accumulates). Same weights, same function.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        conv, norm = block.conv, block.norm
        self.frames = int(block.frames)
        self.groups, self.eps = norm.num_groups, norm.eps
        self.norm_weight = nn.Parameter(norm.weight.detach().clone().reshape(1, 1, -1, 1))
        self.norm_bias = nn.Parameter(norm.bias.detach().clone().reshape(1, 1, -1, 1))
        kt, kh, kw = conv.kernel_size
        pt, ph, pw = conv.padding
        self.kt, self.pt = int(kt), int(pt)
        c_out, c_in = conv.out_channels, conv.in_channels
        self.conv = nn.Conv2d(kt * c_in, c_out, (kh, kw), padding=(ph, pw), bias=conv.bias is not None,
                              device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():  # input channel block k: the frames shifted by k - pt
            self.conv.weight.copy_(torch.cat([conv.weight[:, :, k] for k in range(kt)], dim=1))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor, temb: Any = None, context: Any = None) -> torch.Tensor:
        bt, c, h, w = x.shape
        t = self.frames
        b = bt // t
        g = x.reshape(b, t, self.groups, (c // self.groups) * h * w)
        mean = g.mean(dim=(1, 3), keepdim=True)
        centred = g - mean
        var = (centred * centred).mean(dim=(1, 3), keepdim=True)
        v = (centred * torch.rsqrt(var + self.eps)).reshape(b, t, c, h * w)
        v = F.silu(v * self.norm_weight + self.norm_bias)
        if self.kt > 1:
            p = F.pad(v, (0, 0, 0, 0, self.pt, self.pt)) if self.pt else v
            v = torch.cat([p[:, k:k + t] for k in range(self.kt)], dim=2)  # (B, T, kt·C, H·W)
        return x + self.conv(v.reshape(bt, self.kt * c, h, w))


def _is_transformer(block: nn.Module) -> bool:
    return isinstance(block, SpatialTransformer)


def _is_temporal_conv(block: nn.Module) -> bool:
    """``temporal_conv1d`` / ``temporal_conv3d``: a GroupNorm, a Conv3d over the clip, frames."""
    return (isinstance(getattr(block, "conv", None), nn.Conv3d) and isinstance(getattr(block, "norm", None), nn.GroupNorm)
            and hasattr(block, "frames"))


def ane_unsupported(block: nn.Module) -> str:
    """'' if ``block`` runs in the ANE layout here, else why it is kept as it is."""
    name = type(block).__name__
    if name.startswith("Temporal") and not _is_temporal_conv(block):
        return f"{name}: temporal attention is kept in its torch layout (rank <= 4, converts as it is)"
    return ""


def ane_block(block: nn.Module, query_chunk: int = DEFAULT_QUERY_CHUNK) -> nn.Module:
    """``block`` in the Neural-Engine layout (a new module; ``block`` is not changed).
    Transformer kinds are rewritten; temporal convolutions run at rank 4
    (:class:`ANETemporalConv`); other convolutional blocks are channels-first already and
    only get their GroupNorms in a rank-4 form; temporal attention is returned as it is."""
    import copy

    if _is_transformer(block):
        return ANESpatialTransformer(block, query_chunk).eval()
    if _is_temporal_conv(block):
        return ANETemporalConv(block).eval()
    if ane_unsupported(block):
        return block
    return _replace_group_norms(copy.deepcopy(block)).eval()


class ANEUNet(ArchUNet):
    """A whole :class:`~archsearch.model.ArchUNet` in the Neural-Engine layout, called the same
    way, ``model(sample, timestep, encoder_hidden_states)``: the context is turned into
    ``(B, D, 1, L)`` once and every transformer block runs on ``(B, C, 1, S)``. The routing
    (skips, time embedding, frames) is ``ArchUNet.forward_features`` itself; only how a block
    is called differs (:meth:`_call_block`)."""

    def __init__(self, model: ArchUNet, query_chunk: int = DEFAULT_QUERY_CHUNK) -> None:
        nn.Module.__init__(self)  # the blocks are converted copies, not built again
        self.candidate = model.candidate
        self.block_specs = model.block_specs
        self.feature_channels = dict(model.feature_channels)
        self.blocks = nn.ModuleList(ane_block(b, query_chunk) for b in model.blocks)
        self.kept = [f"{s.name}: {why}" for s, b in zip(model.block_specs, model.blocks) if (why := ane_unsupported(b))]

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return super().forward(sample, timestep, _ane_context(encoder_hidden_states), added_cond_kwargs)

    def _call_block(self, block: nn.Module, x: torch.Tensor, temb: torch.Tensor | None,
                    context: torch.Tensor) -> torch.Tensor:
        if isinstance(block, ANESpatialTransformer):
            return block(x, temb, context)
        # blocks kept in their torch layout (temporal layers) read the (B, L, D) context
        return block(x, temb, context.squeeze(2).transpose(1, 2) if context is not None else None)


def ane_model(model: nn.Module, query_chunk: int = DEFAULT_QUERY_CHUNK) -> ANEUNet:
    """``model`` (an ArchUNet) in the Neural-Engine layout (see :class:`ANEUNet`)."""
    return ANEUNet(model, query_chunk).eval()

