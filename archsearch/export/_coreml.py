"""Core ML: convert one block or a whole UNet (torch.export → mlprogram, fp16, minimum iOS 17),
flag what the Neural Engine dislikes, and check the converted program's numerics with numpy.

coremltools converts on Linux but cannot run a model there ("only supported on macOS"), so on
Linux the conversion proves a block converts and yields the op list that is checked here
(and that the latency stage's roofline estimator counts); timing ``MLModel.predict`` on
macOS is the latency stage's too.

The checks follow public guidance, which is incomplete: Apple's "Deploying Transformers on
the Apple Neural Engine" (machinelearning.apple.com/research/neural-engine-transformers,
2022: 4-D channels-first tensors; the last axis is padded to 64 bytes; minimise reshapes and
transposes, they are memory copies) and hollance/neural-engine
``docs/unsupported-layers.md`` (gather and dilated convolutions fall back to CPU/GPU).

The export format ``coreml`` (the packages Apple's Swift app runs) is ``_app``'s.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from archsearch._util import first_line
from archsearch.errors import ArchsearchError, ParameterError
from archsearch.export._ane_layout import ane_block, ane_model
from archsearch.export._inputs import PositionalCall, model_inputs
from archsearch.export._mil import UnsupportedMILOp, mil_ops, off_ane_ops, program_ops, run_mil, unevaluated_ops
from archsearch.export._registry import ExportNote, NumericCheck
from archsearch.model import ArchUNet, build_model

__all__ = [
    "CHECK_TOLERANCE",
    "LAYOUTS",
    "PALETTIZE_BITS",
    "ConversionResult",
    "ane_advice",
    "ane_flags",
    "check_numerics",
    "conversion_result",
    "convert_exported",
    "convert_model",
    "convert_module",
    "coreml_version",
    "import_coremltools",
    "save_mlmodel",
]

_GATHER_OPS = {"gather", "gather_nd", "gather_along_axis", "scatter", "scatter_nd", "scatter_along_axis"}
_COPY_OPS = {"transpose", "reshape"}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence coremltools' import warnings and tqdm bars (they would break the rich bar)."""
    loggers = [logging.getLogger(n) for n in ("coremltools", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def import_coremltools() -> Any:
    """``import coremltools`` quietly, or a one-line error with the install hint."""
    try:
        with _quiet():
            import coremltools as ct  # noqa: PLC0415
    except ImportError:
        raise ArchsearchError("the coreml/ane targets need coremltools: pip install 'coremltools>=8'") from None
    return ct


def coreml_version() -> str:
    try:
        return import_coremltools().__version__
    except ArchsearchError:
        return ""


#: ``ane``: Apple's Neural-Engine layout (``_ane_layout``); ``torch``: the module as it is
LAYOUTS = ("ane", "torch")
#: weight palettization through ``coremltools.optimize`` (bits per weight)
PALETTIZE_BITS = (4, 6, 8)


@dataclass
class ConversionResult:
    """What converting one block (or model) taught us."""

    ok: bool
    error: str = ""
    seconds: float = 0.0
    op_counts: Counter = field(default_factory=Counter)
    flags: dict[str, int] = field(default_factory=dict)
    mlmodel: Any = None
    #: the MIL program (what the device runs), kept for the op census and the numeric check
    program: Any = None
    layout: str = "ane"
    #: ops that would fall off the Neural Engine (``_mil.off_ane_ops``)
    off_ane: Counter = field(default_factory=Counter)
    check: NumericCheck | None = None
    palettized: int | None = None
    #: the program's ops as roofline records (``_mil.mil_ops``): what the estimator counts
    mil_ops: list = field(default_factory=list)

    @property
    def status(self) -> str:
        """'ok' or 'failed: <first line of the error>' (the table's ``coreml`` column)."""
        return "ok" if self.ok else f"failed: {self.error}"

    @property
    def flags_text(self) -> str:
        """``rank5:3;gather:1`` (the table's ``ane_flags`` column)."""
        return ";".join(f"{k}:{v}" for k, v in sorted(self.flags.items()))


def ane_flags(program: Any) -> tuple[Counter, dict[str, int]]:
    """Op counts of a MIL program and the Neural-Engine-hostile patterns found in it.

    Flags: ``rank5`` (ops producing tensors of rank > 4: the ANE's layout is 4-D),
    ``gather`` (gather/scatter ops), ``dilated_conv``, ``fp32`` (ops left in fp32),
    ``unaligned_last_axis`` (outputs whose last axis is not a multiple of 64 bytes in fp16:
    padded on the ANE), ``copies`` (transpose/reshape ops: memory copies on the ANE).
    """
    from coremltools.converters.mil.mil import types  # noqa: PLC0415

    counts: Counter = Counter()
    flags: Counter = Counter()
    for fn in program.functions.values():
        for op in fn.operations:
            kind = op.op_type
            if kind == "const":
                continue
            counts[kind] += 1
            if kind in _GATHER_OPS:
                flags["gather"] += 1
            if kind in _COPY_OPS:
                flags["copies"] += 1
            if kind == "conv":
                dil = getattr(op, "dilations", None)
                if dil is not None and dil.val is not None and any(int(d) != 1 for d in np.ravel(dil.val)):
                    flags["dilated_conv"] += 1
            for out in op.outputs:
                shape = getattr(out, "shape", None)
                if shape is None:
                    continue
                if len(shape) > 4:
                    flags["rank5"] += 1
                dtype = getattr(out, "dtype", None)
                if dtype is types.fp32 and kind not in ("cast",):
                    flags["fp32"] += 1
                if shape and isinstance(shape[-1], (int, np.integer)) and (int(shape[-1]) * 2) % 64:
                    flags["unaligned_last_axis"] += 1
    return counts, dict(flags)


def ane_advice(program: Any, layout: str = "ane", candidate: Any = None) -> list[ExportNote]:
    """Each Neural-Engine-hostile pattern of ``program`` (see :func:`ane_flags`) as one note:
    what it is, how many, and the change that removes it (``candidate``: the model's, for
    the sizes to suggest)."""
    from coremltools.converters.mil.mil import types

    transposes, moved, kept_axis, fp32, rank5, gathers, dilated = 0, 0, 0, Counter(), Counter(), 0, 0
    unaligned: Counter = Counter()
    for fn in program.functions.values():
        for op in fn.operations:
            kind = op.op_type
            if kind == "const" or kind.startswith("constexpr_"):
                continue
            out = op.outputs[0] if op.outputs else None
            shape = tuple(getattr(out, "shape", None) or ())
            if kind == "transpose":
                transposes += 1
            elif kind == "reshape":
                src = tuple(getattr(op.inputs["x"], "shape", None) or ())
                if src and shape and src[-1] == shape[-1]:
                    kept_axis += 1
                else:
                    moved += 1
            if kind in _GATHER_OPS:
                gathers += 1
            if kind == "conv":
                dil = getattr(op, "dilations", None)
                if dil is not None and dil.val is not None and any(int(d) != 1 for d in np.ravel(dil.val)):
                    dilated += 1
            for o in op.outputs:
                sh = getattr(o, "shape", None)
                if sh is None:
                    continue
                if len(sh) > 4:
                    rank5[kind] += 1
                if kind != "cast" and getattr(o, "dtype", None) is types.fp32:
                    fp32[kind] += 1
                if sh and isinstance(sh[-1], (int, np.integer)) and (int(sh[-1]) * 2) % 64:
                    unaligned[int(sh[-1])] += 1
    notes = []
    if transposes or moved:
        if layout == "torch":
            fix = ("export with --layout ane (Apple's (B, C, 1, S) layout): attention then runs without "
                   "transposing tokens and channels")
        else:
            video = getattr(candidate, "kind", "image") == "video"
            fix = ("the transposes are the keys of each attention head (split-einsum: one per K/V head and layer; "
                   "attention_variant: mqa shares one K/V head, so one per layer)"
                   + (" and the frames <-> tokens swaps of temporal attention (temporal convolutions need none)"
                      if video else "")
                   + "; the reshapes are GroupNorm's (B, G, C/G, H*W) view and the change (B, C, H, W) <-> "
                   "(B, C, 1, H*W) around each transformer block: fewer, deeper transformer blocks "
                   "(transformer_depth) change the layout less often")
        notes.append(ExportNote(f"ANE-hostile: copies {transposes + moved}",
                                f"{transposes} transposes and {moved} reshapes that move the last axis are memory "
                                f"copies on the Neural Engine ({kept_axis} more reshapes keep it: free); change: {fix}",
                                warn=True))
    if fp32:
        what = ", ".join(f"{k} {v}" for k, v in fp32.most_common())
        notes.append(ExportNote(f"ANE-hostile: fp32 {sum(fp32.values())}",
                                f"ops left in fp32 ({what}) run on the CPU or GPU; change: give the model fp16 "
                                "inputs (the app export does) and keep integer and index arithmetic (arange, "
                                "comparisons, argmax) out of the UNet: compute it in the app and pass the result "
                                "as an input", warn=True))
    small = {k: v for k, v in unaligned.items() if k == 1}
    wide = {k: v for k, v in unaligned.items() if k != 1}
    if unaligned:
        sizes = ", ".join(f"{k} ({v})" for k, v in sorted(wide.items()))
        fix = "none needed for the size-1 statistics of norms (a few bytes each)"
        if wide:
            fix = ("the last axis is the width W of (B, C, H, W) tensors and H*W of (B, C, 1, S) tokens; "
                   "the Neural Engine pads it to 32 fp16 values (64 bytes): ")
            if candidate is not None and getattr(candidate, "stages", None):
                need = 32 * 2 ** (len(candidate.stages) - 1)
                fix += (f"a latent of at least {need} x {need} keeps every stage's width a multiple of 32 "
                        f"(this model: {candidate.resolution}); ")
            fix += "channel counts do not matter, the last axis does; the size-1 norm statistics are negligible"
        notes.append(ExportNote(f"ANE-hostile: unaligned_last_axis {sum(unaligned.values())}",
                                f"outputs whose last axis is not a multiple of 32 fp16 values: "
                                f"{sizes + '; ' if sizes else ''}{sum(small.values())} norm statistics of size 1; "
                                f"change: {fix}", warn=bool(wide)))
    if rank5:
        what = ", ".join(f"{k} {v}" for k, v in rank5.most_common())
        fix = ("export with --layout ane" if layout == "torch" else
               "a video model takes sample (B, C, T, H, W): its first and last reshape are rank 5 (Core ML allows "
               "5; the rest stays 4-D); any other is a block kept in its torch layout")
        notes.append(ExportNote(f"ANE-hostile: rank5 {sum(rank5.values())}",
                                f"tensors of rank > 4 ({what}); the Neural Engine's layout is 4-D; change: {fix}",
                                warn=True))
    if gathers:
        notes.append(ExportNote(f"ANE-hostile: gather {gathers}", "gather/scatter ops run on the CPU; change: no "
                                "indexing by tensors inside the model (embedding lookups belong in the text "
                                "encoder)", warn=True))
    if dilated:
        notes.append(ExportNote(f"ANE-hostile: dilated_conv {dilated}", "dilated convolutions fall back to the "
                                "CPU/GPU; change: undilated kernels", warn=True))
    return notes


def convert_module(module: torch.nn.Module, inputs: tuple, compute_units: str = "CPU_AND_NE",
                   keep_model: bool = False, *, layout: str = "ane", palettize: int | None = None,
                   check: bool = False, tolerance: float = 0.02, keep_program: bool = False) -> ConversionResult:
    """Convert ``module(*inputs)`` to an fp16 mlprogram (minimum iOS 17) through ``torch.export``.

    ``layout="ane"`` converts the Neural-Engine form of the module (``_ane_layout``: a block
    or an ArchUNet; others as they are); ``palettize``: 4-, 6- or 8-bit k-means weight
    palettization (``coremltools.optimize.coreml``); ``check``: evaluate the converted MIL
    program with numpy on ``inputs`` and compare with the torch module (fp32).
    Never raises for a conversion failure: the result says ``ok=False`` and why.
    """
    if layout not in LAYOUTS:
        raise ParameterError("layout", f"{layout}: unknown (allowed: {', '.join(LAYOUTS)})")
    if palettize is not None and palettize not in PALETTIZE_BITS:
        raise ParameterError("palettize", f"{palettize}: bad value (allowed: {', '.join(map(str, PALETTIZE_BITS))})")
    import_coremltools()  # missing: one line, not a failed conversion
    t0 = time.perf_counter()
    module = module.eval()
    if layout == "ane":
        module = ane_model(module) if isinstance(module, ArchUNet) else ane_block(module)
    wrapped = PositionalCall(module, [a is not None for a in inputs]).eval()
    args = tuple(a for a in inputs if a is not None)
    try:
        mlmodel = convert_exported(wrapped, args, compute_units, palettize=palettize)
    except Exception as exc:  # noqa: BLE001 - any converter failure is a result, not a crash
        return ConversionResult(ok=False, error=f"{exc.__class__.__name__}: {first_line(exc)}"[:200],
                                seconds=time.perf_counter() - t0, layout=layout)
    program = mlmodel._mil_program
    result = conversion_result(mlmodel, time.perf_counter() - t0, layout, palettize, keep_model)
    if check:
        args_np = {name: a.detach().float().numpy() for name, a in zip(program.functions["main"].inputs, args)}
        with torch.no_grad():
            ref = wrapped(*args)
        result.check = check_numerics(program, args_np, [ref], tolerance)
    if keep_program:
        result.program = program
    return result


def _drop_aliases(exported: Any) -> Any:
    """Remove ``aten.alias`` nodes (a whole-axis slice, a view of an embedding...) from an
    ExportedProgram: coremltools refuses them ("Unsupported fx node alias") and they compute
    nothing."""
    graph = exported.graph_module.graph
    targets = {torch.ops.aten.alias.default, getattr(torch.ops.aten, "alias_copy", torch.ops.aten.alias).default}
    changed = False
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in targets:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            changed = True
    if changed:
        exported.graph_module.recompile()
    return exported


def convert_exported(module: torch.nn.Module, args: tuple, compute_units: str = "CPU_AND_NE", *,
                     palettize: int | None = None, inputs: list | None = None, outputs: list | None = None,
                     precision: str = "fp16") -> Any:
    """``module(*args)`` through ``torch.export`` to an mlprogram (minimum iOS 17), weights
    palettized to ``palettize`` bits if set; ``inputs``/``outputs``: ``coremltools.TensorType``
    lists naming (and typing) the model's inputs and outputs (default: the forward's argument
    names and the converter's output name). Raises whatever the converter raises."""
    if palettize is not None and palettize not in PALETTIZE_BITS:
        raise ParameterError("palettize", f"{palettize}: bad value (allowed: {', '.join(map(str, PALETTIZE_BITS))})")
    ct = import_coremltools()
    with _quiet(), torch.no_grad():
        exported = _drop_aliases(torch.export.export(module.eval(), args).run_decompositions({}))
        kw: dict[str, Any] = {"inputs": inputs} if inputs is not None else {}
        if outputs is not None:
            kw["outputs"] = outputs
        mlmodel = ct.convert(
            exported,
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
            compute_units=getattr(ct.ComputeUnit, compute_units),
            minimum_deployment_target=ct.target.iOS17,
            **kw,
        )
        if palettize is not None:
            from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

            config = OptimizationConfig(global_config=OpPalettizerConfig(nbits=palettize, mode="kmeans"))
            mlmodel = palettize_weights(mlmodel, config)
    return mlmodel


def conversion_result(mlmodel: Any, seconds: float, layout: str, palettize: int | None,
                      keep_model: bool) -> ConversionResult:
    """What a converted model's MIL program says: op counts, ANE flags, off-ANE ops and the
    roofline census (the program itself is not kept)."""
    program = mlmodel._mil_program
    counts, flags = ane_flags(program)
    return ConversionResult(ok=True, seconds=seconds, op_counts=counts, flags=flags,
                            mlmodel=mlmodel if keep_model else None, layout=layout, off_ane=off_ane_ops(program),
                            palettized=palettize, mil_ops=mil_ops(program))


def check_numerics(program: Any, inputs: dict[str, np.ndarray], refs: list[Any],
                   tolerance: float = 0.02) -> NumericCheck:
    """Evaluate ``program`` (MIL) with numpy on ``inputs`` (by input name) and compare each
    output, in order, with ``refs`` (the torch module's outputs, fp32).

    Every op the program contains is evaluated, or nothing is: a program with an op
    :func:`~archsearch.export._mil.run_mil` lacks gives ``done=False`` naming every such op
    (a check that checked part of a program would say nothing about the rest).
    """
    missing = unevaluated_ops(program)
    if missing:
        names = ", ".join(f"{k} x{v}" for k, v in missing.most_common())
        return NumericCheck(done=False, reason=f"the MIL evaluator lacks op(s) {names}", tolerance=tolerance)
    n_ops = program_ops(program)
    try:
        outs = list(run_mil(program, inputs).values())
    except UnsupportedMILOp as exc:  # an op type listed as evaluated whose variant is not
        return NumericCheck(done=False, reason=str(exc), tolerance=tolerance)
    refs = [r.detach().float().numpy() if torch.is_tensor(r) else np.asarray(r, np.float32) for r in refs]
    worst = (0.0, 0.0)
    for out, ref in zip(outs, refs):
        if out.shape != ref.shape:
            return NumericCheck(done=True, ok=False, reason=f"shape {out.shape} != torch {ref.shape}",
                                tolerance=tolerance, ops=n_ops)
        diff = float(np.abs(out - ref).max()) if out.size else 0.0
        rel = diff / (float(np.abs(ref).max()) or 1.0) if ref.size else 0.0
        if not np.isfinite(diff):
            rel = diff = float("inf")
        worst = max(worst, (rel, diff))
    return NumericCheck(done=True, ok=worst[0] <= tolerance, max_rel_error=worst[0], max_abs_error=worst[1],
                        tolerance=tolerance, ops=n_ops)


#: numeric-check tolerance (largest difference / output range) by palettization bits: fp16
#: rounding alone, then the weight error a k-means palette of that size adds
CHECK_TOLERANCE = {None: 0.02, 8: 0.03, 6: 0.06, 4: 0.2}


def convert_model(candidate_or_model: Any, *, compute_units: str = "CPU_AND_NE", layout: str = "ane",
                  palettize: int | None = None, check: bool = True, batch: int = 1,
                  tolerance: float | None = None) -> ConversionResult:
    """Convert a whole UNet (a candidate, built with random weights, or an ArchUNet) to an
    fp16 mlprogram in the Neural-Engine layout; the model is kept (``result.mlmodel``).
    ``tolerance`` of the numeric check: default :data:`CHECK_TOLERANCE` of ``palettize``."""
    if tolerance is None:
        tolerance = CHECK_TOLERANCE.get(palettize, 0.2)
    model = candidate_or_model if isinstance(candidate_or_model, ArchUNet) else build_model(candidate_or_model)
    model = model.float().eval()
    inputs = model_inputs(model.candidate, batch)
    return convert_module(model, inputs, compute_units, keep_model=True, layout=layout, palettize=palettize,
                          check=check, tolerance=tolerance)


def save_mlmodel(mlmodel: Any, path: str | Path) -> Path:
    """Save a converted model as an ``.mlpackage`` (for timing on a device elsewhere)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(path))
    return path
