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

Registered as the export format ``coreml`` (an ``.mlpackage``).
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
from archsearch.export._mil import UnsupportedMILOp, mil_ops, off_ane_ops, run_mil
from archsearch.export._registry import ExportNote, ExportOptions, ExportResult, NumericCheck, register_format
from archsearch.model import ArchUNet, build_model

__all__ = [
    "CHECK_TOLERANCE",
    "LAYOUTS",
    "PALETTIZE_BITS",
    "ConversionResult",
    "ane_flags",
    "check_numerics",
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
    ct = import_coremltools()
    t0 = time.perf_counter()
    module = module.eval()
    if layout == "ane":
        module = ane_model(module) if isinstance(module, ArchUNet) else ane_block(module)
    wrapped = PositionalCall(module, [a is not None for a in inputs]).eval()
    args = tuple(a for a in inputs if a is not None)
    try:
        with _quiet(), torch.no_grad():
            exported = torch.export.export(wrapped, args).run_decompositions({})
            mlmodel = ct.convert(
                exported,
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT16,
                compute_units=getattr(ct.ComputeUnit, compute_units),
                minimum_deployment_target=ct.target.iOS17,
            )
            if palettize is not None:
                from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

                config = OptimizationConfig(global_config=OpPalettizerConfig(nbits=palettize, mode="kmeans"))
                mlmodel = palettize_weights(mlmodel, config)
    except Exception as exc:  # noqa: BLE001 - any converter failure is a result, not a crash
        first = first_line(exc)
        return ConversionResult(ok=False, error=f"{exc.__class__.__name__}: {first}"[:200],
                                seconds=time.perf_counter() - t0, layout=layout)
    program = mlmodel._mil_program
    counts, flags = ane_flags(program)
    result = ConversionResult(ok=True, seconds=time.perf_counter() - t0, op_counts=counts, flags=flags,
                              mlmodel=mlmodel if keep_model else None, program=program if keep_program or check
                              else None, layout=layout, off_ane=off_ane_ops(program), palettized=palettize)
    if check:
        result.check = check_numerics(program, module if layout == "torch" else wrapped, inputs, tolerance)
    if not keep_program:
        result.program = None
    # the census of the program, for the estimator (cheap, kept even without the program)
    result.mil_ops = mil_ops(program)
    return result


def check_numerics(program: Any, module: torch.nn.Module, inputs: tuple, tolerance: float = 0.02) -> NumericCheck:
    """Evaluate ``program`` (MIL) with numpy on ``inputs`` and compare with ``module``."""
    call = module if isinstance(module, PositionalCall) else PositionalCall(module, [a is not None for a in inputs])
    args = tuple(a for a in inputs if a is not None)
    with torch.no_grad():
        ref = call(*args).detach().float().numpy()
    fn = program.functions["main"]
    feed = {name: t.detach().float().numpy() for name, t in zip(fn.inputs, args)}
    try:
        out = next(iter(run_mil(program, feed).values()))
    except UnsupportedMILOp as exc:
        return NumericCheck(done=False, reason=str(exc), tolerance=tolerance)
    if out.shape != ref.shape:
        return NumericCheck(done=True, ok=False, reason=f"shape {out.shape} != torch {ref.shape}", tolerance=tolerance)
    diff = float(np.abs(out - ref).max())
    scale = float(np.abs(ref).max()) or 1.0
    return NumericCheck(done=True, ok=diff / scale <= tolerance, max_rel_error=diff / scale, max_abs_error=diff,
                        tolerance=tolerance)


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


@register_format("coreml", suffix=".mlpackage", activity="converting {source} to Core ML ({layout} layout)")
def _export_coreml(model: ArchUNet, path: Path, options: ExportOptions, name: str) -> ExportResult:
    """The ``coreml`` format: :func:`convert_model`, saved as an ``.mlpackage``, with the MIL
    numeric check (``options.check``) and what would fall off the Neural Engine."""
    result = convert_model(model, compute_units=options.compute_units, layout=options.layout,
                           palettize=options.palettize, check=options.check, batch=options.batch,
                           tolerance=options.tolerance)
    if not result.ok:
        raise ArchsearchError(f"{name}: does not convert to Core ML: {result.error}")
    save_mlmodel(result.mlmodel, path)
    bits = f", {options.palettize}-bit palettized" if options.palettize else ""
    off = ", ".join(f"{k} {v}" for k, v in result.off_ane.most_common())
    notes = [ExportNote("ops that would fall off the Neural Engine", off or "none found", warn=bool(off))]
    if result.flags:
        notes.append(ExportNote("ANE-hostile patterns", ", ".join(f"{k} {v}" for k, v in sorted(result.flags.items()))))
    check = result.check
    problem = (f"{path}: the converted model differs from torch ({check.line()})"
               if check is not None and check.done and not check.ok else "")
    return ExportResult("coreml", path, model.candidate.id,
                        f"(mlprogram, fp16, iOS 17, {options.layout} layout{bits}) in {result.seconds:.1f} s",
                        check=check, notes=notes, problem=problem, details={"conversion": result})
