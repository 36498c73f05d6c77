"""``run_search``: everything ``archsearch run SPEC`` does before the store is written.

settings (spec + flags) -> latency table -> teacher (trained and cached the first time) ->
study (created, or resumed with interrupted trials marked failed) -> backend (local
processes or Ray Tune) until ``n_trials`` trials are done or the timeout passes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from archsearch._util import short_hash
from archsearch.errors import ArchsearchError
from archsearch.search._objective import TrialContext
from archsearch.search._progress import StudyProgress
from archsearch.search._study import (
    SearchSettings,
    count_trials,
    open_storage,
    open_study,
    recover_interrupted,
    storage_url,
)

__all__ = ["BACKENDS", "SearchRun", "resolve_latency_table", "run_search"]

BACKENDS = ("local", "ray")


@dataclass
class SearchRun:
    """What a finished (or stopped) ``run_search`` leaves: the study and where it lives."""

    study: optuna.Study
    settings: SearchSettings
    storage_url: str
    study_dir: Path
    resumed: bool
    interrupted: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    backend: str = "local"
    workers: int | None = 1
    stopped: str | None = None  # 'interrupted' after Ctrl-C


def _table_fingerprint(table: Any) -> str:
    """What predictions depend on: every (key, ms) row and the calibration (not timestamps)."""
    rows = sorted(zip(table.df["key"].tolist(), (round(float(x), 9) for x in table.df["ms"])))
    return short_hash({"rows": rows, "calibration": list(table.calibration)}, 16)


def resolve_latency_table(settings: SearchSettings, space: Any) -> Path | None:
    """The latency table file of a search.

    ``search.latency_table`` if set; else the table ``archsearch profile SPEC --target T``
    writes by default (``latency_tables/<space>-<T>-r<resolution>[-estimate].csv``, looked up
    beside the spec's folder and in the working directory). Returns None when the search
    needs no latency (no latency objective nor ``max_latency_ms``).
    """
    needs = "latency_ms" in settings.objectives or settings.max_latency_ms is not None
    if settings.latency_table is not None:
        p = Path(settings.latency_table)
        if not p.is_file():
            raise ArchsearchError(f"{space.path}: search.latency_table: {p} does not exist "
                                  "(allowed: a table written by `archsearch profile`)")
        return p
    if not needs:
        return None
    target = settings.target or "cpu"
    res = space.data.get("resolution", 64)
    names = [f"{space.name}-{target}-r{res}.csv", f"{space.name}-{target}-r{res}-estimate.csv"]
    bases = [Path(space.path).resolve().parent.parent, Path.cwd()]
    for base in bases:
        for name in names:
            p = base / "latency_tables" / name
            if p.is_file():
                return p
    raise ArchsearchError(
        f"{space.path}: search.latency_table: not set and latency_tables/{names[0]} does not exist; "
        f"make it with `archsearch profile {space.path} --target {target}` or set search.latency_table "
        "(or remove latency from search.objectives and constraints.max_latency_ms)"
    )


def _default_device(device: str | None) -> str | None:
    if device is None or device == "auto":
        return None
    allowed = ("auto", "cpu", "cuda", "mps")
    if device.split(":")[0] not in allowed:
        raise ArchsearchError(f"device: bad value {device!r} (allowed: {', '.join(allowed)}, cuda:N)")
    return device


def run_search(
    space: Any,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    seed: int | None = None,
    storage: str | None = None,
    study: str | None = None,
    resume: bool = False,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    device: str | None = None,
    reports_dir: str | Path = "reports",
    sampler: str | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> SearchRun:
    """Run (or resume) the search of ``space``; returns where the study lives and its counts.

    ``backend``: ``local`` (``workers`` processes, default 1) or ``ray`` (``address`` of an
    existing cluster, else a local Ray). ``timeout`` stops starting new trials after that many
    seconds. The store (``reports/<study>/trials.csv`` ...) is written by
    :func:`archsearch.store.write_store` afterwards.
    """
    from archsearch.distill import load_teacher

    console = console or Console(stderr=True)
    if backend not in BACKENDS:
        raise ArchsearchError(f"--backend {backend!r}: unknown (allowed: {', '.join(BACKENDS)})")
    if address is not None and backend != "ray":
        raise ArchsearchError("--address needs --backend ray")
    dev = _default_device(device)
    from archsearch.search._check import check_space

    checked = check_space(space, need_table=True)  # the same checks as `archsearch validate`
    settings = checked.settings.with_overrides(
        trials=trials, timeout=timeout, seed=seed, storage=storage, study=study, workers=workers,
        sampler=sampler)
    proxy = checked.proxy
    table_path = checked.latency_table
    table = None
    if table_path is not None:
        from archsearch.cost.latency import load_table

        table = load_table(table_path)
        settings = _with_table(settings, table_path)
    study_dir = Path(reports_dir) / settings.study
    url = storage_url(settings.storage, study_dir)

    with _PhaseBars(console, enabled=progress) as bars:  # the built-in teacher trains on first use
        teacher = load_teacher(proxy, kind=space.kind, progress=bars, device=dev)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(url)
    study_obj, resumed = open_study(
        settings, store, space=space, proxy=proxy.to_dict(), teacher_fingerprint=teacher.fingerprint,
        latency_table_sha=_table_fingerprint(table) if table is not None else None, resume=resume,
        extra={"spec": str(space.path), "storage": url, "study_dir": str(study_dir.resolve()),
               "kind": space.kind},
    )
    if not resumed and not study_obj.trials and settings.warm_start and settings.startup():
        from archsearch.search._warmstart import spread_start

        for params in spread_start(space, settings, table, min(settings.startup(), settings.n_trials),
                                   seed=settings.seed):
            study_obj.enqueue_trial(params, skip_if_exists=True)
    interrupted, elsewhere = recover_interrupted(study_obj) if resumed else ([], [])
    if interrupted:
        console.print(f"resume: {len(interrupted)} interrupted trial(s) marked failed: "
                      f"{', '.join(map(str, interrupted))}")
    if elsewhere:
        console.print(f"resume: {len(elsewhere)} trial(s) still running on other hosts")
    counts = count_trials(study_obj)
    remaining = settings.n_trials - counts["done"] - counts["running"]
    run = SearchRun(study_obj, settings, url, study_dir, resumed, interrupted, counts,
                    backend=backend, workers=settings.workers)
    if remaining <= 0:
        console.print(f"study {settings.study!r} already has {counts['done']} of {settings.n_trials} trials: "
                      "nothing to run (raise --trials to continue it)")
        return run

    from archsearch.search._local import Budget, run_local, threads_per_worker

    t0 = time.time()
    deadline = t0 + settings.timeout if settings.timeout else None
    try:
        with StudyProgress(settings.n_trials, console=console, enabled=progress,
                           description=f"{settings.study} ({settings.sampler})",
                           start_done=counts["done"]) as bar:
            if backend == "local":
                n_workers = settings.workers or 1
                threads = settings.threads or threads_per_worker(n_workers)
                ctx = TrialContext(space, settings, proxy, teacher, table, dev, threads)
                budget = Budget(settings.n_trials, deadline, str(study_dir / ".ask.lock"))
                run_local(study_obj, ctx=ctx, storage_url=url, budget=budget, workers=n_workers,
                          table_path=str(table_path) if table_path else None, progress=bar)
            else:
                from archsearch.search._ray import run_ray

                ctx = TrialContext(space, settings, proxy, teacher, table, dev, settings.threads)
                run_ray(study_obj, ctx=ctx, remaining=remaining, address=address, timeout=settings.timeout,
                        storage_dir=study_dir, progress=bar)
    except KeyboardInterrupt:  # the trial in flight is recorded as interrupted; keep what is done
        run.stopped = "interrupted"
    run.elapsed_s = time.time() - t0
    run.counts = count_trials(study_obj)
    return run


class _PhaseBars:
    """``progress(phase, description, done, total)`` drawn as one rich bar per phase.

    The display starts with the first call, so a teacher found in the cache prints nothing.
    """

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "_PhaseBars | None":
        return self if self.enabled else None

    def __exit__(self, *exc: Any) -> None:
        if self._bars is not None:
            self._bars.stop()

    def __call__(self, phase: str, description: str, done: int, total: int) -> None:
        from rich.markup import escape

        if self._bars is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bars = Progress(TextColumn("[bold]{task.fields[phase]:<8}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.description}"), console=self.console)
            self._bars.start()
        if phase not in self._tasks:
            self._tasks[phase] = self._bars.add_task(escape(description), total=max(total, 1), phase=phase)
        self._bars.update(self._tasks[phase], completed=done, total=max(total, 1), description=escape(description))


def _with_table(settings: SearchSettings, path: Path) -> SearchSettings:
    from dataclasses import replace

    return replace(settings, latency_table=path.resolve())
