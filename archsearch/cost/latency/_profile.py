"""Build a latency table: enumerate the distinct blocks of a space, measure (or estimate)
each once, then fit the whole-model calibration on a few full candidates.

Backends are looked up by target name: ``cpu``/``cuda``/``mps`` time torch modules;
``coreml``/``ane`` convert each block with coremltools and, on macOS, time
``MLModel.predict``; elsewhere they fill latency from a device profile's roofline model
(rows say ``source: estimate``). The table is saved after every block, atomically, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import platform
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from archsearch.errors import ArchsearchError, CandidateError
from archsearch.cost.latency._devices import DeviceProfile, count_ops, load_device
from archsearch.cost.latency._measure import (
    DTYPES,
    TORCH_TARGETS,
    MeasureSettings,
    device_name,
    model_inputs,
    resolve_device,
    time_module,
)
from archsearch.cost.latency._table import LatencyTable, load_table, read_import_csv

__all__ = [
    "TARGETS",
    "BlockSet",
    "CALIBRATION_SEED",
    "DEFAULT_DEVICE_PROFILE",
    "enumerate_blocks",
    "import_table",
    "make_backend",
    "profile_space",
]

TARGETS = ("cpu", "cuda", "mps", "coreml", "ane")
DEFAULT_DEVICE_PROFILE = "apple-a18-pro-ane"
#: Seed of the calibration candidates; validation draws with other seeds and skips these ids.
CALIBRATION_SEED = 7_000_003
_COMPAT_KEYS = ("target", "device", "device_profile", "dtype", "batch", "threads")
_VOLATILE_KEYS = ("versions", "command", "enumeration", "measure", "platform")

#: ``progress(phase, description, done, total)``; phases: blocks, calibrate, validate.
Progress = Callable[[str, str, int, int], None]


# ----------------------------------------------------------------------------- enumeration


@dataclass
class BlockSet:
    """The distinct blocks of a space (or of some candidates), by key, in first-seen order."""

    specs: dict[str, Any]
    samples: int
    method: str
    last_new: int = 0
    resolution: int | None = None
    space: Any = None
    candidates: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.specs)

    def info(self) -> dict[str, Any]:
        return {"method": self.method, "samples": self.samples, "last_new_block_at": self.last_new,
                "unique_blocks": len(self.specs)}


def at_resolution(candidate: Any, resolution: int | None) -> Any:
    """``candidate`` at another latent resolution (same blocks otherwise)."""
    if resolution is None or resolution == candidate.resolution:
        return candidate
    try:
        return candidate.for_proxy(resolution=resolution)
    except CandidateError as exc:
        n = len(candidate.stages)
        raise ArchsearchError(f"--resolution {resolution}: {exc} (allowed: a multiple of {2 ** (n - 1)})") from None


def sample_candidates(space: Any, n: int, seed: int, resolution: int | None,
                      exclude: Iterable[str] = ()) -> list[Any]:
    """``n`` distinct candidates (seeded), at ``resolution``, skipping ids in ``exclude``."""
    from archsearch.candidate import sample_many

    skip = set(exclude)
    drawn = (at_resolution(c, resolution) for c in sample_many(space, n + len(skip), seed))
    return [c for c in drawn if c.id not in skip][:n]


def enumerate_blocks(source: Any, resolution: int | None = None, *, seed: int = 0,
                     exhaustive_limit: int = 5000, patience: int = 3000, max_samples: int = 50000) -> BlockSet:
    """Every distinct block a space can produce, via the builder's own :func:`walk`.

    ``source`` is a :class:`SearchSpace` or candidates. A space of at most
    ``exhaustive_limit`` candidates is enumerated completely; a larger one is sampled until
    ``patience`` draws in a row add no new block (and at least twice as many draws as the
    last new block needed), up to ``max_samples``.
    """
    from archsearch.model import walk
    from archsearch.spec import SearchSpace

    specs: dict[str, Any] = {}
    if not isinstance(source, SearchSpace):
        cands = [at_resolution(c, resolution) for c in source]
        for c in cands:
            for s in walk(c):
                specs.setdefault(s.key, s)
        return BlockSet(specs, len(cands), "candidates", len(cands), resolution, None, cands)
    space = source
    size = space.size()
    n = 0
    last = 0
    if size <= exhaustive_limit:
        for c in _all_candidates(space):
            c = at_resolution(c, resolution)
            n += 1
            before = len(specs)
            for s in walk(c):
                specs.setdefault(s.key, s)
            if len(specs) > before:
                last = n
        return BlockSet(specs, n, "exhaustive", last, resolution, space)
    from archsearch.candidate import RandomChooser, resolve

    rng = random.Random(seed)
    while n < max_samples and (n - last < patience or n < 2 * last):
        c = at_resolution(resolve(space, RandomChooser(rng)), resolution)
        n += 1
        before = len(specs)
        for s in walk(c):
            specs.setdefault(s.key, s)
        if len(specs) > before:
            last = n
    return BlockSet(specs, n, "sampled", last, resolution, space)


def _all_candidates(space: Any) -> Iterable[Any]:
    """Every candidate of a (small) space, by depth-first search over its choices."""
    from archsearch.candidate import resolve
    from archsearch.spec._space import _PathChooser  # the chooser the exact size count uses

    stack: list[list[int]] = [[]]
    while stack:
        prefix = stack.pop()
        ch = _PathChooser(prefix)
        yield resolve(space, ch)
        for depth in range(len(prefix), len(ch.arity)):
            for k in range(1, ch.arity[depth]):
                stack.append([*prefix, *([0] * (depth - len(prefix))), k])


# ----------------------------------------------------------------------------- backends


def _census(spec: Any, batch: int, elem_bytes: int) -> tuple[int, int, list[Any]]:
    from archsearch.model import build_block, example_inputs

    block = build_block(spec, device="meta")
    ops = count_ops(block, example_inputs(spec, batch, device="meta"), elem_bytes)
    return sum(o.macs for o in ops), sum(o.bytes for o in ops), ops


class TorchBackend:
    """Times blocks and whole models with torch on cpu, cuda or mps."""

    source = "measured"

    def __init__(self, target: str, dtype: str, batch: int, threads: int, settings: MeasureSettings) -> None:
        self.target = target
        self.device = resolve_device(target)
        self.dtype_name = dtype
        self.dtype = DTYPES[dtype]
        self.batch = batch
        self.threads = threads
        self.settings = settings

    def describe(self) -> dict[str, Any]:
        return {"device": device_name(self.target), "threads": self.threads}

    def block_row(self, spec: Any, ops: list[Any]) -> dict[str, Any]:
        from archsearch.model import build_block, example_inputs

        block = build_block(spec, device=self.device, dtype=self.dtype).eval()
        inputs = example_inputs(spec, self.batch, device=self.device, dtype=self.dtype,
                                generator=torch.Generator(device=self.device).manual_seed(0)
                                if self.device.type == "cpu" else None)
        t = time_module(block, inputs, self.threads, self.settings)
        return {"ms": t.ms, "ms_iqr": t.iqr_ms, "runs": t.runs}

    def model_ms(self, candidate: Any) -> float:
        from dataclasses import replace

        from archsearch.model import build_model

        model = build_model(candidate, device=self.device, dtype=self.dtype).eval()
        inputs = model_inputs(candidate, self.batch, self.device, self.dtype)
        # whole models are few and slow: five times a block's time budget each
        settings = replace(self.settings, min_run_time=5 * self.settings.min_run_time,
                           max_run_time=max(self.settings.max_run_time, 5 * self.settings.min_run_time))
        return time_module(model, inputs, self.threads, settings).ms

    def seconds_per_block(self) -> float:
        return self.settings.min_run_time * 1.3 + 0.1


class CoreMLBackend:
    """Converts each block with coremltools; times it on macOS, estimates it elsewhere."""

    def __init__(self, target: str, batch: int, settings: MeasureSettings, profile: DeviceProfile | None,
                 convert: bool = True, export_dir: Path | None = None) -> None:
        from archsearch.cost.latency._coreml import is_macos

        self.target = target
        self.batch = batch
        self.settings = settings
        self.measure = is_macos()
        self.profile = profile
        self.convert = convert or self.measure
        self.export_dir = export_dir
        self.compute_units = "CPU_AND_NE" if target == "ane" else "ALL"
        self.source = "measured" if self.measure else "estimate"
        self.threads = 0

    def describe(self) -> dict[str, Any]:
        from archsearch.cost.latency._coreml import coreml_version

        d: dict[str, Any] = {"compute_units": self.compute_units}
        if self.measure:
            d["device"] = f"{platform.machine()} Mac ({self.compute_units})"
        else:
            assert self.profile is not None
            d["device"] = f"{self.profile.name} (roofline estimate: {self.profile.description})"
            d["device_profile"] = self.profile.name
        return d

    def block_row(self, spec: Any, ops: list[Any]) -> dict[str, Any]:
        from archsearch.cost.latency._coreml import convert_module, save_mlmodel, time_mlmodel
        from archsearch.model import build_block, example_inputs

        row: dict[str, Any] = {}
        result = None
        if self.convert:
            block = build_block(spec, device="cpu").eval()
            inputs = example_inputs(spec, self.batch, device="cpu")
            result = convert_module(block, inputs, self.compute_units,
                                    keep_model=self.measure or self.export_dir is not None)
            row["coreml"] = result.status
            row["ane_flags"] = result.flags_text
            if result.ok and self.export_dir is not None:
                from archsearch._util import short_hash

                name = f"{spec.type}-{short_hash(spec.key, 10)}.mlpackage"
                save_mlmodel(result.mlmodel, self.export_dir / name)
                row["note"] = f"mlpackage: {name}"
        if self.measure:
            if result is None or not result.ok:
                raise ArchsearchError(f"block {spec.key} does not convert to Core ML: {result.error if result else ''}")
            med, iqr, runs = time_mlmodel(result.mlmodel, inputs, min_run_time=self.settings.min_run_time,
                                          max_run_time=self.settings.max_run_time, threshold=self.settings.threshold,
                                          statistic=self.settings.statistic)
            row.update(ms=med, ms_iqr=iqr, runs=runs)
        else:
            assert self.profile is not None
            row.update(ms=self.profile.estimate_ms(ops), ms_iqr=float("nan"), runs=0)
        return row

    def model_ms(self, candidate: Any) -> float:
        from archsearch.model import build_model

        if self.measure:
            from archsearch.cost.latency._coreml import convert_module, time_mlmodel

            model = build_model(candidate, device="cpu").eval()
            inputs = model_inputs(candidate, self.batch)
            res = convert_module(model, inputs, self.compute_units, keep_model=True)
            if not res.ok:
                raise ArchsearchError(f"candidate {candidate.id} does not convert to Core ML: {res.error}")
            return time_mlmodel(res.mlmodel, inputs, min_run_time=self.settings.min_run_time,
                                max_run_time=self.settings.max_run_time, threshold=self.settings.threshold,
                                statistic=self.settings.statistic)[0]
        assert self.profile is not None
        model = build_model(candidate, device="meta")
        ops = count_ops(model, model_inputs(candidate, self.batch, device="meta"), 2)
        return self.profile.estimate_ms(ops)

    def seconds_per_block(self) -> float:
        return (1.0 if self.convert else 0.0) + (self.settings.min_run_time * 1.5 if self.measure else 0.01)


def make_backend(target: str, *, dtype: str = "float32", batch: int = 1, threads: int | None = None,
                 settings: MeasureSettings = MeasureSettings(), device_profile: str | None = None,
                 convert: bool = True, export_dir: str | os.PathLike | None = None) -> Any:
    """The measuring (or estimating) backend of a target name."""
    if target not in TARGETS:
        raise ArchsearchError(f"--target {target}: unknown target (allowed: {', '.join(TARGETS)})")
    if dtype not in DTYPES:
        raise ArchsearchError(f"--dtype {dtype}: unknown dtype (allowed: {', '.join(DTYPES)})")
    if batch < 1:
        raise ArchsearchError(f"--batch {batch}: bad value (allowed: an integer >= 1)")
    if target in TORCH_TARGETS:
        n = threads if threads is not None else torch.get_num_threads()
        if n < 1:
            raise ArchsearchError(f"--threads {n}: bad value (allowed: an integer >= 1)")
        return TorchBackend(target, dtype, batch, n, settings)
    from archsearch.cost.latency._coreml import is_macos

    profile = None if is_macos() else load_device(device_profile or DEFAULT_DEVICE_PROFILE)
    return CoreMLBackend(target, batch, settings, profile, convert,
                         Path(export_dir) if export_dir is not None else None)


# ----------------------------------------------------------------------------- the profile run


def _versions() -> dict[str, str]:
    from archsearch import __version__

    return {"archsearch": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _command(spec_path: str, target: str, out: Path, resolution: int | None, backend: Any,
             batch: int, dtype: str, settings: MeasureSettings) -> str:
    """The ``archsearch profile`` command that rebuilds (or extends) this table."""
    parts = ["archsearch", "profile", spec_path, "--target", target]
    if resolution:
        parts += ["--resolution", str(resolution)]
    if batch != 1:
        parts += ["--batch", str(batch)]
    if dtype != "float32":
        parts += ["--dtype", dtype]
    if getattr(backend, "threads", 0):
        parts += ["--threads", str(backend.threads)]
    if backend.source == "measured":
        default = MeasureSettings()
        for flag, value, base in (("--min-time", settings.min_run_time, default.min_run_time),
                                  ("--max-time", settings.max_run_time, default.max_run_time),
                                  ("--threshold", settings.threshold, default.threshold),
                                  ("--statistic", settings.statistic, default.statistic),
                                  ("--flush-mb", settings.flush_bytes / (1 << 20), default.flush_bytes / (1 << 20))):
            if value != base:
                parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if getattr(backend, "profile", None) is not None and backend.profile.name != DEFAULT_DEVICE_PROFILE:
        parts += ["--device-profile", backend.profile.name]
    parts += ["--out", str(out)]
    return " ".join(parts)


def _open_table(out: Path, meta: dict[str, Any], whole_space: bool) -> LatencyTable:
    """The existing table at ``out`` (to resume) or a new one; refuses incompatible settings.

    Resuming on a whole space refreshes the run's description (command, versions, ...);
    adding some candidates' blocks to a table keeps the table's own.
    """
    if not out.exists():
        return LatencyTable(meta=meta, path=out)
    table = load_table(out)
    old_stat = (table.meta.get("measure") or {}).get("statistic")
    new_stat = (meta.get("measure") or {}).get("statistic")
    if old_stat and new_stat and old_stat != new_stat:
        raise ArchsearchError(f"{out}: was profiled with --statistic {old_stat}, this run asks {new_stat} "
                              "(resume with the same settings, or write to another --out)")
    for k in _COMPAT_KEYS:
        old, new = table.meta.get(k), meta.get(k)
        if old is not None and new is not None and str(old) != str(new):
            raise ArchsearchError(
                f"{out}: was profiled with {k}={old}, this run asks {k}={new} "
                f"(resume with the same settings, or write to another --out)")
    for k, v in meta.items():
        if (whole_space and k in _VOLATILE_KEYS) or k not in table.meta:
            table.meta[k] = v
    return table


def profile_space(
    source: Any,
    target: str = "cpu",
    out: str | os.PathLike | None = None,
    *,
    resolution: int | None = None,
    batch: int = 1,
    dtype: str = "float32",
    threads: int | None = None,
    settings: MeasureSettings = MeasureSettings(),
    calibrate: int = 5,
    device_profile: str | None = None,
    convert: bool = True,
    export_dir: str | os.PathLike | None = None,
    blocks: BlockSet | None = None,
    progress: Progress | None = None,
    source_label: str | None = None,
) -> LatencyTable:
    """Measure (or estimate) every distinct block of ``source`` into the table at ``out``.

    ``source``: a :class:`SearchSpace`, or candidates. Rows already in ``out`` are kept and
    not measured again; the file is rewritten atomically after every block. Then
    ``calibrate`` whole candidates (seeded, not used by validation) are measured end to end
    and ``ms = scale * sum(blocks) + overhead_ms`` is fitted and stored in the metadata.
    """
    backend = make_backend(target, dtype=dtype, batch=batch, threads=threads, settings=settings,
                           device_profile=device_profile, convert=convert, export_dir=export_dir)
    if blocks is None:
        blocks = enumerate_blocks(source, resolution)
    space = blocks.space
    label = source_label or (space.path if space is not None else "CANDIDATE.yaml")
    if out is None:
        out = default_table_path(space.name if space is not None else "candidates", target,
                                 resolution or _resolution_of(blocks), backend)
    out = Path(out)
    meta: dict[str, Any] = {
        "target": target,
        **backend.describe(),
        "source": backend.source,
        "dtype": dtype if target in TORCH_TARGETS else "float16",
        "batch": batch,
        "resolution": resolution or _resolution_of(blocks),
        "space": ({"name": space.name, "path": str(space.path), "hash": space.hash} if space is not None
                  else {"name": "candidates", "ids": [c.id for c in blocks.candidates]}),
        "enumeration": blocks.info(),
        "versions": _versions(),
        "platform": f"{platform.system()} {platform.machine()}",
        "measure": settings.as_dict() if backend.source == "measured" else {},
        "command": _command(label, target, out, resolution, backend, batch, dtype, settings),
    }
    table = _open_table(out, meta, whole_space=space is not None)
    if getattr(backend, "convert", False):
        from archsearch.cost.latency._coreml import coreml_version

        table.meta.setdefault("versions", {})["coremltools"] = coreml_version()
    if hasattr(os, "getloadavg"):
        table.meta["loadavg_start"] = round(os.getloadavg()[0], 2)

    # Calibration candidates' blocks go in the table too.
    calib: list[Any] = []
    if calibrate > 0 and space is not None:
        calib = sample_candidates(space, calibrate, CALIBRATION_SEED, resolution)
    elif calibrate > 0 and not table.meta.get("calibration"):
        # candidates added to a table keep its calibration; a table of candidates alone
        # is calibrated on them
        calib = blocks.candidates[:calibrate]
    specs = dict(blocks.specs)
    from archsearch.model import walk

    for c in calib:
        for s in walk(c):
            specs.setdefault(s.key, s)
    todo = [s for k, s in specs.items() if k not in table]
    if backend.source == "estimate" and getattr(backend, "convert", False):
        # estimate rows written with --no-convert get their Core ML check now (the estimate
        # itself is deterministic, so recomputing it changes nothing)
        df = table.df
        unchecked = set(df.loc[(df["coreml"] == "") & (df["source"] == "estimate"), "key"])
        todo += [s for k, s in specs.items() if k in unchecked]
    elem = 2 if dtype in ("float16", "bfloat16") or target not in TORCH_TARGETS else 4
    old_threads = torch.get_num_threads()
    if getattr(backend, "threads", 0):
        torch.set_num_threads(backend.threads)
    try:
        for i, spec in enumerate(todo):
            if progress:
                progress("blocks", f"{spec.type} {spec.name}", i, len(todo))
            macs, nbytes, ops = _census(spec, batch, elem)
            row = {"key": spec.key, "type": spec.type,
                   "params": json.dumps(spec.hparams, sort_keys=True, separators=(",", ":")),
                   "in_shape": "x".join(map(str, spec.in_shape)), "source": backend.source,
                   "macs": macs, "bytes": nbytes, "example": spec.name, "coreml": "", "ane_flags": "", "note": ""}
            row.update(backend.block_row(spec, ops))
            table.add_rows([row])
            table.save(out)
        if progress:
            progress("blocks", "done", len(todo), len(todo))
        if calib:
            _calibrate(table, backend, calib, out, progress)
    finally:
        torch.set_num_threads(old_threads)
    if hasattr(os, "getloadavg"):
        table.meta["loadavg_end"] = round(os.getloadavg()[0], 2)
    table.save(out)
    return table


def _resolution_of(blocks: BlockSet) -> int | None:
    if blocks.resolution:
        return blocks.resolution
    if blocks.space is not None:
        return int(blocks.space.data.get("resolution", 64))
    return blocks.candidates[0].resolution if blocks.candidates else None


def default_table_path(name: str, target: str, resolution: int | None, backend: Any = None) -> Path:
    """``latency_tables/<space>-<target>-r<res>.csv`` (``-estimate`` for roofline tables)."""
    suffix = "-estimate" if getattr(backend, "source", "") == "estimate" else ""
    res = f"-r{resolution}" if resolution else ""
    return Path("latency_tables") / f"{name}-{target}{res}{suffix}.csv"


def fit_calibration(sums: np.ndarray, measured: np.ndarray) -> tuple[float, float, str]:
    """``measured ≈ scale * sums + overhead`` from a few whole-model measurements.

    Theil-Sen (the median of pairwise slopes: one noisy measurement cannot drag it) when
    there are five or more points spread over at least 20 % of the block sums and the slope
    is plausible (0.75-1.5: blocks inside a model run a little slower than alone); else the
    median offset with ``scale = 1``.
    """
    from scipy.stats import theilslopes

    sums = np.asarray(sums, float)
    measured = np.asarray(measured, float)
    if len(sums) >= 5 and np.ptp(sums) > 0.2 * np.median(sums):
        scale, overhead = theilslopes(measured, sums)[:2]
        if 0.75 <= scale <= 1.5:
            return float(scale), float(overhead), f"Theil-Sen fit on {len(sums)} whole-model measurements"
    if len(sums):
        return 1.0, float(np.median(measured - sums)), f"median offset of {len(sums)} whole-model measurements"
    return 1.0, 0.0, "none"


def _calibrate(table: LatencyTable, backend: Any, calib: list[Any], out: Path, progress: Progress | None) -> None:
    from archsearch.cost.latency._predictor import block_sums

    cal = table.meta.get("calibration") or {}
    points = {p["id"]: p for p in cal.get("points", [])}
    todo = [c for c in calib if c.id not in points]
    for i, c in enumerate(todo):
        if progress:
            progress("calibrate", f"whole model {c.id}", i, len(todo))
        ms = backend.model_ms(c)
        points[c.id] = {"id": c.id, "measured_ms": round(float(ms), 6)}
        # store as we go: an interrupted run keeps its whole-model measurements
        scale, over = table.calibration
        table.meta["calibration"] = {"scale": scale, "overhead_ms": over,
                                     "method": cal.get("method", "pending"), "points": list(points.values())}
        table.save(out)
    if progress:
        progress("calibrate", "done", len(todo), len(todo))
    ids = [c.id for c in calib if c.id in points]
    by_id = {c.id: c for c in calib}
    sums = block_sums([by_id[i] for i in ids], table)
    measured = np.array([points[i]["measured_ms"] for i in ids])
    scale, over, method = fit_calibration(sums, measured)
    pts = [{"id": i, "measured_ms": points[i]["measured_ms"], "blocks_ms": round(float(s), 6)}
           for i, s in zip(ids, sums)]
    table.set_calibration(scale, over, pts, method)


# ----------------------------------------------------------------------------- import


def import_table(csv_path: str | os.PathLike, blocks: BlockSet, target: str, out: str | os.PathLike,
                 device: str | None = None) -> tuple[LatencyTable, int, int]:
    """Merge a device CSV (key, ms[, ms_iqr, runs, note]) into the table at ``out``.

    Every key must be a block of ``blocks`` (the space the table describes). Imported rows
    replace estimates; rows the CSV does not cover keep their source. Returns (table,
    imported rows, table rows not covered by the CSV).
    """
    csv_path = Path(csv_path)
    meta, rows = read_import_csv(csv_path)
    unknown = [k for k in rows["key"] if k not in blocks.specs]
    if unknown:
        raise ArchsearchError(
            f"{csv_path}: key {unknown[0]!r} is not a block of {blocks.space.path if blocks.space is not None else 'these candidates'}"
            f" at resolution {_resolution_of(blocks)} ({len(unknown)} unknown key(s); list the allowed keys with "
            f"`archsearch profile SPEC --target {target} --dry-run --keys-out keys.csv`)")
    out = Path(out)
    space = blocks.space
    if out.exists():
        table = load_table(out)
        if table.meta.get("target") not in (None, target):
            raise ArchsearchError(f"{out}: is a table for target {table.meta.get('target')}, "
                                  f"not {target} (allowed: a new --out, or --target {table.meta.get('target')})")
    else:
        table = LatencyTable(meta={"target": target, "dtype": "float16", "batch": 1,
                                   "resolution": _resolution_of(blocks)}, path=out)
    table.meta["device"] = device or meta.get("device") or table.meta.get("device") or "unknown device (imported)"
    table.meta.setdefault("space", {"name": space.name, "path": str(space.path), "hash": space.hash}
                          if space is not None else {})
    table.meta["imported"] = {"file": str(csv_path), "rows": int(len(rows)),
                              "metadata": {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}}
    new_rows = []
    existing = table.df.set_index("key") if len(table) else None
    for r in rows.itertuples(index=False):
        spec = blocks.specs[r.key]
        base: dict[str, Any] = {}
        if existing is not None and r.key in existing.index:
            base = existing.loc[r.key].to_dict()
        if "macs" not in base or not base.get("macs") == base.get("macs"):
            macs, nbytes, _ = _census(spec, 1, 2)
            base.update(macs=macs, bytes=nbytes)
        base.update(key=r.key, type=spec.type, params=json.dumps(spec.hparams, sort_keys=True, separators=(",", ":")),
                    in_shape="x".join(map(str, spec.in_shape)), example=base.get("example") or spec.name,
                    ms=float(r.ms), ms_iqr=r.ms_iqr, runs=r.runs, source="imported",
                    note=str(r.note or base.get("note") or ""))
        new_rows.append(base)
    table.add_rows(new_rows)
    if "overhead_ms" in meta or "scale" in meta:
        vals = {}
        for k, default in (("scale", 1.0), ("overhead_ms", 0.0)):
            v = meta.get(k, default)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or (k == "scale" and v <= 0):
                raise ArchsearchError(f"{csv_path}: metadata {k}: bad value {v!r} (allowed: a number"
                                      f"{' > 0' if k == 'scale' else ''})")
            vals[k] = float(v)
        table.set_calibration(vals["scale"], vals["overhead_ms"], [], f"given in {csv_path.name}")
    table.save(out)
    not_covered = sum(1 for k in blocks.specs if k not in set(rows["key"]))
    return table, len(new_rows), not_covered

