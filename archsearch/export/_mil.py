"""What a converted Core ML program runs, read from its MIL program (works on Linux).

* :func:`mil_ops` lists the program's ops as :class:`~archsearch.export.OpRecord`\\ s
  (class, multiply-accumulates, bytes moved) for the roofline estimator of
  ``archsearch.cost.latency``: the device runs this program, not the torch module it came from.
* :func:`run_mil` evaluates the program with numpy (plus torch's convolution kernel), op by
  op, honouring the program's fp16 casts: ``MLModel.predict`` needs macOS, this does not.
  It covers the ops archsearch's blocks convert to; a program with another op raises
  :class:`UnsupportedMILOp` naming it (the check then says it could not be done).
* :func:`off_ane_ops`: ops that would fall off the Neural Engine (to the CPU or GPU):
  gather/scatter-like ops, control flow, tensors of rank > 4, ops computing in fp32.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from archsearch.export._ops import OpRecord, einsum_macs

__all__ = ["EVALUATED_OPS", "UnsupportedMILOp", "mil_ops", "off_ane_ops", "program_ops", "run_mil", "unevaluated_ops"]

_FREE = {"const", "reshape", "expand_dims", "squeeze", "identity", "shape"}
_DATA = {"transpose", "slice_by_index", "slice_by_size", "concat", "split", "upsample_nearest_neighbor",
         "upsample_bilinear", "tile", "gather", "gather_along_axis", "pad", "stack"}
_NORM = {"layer_norm", "instance_norm", "batch_norm", "reduce_mean", "reduce_sum", "l2_norm"}
#: op types the Neural Engine does not run (public guidance: hollance/neural-engine
#: docs/unsupported-layers.md; Apple's "Deploying Transformers on the ANE")
_OFF_ANE_TYPES = {"gather", "gather_nd", "gather_along_axis", "scatter", "scatter_nd", "scatter_along_axis",
                  "while_loop", "cond", "topk", "argsort", "cumsum", "non_maximum_suppression", "random_normal",
                  "random_uniform", "random_bernoulli", "random_categorical", "band_part"}


class UnsupportedMILOp(Exception):
    """The MIL evaluator has no implementation of this op type."""

    def __init__(self, op_type: str, detail: str = "") -> None:
        self.op_type = op_type
        super().__init__(f"op {op_type} is not evaluated here" + (f" ({detail})" if detail else ""))


def _functions(program: Any) -> list[Any]:
    return list(program.functions.values())


def _shape(var: Any) -> tuple[int, ...] | None:
    shape = getattr(var, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        return None


def _numel(shape: tuple[int, ...] | None) -> int:
    return int(math.prod(shape)) if shape else (1 if shape == () else 0)


def _input_vars(op: Any) -> list[Any]:
    out = []
    for v in op.inputs.values():
        if isinstance(v, (list, tuple)):
            out.extend(v)
        else:
            out.append(v)
    return out


def mil_ops(program: Any, elem_bytes: int = 2) -> list[OpRecord]:
    """The ops of a MIL program as roofline records: reshapes and consts are free; weights
    (const inputs) count in an op's bytes, as the device streams them."""
    records: list[OpRecord] = []
    for fn in _functions(program):
        for op in fn.operations:
            kind = op.op_type
            if kind in _FREE or kind.startswith("constexpr_"):
                continue
            outs = [_shape(o) for o in op.outputs]
            out_elems = sum(_numel(s) for s in outs if s is not None)
            ins = [v for v in _input_vars(op) if _shape(v) is not None and _numel(_shape(v)) > 1]
            nbytes = (sum(_numel(_shape(v)) for v in ins) + out_elems) * elem_bytes
            macs = 0
            if kind == "conv":
                w = _shape(op.inputs["weight"])
                groups = int(op.inputs["groups"].val) if "groups" in op.inputs else 1
                cin = (_shape(op.inputs["x"]) or (0, 0))[1]
                macs = out_elems * _numel(w[1:]) if w else 0
                cls = "dwconv" if groups > 1 and groups == cin else "conv"
            elif kind == "linear":
                w = _shape(op.inputs["weight"])
                macs = out_elems * (w[-1] if w else 0)
                cls = "matmul"
            elif kind == "matmul":
                x = _shape(op.inputs["x"]) or (0,)
                tx = bool(op.inputs["transpose_x"].val) if "transpose_x" in op.inputs else False
                macs = out_elems * (x[-2] if tx else x[-1])
                cls = "matmul"
            elif kind == "einsum":
                values = op.inputs["values"]
                macs = einsum_macs(str(op.inputs["equation"].val), [_shape(v) for v in values])
                cls = "matmul"
            elif kind in _NORM:
                cls = "norm"
            elif kind in _DATA:
                cls = "data"
            else:
                cls = "elementwise"
            records.append(OpRecord(kind, cls, int(macs), int(nbytes), int(out_elems)))
    return records


def off_ane_ops(program: Any) -> Counter:
    """Ops that would fall off the Neural Engine, by reason: ``<op type>`` for types it does
    not run, ``rank5:<op>`` for outputs of rank > 4, ``fp32:<op>`` for ops computing in fp32."""
    from coremltools.converters.mil.mil import types

    found: Counter = Counter()
    for fn in _functions(program):
        for op in fn.operations:
            kind = op.op_type
            if kind == "const":
                continue
            if kind in _OFF_ANE_TYPES:
                found[kind] += 1
            for out in op.outputs:
                shape = getattr(out, "shape", None)
                if shape is not None and len(shape) > 4:
                    found[f"rank5:{kind}"] += 1
                    break
            if kind != "cast" and any(getattr(o, "dtype", None) is types.fp32 for o in op.outputs):
                found[f"fp32:{kind}"] += 1
    return found


# ----------------------------------------------------------------------------- evaluation


def _val(env: dict[str, Any], var: Any) -> Any:
    if isinstance(var, (list, tuple)):
        return [_val(env, v) for v in var]
    if var.val is not None and var.name not in env:
        v = var.val
        return np.asarray(v) if not isinstance(v, (str, bool)) else v
    return env[var.name]


def _axis(a: Any, ndim: int) -> int:
    a = int(a)
    return a + ndim if a < 0 else a


def _conv(x: np.ndarray, w: np.ndarray, b: Any, strides: Any, pad_type: str, pad: Any, dilations: Any,
          groups: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    wt = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    bt = None if b is None else torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    nd = wt.dim() - 2
    strides = [int(s) for s in (strides if strides is not None else [1] * nd)]
    dil = [int(d) for d in (dilations if dilations is not None else [1] * nd)]
    if pad_type == "custom":
        p = [int(v) for v in pad]
        # MIL: [begin_0, end_0, begin_1, end_1, ...]; F.pad wants the last axis first
        flat: list[int] = []
        for i in reversed(range(nd)):
            flat += [p[2 * i], p[2 * i + 1]]
        xt = F.pad(xt, flat)
    elif pad_type == "same":
        flat = []
        for i in reversed(range(nd)):
            k = (wt.shape[2 + i] - 1) * dil[i] + 1
            size = xt.shape[2 + i]
            total = max((math.ceil(size / strides[i]) - 1) * strides[i] + k - size, 0)
            flat += [total // 2, total - total // 2]
        xt = F.pad(xt, flat)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(xt, wt, bt, stride=strides, dilation=dil, groups=int(groups)).numpy()


def _gelu(x: np.ndarray, mode: str) -> np.ndarray:
    from math import sqrt

    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1 + np.exp(-1.702 * x))
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / sqrt(2.0)))


def _slice(x: np.ndarray, begin: Any, end: Any, stride: Any, begin_mask: Any, end_mask: Any,
           squeeze_mask: Any) -> np.ndarray:
    idx = []
    nd = x.ndim
    stride = stride if stride is not None else [1] * nd
    for i in range(nd):
        b = None if begin_mask is not None and begin_mask[i] else int(begin[i])
        e = None if end_mask is not None and end_mask[i] else int(end[i])
        if squeeze_mask is not None and squeeze_mask[i]:
            idx.append(int(begin[i]))
        else:
            idx.append(slice(b, e, int(stride[i])))
    return x[tuple(idx)]


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


def _eval_op(op: Any, env: dict[str, Any]) -> list[Any]:
    kind = op.op_type
    i = op.inputs
    g = lambda name, default=None: _val(env, i[name]) if name in i else default  # noqa: E731
    binary = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "pow": np.power,
              "maximum": np.maximum, "minimum": np.minimum, "floor_div": np.floor_divide}
    unary = {"sqrt": np.sqrt, "exp": np.exp, "sin": np.sin, "cos": np.cos, "tanh": np.tanh, "abs": np.abs,
             "square": np.square, "floor": np.floor, "ceil": np.ceil, "erf": None, "sign": np.sign,
             "relu": lambda x: np.maximum(x, 0), "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
             "silu": lambda x: x / (1 + np.exp(-x)), "log": np.log}
    if kind in binary:
        return [binary[kind](g("x"), g("y"))]
    if kind in unary and unary[kind] is not None:
        return [unary[kind](g("x"))]
    if kind == "erf":
        from scipy.special import erf

        return [erf(g("x"))]
    if kind == "rsqrt":
        return [1.0 / np.sqrt(g("x") + float(g("epsilon", 1e-12)))]
    if kind == "inverse":
        return [1.0 / (g("x") + float(g("epsilon", 1e-4)))]
    if kind == "gelu":
        return [_gelu(g("x"), str(g("mode", "EXACT")))]
    if kind == "cast":
        dtype = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int16": np.int16, "uint16": np.uint16,
                 "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}[str(g("dtype"))]
        return [np.asarray(g("x")).astype(dtype)]
    if kind == "conv":
        return [_conv(g("x"), g("weight"), g("bias"), g("strides"), str(g("pad_type", "valid")), g("pad"),
                      g("dilations"), int(g("groups", 1)))]
    if kind == "linear":
        y = np.matmul(g("x"), np.swapaxes(g("weight"), -1, -2))
        b = g("bias")
        return [y + b if b is not None else y]
    if kind == "matmul":
        x, y = g("x"), g("y")
        if g("transpose_x", False):
            x = np.swapaxes(x, -1, -2)
        if g("transpose_y", False):
            y = np.swapaxes(y, -1, -2)
        return [np.matmul(x, y)]
    if kind == "einsum":
        return [np.einsum(str(g("equation")), *[np.asarray(v, np.float32) for v in g("values")])]
    if kind == "softmax":
        x = g("x")
        return [_softmax(x, _axis(g("axis", -1), x.ndim))]
    if kind in ("reduce_mean", "reduce_sum", "reduce_max", "reduce_min"):
        x = g("x")
        axes = g("axes")
        axes = tuple(_axis(a, x.ndim) for a in np.ravel(axes)) if axes is not None else None
        fn = {"reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min}[kind]
        return [fn(x, axis=axes, keepdims=bool(g("keep_dims", False)))]
    if kind == "reshape":
        x = g("x")
        shape = [int(s) for s in np.ravel(g("shape"))]
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
        return [x.reshape(shape)]
    if kind == "expand_dims":
        x = g("x")
        for a in sorted(_axis(a, x.ndim + len(np.ravel(g("axes")))) for a in np.ravel(g("axes"))):
            x = np.expand_dims(x, a)
        return [x]
    if kind == "squeeze":
        x = g("x")
        axes = g("axes")
        return [np.squeeze(x, axis=tuple(_axis(a, x.ndim) for a in np.ravel(axes)) if axes is not None else None)]
    if kind == "transpose":
        return [np.transpose(g("x"), [int(p) for p in np.ravel(g("perm"))])]
    if kind == "slice_by_index":
        return [_slice(g("x"), np.ravel(g("begin")), np.ravel(g("end")),
                       None if g("stride") is None else np.ravel(g("stride")),
                       None if g("begin_mask") is None else np.ravel(g("begin_mask")),
                       None if g("end_mask") is None else np.ravel(g("end_mask")),
                       None if g("squeeze_mask") is None else np.ravel(g("squeeze_mask")))]
    if kind == "slice_by_size":
        x = g("x")
        begin, size = np.ravel(g("begin")), np.ravel(g("size"))
        return [x[tuple(slice(int(b), None if int(s) == -1 else int(b) + int(s)) for b, s in zip(begin, size))]]
    if kind == "concat":
        vals = g("values")
        return [np.concatenate(vals, axis=_axis(g("axis"), np.asarray(vals[0]).ndim))]
    if kind == "split":
        x = g("x")
        axis = _axis(g("axis"), x.ndim)
        sizes = g("split_sizes")
        if sizes is not None:
            cuts = np.cumsum([int(s) for s in np.ravel(sizes)])[:-1]
            return list(np.split(x, cuts, axis=axis))
        return list(np.split(x, int(g("num_splits")), axis=axis))
    if kind == "layer_norm":
        x = g("x")
        axes = tuple(_axis(a, x.ndim) for a in np.ravel(g("axes")))
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        out = (x - mean) / np.sqrt(var + float(g("epsilon", 1e-5)))
        gamma, beta = g("gamma"), g("beta")
        return [out * (gamma if gamma is not None else 1) + (beta if beta is not None else 0)]
    if kind == "instance_norm":
        x = g("x")
        axes = tuple(range(2, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        out = (x - mean) / np.sqrt(var + float(g("epsilon", 1e-5)))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        gamma, beta = g("gamma"), g("beta")
        return [out * (gamma.reshape(shape) if gamma is not None else 1) + (beta.reshape(shape) if beta is not None else 0)]
    if kind == "upsample_nearest_neighbor":
        x = g("x")
        sh, sw = int(g("scale_factor_height", 1)), int(g("scale_factor_width", 1))
        return [x.repeat(sh, axis=-2).repeat(sw, axis=-1)]
    if kind == "tile":
        return [np.tile(g("x"), [int(r) for r in np.ravel(g("reps"))])]
    if kind == "fill":
        return [np.full([int(s) for s in np.ravel(g("shape"))], float(g("value", 0.0)), np.float32)]
    if kind == "range_1d":
        return [np.arange(g("start"), g("end"), g("step"))]
    if kind == "gather":
        x = g("x")
        return [np.take(x, np.asarray(g("indices")).astype(int), axis=_axis(g("axis", 0), x.ndim))]
    if kind == "select":
        return [np.where(g("cond"), g("a"), g("b"))]
    if kind == "identity":
        return [g("x")]
    if kind == "stack":
        vals = g("values")
        return [np.stack(vals, axis=_axis(g("axis"), np.asarray(vals[0]).ndim + 1))]
    if kind == "batch_norm":  # coremltools fuses x * gamma + beta of shape (1, C, 1, 1) into one
        x = g("x")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        scale = 1.0 / np.sqrt(np.asarray(g("variance"), np.float32) + float(g("epsilon", 1e-5)))
        out = (x - np.asarray(g("mean")).reshape(shape)) * scale.reshape(shape)
        gamma, beta = g("gamma"), g("beta")
        return [out * (gamma.reshape(shape) if gamma is not None else 1) + (beta.reshape(shape) if beta is not None else 0)]
    if kind == "pad":
        x = g("x")
        pad = [int(p) for p in np.ravel(g("pad"))]
        n = len(pad) // 2  # [begin, end] pairs for the last n axes
        widths = [(0, 0)] * (x.ndim - n) + [(pad[2 * i], pad[2 * i + 1]) for i in range(n)]
        mode = str(g("mode", "constant"))
        if mode == "constant":
            return [np.pad(x, widths, mode="constant", constant_values=float(g("constant_val", 0.0)))]
        return [np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])]
    if kind in ("reduce_argmax", "reduce_argmin"):
        x = g("x")
        axis = _axis(g("axis", -1), x.ndim)
        fn = np.argmax if kind == "reduce_argmax" else np.argmin
        out = fn(x, axis=axis)
        return [np.expand_dims(out, axis) if bool(g("keep_dims", False)) else out]
    if kind == "gather_nd":
        x, idx = g("x"), np.asarray(g("indices")).astype(int)
        return [x[tuple(np.moveaxis(idx, -1, 0))]]
    if kind == "gather_along_axis":
        x = g("x")
        axis = _axis(g("axis", 0), x.ndim)
        return [np.take_along_axis(x, np.asarray(g("indices")).astype(int), axis=axis)]
    if kind == "band_part":
        x = g("x")
        lower, upper = int(g("lower", -1)), int(g("upper", -1))
        rows, cols = np.indices(x.shape[-2:])
        keep = np.ones(x.shape[-2:], bool)
        if lower >= 0:
            keep &= rows - cols <= lower
        if upper >= 0:
            keep &= cols - rows <= upper
        return [np.where(keep, x, np.zeros_like(x))]
    if kind in ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal"):
        fn = {"equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
              "greater": np.greater, "greater_equal": np.greater_equal}[kind]
        return [fn(g("x"), g("y"))]
    if kind in ("logical_and", "logical_or", "logical_not"):
        if kind == "logical_not":
            return [np.logical_not(g("x"))]
        return [(np.logical_and if kind == "logical_and" else np.logical_or)(g("x"), g("y"))]
    if kind == "clip":
        return [np.clip(g("x"), float(g("alpha")), float(g("beta")))]
    if kind == "shape":
        return [np.asarray(np.shape(g("x")), np.int32)]
    raise UnsupportedMILOp(kind)


#: the MIL op types :func:`run_mil` evaluates (``const`` and ``constexpr_*`` weights included)
EVALUATED_OPS = frozenset({
    "add", "sub", "mul", "real_div", "pow", "maximum", "minimum", "floor_div", "sqrt", "exp", "sin", "cos", "tanh",
    "abs", "square", "floor", "ceil", "erf", "sign", "relu", "sigmoid", "silu", "log", "rsqrt", "inverse", "gelu",
    "cast", "conv", "linear", "matmul", "einsum", "softmax", "reduce_mean", "reduce_sum", "reduce_max", "reduce_min",
    "reshape", "expand_dims", "squeeze", "transpose", "slice_by_index", "slice_by_size", "concat", "split",
    "layer_norm", "instance_norm", "batch_norm", "upsample_nearest_neighbor", "tile", "fill", "range_1d", "gather",
    "select", "identity", "stack", "pad", "reduce_argmax", "reduce_argmin", "gather_nd", "gather_along_axis",
    "band_part", "equal", "not_equal", "less", "less_equal", "greater", "greater_equal", "logical_and", "logical_or",
    "logical_not", "clip", "shape", "const",
})


def unevaluated_ops(program: Any) -> Counter:
    """Op types of ``program`` that :func:`run_mil` does not evaluate, with their counts (an
    empty Counter: every op the program contains is evaluated by the numeric check)."""
    found: Counter = Counter()
    for fn in _functions(program):
        for op in fn.operations:
            if op.op_type not in EVALUATED_OPS and not op.op_type.startswith("constexpr_"):
                found[op.op_type] += 1
    return found


def program_ops(program: Any) -> int:
    """How many ops (``const`` left out) the program runs."""
    return sum(1 for fn in _functions(program) for op in fn.operations if op.op_type != "const")


def _as_declared(value: Any, var: Any) -> Any:
    """Round a result to the dtype the program declares (fp16 ops compute in fp16)."""
    from coremltools.converters.mil.mil import types

    dtype = getattr(var, "dtype", None)
    arr = np.asarray(value)
    if dtype is types.fp16:
        return arr.astype(np.float16)
    if dtype is types.fp32:
        return arr.astype(np.float32)
    if dtype is types.int32:
        return arr.astype(np.int32)
    return arr


def run_mil(program: Any, inputs: dict[str, np.ndarray], function: str = "main") -> dict[str, np.ndarray]:
    """Evaluate ``program``'s ``function`` on ``inputs`` (by input name); returns its outputs by
    name. Raises :class:`UnsupportedMILOp` for an op it does not implement."""
    fn = program.functions[function]
    env: dict[str, Any] = {}
    for name, var in fn.inputs.items():
        env[var.name] = _as_declared(inputs[name], var)
    for op in fn.operations:
        if op.op_type == "const":
            continue
        if op.op_type.startswith("constexpr_"):  # palettized / quantized weights: decompress
            results = [op.materialized_val_inference()]
        else:
            try:
                results = _eval_op(op, env)
            except UnsupportedMILOp:
                raise
            except Exception as exc:  # a variant of an op this evaluator does not cover
                raise UnsupportedMILOp(op.op_type, f"{type(exc).__name__}: {exc}"[:160]) from None
        for var, value in zip(op.outputs, results):
            env[var.name] = _as_declared(value, var)
    return {var.name: np.asarray(env[var.name], dtype=np.float32) for var in fn.outputs}

