"""ExecuTorch pieces of the ``xnnpack`` target (the backend is ``_backends.ExecuTorchBackend``).

Blocks timed by ExecuTorch's XNNPACK runtime: the CPU runtime Android and iOS apps ship.

Target ``xnnpack``. Each block is exported with ``torch.export``, lowered with
``to_edge_transform_and_lower`` and the XNNPACK partitioner, serialised to a ``.pte`` program
and run by ``executorch.runtime`` on this CPU, with the XNNPACK thread pool set to the table's
thread count. Before it is timed, each program's output is compared with the torch block's
(a row notes a mismatch), and the row says how many of the program's operators XNNPACK took
(``xnnpack 7/7 ops``; the others run in ExecuTorch's portable kernels, as they would on a
phone). ``export_dir`` keeps every ``.pte`` program, to time on a device with ExecuTorch's
own runner.

Needs the optional dependency: ``pip install 'archsearch[executorch]'`` (``executorch``,
which works with the pinned torch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from archsearch.cost.latency._errors import ParameterError

__all__ = ["LoweredProgram", "executorch_available", "export_pte", "lower_and_check", "lower_to_xnnpack",
           "need_executorch", "write_pte"]


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


def export_pte(source: Any, path: str | os.PathLike, batch: int = 1) -> dict[str, Any]:
    """A whole UNet (a candidate, random weights, or a built/loaded ``ArchUNet``) as an
    ExecuTorch program with XNNPACK delegation at ``path`` (written to a temporary file, then
    renamed). The program is loaded back and run once against torch; returns ``ops``,
    ``delegated``, ``max_rel_error`` and ``bytes``."""
    from archsearch.cost.latency._measure import model_inputs
    from archsearch.model import ArchUNet, build_model

    need_executorch()
    model = source if isinstance(source, ArchUNet) else build_model(source)
    model = model.eval()
    low = lower_and_check(model, model_inputs(model.candidate, batch))
    write_pte(low.pte, path)
    return {"ops": low.total, "delegated": low.delegated, "max_rel_error": low.max_rel_error, "bytes": len(low.pte)}
