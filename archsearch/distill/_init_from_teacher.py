"""A student initialised from the teacher's weights where blocks match (BK-SDM's recipe).

Both networks are read as *units* named as :func:`archsearch.model.walk` names the student's
blocks: ``stem.time_embed``, ``stem.conv_in``, ``down.i.layerJ.resnet``,
``down.i.layerJ.transformer``, ``down.i.downsample``, ``mid.layerJ.*``, ``up.i.layerJ.*``,
``up.i.upsample``, ``head.conv_out`` (temporal layers: ``...layerJ.temporalK``). An archsearch
teacher (the built-in one, a trained ``ArchUNet``) is read block by block; a diffusers
``UNet2DConditionModel`` (SD-1.x/2.x/SDXL) is mapped onto the same names (``down_blocks[i]
.resnets[j]`` -> ``down.i.layerJ.resnet``, ``.attentions[j]`` -> ``.transformer``, the mid
block's ``resnets[0], attentions[0], resnets[1]`` -> ``mid.layer0.resnet, mid.layer1.transformer,
mid.layer1.resnet``; a Transformer2D's ``transformer_blocks`` -> ``layers``, ``to_out.0`` ->
``to_out``, 1x1-conv projections reshaped to linear ones).

**Index remapping.** Where a student stage has fewer layers than the teacher's (``n < m``), its
layer ``j`` takes teacher layer ``round(j (m - 1) / (n - 1))`` -- the first and the last are
kept, the ones between spread evenly (BK-SDM keeps the outer layers of a block too); with more
layers than the teacher the extra ones stay new.

**Copy rule.** A student tensor is *copied* when the teacher's unit has the same tensor name and
shape (a 1x1 conv and a linear layer with the same numbers count as the same shape), *skipped
(shape)* when the name is there with another shape (a narrower stage), and *new* when the
teacher has no such tensor; skipped and new tensors keep their fresh initialisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["CopyReport", "init_from_teacher", "teacher_units", "unit_tensors"]


@dataclass
class CopyReport:
    """What :func:`init_from_teacher` did, tensor by tensor (names are ``unit/tensor``)."""

    copied: list[str] = field(default_factory=list)
    skipped: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # (name, student, teacher)
    new: list[str] = field(default_factory=list)
    layer_map: dict[str, str] = field(default_factory=dict)  # student unit -> teacher unit

    @property
    def counts(self) -> dict[str, int]:
        return {"copied": len(self.copied), "skipped": len(self.skipped), "new": len(self.new)}

    def summary(self) -> str:
        c = self.counts
        return (f"init from teacher: {c['copied']} tensors copied, {c['skipped']} skipped (shape), "
                f"{c['new']} new")

    def to_dict(self) -> dict[str, Any]:
        return {**self.counts, "skipped_tensors": [[n, list(a), list(b)] for n, a, b in self.skipped][:200],
                "layer_map": self.layer_map}


_LAYER = re.compile(r"^(down\.\d+|up\.\d+|mid)\.layer(\d+)\.(.+)$")


def unit_tensors(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """An ``ArchUNet``'s tensors per block: ``{unit name: {tensor name: tensor}}`` (by reference)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for spec, block in zip(model.block_specs, model.blocks):
        out[spec.name] = dict(block.state_dict(keep_vars=True))
    return out


def _diffusers_units(unet: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    sd = unet.state_dict()
    out: dict[str, dict[str, torch.Tensor]] = {}

    def put(unit: str, key: str, value: torch.Tensor) -> None:
        out.setdefault(unit, {})[key] = value

    def attn(rest: str) -> str:
        rest = rest.replace("transformer_blocks.", "layers.")
        return re.sub(r"\.to_out\.0\.", ".to_out.", rest)

    for k, v in sd.items():
        if k.startswith("time_embedding."):
            put("stem.time_embed", "embedding." + k[len("time_embedding."):], v)
        elif k.startswith("conv_in."):
            put("stem.conv_in", "conv." + k[len("conv_in."):], v)
        elif k.startswith("conv_norm_out."):
            put("head.conv_out", "norm." + k[len("conv_norm_out."):], v)
        elif k.startswith("conv_out."):
            put("head.conv_out", "conv." + k[len("conv_out."):], v)
        elif m := re.match(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", k):
            path, i, kind, j, rest = m.groups()
            unit = f"{path}.{i}.layer{j}.{'resnet' if kind == 'resnets' else 'transformer'}"
            put(unit, "block." + rest if kind == "resnets" else attn(rest), v)
        elif m := re.match(r"^(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.(.+)$", k):
            path, i, kind, rest = m.groups()
            put(f"{path}.{i}.{'downsample' if kind == 'downsamplers' else 'upsample'}", "op." + rest, v)
        elif m := re.match(r"^mid_block\.resnets\.(\d+)\.(.+)$", k):
            put(f"mid.layer{m.group(1)}.resnet", "block." + m.group(2), v)
        elif m := re.match(r"^mid_block\.attentions\.(\d+)\.(.+)$", k):
            put(f"mid.layer{int(m.group(1)) + 1}.transformer", attn(m.group(2)), v)
        elif k.startswith("add_embedding."):
            put("stem.text_time_embed", k, v)
    return out


def teacher_units(teacher: Any) -> dict[str, dict[str, torch.Tensor]]:
    """The teacher's tensors per unit: a :class:`~archsearch.distill.Teacher`, its module, an
    ``ArchUNet`` or a diffusers ``UNet2DConditionModel``."""
    module = getattr(teacher, "module", teacher)
    module = getattr(module, "unet", module)  # the diffusers teacher's wrapper
    if hasattr(module, "block_specs"):
        return {u: {k: v.detach() for k, v in t.items()} for u, t in unit_tensors(module).items()}
    if hasattr(module, "down_blocks"):
        return _diffusers_units(module)
    raise TypeError(f"cannot read a {type(module).__name__} as a teacher (allowed: ArchUNet, UNet2DConditionModel)")


def _layer_map(student_units: list[str], teacher_units: list[str]) -> dict[str, str]:
    """Student unit -> teacher unit, with BK-SDM's index remapping inside each stage."""
    def layers(names: list[str]) -> dict[str, list[int]]:
        out: dict[str, set[int]] = {}
        for n in names:
            m = _LAYER.match(n)
            if m:
                out.setdefault(m.group(1), set()).add(int(m.group(2)))
        return {k: sorted(v) for k, v in out.items()}

    s_layers, t_layers = layers(student_units), layers(teacher_units)
    t_set = set(teacher_units)
    out: dict[str, str] = {}
    for name in student_units:
        m = _LAYER.match(name)
        if m is None:
            if name in t_set:
                out[name] = name
            continue
        stage, j, kind = m.group(1), int(m.group(2)), m.group(3)
        sl, tl = s_layers.get(stage, []), t_layers.get(stage, [])
        n, mm = len(sl), len(tl)
        if not mm:
            continue
        pos = sl.index(j)
        if n <= mm:
            ti = tl[round(pos * (mm - 1) / (n - 1))] if n > 1 else tl[0]
        elif pos < mm:
            ti = tl[pos]
        else:
            continue
        cand = f"{stage}.layer{ti}.{kind}"
        if cand in t_set:
            out[name] = cand
    return out


def init_from_teacher(student: nn.Module, teacher: Any, *, skip: tuple[str, ...] = ()) -> CopyReport:
    """Copy the teacher's tensors into ``student`` (an ``ArchUNet``) where they match (see the
    module docstring) and return the report. Units whose block type starts with one of
    ``skip`` are left alone (and counted new)."""
    t_units = teacher_units(teacher)
    s_units = unit_tensors(student)
    types = {s.name: s.type for s in student.block_specs}
    mapping = _layer_map(list(s_units), list(t_units))
    report = CopyReport(layer_map=dict(mapping))
    seen: set[int] = set()
    with torch.no_grad():
        for unit, tensors in s_units.items():
            src = t_units.get(mapping.get(unit, ""), {}) if not types[unit].startswith(skip or ("\0",)) else {}
            for key, dst in tensors.items():
                if id(dst) in seen:  # one tensor under two names (diffusers' Downsample2D alias)
                    continue
                seen.add(id(dst))
                name = f"{unit}/{key}"
                t = src.get(key)
                if t is None:
                    report.new.append(name)
                elif tuple(t.shape) == tuple(dst.shape):
                    dst.copy_(t.to(dst.dtype))
                    report.copied.append(name)
                elif t.numel() == dst.numel() and [d for d in t.shape if d != 1] == [d for d in dst.shape if d != 1]:
                    dst.copy_(t.reshape(dst.shape).to(dst.dtype))  # 1x1 conv <-> linear
                    report.copied.append(name)
                else:
                    report.skipped.append((name, tuple(dst.shape), tuple(t.shape)))
    return report
