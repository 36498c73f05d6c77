"""Build a latency table: plan the run (which blocks, which backend, which file), then
measure (or estimate) each block once and fit the whole-model calibration on a few
full candidates.

    plan = plan_profile(space, "cpu", "latency_tables/tiny-cpu-r16.csv")   # counts, checks, writes nothing
    print(len(plan.todo), plan.eta_seconds)                                 # what a dry run shows
    table = run_profile(plan)                                               # does it

The table is written every couple of seconds and when the run ends or is interrupted,
atomically, so an interrupted run resumes where it stopped (a kill -9 loses at most
:data:`SAVE_INTERVAL_S` of work); a resumed table must have been made with the same
settings. Rows measured on a device elsewhere come in with :func:`import_table`.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from archsearch.cost.latency._backends import DEFAULT_DEVICE_PROFILE, TARGETS, Backend, ImportBackend, make_backend
from archsearch.cost.latency._blocks import BlockSet, block_census, enumerate_blocks, resolution_of, sample_candidates
from archsearch.cost.latency._errors import ImplausibleCalibrationError, ParameterError, UnknownBlockKeyError
from archsearch.cost.latency._fingerprint import device_fingerprint
from archsearch.cost.latency._keys import candidate_blocks
from archsearch.cost.latency._measure import TORCH_TARGETS, MeasureSettings
from archsearch.cost.latency._sentinel import SentinelMonitor, SentinelSettings, choose_sentinel
from archsearch.cost.latency._table import LatencyTable, load_table, read_import_csv
from archsearch.errors import ArchsearchError

__all__ = [
    "CALIBRATION_SEED",
    "SCALE_RANGE",
    "ProfileOptions",
    "ProfilePlan",
    "TimeEstimate",
    "check_calibration",
    "default_table_path",
    "fit_calibration",
    "import_table",
    "plan_profile",
    "profile_space",
    "run_profile",
    "write_import_template",
]

#: Seed of the calibration candidates; validation draws with other seeds and skips these ids.
CALIBRATION_SEED = 7_000_003
_COMPAT_KEYS = ("target", "device", "device_profile", "dtype", "batch", "threads")
_VOLATILE_KEYS = ("versions", "command", "enumeration", "measure", "platform")

#: ``progress(phase, description, done, total)``; phases: blocks, calibrate, validate.
Progress = Callable[[str, str, int, int], None]


def _versions() -> dict[str, str]:
    import torch

    from archsearch import __version__

    return {"archsearch": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def default_table_path(name: str, target: str, resolution: int | None, backend: Backend | None = None) -> Path:
    """``latency_tables/<space>-<target>-r<res>.csv`` (``-estimate`` for roofline tables)."""
    suffix = "-estimate" if backend is not None and backend.source == "estimate" else ""
    res = f"-r{resolution}" if resolution else ""
    return Path("latency_tables") / f"{name}-{target}{res}{suffix}.csv"


def _row_identity(spec: Any) -> dict[str, Any]:
    return {"key": spec.key, "type": spec.type, "params": json.dumps(spec.hparams, sort_keys=True, separators=(",", ":")),
            "in_shape": "x".join(map(str, spec.in_shape)), "example": spec.name}


def _open_table(out: Path, meta: dict[str, Any], whole_space: bool) -> LatencyTable:
    """The existing table at ``out`` (to resume) or a new one; refuses incompatible settings.

    Resuming on a whole space refreshes the run's description (versions, enumeration, ...);
    adding some candidates' blocks to a table keeps the table's own.
    """
    if not out.exists():
        return LatencyTable(meta=meta, path=out)
    table = load_table(out)
    old_stat = (table.meta.get("measure") or {}).get("statistic")
    new_stat = (meta.get("measure") or {}).get("statistic")
    if old_stat and new_stat and old_stat != new_stat:
        raise ArchsearchError(f"{out}: was profiled with statistic {old_stat}, this run asks statistic {new_stat} "
                              "(resume with the same settings, or write the table to another path)")
    for k in _COMPAT_KEYS:
        old, new = table.meta.get(k), meta.get(k)
        if old is not None and new is not None and str(old) != str(new):
            raise ArchsearchError(
                f"{out}: was profiled with {k}={old}, this run asks {k}={new} "
                f"(resume with the same settings, or write the table to another path)")
    for k, v in meta.items():
        if (whole_space and k in _VOLATILE_KEYS) or k not in table.meta:
            table.meta[k] = v
    return table


@dataclass(frozen=True)
class TimeEstimate:
    """:meth:`ProfilePlan.estimate_time`: ``seconds`` the run should take; ``sampled`` blocks
    were done to get it, in ``spent_s``; ``how``: one line saying how it was made."""

    seconds: float
    sampled: int
    spent_s: float
    how: str


@dataclass
class ProfilePlan:
    """One profile run, worked out and checked, nothing measured or written yet.

    ``blocks``: the distinct blocks of the source; ``calibration``: the whole candidates
    to measure for the calibration (their blocks are measured too); ``table``: the table
    as it will be resumed (or a new one), ``out`` its file; ``todo``: the blocks the
    backend fills now, in order (new ones, and rows it redoes: ``recheck``);
    ``existing``: how many of ``blocks`` the table has already.
    """

    backend: Backend
    blocks: BlockSet
    table: LatencyTable
    out: Path
    resolution: int | None
    calibration: list[Any]
    todo: list[Any]
    existing: int
    arguments: dict[str, Any] = field(default_factory=dict)
    #: the sentinel of a measuring run (None: off)
    sentinel: SentinelSettings | None = None
    #: refuse an implausible calibration (see :func:`check_calibration`) instead of storing it
    check_calibration: bool = False
    max_overhead_share: float = 0.15

    @property
    def target(self) -> str:
        return self.backend.target

    @property
    def source(self) -> str:
        """What the rows filled now will be: measured, estimate or imported."""
        return self.backend.source

    @property
    def space(self) -> Any:
        return self.blocks.space

    @property
    def new(self) -> list[Any]:
        """Blocks of ``todo`` the table has no row for yet."""
        return [s for s in self.todo if s.key not in self.table]

    @property
    def recheck(self) -> list[Any]:
        """Blocks of ``todo`` whose existing rows the backend redoes (e.g. a Core ML check)."""
        return [s for s in self.todo if s.key in self.table]

    @property
    def calibration_todo(self) -> list[Any]:
        """Calibration candidates not measured yet (an interrupted run keeps its points)."""
        done = {p["id"] for p in (self.table.meta.get("calibration") or {}).get("points", [])}
        return [c for c in self.calibration if c.id not in done]

    @property
    def seconds_per_block(self) -> float:
        return self.backend.seconds_per_block()

    @property
    def eta_seconds(self) -> float:
        """About how long the run takes from the backend's nominal time per block (nothing
        measured; :meth:`estimate_time` times a few blocks for a figure worth quoting)."""
        models = len(self.calibration_todo) if self.backend.source == "measured" else 0
        return len(self.todo) * self.seconds_per_block + models * 3.0

    def estimate_time(self, samples: int = 3) -> "TimeEstimate":
        """How long the run takes, from a few of its own blocks done now.

        A measuring backend does the whole work of a row (build, op census, memory, timing)
        for ``samples`` blocks of ``todo`` spread over their MACs (nothing is written), fits
        ``seconds = a + b * MACs`` (a, b >= 0) and sums it over ``todo``; whole calibration
        models add five times ``min_run_time`` plus a few calls each, at the ms per MAC the
        sampled blocks ran at; a sentinel check costs about ``min_run_time`` every
        ``sentinel.every`` rows. Other backends (estimates, imports) use their nominal
        :attr:`seconds_per_block`.
        """
        import time

        todo = self.todo
        settings = self.backend.settings
        if self.backend.source != "measured" or settings is None or not todo or samples <= 0:
            return TimeEstimate(self.eta_seconds, 0, 0.0, f"{self.seconds_per_block:.2f} s a block (nominal)")
        b_, e_ = self.backend.batch, self.backend.elem_bytes
        macs = np.array([block_census(s, b_, e_).macs for s in todo], dtype=float)
        order = np.argsort(macs, kind="stable")
        picks = sorted({int(order[round(q * (len(todo) - 1))]) for q in np.linspace(0, 1, min(samples, len(todo)))})
        scratch = LatencyTable()
        secs, ms = [], []
        t_all = time.perf_counter()
        with self.backend.session():
            for i in picks:
                t0 = time.perf_counter()
                row = _measure_row(scratch, todo[i], self.backend)
                secs.append(time.perf_counter() - t0)
                ms.append(float(row["ms"]))
        spent = time.perf_counter() - t_all
        x, y = macs[picks], np.array(secs)
        b = float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 and np.ptp(x) > 0 else 0.0
        b = max(b, 0.0)
        a = max(float(np.mean(y - b * x)), 0.0)
        blocks_s = float(np.sum(a + b * macs))
        ms_per_mac = float(np.sum(ms) / max(np.sum(x), 1.0))
        models_s = 0.0
        if self.calibration_todo:
            for c in self.calibration_todo:
                model_macs = sum(block_census(s, b_, e_).macs for s in candidate_blocks(c).specs)
                models_s += 5 * settings.min_run_time + 4 * ms_per_mac * model_macs / 1e3 + a
        sentinel_s = 0.0
        if self.sentinel is not None and self.backend.watches_sentinel:
            sentinel_s = (len(todo) / self.sentinel.every + 1) * (settings.min_run_time + 0.05)
        total = blocks_s + models_s + sentinel_s
        how = (f"{len(picks)} of its blocks done now in {spent:.1f} s: {a:.2f} s a block + "
               f"{b * 1e9:.3g} s per GMAC")
        return TimeEstimate(total, len(picks), spent, how)


@dataclass(frozen=True)
class ProfileOptions:
    """How a profile run measures: everything :func:`plan_profile` passes on to the backend
    and the plan (checked when made).

    ``resolution``: the latent resolution (default: the space's); ``batch``, ``dtype``,
    ``threads``, ``settings`` (:class:`MeasureSettings`): how blocks are run and timed;
    ``calibrate``: whole candidates (seeded, never drawn by validation) measured at the end
    to fit ``ms = scale * sum(blocks) + overhead_ms``; with ``check_calibration`` an
    implausible fit (:func:`check_calibration`, at ``max_overhead_share``) is refused instead
    of stored. ``sentinel``: how a measuring run notices a disturbed machine and re-measures
    (None: off; see ``_sentinel``). ``device_profile``, ``convert``, ``compute_units``,
    ``export_dir``: the ``coreml``/``ane`` targets' (see :func:`make_backend`; compute units
    default to CPU_AND_NE for ane, ALL for coreml); ``export_dir`` also keeps xnnpack's
    ``.pte`` programs.
    """

    resolution: int | None = None
    batch: int = 1
    dtype: str = "float32"
    threads: int | None = None
    settings: MeasureSettings = field(default_factory=MeasureSettings)
    calibrate: int = 5
    device_profile: str | None = None
    convert: bool = True
    export_dir: str | os.PathLike | None = None
    compute_units: str | None = None
    sentinel: SentinelSettings | None = field(default_factory=SentinelSettings)
    check_calibration: bool = False
    max_overhead_share: float = 0.15

    def __post_init__(self) -> None:
        share = self.max_overhead_share
        if not (isinstance(share, (int, float)) and 0 < share <= 1):
            raise ParameterError("max_overhead_share", f"{share!r}: bad value (allowed: a number in (0, 1])")

    def backend(self, target: str | Backend) -> Backend:
        """The backend of ``target`` with these options (see :func:`make_backend`)."""
        return make_backend(target, dtype=self.dtype, batch=self.batch, threads=self.threads, settings=self.settings,
                            device_profile=self.device_profile, convert=self.convert, export_dir=self.export_dir,
                            compute_units=self.compute_units)


def plan_profile(source: Any, target: str | Backend = "cpu", out: str | os.PathLike | None = None,
                 options: ProfileOptions | None = None, *, blocks: BlockSet | None = None,
                 name: str | None = None, **overrides: Any) -> ProfilePlan:
    """Work out a profile run of ``source`` on ``target``; measures and writes nothing.

    ``source``: a :class:`SearchSpace`, or candidates (``blocks``: their :class:`BlockSet`,
    if enumerated already). ``target``: a target name (see :func:`make_backend`) or a
    :class:`Backend`. ``out``: the table file (default :func:`default_table_path` of
    ``name``: the space's name, or 'candidates'). An existing table there is resumed; one
    made with other settings (target, device, dtype, batch, threads, device profile,
    statistic) is refused. ``options``: how to measure (:class:`ProfileOptions`), with
    ``overrides`` of its fields (``threads=1, calibrate=0``...).
    """
    opts = replace(options or ProfileOptions(), **overrides)
    backend = opts.backend(target)
    if blocks is None:
        blocks = enumerate_blocks(source, opts.resolution)
    space = blocks.space
    res = opts.resolution or resolution_of(blocks)
    if out is None:
        out = default_table_path(name or (space.name if space is not None else "candidates"), backend.target,
                                 res, backend)
    out = Path(out)
    measured = backend.settings is not None and backend.source == "measured"
    table = _open_table(out, _table_meta(backend, blocks, res, measured), whole_space=space is not None)
    if backend.versions():
        table.meta.setdefault("versions", {}).update(backend.versions())
    calib = _calibration_candidates(blocks, backend, table, opts)
    specs = dict(blocks.specs)  # calibration candidates' blocks go in the table too
    for c in calib:
        for s in candidate_blocks(c).specs:
            specs.setdefault(s.key, s)
    return ProfilePlan(backend=backend, blocks=blocks, table=table, out=out, resolution=res, calibration=calib,
                       todo=backend.select(specs, table), existing=sum(1 for k in blocks.specs if k in table),
                       arguments=_arguments(backend, opts, out, measured),
                       sentinel=opts.sentinel if measured else None, check_calibration=opts.check_calibration,
                       max_overhead_share=float(opts.max_overhead_share))


def _table_meta(backend: Backend, blocks: BlockSet, resolution: int | None, measured: bool) -> dict[str, Any]:
    """The header of the table a run of ``backend`` on ``blocks`` writes (or must resume)."""
    space = blocks.space
    return {
        "target": backend.target,
        **backend.describe(),
        "source": backend.source,
        "dtype": backend.dtype,
        "batch": backend.batch,
        "resolution": resolution,
        "space": ({"name": space.name, "path": str(space.path), "hash": space.hash} if space is not None
                  else {"name": "candidates", "ids": [c.id for c in blocks.candidates]}),
        "enumeration": blocks.info(),
        "versions": _versions(),
        "platform": f"{platform.system()} {platform.machine()}",
        "measure": backend.settings.as_dict() if measured else {},
        # the machine that times the rows (estimates and imports describe a device elsewhere)
        **({"fingerprint": device_fingerprint(backend.target, backend.threads or None)} if measured else {}),
    }


def _calibration_candidates(blocks: BlockSet, backend: Backend, table: LatencyTable,
                            opts: ProfileOptions) -> list[Any]:
    """The whole candidates a run measures for the calibration: ``opts.calibrate`` seeded
    samples of a space; candidates added to a table keep its calibration, and a table of
    candidates alone is calibrated on them."""
    if opts.calibrate <= 0 or not backend.calibrates:
        return []
    if blocks.space is not None:
        return sample_candidates(blocks.space, opts.calibrate, CALIBRATION_SEED, opts.resolution)
    if not table.meta.get("calibration"):
        return blocks.candidates[:opts.calibrate]
    return []


def _arguments(backend: Backend, opts: ProfileOptions, out: Path, measured: bool) -> dict[str, Any]:
    """The run's non-default parameters, in order (the CLI turns them into the command that
    rebuilds the table)."""
    arguments: dict[str, Any] = {"target": backend.target}
    if opts.resolution:
        arguments["resolution"] = opts.resolution
    if backend.batch != 1:
        arguments["batch"] = backend.batch
    if backend.dtype != "float32" and backend.target in TORCH_TARGETS:
        arguments["dtype"] = backend.dtype
    if backend.threads:
        arguments["threads"] = backend.threads
    if measured:
        default = MeasureSettings().as_dict()
        arguments.update({k: v for k, v in backend.settings.as_dict().items() if v != default[k]})
    if backend.profile is not None and backend.profile.name != DEFAULT_DEVICE_PROFILE:
        arguments["device_profile"] = backend.profile.name
    if opts.compute_units is not None and backend.compute_units is not None:
        arguments["compute_units"] = backend.compute_units
    arguments["out"] = str(out)
    return arguments


def _measure_row(table: LatencyTable, spec: Any, backend: Backend, census: Any = None) -> dict[str, Any]:
    """One block's row from ``backend`` (identity, op census, memory, then the backend's
    columns); ``census``: the block's :func:`block_census`, if counted already."""
    if census is None:
        census = block_census(spec, backend.batch, backend.elem_bytes)
    existing = table.row(spec.key) if spec.key in table else None
    row = {**_row_identity(spec), "source": backend.source, "macs": census.macs, "bytes": census.bytes,
           "coreml": "", "ane_flags": "", "note": ""}
    row.update(backend.block_memory(spec, census))
    row.update(backend.block_row(spec, census, existing))
    return row


#: a profile run writes its table at most this often (seconds): a kill -9 loses at most
#: this much work, and rewriting a table of ~900 rows after each (~0.02 s) would cost 5 %
SAVE_INTERVAL_S = 2.0


def _fill(table: LatencyTable, todo: list[Any], backend: Backend, out: Path, progress: Progress | None,
          autosave: bool = True, sentinel: SentinelSettings | None = None,
          save_interval: float = SAVE_INTERVAL_S) -> None:
    """One row per block of ``todo`` from ``backend``; with ``autosave`` the table is written
    (atomically) once ``save_interval`` seconds have passed since it last was, when the run
    ends and when an exception (Ctrl-C) interrupts it.

    With ``sentinel`` (and a backend that measures), a sentinel block is re-timed every
    ``sentinel.every`` rows; a disturbed stretch is measured again (see ``_sentinel``).
    """
    import time

    last = time.monotonic()

    def save(final: bool = False) -> None:
        nonlocal last
        if autosave and (final or time.monotonic() - last >= save_interval):
            table.save(out)
            last = time.monotonic()

    try:
        _fill_rows(table, todo, backend, progress, sentinel, save)
    finally:
        save(final=True)


def _fill_rows(table: LatencyTable, todo: list[Any], backend: Backend, progress: Progress | None,
               sentinel: SentinelSettings | None, save: Callable[[], None]) -> None:
    """The loop of :func:`_fill`; ``save()`` after every row (it decides whether to write)."""
    censuses: dict[str, Any] = {}  # each block's ops counted once (choosing the sentinel, re-measured rows)

    def census_of(spec: Any) -> Any:
        if spec.key not in censuses:
            censuses[spec.key] = block_census(spec, backend.batch, backend.elem_bytes)
        return censuses[spec.key]

    monitor = None
    sentinel_spec = None
    if sentinel is not None and backend.watches_sentinel and todo:
        sentinel_spec = choose_sentinel(todo, lambda s: census_of(s).macs)
        monitor = SentinelMonitor(lambda: backend.sentinel_ms(sentinel_spec), sentinel,
                                  threads=backend.threads or 1)
        if progress:
            progress("blocks", f"sentinel {sentinel_spec.type} {sentinel_spec.name}: baseline", 0, len(todo))
        monitor.start()
    i = start = retries = 0
    remeasured = kept_disturbed = 0
    while i < len(todo):
        spec = todo[i]
        if progress:
            progress("blocks", f"{spec.type} {spec.name}", i, len(todo))
        table.add_rows([_measure_row(table, spec, backend, census_of(spec))])
        save()
        i += 1
        if monitor is None or (i - start < sentinel.every and i < len(todo)):
            continue
        ok, reason = monitor.check()
        if ok:
            start, retries = i, 0
        elif retries < sentinel.max_retries:
            if progress:
                progress("sentinel", f"disturbed: {reason}; measuring rows {start + 1}-{i} again", i, len(todo))
            remeasured += i - start
            retries += 1
            i = start
        else:
            if progress:
                progress("sentinel", f"still disturbed after {retries} retries: {reason}; keeping rows "
                         f"{start + 1}-{i}", i, len(todo))
            for s in todo[start:i]:
                row = table.row(s.key)
                note = row.get("note") or ""
                if "disturbed" not in note:
                    table.add_rows([{**row, "note": (note + "; " if note else "") + "disturbed"}])
            kept_disturbed += i - start
            start, retries = i, 0
            monitor.rebase()  # not a moment's disturbance: the machine's speed has moved
    if monitor is not None:
        old = table.meta.get("sentinel") or {}
        table.meta["sentinel"] = {
            "block": sentinel_spec.key,
            "baseline_ms": round(float(monitor.baseline_ms or 0.0), 6),
            **sentinel.as_dict(),
            "checks": int(old.get("checks", 0)) + monitor.checks,
            "disturbed_checks": int(old.get("disturbed_checks", 0)) + monitor.disturbed_checks,
            "remeasured_rows": int(old.get("remeasured_rows", 0)) + remeasured,
            "kept_disturbed_rows": int(old.get("kept_disturbed_rows", 0)) + kept_disturbed,
            "rebased": int(old.get("rebased", 0)) + monitor.rebased,
            "events": (list(old.get("events") or []) + monitor.events)[-20:],
        }
    if progress:
        progress("blocks", "done", len(todo), len(todo))


def run_profile(plan: ProfilePlan, progress: Progress | None = None, *, command: str | None = None) -> LatencyTable:
    """Do what ``plan`` says: fill its blocks, then calibrate; returns the table (saved).

    ``command``: how this run is repeated (the CLI gives its command line), recorded in the
    table's metadata and quoted by errors about blocks missing from it.
    """
    table, backend, out = plan.table, plan.backend, plan.out
    if command is not None and (plan.space is not None or not table.meta.get("command")):
        table.meta["command"] = command
    if hasattr(os, "getloadavg"):
        table.meta["loadavg_start"] = round(os.getloadavg()[0], 2)
    with backend.session():
        _fill(table, plan.todo, backend, out, progress, sentinel=plan.sentinel)
        if plan.calibration:
            _calibrate(table, backend, plan.calibration, out, progress,
                       plan.max_overhead_share if plan.check_calibration else None)
    if hasattr(os, "getloadavg"):
        table.meta["loadavg_end"] = round(os.getloadavg()[0], 2)
    table.save(out)
    return table


def profile_space(source: Any, target: str | Backend = "cpu", out: str | os.PathLike | None = None,
                  options: ProfileOptions | None = None, *, progress: Progress | None = None,
                  command: str | None = None, **plan: Any) -> LatencyTable:
    """Measure (or estimate) every distinct block of ``source`` into the table at ``out``.

    ``run_profile(plan_profile(source, target, out, options, **plan), progress, command=command)``
    (``plan``: ``blocks``, ``name`` and overrides of the options' fields):
    rows already in ``out`` are kept and not measured again; the file is rewritten
    atomically every :data:`SAVE_INTERVAL_S` seconds and at the end; then the calibration
    is fitted (see :func:`plan_profile`).
    """
    return run_profile(plan_profile(source, target, out, options, **plan), progress, command=command)


def fit_calibration(sums: np.ndarray, measured: np.ndarray) -> tuple[float, float, str]:
    """``measured ≈ scale * sums + overhead`` from a few whole-model measurements.

    With three or more points, the whole models are first compared with their blocks' sums:
    when the mean of ``measured / sums`` is within its 95 % confidence interval of 1 (a
    t-test), the models agree with their blocks within the noise of measuring them, and no
    calibration is fitted (scale 1, overhead 0): five whole-model timings on a shared
    machine wander by ±5 %, and a line fitted through them moves every prediction by that
    much (measured here: Theil-Sen through five such points put a unet_mobile table 12 %
    high, where the plain sum was 2 % high). Otherwise Theil-Sen (the median of pairwise
    slopes: one noisy measurement cannot drag it) when there are five or more points spread
    over at least 20 % of the block sums and the slope is plausible (0.75-1.5: blocks inside
    a model run a little slower than alone); else the median offset with ``scale = 1``.
    """
    from scipy.stats import t as student_t
    from scipy.stats import theilslopes

    sums = np.asarray(sums, float)
    measured = np.asarray(measured, float)
    if len(sums) >= 3 and (sums > 0).all():
        ratio = measured / sums
        mean, se = float(ratio.mean()), float(ratio.std(ddof=1)) / np.sqrt(len(ratio))
        half = float(student_t.ppf(0.975, len(ratio) - 1)) * se
        if abs(mean - 1.0) <= half:
            return 1.0, 0.0, (f"none: {len(sums)} whole models took {mean:.3f} ± {half:.3f} (95%) times their "
                              "blocks' sum, 1 within the noise")
    if len(sums) >= 5 and np.ptp(sums) > 0.2 * np.median(sums):
        scale, overhead = theilslopes(measured, sums)[:2]
        if 0.75 <= scale <= 1.5:
            return float(scale), float(overhead), f"Theil-Sen fit on {len(sums)} whole-model measurements"
    if len(sums):
        return 1.0, float(np.median(measured - sums)), f"median offset of {len(sums)} whole-model measurements"
    return 1.0, 0.0, "none"


#: scales a plausible calibration stays within (blocks inside a model run a little slower
#: or faster than alone; beyond this the measurements disagree, not the blocks)
SCALE_RANGE = (0.8, 1.25)


def check_calibration(scale: float, overhead_ms: float, measured_ms: Any,
                      max_overhead_share: float = 0.15) -> str:
    """'' if ``ms = scale * sum(blocks) + overhead_ms`` is plausible for whole models that
    took ``measured_ms``, else why not (one line, with the numbers).

    Plausible: ``scale`` in :data:`SCALE_RANGE` and ``|overhead_ms|`` at most
    ``max_overhead_share`` of the smallest measured model (what a model adds to its blocks —
    skip concatenations, dispatch between blocks — is a few percent of it; an overhead of
    half the smallest model says the whole-model runs and the block runs saw different
    machines, e.g. a busy one).
    """
    measured = np.asarray(measured_ms, float)
    if not len(measured):
        return ""
    smallest = float(measured.min())
    problems = []
    if abs(overhead_ms) > max_overhead_share * smallest:
        problems.append(f"overhead {overhead_ms:.1f} ms is {100 * abs(overhead_ms) / smallest:.0f}% of the smallest "
                        f"calibration model ({smallest:.1f} ms; allowed: within {100 * max_overhead_share:.0f}%)")
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        problems.append(f"scale {scale:.3f} (allowed: {SCALE_RANGE[0]}-{SCALE_RANGE[1]})")
    return "; ".join(problems)


def _calibrate(table: LatencyTable, backend: Backend, calib: list[Any], out: Path, progress: Progress | None,
               max_overhead_share: float | None = None) -> None:
    from archsearch.cost.latency._predictor import LatencyPredictor

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
    sums = LatencyPredictor(table).block_sums([by_id[i] for i in ids])
    measured = np.array([points[i]["measured_ms"] for i in ids])
    scale, over, method = fit_calibration(sums, measured)
    pts = [{"id": i, "measured_ms": points[i]["measured_ms"], "blocks_ms": round(float(s), 6)}
           for i, s in zip(ids, sums)]
    why = check_calibration(scale, over, measured, max_overhead_share) if max_overhead_share is not None else ""
    if why:
        # not stored: the points go aside (for a look), so the next run measures them afresh
        table.meta.pop("calibration", None)
        table.meta["calibration_refused"] = {"scale": round(float(scale), 6), "overhead_ms": round(float(over), 6),
                                             "reason": why, "points": pts,
                                             "loadavg": table.meta.get("loadavg_start")}
        table.version += 1
        table.save(out)
        raise ImplausibleCalibrationError(why, scale=scale, overhead_ms=over, table_path=out)
    table.meta.pop("calibration_refused", None)
    table.set_calibration(scale, over, pts, method)


# ----------------------------------------------------------------------------- import


def import_table(csv_path: str | os.PathLike, blocks: BlockSet | Any, target: str,
                 out: str | os.PathLike | None = None, device: str | None = None, *,
                 resolution: int | None = None, name: str | None = None) -> tuple[LatencyTable, int, int]:
    """Merge a device CSV (key, ms[, ms_iqr, runs, note]) into the table at ``out``.

    ``blocks``: the :class:`BlockSet` the table describes, or a space / candidates to
    enumerate (at ``resolution``). Every key of the CSV must be one of its blocks. Imported
    rows replace estimates; rows the CSV does not cover keep their source. ``out``
    defaults to :func:`default_table_path` of ``name`` (the space's name). Returns (table,
    imported rows, blocks not covered by the CSV).
    """
    if target not in TARGETS:
        raise ParameterError("target", f"{target}: unknown target (allowed: {', '.join(TARGETS)})")
    if not isinstance(blocks, BlockSet):
        blocks = enumerate_blocks(blocks, resolution)
    csv_path = Path(csv_path)
    meta, rows = read_import_csv(csv_path)
    res = resolution_of(blocks)
    unknown = [k for k in rows["key"] if k not in blocks.specs]
    if unknown:
        raise UnknownBlockKeyError(
            path=csv_path, key=unknown[0], n_unknown=len(unknown), resolution=res, target=target,
            source=str(blocks.space.path) if blocks.space is not None else "these candidates")
    space = blocks.space
    if out is None:
        out = default_table_path(name or (space.name if space is not None else "candidates"), target, res)
    out = Path(out)
    if out.exists():
        table = load_table(out)
        if table.meta.get("target") not in (None, target):
            old = table.meta.get("target")
            raise ArchsearchError(f"{out}: is a table for target {old}, not {target} "
                                  f"(allowed: another table path, or target {old})")
    else:
        table = LatencyTable(meta={"target": target, "dtype": "float16", "batch": 1, "resolution": res}, path=out)
    backend = ImportBackend(target, rows, device or meta.get("device") or table.meta.get("device")
                            or "unknown device (imported)")
    table.meta.update(backend.describe())
    table.meta.setdefault("space", {"name": space.name, "path": str(space.path), "hash": space.hash}
                          if space is not None else {})
    table.meta["imported"] = {"file": str(csv_path), "rows": int(len(rows)),
                              "metadata": {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}}
    todo = backend.select(blocks.specs, table)
    _fill(table, todo, backend, out, None, autosave=False)
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
    covered = set(rows["key"])
    return table, len(todo), sum(1 for k in blocks.specs if k not in covered)


def write_import_template(blocks: BlockSet, path: str | os.PathLike, comment: str = "") -> Path:
    """The blocks as a CSV to fill in on a device (key, ms, type, params, in_shape, example)
    and give back to :func:`import_table`; ``comment`` lines go above it as ``#`` lines."""
    from archsearch._util import atomic_write_text

    rows = [{"key": k, "ms": "", "type": s.type, "params": json.dumps(s.hparams, sort_keys=True),
             "in_shape": "x".join(map(str, s.in_shape)), "example": s.name} for k, s in blocks.specs.items()]
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    return atomic_write_text(path, header + pd.DataFrame(rows).to_csv(index=False, lineterminator="\n"))
