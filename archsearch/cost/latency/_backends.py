"""Backends: where the latency of a table's rows comes from.

One small interface, :class:`Backend`, with one implementation per way of getting a number:

* :class:`TorchBackend` times torch modules on ``cpu``, ``cuda`` or ``mps``;
* :class:`CoreMLBackend` converts each block with coremltools and times ``MLModel.predict``
  (``coreml``/``ane`` on macOS);
* :class:`RooflineBackend` estimates each block from a device profile's roofline model,
  after proving it converts to Core ML (``coreml``/``ane`` elsewhere: rows say ``estimate``);
* :class:`ImportBackend` takes rows measured on a device elsewhere (a CSV);
* :class:`ExecuTorchBackend` times ExecuTorch programs
  with XNNPACK on this CPU (``xnnpack``; the optional ``executorch`` dependency).

:func:`make_backend` picks one by target name (or passes an instance through).
"""

from __future__ import annotations

import abc
import contextlib
import os
import platform
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch

from archsearch.cost.latency._blocks import BlockCensus
from archsearch.cost.latency._devices import DeviceProfile, ane_layout_ops, ane_model_ops, load_device
from archsearch.cost.latency._errors import ParameterError, UnknownDeviceProfileError
from archsearch.cost.latency._measure import (
    DTYPES,
    TORCH_TARGETS,
    MeasureSettings,
    device_name,
    resolve_profile_device,
    time_callable,
    time_module,
)
from archsearch.errors import ArchsearchError
from archsearch.export import (
    PTE_TOLERANCE,
    ConversionResult,
    LoweredProgram,
    convert_module,
    coreml_version,
    lower_and_check,
    model_inputs,
    need_executorch,
    save_mlmodel,
    write_pte,
)

__all__ = [
    "COMPUTE_UNITS",
    "DEFAULT_DEVICE_PROFILE",
    "TARGETS",
    "Backend",
    "CoreMLBackend",
    "ExecuTorchBackend",
    "ImportBackend",
    "RooflineBackend",
    "TorchBackend",
    "make_backend",
]

TARGETS = ("cpu", "cuda", "mps", "coreml", "ane", "xnnpack")
DEFAULT_DEVICE_PROFILE = "apple-a18-pro-ane"


class Backend(abc.ABC):
    """Fills a latency table's rows for one target: measures, estimates or imports them.

    A profile run (:func:`~archsearch.cost.latency.run_profile`) uses a backend so:

    1. :meth:`describe` and :meth:`versions`, once, when the run is planned: metadata kept
       in the table's header (a resumed table must agree on target, device, dtype, batch,
       threads and device profile);
    2. :meth:`select`, once: which of the blocks the run needs get a row now;
    3. :meth:`session` around everything below (e.g. pins the CPU thread count);
    4. :meth:`block_memory`, then :meth:`block_row`, for each selected block, in order;
       the table is written every couple of seconds, so an interrupted run resumes close
       to where it stopped;
    5. :meth:`model_ms` for each whole calibration candidate, if :attr:`calibrates`.

    :meth:`seconds_per_block` is only asked to estimate how long a run takes.
    """

    #: the target name (``cpu``, ``ane``...), stored in the table
    target: str
    #: what the rows are: ``measured``, ``estimate`` or ``imported``
    source: str = "measured"
    #: the dtype blocks run in (recorded in the table)
    dtype: str = "float16"
    batch: int = 1
    #: CPU threads the measurement uses (0: not a CPU-thread measurement)
    threads: int = 0
    #: bytes per tensor element in the memory-traffic census (``bytes`` column)
    elem_bytes: int = 2
    #: timing settings of a measuring backend (None: nothing is timed)
    settings: MeasureSettings | None = None
    #: whether whole candidates can be run to fit the table's calibration
    calibrates: bool = True
    #: whether a profile run re-times a sentinel block to notice a disturbed machine
    watches_sentinel: bool = False
    #: the device profile of an estimating backend (None: the rows are not estimated from one)
    profile: DeviceProfile | None = None
    #: Core ML compute units of a Core ML backend (None: not a Core ML backend)
    compute_units: str | None = None
    #: whether each block is converted to Core ML (the ``coreml``/``ane_flags`` columns)
    convert: bool = False

    def describe(self) -> dict[str, Any]:
        """Table metadata about the device: at least ``device``."""
        return {}

    def versions(self) -> dict[str, str]:
        """Versions of the tools this backend runs (added to the table's ``versions``)."""
        return {}

    def select(self, specs: dict[str, Any], table: Any) -> list[Any]:
        """The blocks (of ``specs``, by key) to fill now; default: those not in ``table``."""
        return [s for k, s in specs.items() if k not in table]

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Context around all the measuring of one run (default: nothing to set up)."""
        yield

    @abc.abstractmethod
    def block_row(self, spec: Any, census: BlockCensus, existing: dict[str, Any] | None) -> dict[str, Any]:
        """Columns of ``spec``'s row: at least ``ms``; also ``ms_iqr``, ``runs``, ``coreml``,
        ``ane_flags``, ``note``... ``census`` is the block's op count; ``existing`` the
        table's current row for this key, if there is one."""

    @abc.abstractmethod
    def model_ms(self, candidate: Any) -> float:
        """Latency (ms) of ``candidate``'s whole model, one call."""

    def seconds_per_block(self) -> float:
        """About how long :meth:`block_row` takes (for the dry run's time estimate)."""
        return 0.0

    def block_memory(self, spec: Any, census: BlockCensus) -> dict[str, Any]:
        """The memory columns of ``spec``'s row (``weight_bytes``, ``act_bytes``,
        ``out_bytes``, ``mem_source``); default: estimated from a ``meta`` run at
        :attr:`elem_bytes` per element (``mem_source: estimate``)."""
        from archsearch.cost.latency._memory import estimate_block_memory

        return estimate_block_memory(spec, self.batch, elem_bytes=self.elem_bytes).row()

    def sentinel_ms(self, spec: Any) -> float:
        """One timing of the sentinel block (see ``_sentinel``); default: its row's ``ms``."""
        return float(self.block_row(spec, None, None)["ms"])


def _model_settings(s: MeasureSettings) -> MeasureSettings:
    """How a whole model is timed: models are few and compared one by one (not summed like
    blocks), so five times a block's time budget each, spent in full (no early stop)."""
    return replace(s, min_run_time=5 * s.min_run_time, max_run_time=max(s.max_run_time, 5 * s.min_run_time),
                   stable_time=5 * s.min_run_time)


def _sentinel_settings(s: MeasureSettings) -> MeasureSettings:
    """How the sentinel is timed: the mean over the full ``min_run_time`` (a busy machine
    shows as a longer mean)."""
    return replace(s, statistic="mean", stable_time=s.min_run_time)


# ----------------------------------------------------------------------------- torch


class TorchBackend(Backend):
    """Times blocks and whole models with torch on cpu, cuda or mps.

    Memory columns are measured on cpu (torch's memory profiler) and cuda
    (``max_memory_allocated``), estimated on mps.
    """

    source = "measured"
    watches_sentinel = True

    def __init__(self, target: str, dtype: str = "float32", batch: int = 1, threads: int | None = None,
                 settings: MeasureSettings = MeasureSettings()) -> None:
        if target not in TORCH_TARGETS:
            raise ParameterError("target", f"{target}: not a torch target (allowed: {', '.join(TORCH_TARGETS)})")
        if dtype not in DTYPES:
            raise ParameterError("dtype", f"{dtype}: unknown dtype (allowed: {', '.join(DTYPES)})")
        n = threads if threads is not None else torch.get_num_threads()
        if n < 1:
            raise ParameterError("threads", f"{n}: bad value (allowed: an integer >= 1)")
        self.target = target
        self.device = resolve_profile_device(target)
        self.dtype = dtype
        self.torch_dtype = DTYPES[dtype]
        self.batch = batch
        self.threads = n
        self.settings = settings
        self.elem_bytes = 2 if dtype in ("float16", "bfloat16") else 4

    def describe(self) -> dict[str, Any]:
        return {"device": device_name(self.target), "threads": self.threads}

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    def _build(self, spec: Any) -> tuple[torch.nn.Module, tuple]:
        from archsearch.model import build_block, example_inputs

        block = build_block(spec, device=self.device, dtype=self.torch_dtype).eval()
        inputs = example_inputs(spec, self.batch, device=self.device, dtype=self.torch_dtype,
                                generator=torch.Generator(device=self.device).manual_seed(0)
                                if self.device.type == "cpu" else None)
        return block, inputs

    # A row's block is built once: block_memory runs it (twice) and leaves it here, warm,
    # for block_row to time; block_row drops it.
    _row: tuple[str, torch.nn.Module, tuple] | None = None
    # the sentinel block, built once: (key, block, inputs)
    _sentinel: tuple[str, torch.nn.Module, tuple] | None = None

    def _row_block(self, spec: Any) -> tuple[torch.nn.Module, tuple, bool]:
        """(block, inputs, warm): the block :meth:`block_memory` left for this key, or a new one."""
        row = self._row
        if row is not None and row[0] == spec.key:
            return row[1], row[2], True
        return (*self._build(spec), False)

    def block_row(self, spec: Any, census: BlockCensus, existing: dict[str, Any] | None) -> dict[str, Any]:
        block, inputs, warm = self._row_block(spec)
        self._row = None
        t = time_module(block, inputs, self.threads, self.settings, warm=warm)
        return {"ms": t.ms, "ms_iqr": t.iqr_ms, "runs": t.runs}

    def sentinel_ms(self, spec: Any) -> float:
        cached = self._sentinel
        if cached is None or cached[0] != spec.key:
            cached = self._sentinel = (spec.key, *self._build(spec))
        return time_module(cached[1], cached[2], self.threads, _sentinel_settings(self.settings)).ms

    def block_memory(self, spec: Any, census: BlockCensus) -> dict[str, Any]:
        if self.device.type not in ("cpu", "cuda"):
            return super().block_memory(spec, census)
        from archsearch.cost.latency._memory import measure_block_memory

        block, inputs, _ = self._row_block(spec)
        self._row = (spec.key, block, inputs)
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return measure_block_memory(spec, self.batch, self.device, self.torch_dtype, built=(block, inputs)).row()
        finally:
            torch.set_num_threads(old)

    def model_ms(self, candidate: Any) -> float:
        from archsearch.model import build_model

        model = build_model(candidate, device=self.device, dtype=self.torch_dtype).eval()
        inputs = model_inputs(candidate, self.batch, self.device, self.torch_dtype)
        return time_module(model, inputs, self.threads, _model_settings(self.settings)).ms

    def seconds_per_block(self) -> float:
        return self.settings.min_run_time * 1.3 + 0.1


# ----------------------------------------------------------------------------- Core ML


class _CoreMLConversion:
    """Converting each block to Core ML: the table's ``coreml``/``ane_flags`` columns."""

    target: str
    batch: int
    compute_units: str
    export_dir: Path | None

    def _convert_block(self, spec: Any, keep: bool) -> tuple[dict[str, Any], ConversionResult, tuple]:
        from archsearch.model import build_block, example_inputs

        block = build_block(spec, device="cpu").eval()
        inputs = example_inputs(spec, self.batch, device="cpu")
        # the Neural-Engine layout (apple/ml-stable-diffusion's), as the device would run it
        result = convert_module(block, inputs, self.compute_units, keep_model=keep or self.export_dir is not None,
                                layout="ane")
        flags = result.flags_text
        if result.off_ane:
            off = ";".join(f"off_ane:{k}:{v}" for k, v in sorted(result.off_ane.items()))
            flags = f"{flags};{off}" if flags else off
        row = {"coreml": result.status, "ane_flags": flags}
        if result.ok and self.export_dir is not None:
            from archsearch._util import short_hash

            name = f"{spec.type}-{short_hash(spec.key, 10)}.mlpackage"
            save_mlmodel(result.mlmodel, self.export_dir / name)
            row["note"] = f"mlpackage: {name}"
        return row, result, inputs

    def versions(self) -> dict[str, str]:
        return {"coremltools": coreml_version()}


#: Core ML compute units (``coremltools.ComputeUnit`` names)
COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")


def _compute_units(target: str, given: str | None = None) -> str:
    if given is not None:
        if given not in COMPUTE_UNITS:
            raise ParameterError("compute_units", f"{given}: unknown (allowed: {', '.join(COMPUTE_UNITS)})")
        return given
    return "CPU_AND_NE" if target == "ane" else "ALL"


class CoreMLBackend(_CoreMLConversion, Backend):
    """macOS: converts each block with coremltools and times ``MLModel.predict``."""

    source = "measured"
    watches_sentinel = True
    convert = True

    def __init__(self, target: str, batch: int = 1, settings: MeasureSettings = MeasureSettings(),
                 export_dir: str | os.PathLike | None = None, compute_units: str | None = None) -> None:
        self.target = target
        self.batch = batch
        self.settings = settings
        self.compute_units = _compute_units(target, compute_units)
        self.export_dir = Path(export_dir) if export_dir is not None else None

    def describe(self) -> dict[str, Any]:
        return {"compute_units": self.compute_units, "device": f"{platform.machine()} Mac ({self.compute_units})"}

    def _time(self, mlmodel: Any, inputs: tuple) -> tuple[float, float, int]:
        from archsearch.cost.latency._coreml import time_mlmodel

        s = self.settings
        return time_mlmodel(mlmodel, inputs, min_run_time=s.min_run_time, max_run_time=s.max_run_time,
                            threshold=s.threshold, statistic=s.statistic)

    def block_row(self, spec: Any, census: BlockCensus, existing: dict[str, Any] | None) -> dict[str, Any]:
        row, result, inputs = self._convert_block(spec, keep=True)
        if not result.ok:
            raise ArchsearchError(f"block {spec.key} does not convert to Core ML: {result.error}")
        med, iqr, runs = self._time(result.mlmodel, inputs)
        return {**row, "ms": med, "ms_iqr": iqr, "runs": runs}

    def model_ms(self, candidate: Any) -> float:
        from archsearch.model import build_model

        model = build_model(candidate, device="cpu").eval()
        inputs = model_inputs(candidate, self.batch)
        res = convert_module(model, inputs, self.compute_units, keep_model=True)
        if not res.ok:
            raise ArchsearchError(f"candidate {candidate.id} does not convert to Core ML: {res.error}")
        return self._time(res.mlmodel, inputs)[0]

    def seconds_per_block(self) -> float:
        return 1.0 + self.settings.min_run_time * 1.5


class RooflineBackend(_CoreMLConversion, Backend):
    """Estimates each block with a device profile's roofline model (``source: estimate``).

    The Neural Engine cannot be timed off macOS; with ``convert`` each block is still
    converted to Core ML, to prove it converts and to flag ANE-hostile ops. A run with
    ``convert`` also checks the estimate rows an earlier run without it left unchecked.
    """

    source = "estimate"

    def __init__(self, target: str, profile: DeviceProfile, batch: int = 1, convert: bool = True,
                 export_dir: str | os.PathLike | None = None, compute_units: str | None = None) -> None:
        self.target = target
        self.profile = profile
        self.batch = batch
        self.convert = convert
        self.compute_units = _compute_units(target, compute_units)
        self.export_dir = Path(export_dir) if export_dir is not None else None

    def describe(self) -> dict[str, Any]:
        return {"compute_units": self.compute_units,
                "device": f"{self.profile.name} (roofline estimate: {self.profile.description})",
                "device_profile": self.profile.name}

    def versions(self) -> dict[str, str]:
        return super().versions() if self.convert else {}

    def unchecked(self, table: Any) -> set[str]:
        """Keys of ``table``'s estimate rows never converted to Core ML."""
        if not self.convert or not len(table):
            return set()
        df = table.df
        return set(df.loc[(df["coreml"] == "") & (df["source"] == "estimate"), "key"])

    def select(self, specs: dict[str, Any], table: Any) -> list[Any]:
        # the estimate is deterministic: recomputing a row to check its conversion changes nothing
        todo = super().select(specs, table)
        unchecked = self.unchecked(table)
        return todo + [s for k, s in specs.items() if k in unchecked]

    def block_row(self, spec: Any, census: BlockCensus, existing: dict[str, Any] | None) -> dict[str, Any]:
        # what the device runs: the converted program's ops; without a conversion (or if it
        # failed), the ops of the block's Neural-Engine layout, counted on meta
        row: dict[str, Any] = {}
        ops = None
        if self.convert:
            row, result, _ = self._convert_block(spec, keep=False)
            if result.ok and result.mil_ops:
                ops, row["note"] = result.mil_ops, "ops: converted program"
            elif not result.ok:  # the estimate stays (other uses), the search rejects the block
                row["note"] = ("does not convert to Core ML (see coreml): a search on this table rejects candidates "
                               "with it; ops: ANE layout (torch, meta)")
        if ops is None:
            ops = ane_layout_ops(spec, self.batch)
            row.setdefault("note", "ops: ANE layout (torch, meta)")
        return {**row, "ms": self.profile.estimate_ms(ops), "ms_iqr": float("nan"), "runs": 0}

    def model_ms(self, candidate: Any) -> float:
        return self.profile.estimate_ms(ane_model_ops(candidate, self.batch))

    def seconds_per_block(self) -> float:
        return (1.0 if self.convert else 0.0) + 0.01


# ----------------------------------------------------------------------------- import


class ImportBackend(Backend):
    """Rows measured on a device elsewhere: a CSV of ``key, ms[, ms_iqr, runs, note]``.

    Every block the CSV names is filled (an imported row replaces an estimate or an older
    import); the other columns an existing row has (MACs, Core ML checks) are kept. Whole
    models cannot be run: the calibration comes with the CSV's metadata, if at all.
    """

    source = "imported"
    calibrates = False

    def __init__(self, target: str, rows: pd.DataFrame, device: str = "unknown device (imported)") -> None:
        self.target = target
        self.rows = rows.set_index("key")
        self.device = device

    def describe(self) -> dict[str, Any]:
        return {"device": self.device}

    def select(self, specs: dict[str, Any], table: Any) -> list[Any]:
        return [specs[k] for k in self.rows.index]

    def block_row(self, spec: Any, census: BlockCensus, existing: dict[str, Any] | None) -> dict[str, Any]:
        r = self.rows.loc[spec.key]
        base = {k: v for k, v in (existing or {}).items()
                if k in ("macs", "bytes", "coreml", "ane_flags", "example") and v == v and v != ""}
        return {**base, "ms": float(r["ms"]), "ms_iqr": r["ms_iqr"], "runs": r["runs"],
                "note": str(r["note"] or (existing or {}).get("note") or "")}

    def model_ms(self, candidate: Any) -> float:
        raise ArchsearchError(f"an imported table cannot run candidate {candidate.id}: give its calibration "
                              "(scale, overhead_ms) in the CSV's metadata")


# ----------------------------------------------------------------------------- ExecuTorch


class ExecuTorchBackend(Backend):
    """Times blocks and whole models through ExecuTorch's XNNPACK runtime on this CPU
    (target ``xnnpack``; the CPU runtime Android and iOS apps ship): each block is exported,
    lowered to XNNPACK, run as a ``.pte`` program and checked against torch
    (:func:`archsearch.export.lower_and_check`), then timed by ``executorch.runtime`` with the
    XNNPACK thread pool set to the table's thread count; rows note how many ops XNNPACK took
    (``xnnpack 7/7 ops``; the others run in ExecuTorch's portable kernels, as on a phone) and
    a mismatch with torch. ``export_dir`` keeps every ``.pte`` program, to time on a device
    with ExecuTorch's own runner. Memory columns are estimated. Needs the optional
    dependency: ``pip install 'archsearch[executorch]'``."""

    source = "measured"
    watches_sentinel = True
    dtype = "float32"
    elem_bytes = 4

    def __init__(self, batch: int = 1, threads: int | None = None, settings: MeasureSettings = MeasureSettings(),
                 export_dir: str | os.PathLike | None = None) -> None:
        need_executorch()
        n = threads if threads is not None else max(1, torch.get_num_threads())
        if n < 1:
            raise ParameterError("threads", f"{n}: bad value (allowed: an integer >= 1)")
        self.target = "xnnpack"
        self.batch = batch
        self.threads = n
        self.settings = settings
        self.export_dir = Path(export_dir) if export_dir is not None else None
        self._programs: dict[str, LoweredProgram] = {}  # the sentinel's program, by block key

    def describe(self) -> dict[str, Any]:
        return {"device": f"{device_name('cpu')} (ExecuTorch XNNPACK)", "threads": self.threads}

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"executorch": version("executorch")}

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        from executorch.extension.pybindings import portable_lib

        old = portable_lib._threadpool_get_thread_count()
        portable_lib._unsafe_reset_threadpool(self.threads)
        try:
            yield
        finally:
            portable_lib._unsafe_reset_threadpool(old)

    def _lowered(self, name: str, module: torch.nn.Module, inputs: tuple, stem: str) -> LoweredProgram:
        """``module`` as a loaded, checked ExecuTorch program, its ``.pte`` kept in
        ``export_dir`` as ``stem.pte`` if set; one line naming ``name`` if it cannot lower."""
        try:
            low = lower_and_check(module, inputs)
        except Exception as exc:  # an op torch.export or the lowering cannot take
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ArchsearchError(f"{name}: ExecuTorch cannot lower it ({type(exc).__name__}: {first})") from None
        if self.export_dir is not None:
            write_pte(low.pte, self.export_dir / f"{stem}.pte")
        return low

    def _block_program(self, spec: Any) -> LoweredProgram:
        from archsearch.model import build_block, example_inputs

        block = build_block(spec).eval()
        from archsearch._util import short_hash

        # named as the Core ML export names its packages: a key cut short could name two blocks
        return self._lowered(spec.key, block, example_inputs(spec, self.batch, generator=torch.Generator().manual_seed(0)),
                             f"{spec.type}-{short_hash(spec.key, 10)}")

    def block_row(self, spec: Any, census: BlockCensus, existing: dict[str, Any] | None) -> dict[str, Any]:
        low = self._block_program(spec)
        note = f"xnnpack {low.delegated}/{low.total} ops"
        if not low.max_rel_error < PTE_TOLERANCE:
            note += f"; output differs from torch by {low.max_rel_error:.2g} (relative)"
        t = time_callable(low.run, self.settings)
        return {"ms": t.ms, "ms_iqr": t.iqr_ms, "runs": t.runs, "note": note}

    def sentinel_ms(self, spec: Any) -> float:
        low = self._programs.get(spec.key)
        if low is None:
            low = self._programs[spec.key] = self._block_program(spec)
        return time_callable(low.run, _sentinel_settings(self.settings)).ms

    def model_ms(self, candidate: Any) -> float:
        from archsearch.model import build_model

        model = build_model(candidate).eval()
        low = self._lowered(f"candidate {candidate.id}", model, model_inputs(candidate, self.batch),
                            f"candidate-{candidate.id}")
        return time_callable(low.run, _model_settings(self.settings)).ms

    def seconds_per_block(self) -> float:
        return 1.0 + self.settings.min_run_time * 1.3


# ----------------------------------------------------------------------------- by name


def make_backend(target: str | Backend, *, dtype: str = "float32", batch: int = 1, threads: int | None = None,
                 settings: MeasureSettings = MeasureSettings(), device_profile: str | None = None,
                 convert: bool = True, export_dir: str | os.PathLike | None = None,
                 compute_units: str | None = None) -> Backend:
    """The backend of a target name (a :class:`Backend` instance is returned as is).

    ``cpu``/``cuda``/``mps``: :class:`TorchBackend`; ``xnnpack``: ExecuTorch's XNNPACK runtime
    on this CPU; ``coreml``/``ane``: :class:`CoreMLBackend`
    on macOS, else :class:`RooflineBackend` on ``device_profile`` (default
    :data:`DEFAULT_DEVICE_PROFILE`).
    """
    if isinstance(target, Backend):
        return target
    if target not in TARGETS:
        raise ParameterError("target", f"{target}: unknown target (allowed: {', '.join(TARGETS)})")
    if dtype not in DTYPES:
        raise ParameterError("dtype", f"{dtype}: unknown dtype (allowed: {', '.join(DTYPES)})")
    if batch < 1:
        raise ParameterError("batch", f"{batch}: bad value (allowed: an integer >= 1)")
    if target in TORCH_TARGETS:
        return TorchBackend(target, dtype, batch, threads, settings)
    if target == "xnnpack":
        if dtype != "float32":
            raise ParameterError("dtype", f"{dtype}: the xnnpack target times float32 programs (allowed: float32)")
        return ExecuTorchBackend(batch, threads, settings, export_dir)
    from archsearch.cost.latency._coreml import is_macos

    if is_macos():
        return CoreMLBackend(target, batch, settings, export_dir, compute_units)
    try:
        profile = load_device(device_profile or DEFAULT_DEVICE_PROFILE)
    except UnknownDeviceProfileError as exc:
        if device_profile is None:
            raise
        raise ParameterError("device_profile", f"{device_profile}: unknown device profile ({exc.allowed_text()})") from None
    return RooflineBackend(target, profile, batch, convert, export_dir, compute_units)
