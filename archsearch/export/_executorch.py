"""ExecuTorch: a module lowered to an ExecuTorch program with XNNPACK delegation, the CPU
runtime Android and iOS apps ship.

The module is exported with ``torch.export``, lowered with ``to_edge_transform_and_lower`` and
the XNNPACK partitioner, serialised to a ``.pte`` program, loaded back by
``executorch.runtime`` and run once on the example inputs against torch
(:func:`lower_and_check`); the result says how many of the program's operators XNNPACK took
(the others run in ExecuTorch's portable kernels, as they would on a phone). The latency
stage times such programs (target ``xnnpack``); registered as the export format ``pte``.

Needs the optional dependency: ``pip install 'archsearch[executorch]'`` (``executorch``,
which works with the pinned torch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from archsearch.errors import ParameterError
from archsearch.export._inputs import model_inputs
from archsearch.export._registry import ExportOptions, ExportResult, NumericCheck, register_format
from archsearch.model import ArchUNet

__all__ = ["PTE_TOLERANCE", "LoweredProgram", "executorch_available", "lower_and_check", "lower_to_xnnpack",
           "need_executorch", "write_pte"]

#: largest relative difference (to the largest torch output) an ExecuTorch program may show
#: against torch: both compute in float32, so anything above rounding is a lowering bug
PTE_TOLERANCE = 1e-3


def executorch_available() -> bool:
    """Whether ``executorch`` (with its XNNPACK backend and runtime) can be imported."""
    try:
        import executorch.backends.xnnpack.partition.xnnpack_partitioner  # noqa: F401
        import executorch.runtime  # noqa: F401
    except Exception:  # ImportError, or a build that does not match the installed torch
        return False
    return True


def need_executorch() -> None:
    """A one-line error if the ``xnnpack`` target cannot run here."""
    if not executorch_available():
        raise ParameterError("target", "xnnpack: needs ExecuTorch (pip install 'archsearch[executorch]')")


def lower_to_xnnpack(module: torch.nn.Module, inputs: tuple) -> tuple[bytes, int, int]:
    """``module`` as an ExecuTorch program with XNNPACK delegation: ``(pte bytes, ops
    delegated, ops in all)``. ``inputs`` are ``module``'s example arguments (``None`` ones
    are constants of the program)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        exported = torch.export.export(module.eval(), tuple(inputs))
    total = sum(1 for n in exported.graph.nodes if n.op == "call_function")
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    left = sum(1 for n in edge.exported_program().graph.nodes
               if n.op == "call_function" and "executorch_call_delegate" not in str(n.target)
               and "getitem" not in str(n.target))
    program = edge.to_executorch()
    return bytes(program.buffer), max(total - left, 0), total


class _TensorArgs(torch.nn.Module):
    """``module`` called with its tensor arguments only (ExecuTorch programs take tensors;
    a ``None`` argument, such as a ResNet's missing context, stays ``None`` inside)."""

    def __init__(self, module: torch.nn.Module, inputs: tuple) -> None:
        super().__init__()
        self.module = module
        self.present = [isinstance(t, torch.Tensor) for t in inputs]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        it = iter(tensors)
        return self.module(*(next(it) if p else None for p in self.present))


@dataclass
class LoweredProgram:
    """A module lowered to ExecuTorch (XNNPACK), loaded and run once against torch.

    Holds the program with its method: a method of a collected program runs on freed
    memory. :meth:`run` calls it on the example inputs (what a timing loop repeats)."""

    pte: bytes
    program: Any
    method: Any
    args: list
    delegated: int
    total: int
    max_rel_error: float

    def run(self) -> Any:
        return self.method.execute(self.args)


def lower_and_check(module: torch.nn.Module, inputs: tuple) -> LoweredProgram:
    """``module`` (called ``module(*inputs)``; ``None`` inputs stay ``None``) as a loaded
    ExecuTorch program, its output compared with torch's (relative max error)."""
    from executorch.runtime import Runtime

    args = [t for t in inputs if isinstance(t, torch.Tensor)]
    pte, delegated, total = lower_to_xnnpack(_TensorArgs(module, inputs).eval(), tuple(args))
    program = Runtime.get().load_program(pte)
    method = program.load_method("forward")
    out = method.execute(args)[0]
    with torch.inference_mode():
        want = module(*inputs)
    err = float((out - want).abs().max()) / max(float(want.abs().max()), 1e-6)
    return LoweredProgram(pte, program, method, args, delegated, total, err)


def write_pte(pte: bytes, path: str | os.PathLike) -> Path:
    """``pte`` at ``path`` (:func:`archsearch._util.atomic_write_bytes`: a temporary file,
    fsynced, renamed into place)."""
    from archsearch._util import atomic_write_bytes

    return atomic_write_bytes(path, pte)


@register_format("pte", suffix=".pte", activity="lowering {source} to ExecuTorch (XNNPACK)")
def _export_pte(model: ArchUNet, path: Path, options: ExportOptions, name: str) -> ExportResult:
    """The ``pte`` format: ``model`` as an ExecuTorch program with XNNPACK delegation at
    ``path`` (written to a temporary file, then renamed). The program is always loaded back
    and run once against torch (``options.check`` does not turn that off)."""
    need_executorch()
    low = lower_and_check(model.eval(), model_inputs(model.candidate, options.batch or 1))
    write_pte(low.pte, path)
    tolerance = PTE_TOLERANCE if options.tolerance is None else options.tolerance
    err = low.max_rel_error
    check = NumericCheck(done=True, ok=err < tolerance, max_rel_error=err, tolerance=tolerance, how="runtime")
    problem = "" if check.ok else f"{path}: the program differs from torch (max relative error {err:.2g})"
    return ExportResult("pte", path, model.candidate.id,
                        f"(ExecuTorch program, float32, XNNPACK took {low.delegated}/{low.total} ops; "
                        f"{len(low.pte) / 2**20:.1f} MiB)", check=check, problem=problem,
                        details={"ops": low.total, "delegated": low.delegated, "max_rel_error": err,
                                 "bytes": len(low.pte)})
