"""Device profiles (YAML) and the roofline estimator used where a target cannot be timed.

A device profile gives a peak fp16 FLOP/s, a memory bandwidth, a fixed cost per op and an
efficiency per op class, each number with its source. A block's latency estimate is the
sum over the ops it runs (recorded with a ``TorchDispatchMode`` on the ``meta`` device, so
nothing is allocated) of ``max(flops / (peak * efficiency[class]), bytes / (bandwidth *
memory_efficiency)) + op_overhead``. Unfused attention also moves its score matrix (written,
read and written by softmax, read by the second matmul); a score matrix larger than
``onchip_bytes`` streams at ``spill_efficiency`` of the bandwidth. This is a model, not a
measurement: every row it fills says ``source: estimate``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from archsearch._resources import bundled_root, device_profile_names, find_device_profile
from archsearch.cost.latency._errors import UnknownDeviceProfileError
from archsearch.errors import ArchsearchError
from archsearch.export import OpRecord, ane_block, ane_model, einsum_macs, model_inputs

__all__ = [
    "DEVICE_FORMAT",
    "DEVICES_DIR",
    "OP_CLASSES",
    "DeviceProfile",
    "OpRecord",
    "ane_layout_ops",
    "ane_model_ops",
    "available_devices",
    "count_ops",
    "load_device",
]

DEVICE_FORMAT = "archsearch.device/v1"
#: Shipped device profiles: ``latency_tables/devices/*.yaml``, bundled with the package
#: (the repository's folder when run from a checkout; see :mod:`archsearch._resources`).
DEVICES_DIR = bundled_root() / "latency_tables" / "devices"


def _user_devices_dirs() -> list[Path]:
    """The user's own profiles, which win over the shipped ones: ``./latency_tables/devices``."""
    return [Path.cwd() / "latency_tables" / "devices"]
OP_CLASSES = ("conv", "dwconv", "matmul", "attention", "norm", "elementwise", "data")
_NUMBERS = ("peak_flops", "memory_bandwidth", "memory_efficiency", "op_overhead_us", "onchip_bytes",
            "spill_efficiency")

# ----------------------------------------------------------------------------- op census

_CONV = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
         "conv_transpose2d", "conv_transpose3d", "mkldnn_convolution", "_slow_conv2d_forward"}
_MATMUL = {"linear", "mm", "addmm", "bmm", "baddbmm", "matmul", "einsum", "_addmm_activation"}
_ATTENTION = {"scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
              "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
              "_scaled_dot_product_cudnn_attention"}
_NORM = {"group_norm", "native_group_norm", "layer_norm", "native_layer_norm", "rms_norm",
         "_fused_rms_norm", "batch_norm", "native_batch_norm", "instance_norm"}
_DATA = {"cat", "stack", "clone", "copy_", "_to_copy", "repeat", "constant_pad_nd", "pad",
         "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d",
         "_upsample_nearest_exact2d", "upsample_trilinear3d", "index", "gather", "index_select",
         "roll", "flip", "expand_copy", "permute_copy", "repeat_interleave"}
_MAYBE_COPY_VIEWS = {"contiguous", "reshape", "flatten"}
_SKIP = {"empty", "empty_like", "zeros", "ones", "full", "arange", "randn", "rand", "detach",
         "lift_fresh", "_local_scalar_dense", "item"}


def _tensors(obj: Any) -> list[torch.Tensor]:
    flat, _ = tree_flatten(obj)
    return [t for t in flat if isinstance(t, torch.Tensor)]


def _numel(shape: Any) -> int:
    return int(math.prod(int(s) for s in shape))


class _Census(TorchDispatchMode):
    def __init__(self, elem_bytes: int) -> None:
        super().__init__()
        self.elem_bytes = elem_bytes
        self.ops: list[OpRecord] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._overloadpacket.__name__
        if name in _SKIP:
            return out
        ins = _tensors((args, kwargs))
        outs = _tensors(out)
        if not outs:
            return out
        if getattr(func, "is_view", False) or name in _MAYBE_COPY_VIEWS:
            # A view costs nothing unless it had to copy a non-contiguous input.
            if name in _MAYBE_COPY_VIEWS and ins and not ins[0].is_contiguous():
                n = outs[0].numel()
                self.ops.append(OpRecord(name, "data", 0, 2 * n * self.elem_bytes, n))
            return out
        eb = self.elem_bytes
        in_bytes = sum(t.numel() for t in ins) * eb
        out_elems = sum(t.numel() for t in outs)
        nbytes = in_bytes + out_elems * eb
        macs = 0
        if name in _CONV:
            w = args[1]
            gpos = 8 if name in ("convolution", "_convolution") else 6
            groups = int(args[gpos]) if len(args) > gpos else int(kwargs.get("groups", 1))
            macs = outs[0].numel() * _numel(w.shape[1:])
            cin = args[0].shape[1] if args[0].dim() > 1 else 1
            op_class = "dwconv" if groups > 1 and groups == cin else "conv"
        elif name == "einsum":
            macs = einsum_macs(args[0], [t.shape for t in ins])
            op_class = "matmul"
        elif name in _MATMUL:
            if name == "linear":
                k = args[1].shape[-1]
            elif name in ("addmm", "baddbmm", "_addmm_activation"):
                k = args[1].shape[-1]
            else:
                k = args[0].shape[-1]
            macs = out_elems * int(k)
            op_class = "matmul"
        elif name in _ATTENTION:
            q, k_, v = args[0], args[1], args[2]
            lq, s = q.shape[-2], k_.shape[-2]
            batch_heads = _numel(q.shape[:-2])
            macs = batch_heads * lq * s * (q.shape[-1] + v.shape[-1])
            op_class = "attention"
            # scores matrix materialised by an unfused implementation (extra traffic)
            self.ops.append(OpRecord(name, op_class, macs, nbytes, batch_heads * lq * s))
            return out
        elif name in _NORM:
            op_class = "norm"
        elif name in _DATA:
            op_class = "data"
        else:
            op_class = "elementwise"
        self.ops.append(OpRecord(name, op_class, macs, nbytes, out_elems))
        return out


def count_ops(module: torch.nn.Module, inputs: tuple, elem_bytes: int = 2) -> list[OpRecord]:
    """Run ``module(*inputs)`` under a dispatch mode and list every op it executes.

    Use ``meta`` tensors (``build_block(spec, device="meta")``): shapes propagate, nothing is
    computed or allocated. ``elem_bytes`` sizes the memory traffic (2 for fp16).
    """
    census = _Census(elem_bytes)
    with torch.inference_mode(), census:
        module(*inputs)
    return census.ops


def ane_layout_ops(spec: Any, batch: int = 1) -> list[OpRecord]:
    """The ops of one block in the Neural-Engine layout (:func:`archsearch.export.ane_block`),
    counted on meta at fp16."""
    from archsearch.model import build_block, example_inputs

    block = ane_block(build_block(spec, device="meta"))
    return count_ops(block, example_inputs(spec, batch, device="meta"), 2)


def ane_model_ops(candidate: Any, batch: int = 1) -> list[OpRecord]:
    """The ops of a whole model in the Neural-Engine layout, counted on meta at fp16."""
    from archsearch.model import build_model

    model = ane_model(build_model(candidate, device="meta"))
    return count_ops(model, model_inputs(candidate, batch, device="meta"), 2)

# ----------------------------------------------------------------------------- device profiles


@dataclass
class DeviceProfile:
    """A roofline model of one accelerator, read from ``latency_tables/devices/NAME.yaml``."""

    name: str
    target: str
    description: str
    peak_flops: float
    memory_bandwidth: float
    memory_efficiency: float
    op_overhead_us: float
    onchip_bytes: float
    spill_efficiency: float
    efficiency: dict[str, float]
    fused_attention: bool = False
    #: elementwise ops and norms run fused into their neighbours (no DRAM round trip of
    #: their own): they cost their compute only
    fused_elementwise: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    path: str = ""
    checks: list[dict[str, Any]] = field(default_factory=list)

    def op_ms(self, op: OpRecord) -> float:
        """Estimated milliseconds of one op (roofline + fixed overhead)."""
        compute = 2.0 * op.macs + op.elems  # FLOPs: 2 per multiply-add, 1 per output element
        eff = self.efficiency[op.op_class]
        bandwidth = self.memory_bandwidth * self.memory_efficiency
        if self.fused_elementwise and op.op_class in ("elementwise", "norm"):
            return 1e3 * compute / (self.peak_flops * eff) + self.op_overhead_us * 1e-3
        t = max(compute / (self.peak_flops * eff), op.bytes / bandwidth)
        if op.op_class == "attention" and not self.fused_attention:
            # unfused: write the fp16 scores, softmax reads and writes them, the PV matmul reads them
            scores = 2.0 * op.elems
            spill = scores > self.onchip_bytes
            t += 4 * scores / (self.memory_bandwidth * self.spill_efficiency if spill else bandwidth)
        return 1e3 * t + self.op_overhead_us * 1e-3

    def estimate_ms(self, ops: list[OpRecord]) -> float:
        """Estimated milliseconds of a list of ops run one after another."""
        return float(sum(self.op_ms(op) for op in ops))


def _num(path: Path, data: dict[str, Any], key: str, lo: float, hi: float) -> tuple[float, str]:
    entry = data.get(key)
    if not isinstance(entry, dict) or set(entry) - {"value", "source"} or "value" not in entry:
        raise ArchsearchError(f"{path}: {key}: expected a mapping {{value: NUMBER, source: TEXT}} "
                              "(every number in a device profile says where it comes from)")
    v, src = entry["value"], entry.get("source")
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not (lo <= float(v) <= hi):
        raise ArchsearchError(f"{path}: {key}.value: bad value {v!r} (allowed: a number in [{lo:g}, {hi:g}])")
    if not isinstance(src, str) or not src.strip():
        raise ArchsearchError(f"{path}: {key}.source: missing (allowed: a non-empty text naming where the number comes from)")
    return float(v), src.strip()


def _load_profile_file(path: Path) -> DeviceProfile:
    from archsearch.spec import load_yaml  # yaml.safe_load with one-line errors

    data = load_yaml(path).data
    if not isinstance(data, dict):
        raise ArchsearchError(f"{path}: a device profile must be a YAML mapping")
    known = {"format", "name", "target", "description", "fused_attention", "fused_elementwise", "efficiency",
             "checks", *_NUMBERS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ArchsearchError(f"{path}: {unknown[0]}: unknown key (allowed: {', '.join(sorted(known))})")
    if data.get("format", DEVICE_FORMAT) != DEVICE_FORMAT:
        raise ArchsearchError(f"{path}: format: unsupported {data.get('format')!r} (allowed: {DEVICE_FORMAT})")
    for key in ("name", "target"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ArchsearchError(f"{path}: {key}: missing or not a string")
    sources: dict[str, str] = {}
    vals: dict[str, float] = {}
    limits = {"peak_flops": (1e9, 1e18), "memory_bandwidth": (1e8, 1e14),
              "memory_efficiency": (1e-3, 1.0), "op_overhead_us": (0.0, 1e5), "onchip_bytes": (0.0, 1e12),
              "spill_efficiency": (1e-4, 1.0)}
    for key in _NUMBERS:
        vals[key], sources[key] = _num(path, data, key, *limits[key])
    eff_raw = data.get("efficiency")
    if not isinstance(eff_raw, dict):
        raise ArchsearchError(f"{path}: efficiency: expected a mapping of op class to {{value, source}} "
                              f"(classes: {', '.join(OP_CLASSES)})")
    efficiency: dict[str, float] = {}
    for cls_name in eff_raw:
        if cls_name not in OP_CLASSES:
            raise ArchsearchError(f"{path}: efficiency.{cls_name}: unknown op class (allowed: {', '.join(OP_CLASSES)})")
        efficiency[cls_name], sources[f"efficiency.{cls_name}"] = _num(path, eff_raw, cls_name, 1e-4, 1.0)
    missing = [c for c in OP_CLASSES if c not in efficiency]
    if missing:
        raise ArchsearchError(f"{path}: efficiency.{missing[0]}: missing (every class needs one: {', '.join(OP_CLASSES)})")
    fused = data.get("fused_attention", False)
    if not isinstance(fused, bool):
        raise ArchsearchError(f"{path}: fused_attention: bad value {fused!r} (allowed: true, false)")
    fused_ew = data.get("fused_elementwise", False)
    if not isinstance(fused_ew, bool):
        raise ArchsearchError(f"{path}: fused_elementwise: bad value {fused_ew!r} (allowed: true, false)")
    checks = data.get("checks") or []
    if not isinstance(checks, list):
        raise ArchsearchError(f"{path}: checks: expected a list of {{space, published_ms, source}}")
    for i, chk in enumerate(checks):
        if not isinstance(chk, dict) or not {"space", "published_ms", "source"} <= set(chk):
            raise ArchsearchError(f"{path}: checks[{i}]: expected a mapping with space, published_ms, source "
                                  "(optional: batch, role)")
    return DeviceProfile(
        name=data["name"].strip(), target=data["target"].strip(), description=str(data.get("description", "")),
        peak_flops=vals["peak_flops"], memory_bandwidth=vals["memory_bandwidth"],
        memory_efficiency=vals["memory_efficiency"], op_overhead_us=vals["op_overhead_us"],
        onchip_bytes=vals["onchip_bytes"], spill_efficiency=vals["spill_efficiency"],
        efficiency=efficiency, fused_attention=fused, fused_elementwise=fused_ew, sources=sources, path=str(path), checks=checks,
    )


def available_devices(directory: str | os.PathLike | None = None) -> list[str]:
    """Names of the device profiles: those in ``directory`` if given, else the user's
    (``./latency_tables/devices``) and the shipped ones."""
    if directory:
        return sorted(p.stem for p in Path(directory).glob("*.yaml"))
    return device_profile_names(_user_devices_dirs())


def load_device(name_or_path: str | os.PathLike, directory: str | os.PathLike | None = None) -> DeviceProfile:
    """A device profile by name (``apple-a18-pro-ane``) or by YAML path.

    A name is looked up in ``directory`` if given, else in ``./latency_tables/devices`` (the
    user's own profiles win) and then among the shipped ones. The profile's ``path`` says
    which file was read.
    """
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return _load_profile_file(p)
    if directory:
        found = Path(directory) / f"{name_or_path}.yaml"
        found = found if found.is_file() else None
        names = available_devices(directory)
    else:
        found = find_device_profile(str(name_or_path), _user_devices_dirs())
        names = available_devices()
    if found is None:
        raise UnknownDeviceProfileError(str(name_or_path), names)
    return _load_profile_file(found)
