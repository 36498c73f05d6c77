"""``run_search``: everything ``archsearch run SPEC`` does before the store is written.

settings (spec + arguments) -> latency table -> teacher (trained and cached the first time) ->
supernet (``proxy.kind: supernet`` or ``search.method: evolve``; trained and cached the first
time) -> study (created, or resumed: interrupted trials marked failed and queued again) -> with
``search.method: optuna`` a backend (local processes or Ray Tune) until ``n_trials`` trials are
done or the timeout passes; with ``evolve`` the architecture evolving (:mod:`._evolve`) in
this process until the latency budget.

Nothing here draws or prints: long work reports through ``progress(phase, description, done,
total)`` (phases ``captions`` and ``teacher`` while the built-in teacher trains, then
``trials``), one-line notices go to ``log(message)``, and ``on_trial(study)`` is called after
each finished trial (the CLI writes the store there, so a killed study can be reported).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from archsearch._util import short_hash
from archsearch.errors import ArchsearchError, ParameterError
from archsearch.search._check import check_space, resolve_latency_table
from archsearch.search._objective import TrialContext
from archsearch.search._progress import Progress, TrialsProgress
from archsearch.search._study import (
    SearchSettings,
    StudyLock,
    count_trials,
    lock_path,
    open_storage,
    open_study,
    recover_interrupted,
    requeue_interrupted,
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
    requeued: list[tuple[int, int]] = field(default_factory=list)  # (interrupted, its re-run)
    evolution: Any = None  # EvolveResult of search.method: evolve


def _table_fingerprint(table: Any) -> str:
    """What predictions depend on: every (key, ms) row and the calibration (not timestamps)."""
    rows = sorted(zip(table.df["key"].tolist(), (round(float(x), 9) for x in table.df["ms"])))
    return short_hash({"rows": rows, "calibration": list(table.calibration)}, 16)


def _default_device(device: str | None) -> str | None:
    if device is None or device == "auto":
        return None
    allowed = ("auto", "cpu", "cuda", "mps")
    if device.split(":")[0] not in allowed:
        raise ParameterError("device", f"{device!r}: unknown (allowed: {', '.join(allowed)}, cuda:N)")
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
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    on_trial: Callable[[optuna.Study], None] | None = None,
) -> SearchRun:
    """Run (or resume) the search of ``space``; returns where the study lives and its counts.

    ``backend``: ``local`` (``workers`` processes, default 1, at most the CPU cores) or ``ray``
    (``address`` of an existing cluster, else a local Ray). ``timeout`` stops starting new
    trials after that many seconds. A bad argument raises
    :class:`~archsearch.errors.ParameterError` naming it (``trials``, ``workers``, ``backend``...).

    ``progress(phase, description, done, total)``: the teacher's training (first use) and the
    ``trials`` phase (the description carries the state counts). ``log(message)``: one-line
    notices (trials re-queued on resume, nothing left to run). ``on_trial(study)``: after each
    finished trial, in this process (and once before the first) -- e.g.
    ``lambda st: archsearch.store.write_store(st, run_dir)``. The store is not written here.

    Resume (``resume=True``): finished trials are kept; trials whose process died are marked
    failed (``interrupted``) and their parameters queued again, so they run first. Several
    runs (on several machines) may share one study: a candidate finished or being trained in
    the study is never trained again (its score is reused, ``duplicate_of``).
    """
    from archsearch.distill import load_teacher

    if progress is False:  # the old ``progress: bool`` form
        progress = None
    say = log or (lambda message: None)
    if backend not in BACKENDS:
        raise ParameterError("backend", f"{backend!r}: unknown (allowed: {', '.join(BACKENDS)})")
    if address is not None and backend != "ray":
        raise ParameterError("address", f"{address}: needs backend 'ray' (got {backend!r})")
    dev = _default_device(device)
    checked = check_space(space, need_table=True)  # the same checks as `archsearch validate`
    settings = checked.settings.with_overrides(
        trials=trials, timeout=timeout, seed=seed, storage=storage, study=study, workers=workers,
        sampler=sampler)
    if backend == "local" and settings.workers is not None:
        from archsearch.search._local import check_workers

        spec_value = workers is None  # from search.workers: the spec's own line
        check_workers(settings.workers, (lambda allowed: space.fail(("search", "workers"), settings.workers, allowed))
                      if spec_value else None)
    proxy = checked.proxy  # check_space refused a space the supernet or the backbone cannot cover
    table_path = checked.latency_table
    table = None
    if table_path is not None:
        from archsearch.cost.latency import load_table

        table = load_table(table_path)
        settings = _with_table(settings, table_path)
    study_dir = Path(reports_dir) / settings.study
    url = storage_url(settings.storage, study_dir)
    if settings.storage is None:
        study_dir.mkdir(parents=True, exist_ok=True)  # the default storage lives in it
    store = open_storage(url)  # refuses a storage file whose folder does not exist
    lock = StudyLock(lock_path(url, study_dir))

    teacher = load_teacher(proxy, kind=space.kind, progress=progress, device=dev)  # trained on first use
    evolve = settings.method == "evolve"
    backbone = None
    if settings.method == "temporal":  # the frozen image backbone (the built-in one trained on first use)
        from archsearch.search._temporal import load_backbone

        backbone = load_backbone(space, proxy, settings.backbone, progress=progress, threads=settings.threads)
    supernet = None
    if evolve or proxy.kind == "supernet":
        from archsearch.distill import load_supernet

        supernet = load_supernet(space, proxy, teacher, device=dev, progress=progress,
                                 threads=settings.threads)  # trained on first use
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.time()  # the timeout counts from the study's opening (the teacher is not searching)
    with lock.hold():  # one run at a time creates, warm-starts and recovers the study
        study_obj, resumed = open_study(
            settings, store, space=space, proxy=proxy.to_dict(),
            teacher_fingerprint=teacher.fingerprint if backbone is None else f"{teacher.fingerprint}+{backbone.fingerprint}",
            latency_table_sha=_table_fingerprint(table) if table is not None else None, resume=resume,
            extra={"spec": str(space.path), "storage": url, "study_dir": str(study_dir.resolve()),
                   "kind": space.kind},
        )
        if not resumed and not study_obj.trials and settings.warm_start and settings.startup() and not evolve:
            from archsearch.search._warmstart import spread_start

            for params in spread_start(space, settings, table, min(settings.startup(), settings.n_trials),
                                       seed=settings.seed):
                study_obj.enqueue_trial(params, skip_if_exists=True)
        interrupted, elsewhere = recover_interrupted(study_obj) if resumed else ([], [])
        # an evolution replays its own path: nothing is queued for a sampler to run
        requeued = requeue_interrupted(study_obj) if resumed and not evolve else []
    if interrupted:
        say(f"resume: {len(interrupted)} interrupted trial(s) marked failed: {', '.join(map(str, interrupted))}")
    if requeued:
        say(f"resume: {len(requeued)} interrupted trial(s) queued to run again: "
            + ", ".join(f"{a} as {b}" for a, b in requeued))
    if elsewhere:
        say(f"resume: {len(elsewhere)} trial(s) still running on other hosts")
    counts = count_trials(study_obj)
    remaining = settings.n_trials - counts["done"] - counts["running"]
    run = SearchRun(study_obj, settings, url, study_dir, resumed, interrupted, counts,
                    backend=backend, workers=settings.workers, requeued=requeued)
    watch = TrialsProgress(settings.n_trials, progress, on_trial, label=f"{settings.study} ({settings.sampler})")
    watch(study_obj)
    if evolve:
        from archsearch.search._evolve import run_evolve

        threads = settings.threads
        ctx = TrialContext(space, settings, proxy, teacher, table, dev, threads, lock=lock, supernet=supernet)
        t_start = time.time()
        try:
            run.evolution = run_evolve(study_obj, ctx, supernet, on_change=watch)
        except KeyboardInterrupt:
            run.stopped = "interrupted"
        run.elapsed_s = time.time() - t_start
        run.counts = count_trials(study_obj)
        return run
    if remaining <= 0:
        say(f"study {settings.study!r} already has {counts['done']} of {settings.n_trials} trials: "
            "nothing to run (raise the number of trials to continue it)")
        return run

    from archsearch.search._local import Budget, run_local, threads_per_worker

    deadline = t0 + settings.timeout if settings.timeout else None
    try:
        if backend == "local":
            n_workers = settings.workers or 1
            threads = settings.threads or threads_per_worker(n_workers)
            ctx = TrialContext(space, settings, proxy, teacher, table, dev, threads, lock=lock, supernet=supernet)
            if backbone is not None:
                from archsearch.search._temporal import temporal_context

                ctx = temporal_context(ctx, backbone)
            budget = Budget(settings.n_trials, deadline, lock.path)
            run_local(study_obj, ctx=ctx, storage_url=url, budget=budget, workers=n_workers,
                      table_path=str(table_path) if table_path else None, on_change=watch)
        else:
            from archsearch.search._ray import run_ray

            ctx = TrialContext(space, settings, proxy, teacher, table, dev, settings.threads, lock=lock,
                               supernet=supernet)
            if backbone is not None:
                from archsearch.search._temporal import temporal_context

                ctx = temporal_context(ctx, backbone)
            run_ray(study_obj, ctx=ctx, remaining=remaining, address=address, timeout=settings.timeout,
                    storage_dir=study_dir, on_change=watch)
    except KeyboardInterrupt:  # the trial in flight is recorded as interrupted; keep what is done
        run.stopped = "interrupted"
    run.elapsed_s = time.time() - t0
    run.counts = count_trials(study_obj)
    return run


def _with_table(settings: SearchSettings, path: Path) -> SearchSettings:
    from dataclasses import replace

    return replace(settings, latency_table=path.resolve())
