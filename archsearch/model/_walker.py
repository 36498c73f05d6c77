"""The one decomposition of a candidate into blocks.

:func:`walk` is the single source of truth: the builder assembles the model from its
output, the profiler measures each distinct :attr:`BlockSpec.key` it produces, and the
predictor sums table rows over it — so the three cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from archsearch.candidate import Candidate, StageConfig

__all__ = ["BlockSpec", "example_inputs", "walk"]


@dataclass(frozen=True)
class BlockSpec:
    """One block of a candidate: what it is, its hyperparameters and its input shape.

    ``in_shape`` is the input tensor shape for a batch of one (spatial tensors of a video
    are ``(T, C, H, W)``: frames fold into the batch). Routing fields (skip stacks,
    feature taps) tell the model how to wire blocks; they are not part of :attr:`key`.
    """

    name: str
    type: str
    params: tuple[tuple[str, Any], ...]
    in_shape: tuple[int, ...]
    stage: str
    push_skip: int | None = None
    pop_skip: int | None = None
    tap: str | None = None

    @property
    def hparams(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def key(self) -> str:
        """Canonical lookup-table key: type, hyperparameters and input shape (batch 1)."""
        args = ",".join(f"{k}={_fmt(v)}" for k, v in self.params)
        return f"{self.type}({args})@{'x'.join(map(str, self.in_shape))}"


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _split(total: int, parts: int) -> list[int]:
    """``total`` items over ``parts`` slots as evenly as possible, earlier slots first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class _Walker:
    def __init__(self, c: Candidate) -> None:
        self.c = c
        self.lead = c.frames if c.kind == "video" else 1
        self.blocks: list[BlockSpec] = []
        self.skips: list[list[int]] = [[] for _ in c.stages]

    def add(self, name: str, type_: str, params: dict[str, Any], shape: tuple[int, ...], stage: str,
            **routing: Any) -> None:
        self.blocks.append(BlockSpec(name, type_, tuple(sorted(params.items())), shape, stage, **routing))

    def mark_last(self, **routing: Any) -> None:
        from dataclasses import replace

        self.blocks[-1] = replace(self.blocks[-1], **routing)

    def layer(self, prefix: str, stage: str, st: StageConfig, ch_in: int, h: int,
              n_temporal: int, skip: int | None) -> int:
        """ResNet, then its transformer, then temporal layers (placement decides where)."""
        c = self.c
        ch_out = st.channels
        self.add(f"{prefix}.resnet", "resnet",
                 dict(in_channels=ch_in, out_channels=ch_out, temb_channels=c.time_embed_dim,
                      groups=c.norm_groups, variant=st.resnet_variant,
                      expansion=st.resnet_expansion if st.resnet_variant == "separable" else 0.0),
                 (self.lead, ch_in, h, h), stage, pop_skip=skip)
        temporal_after_resnet = st.temporal.placement == "after_resnet" or not st.has_transformer
        if temporal_after_resnet:
            self.temporal(prefix, stage, st, h, n_temporal)
        if st.has_transformer:
            self.transformer(prefix, stage, st, h)
            if not temporal_after_resnet:
                self.temporal(prefix, stage, st, h, n_temporal)
        return ch_out

    def transformer(self, prefix: str, stage: str, st: StageConfig, h: int, name: str = "transformer") -> None:
        c = self.c
        params = dict(channels=st.channels, depth=st.transformer_depth, attention=st.attention,
                      heads=st.heads, head_dim=st.head_dim, context_dim=c.context_dim,
                      context_length=c.context_length, variant=st.attention_variant,
                      qk_norm=st.qk_norm, ffn_ratio=st.ffn_ratio, ffn_type=st.ffn_type,
                      groups=c.norm_groups)
        if st.rope and st.attention in ("self", "self_cross"):  # only when on: older keys stay
            params["rope"] = True
        self.add(f"{prefix}.{name}", "transformer", params, (self.lead, st.channels, h, h), stage)

    def cross_ffn(self, prefix: str, stage: str, st: StageConfig, h: int, name: str) -> None:
        c = self.c
        self.add(f"{prefix}.{name}", "cross_ffn",
                 dict(channels=st.channels, heads=st.heads, head_dim=st.head_dim, context_dim=c.context_dim,
                      context_length=c.context_length, variant=st.attention_variant,
                      qk_norm=st.qk_norm, ffn_ratio=st.ffn_ratio, ffn_type=st.ffn_type,
                      groups=c.norm_groups),
                 (self.lead, st.channels, h, h), stage)

    def temporal(self, prefix: str, stage: str, st: StageConfig, h: int, n: int,
                 type_: str | None = None, first: int = 0) -> None:
        c = self.c
        t = type_ or st.temporal.type
        for k in range(first, first + n):
            if t in ("conv1d", "conv3d"):
                params = dict(channels=st.channels, frames=c.frames, groups=c.norm_groups)
            else:
                head_dim = st.head_dim if st.head_dim else min(64, st.channels)
                while st.channels % head_dim:
                    head_dim //= 2
                params = dict(channels=st.channels, frames=c.frames, heads=st.channels // head_dim,
                              head_dim=head_dim)
                if t in ("cross1d", "cross3d"):
                    params.update(context_dim=c.context_dim, context_length=c.context_length)
            self.add(f"{prefix}.temporal{k}", f"temporal_{t}", params, (self.lead, st.channels, h, h), stage)

    def layout(self, stage: str, st: StageConfig, ch: int, h: int, level: int | None, push: int | None) -> int:
        """A stage that lists its layers: one group per ResNet (it and what follows it).

        ``level``: pop a skip for each ResNet from this level (up stages); ``push``: push
        each group's output as a skip of this level (down stages).
        """
        groups: list[list[str]] = []
        for token in st.layout:
            if token == "resnet" or not groups:
                groups.append([])
            groups[-1].append(token)
        c = self.c
        for g, group in enumerate(groups):
            prefix = f"{stage}.layer{g}"
            seen: dict[str, int] = {}
            n_temporal = 0
            for token in group:
                k = seen.get(token, 0)
                seen[token] = k + 1
                name = token if k == 0 else f"{token}{k}"
                if token == "resnet":
                    skip_ch = 0
                    if level is not None and self.skips[level]:
                        skip_ch = self.skips[level].pop()
                    self.add(f"{prefix}.{name}", "resnet",
                             dict(in_channels=ch + skip_ch, out_channels=st.channels, temb_channels=c.time_embed_dim,
                                  groups=c.norm_groups, variant=st.resnet_variant,
                                  expansion=st.resnet_expansion if st.resnet_variant == "separable" else 0.0),
                             (self.lead, ch + skip_ch, h, h), stage, pop_skip=level if skip_ch else None)
                    ch = st.channels
                elif token == "transformer":
                    self.transformer(prefix, stage, st, h, name)
                elif token == "cross_ffn":
                    self.cross_ffn(prefix, stage, st, h, name)
                else:  # a temporal layer: named temporal0, temporal1, ... within its group
                    self.temporal(prefix, stage, st, h, 1, token, first=n_temporal)
                    n_temporal += 1
            if push is not None:
                self.mark_last(push_skip=push)
                self.skips[push].append(ch)
        return ch

    def run(self) -> list[BlockSpec]:
        c = self.c
        n = len(c.stages)
        h = c.resolution
        c0 = c.stages[0].channels
        self.add("stem.time_embed", "time_embed", dict(in_channels=c0, time_embed_dim=c.time_embed_dim), (1,), "stem")
        if c.added_cond is not None:
            a = c.added_cond
            self.add("stem.added_cond", "text_time_embed",
                     dict(pooled_dim=a.pooled_dim, time_ids=a.time_ids, time_id_dim=a.time_id_dim,
                          time_embed_dim=c.time_embed_dim), (a.pooled_dim + a.time_ids,), "stem")
        self.add("stem.conv_in", "conv_in", dict(in_channels=c.latent_channels, out_channels=c0),
                 (self.lead, c.latent_channels, h, h), "stem", push_skip=0)
        self.skips[0].append(c0)
        ch = c0
        for level, st in enumerate(c.stages):
            stage = f"down.{level}"
            if st.layout:
                ch = self.layout(stage, st, ch, h, None, level)
                self.mark_last(tap=stage)
                if level < n - 1:
                    self.add(f"{stage}.downsample", "downsample", dict(channels=ch), (self.lead, ch, h, h), stage,
                             push_skip=level + 1)
                    h //= 2
                    self.skips[level + 1].append(ch)
                continue
            temporal = _split(st.temporal.count, st.resnet_blocks) if st.temporal.type != "none" else [0] * st.resnet_blocks
            for i in range(st.resnet_blocks):
                ch = self.layer(f"{stage}.layer{i}", stage, st, ch, h, temporal[i], None)
                self.mark_last(push_skip=level)
                self.skips[level].append(ch)
            self.mark_last(tap=stage)
            if level < n - 1:
                self.add(f"{stage}.downsample", "downsample", dict(channels=ch), (self.lead, ch, h, h), stage,
                         push_skip=level + 1)
                h //= 2
                self.skips[level + 1].append(ch)
        if c.mid is not None and c.mid.layout:
            ch = self.layout("mid", c.mid, ch, h, None, None)
            self.mark_last(tap="mid")
        elif c.mid is not None:
            st = c.mid
            temporal = _split(st.temporal.count, st.resnet_blocks) if st.temporal.type != "none" else [0] * st.resnet_blocks
            # diffusers' UNetMidBlock2DCrossAttn: resnet, then (transformer, resnet) pairs.
            no_attn = StageConfig(channels=st.channels, resnet_blocks=1, resnet_variant=st.resnet_variant,
                                  resnet_expansion=st.resnet_expansion, temporal=st.temporal)
            for i in range(st.resnet_blocks):
                if i > 0 and st.has_transformer:
                    self.transformer(f"mid.layer{i}", "mid", st, h)
                ch = self.layer(f"mid.layer{i}", "mid", no_attn, ch, h, temporal[i], None)
            self.mark_last(tap="mid")
        for j, st in enumerate(c.up):
            level = n - 1 - j
            stage = f"up.{j}"
            if st.layout:
                ch = self.layout(stage, st, ch, h, level, None)
            temporal = _split(st.temporal.count, st.resnet_blocks) if st.temporal.type != "none" else [0] * st.resnet_blocks
            for i in range(0 if st.layout else st.resnet_blocks):
                skip_ch = self.skips[level].pop() if self.skips[level] else 0
                ch = self.layer(f"{stage}.layer{i}", stage, st, ch + skip_ch, h, temporal[i],
                                level if skip_ch else None)
            self.mark_last(tap=stage)
            if level > 0:
                self.add(f"{stage}.upsample", "upsample", dict(channels=ch), (self.lead, ch, h, h), stage)
                h *= 2
        self.add("head.conv_out", "conv_out",
                 dict(in_channels=ch, out_channels=c.latent_channels, groups=c.norm_groups),
                 (self.lead, ch, h, h), "head")
        return self.blocks


@lru_cache(maxsize=65536)
def _walk_cached(c: Candidate) -> tuple[BlockSpec, ...]:
    return tuple(_Walker(c).run())


def walk(candidate: Candidate) -> list[BlockSpec]:
    """Decompose ``candidate`` into its ordered list of blocks (cached per candidate)."""
    return list(_walk_cached(candidate))


def example_inputs(spec: BlockSpec, batch: int = 1, device: Any = None,
                   dtype: torch.dtype | None = None, generator: torch.Generator | None = None) -> tuple:
    """Random inputs ``(x, temb, context)`` for timing or tracing ``spec``'s block alone."""
    hp = spec.hparams
    dtype = dtype or torch.float32
    if spec.type == "time_embed":
        return (torch.randint(0, 1000, (batch,), device=device).to(torch.float32), None, None)
    if spec.type == "text_time_embed":  # pooled text, then the size/crop ids (pixels)
        pooled = torch.randn(batch, hp["pooled_dim"], device=device, dtype=dtype, generator=generator)
        ids = torch.randint(0, 1024, (batch, hp["time_ids"]), device=device).to(pooled.dtype)
        temb = torch.randn(batch, hp["time_embed_dim"], device=device, dtype=dtype, generator=generator)
        return (torch.cat([pooled, ids], dim=1), temb, None)
    shape = (spec.in_shape[0] * batch, *spec.in_shape[1:])
    x = torch.randn(shape, device=device, dtype=dtype, generator=generator)
    temb = None
    context = None
    if spec.type == "resnet":
        temb = torch.randn(shape[0], hp["temb_channels"], device=device, dtype=dtype, generator=generator)
    if spec.type in ("cross_ffn", "temporal_cross1d", "temporal_cross3d") or (
            spec.type == "transformer" and hp["attention"] in ("cross", "self_cross")):
        context = torch.randn(shape[0], hp["context_length"], hp["context_dim"], device=device, dtype=dtype,
                              generator=generator)
    return (x, temb, context)
