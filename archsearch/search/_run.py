"""``run_search``: everything ``archsearch run SPEC`` does before the store is written.

settings (spec + the caller's :class:`RunOptions`) -> latency table -> teacher (trained and
cached the first time) -> supernet (``proxy.kind: supernet`` or ``search.method: evolve``;
trained and cached the first time) -> the trial context, built once by the search method (the
temporal search's backbone loaded) -> study (created, or resumed: interrupted trials marked
failed and queued again) -> the method's trials: with ``optuna`` and ``temporal`` a backend
(local processes or Ray Tune) until ``n_trials`` trials are done or the timeout passes, with
``evolve`` the architecture evolving (:mod:`._evolve`) in this process until the latency budget.
What differs between methods lives in their :class:`~archsearch.search._methods.SearchMethod`.

Nothing here draws or prints: long work reports through ``progress(phase, description, done,
total)`` (phases ``captions`` and ``teacher`` while the built-in teacher trains, then
``trials``), one-line notices go to ``log(message)``, and ``on_trial(study)`` is called after
each finished trial (the CLI writes the store there, so a killed study can be reported).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import optuna

from archsearch._util import short_hash
from archsearch.search._check import SpaceCheck, check_space, resolve_latency_table
from archsearch.search._job import BACKENDS, RunOptions, SearchJob, SearchRun
from archsearch.search._methods import SearchMethod, search_method
from archsearch.search._progress import Progress, TrialsProgress
from archsearch.search._study import (
    SearchSettings,
    StudyLock,
    count_trials,
    lock_path,
    open_storage,
    open_study,
    recover_interrupted,
    storage_url,
)

if TYPE_CHECKING:
    from archsearch.cost.latency import LatencyTable
    from archsearch.spec import SearchSpace

__all__ = ["BACKENDS", "RunOptions", "SearchRun", "resolve_latency_table", "run_search"]


def run_search(
    space: SearchSpace,
    options: RunOptions | None = None,
    *,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    on_trial: Callable[[optuna.Study], None] | None = None,
    **overrides: Any,
) -> SearchRun:
    """Run (or resume) the search of ``space``; returns where the study lives and its counts.

    ``options`` (:class:`RunOptions`), or its fields as keywords (``run_search(space, trials=8,
    workers=2)``; given both, the keywords win): ``trials``, ``timeout``, ``seed``, ``storage``,
    ``study``, ``workers`` and ``sampler`` override the spec (the sampler: ``search.sampler``, else
    the method's, else ``gp``: :data:`~archsearch.search._study.DEFAULT_SAMPLER`); ``backend``: ``local``
    (``workers`` processes, default 1, at most the CPU cores) or ``ray`` (``address`` of an
    existing cluster, else a local Ray); ``timeout`` stops starting new trials after that many
    seconds. A bad argument raises :class:`~archsearch.errors.ParameterError` naming it
    (``trials``, ``workers``, ``backend``...).

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
    opts = replace(options or RunOptions(), **overrides)
    if progress is False:  # the old ``progress: bool`` form
        progress = None
    checked = check_space(space, need_table=True)  # the same checks as `archsearch validate`
    method = search_method(checked.settings.method)
    job = _prepare(space, checked, opts, method, progress, log)
    ctx = method.context(job)  # the temporal search's backbone is loaded here (trained on first use)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    job.started = time.time()  # the timeout counts from the study's opening (the teacher is not searching)
    with job.lock.hold():  # one run at a time creates, warm-starts and recovers the study
        study, resumed = open_study(
            job.settings, job.storage, space=space, proxy=job.proxy.to_dict(),
            teacher_fingerprint=method.fingerprint(ctx), latency_table_sha=_table_fingerprint(job.table),
            resume=opts.resume, extra={"spec": str(space.path), "storage": job.storage_url,
                                       "study_dir": str(job.study_dir.resolve()), "kind": space.kind})
        interrupted, elsewhere = recover_interrupted(study) if resumed else ([], [])
        requeued = method.queue(study, job, resumed)
    _tell_resume(job.log, interrupted, requeued, elsewhere)
    run = SearchRun(study, job.settings, job.storage_url, job.study_dir, resumed, interrupted, count_trials(study),
                    backend=opts.backend, workers=job.settings.workers, requeued=requeued)
    watch = TrialsProgress(job.settings.n_trials, progress, on_trial,
                           label=f"{job.settings.study} ({job.settings.sampler})")
    watch(study)
    method.run(job, ctx, study, run, watch)
    return run


def _prepare(space: SearchSpace, checked: SpaceCheck, opts: RunOptions, method: SearchMethod,
             progress: Progress | None, log: Callable[[str], None] | None) -> SearchJob:
    """The run's settings, latency table, storage (a bad one refused before the teacher
    trains), lock, teacher and, when the method scores with one, the supernet."""
    from archsearch.distill import load_supernet, load_teacher

    settings = _settings(space, checked.settings, opts)
    table = None
    if checked.latency_table is not None:
        from archsearch.cost.latency import check_table_device, check_table_speed, load_table

        table = load_table(checked.latency_table)
        if log is not None and (foreign := check_table_device(table).warning):
            log(f"warning: {foreign}")  # a table measured on another machine: one line
        elif log is not None and (speed := check_table_speed(table)) is not None and speed.warning:
            log(f"warning: {speed.warning}")  # the same CPU name, another speed (its sentinel timed again)
        settings = replace(settings, latency_table=checked.latency_table.resolve())
    study_dir = Path(opts.reports_dir) / settings.study
    url = storage_url(settings.storage, study_dir)
    if settings.storage is None:
        study_dir.mkdir(parents=True, exist_ok=True)  # the default storage lives in it
    storage = open_storage(url)  # refuses a storage file whose folder does not exist
    proxy = checked.proxy  # check_space refused a space the supernet or the backbone cannot cover
    device = opts.torch_device()
    teacher = load_teacher(proxy, kind=space.kind, progress=progress, device=device)  # trained on first use
    supernet = load_supernet(space, proxy, teacher, device=device, progress=progress,
                             threads=settings.threads) if method.needs_supernet(proxy) else None
    return SearchJob(space, settings, proxy, teacher, table, checked.latency_table, url, storage, study_dir,
                     StudyLock(lock_path(url, study_dir)), opts, supernet, progress, log or (lambda message: None))


def _settings(space: SearchSpace, settings: SearchSettings, opts: RunOptions) -> SearchSettings:
    """The spec's settings with the caller's overrides; more local workers than cores refused
    (on the spec's ``search.workers`` line when the spec set them)."""
    settings = opts.settings(settings)
    if opts.backend == "local" and settings.workers is not None:
        from archsearch.search._local import check_workers

        check_workers(settings.workers, (lambda allowed: space.fail(("search", "workers"), settings.workers, allowed))
                      if opts.workers is None else None)
    return settings


def _table_fingerprint(table: LatencyTable | None) -> str | None:
    """What predictions depend on: every (key, ms) row and the calibration (not timestamps)."""
    if table is None:
        return None
    rows = sorted(zip(table.df["key"].tolist(), (round(float(x), 9) for x in table.df["ms"])))
    return short_hash({"rows": rows, "calibration": list(table.calibration)}, 16)


def _tell_resume(say: Callable[[str], None], interrupted: list[int], requeued: list[tuple[int, int]],
                 elsewhere: list[int]) -> None:
    if interrupted:
        say(f"resume: {len(interrupted)} interrupted trial(s) marked failed: {', '.join(map(str, interrupted))}")
    if requeued:
        say(f"resume: {len(requeued)} interrupted trial(s) queued to run again: "
            + ", ".join(f"{a} as {b}" for a, b in requeued))
    if elsewhere:
        say(f"resume: {len(elsewhere)} trial(s) still running on other hosts")
