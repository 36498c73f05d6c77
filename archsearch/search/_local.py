"""``--backend local``: N worker processes on this machine sharing one study storage.

Each worker asks the study for a trial, evaluates it and tells the result, until the study
holds ``n_trials`` finished-or-running trials or the deadline passes. Asking is serialised by
the study's lock file (:func:`~archsearch.search._study.lock_path`, beside a SQLite or journal
file) so that N workers -- or several ``archsearch run`` on one study -- never overshoot
``n_trials``; the same lock guards the candidate claim, so no candidate is trained twice.
``--workers`` is capped at the CPU cores (:func:`check_workers`). Each worker
sets torch's intra-op threads to ``cores // N`` (or ``search.threads``) so that workers do not
oversubscribe the cores. With one worker everything runs in this process.

A worker whose parent dies (``kill -9`` of ``archsearch run``) exits at once; its unfinished
trial stays RUNNING in the storage and a resume marks it failed (``interrupted``) and queues
it again. A worker
that dies (e.g. killed by the kernel's OOM killer) has its trial marked failed with the exit
code and is replaced while trials remain.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from archsearch.errors import ParameterError
from archsearch.search._objective import TrialContext, TrialRecord, run_trial
from archsearch.search._study import (
    StudyLock,
    TrialSeededSampler,
    count_trials,
    mark_failed,
    open_storage,
    owner_tag,
)

__all__ = ["Budget", "available_cores", "check_workers", "run_local", "threads_per_worker", "worker_loop"]


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def check_workers(workers: int, fail: Callable[[str], None] | None = None) -> int:
    """``workers`` if this machine has that many cores, else a one-line error: each worker
    process holds a model, a teacher and torch's buffers, so more processes than cores only
    slow each other down and, far enough past the cores, exhaust memory.

    ``fail(allowed)`` raises the caller's error (e.g. the spec's ``search.workers`` line);
    by default a :class:`~archsearch.errors.ParameterError` naming ``workers``.
    """
    cores = available_cores()
    if workers > cores:
        allowed = f"1 to {cores}, the CPU cores of this machine"
        if fail is not None:
            fail(allowed)
        raise ParameterError("workers", f"{workers}: more local workers than CPU cores (allowed: {allowed})")
    return workers


def threads_per_worker(workers: int) -> int:
    """torch intra-op threads per worker: ``cores // workers`` (at least 1)."""
    return max(1, available_cores() // max(1, workers))


@dataclass(frozen=True)
class Budget:
    """When to stop asking: ``n_trials`` done-or-running trials, or the deadline (epoch s)."""

    n_trials: int
    deadline: float | None = None
    lock_path: str | None = None

    def exhausted(self, study: optuna.Study) -> bool:
        if self.deadline is not None and time.time() >= self.deadline:
            return True
        c = count_trials(study)
        return c["done"] + c["running"] >= self.n_trials

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The study's exclusive lock (:class:`~archsearch.search._study.StudyLock`)."""
        return StudyLock(self.lock_path).hold()


def worker_loop(
    study: optuna.Study,
    ctx: TrialContext,
    budget: Budget,
    on_trial: Callable[[int, TrialRecord], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> int:
    """Ask, evaluate, tell until the budget is spent. Returns the number of trials run."""
    n = 0
    while True:
        with budget.lock():
            if budget.exhausted(study):
                return n
            trial = study.ask()
            trial.set_user_attr("owner", owner_tag())
        if on_start is not None:
            on_start(trial.number)
        rec = run_trial(study, trial, ctx)
        n += 1
        if on_trial is not None:
            on_trial(trial.number, rec)


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class WorkerJob:
    """What a spawned worker needs (pickled to the child): the run's trial context without its
    teacher, latency table and supernet, which the worker loads itself (from the caches)."""

    index: int
    ctx: TrialContext
    table_path: str | None
    storage_url: str
    study_name: str
    budget: Budget
    threads: int
    parent_pid: int


def _watch_parent(parent_pid: int) -> None:
    """Exit at once if the parent process goes away (it was killed)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(3)
        time.sleep(0.5)


def _worker_main(job: WorkerJob) -> None:
    threading.Thread(target=_watch_parent, args=(job.parent_pid,), daemon=True).start()
    import torch

    torch.set_num_threads(job.threads)
    from archsearch.distill import load_teacher

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = None
    if job.table_path is not None:
        from archsearch.cost.latency import load_table

        table = load_table(job.table_path)
    ctx = job.ctx  # as the run's method built it (a temporal backbone reloads its weights on first use)
    teacher = load_teacher(ctx.proxy, kind=ctx.space.kind, device=ctx.device)
    ctx = replace(ctx, teacher=teacher, table=table, threads=job.threads, lock=StudyLock(job.budget.lock_path))
    storage = open_storage(job.storage_url)
    study = optuna.load_study(study_name=job.study_name, storage=storage, sampler=TrialSeededSampler(ctx.settings))
    try:
        worker_loop(study, ctx, job.budget)
    except KeyboardInterrupt:
        os._exit(130)


def _fail_orphans(study: optuna.Study, pid: int, exitcode: int | None) -> None:
    tag = f":{pid}"
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if str(t.user_attrs.get("owner", "")).endswith(tag):
            mark_failed(study, t, f"worker process died (exit code {exitcode})")


def run_local(
    study: optuna.Study,
    *,
    ctx: TrialContext,
    storage_url: str,
    budget: Budget,
    workers: int,
    table_path: str | None,
    on_change: Callable[[optuna.Study], None] | None = None,
    poll_s: float = 0.5,
) -> None:
    """Run the study with ``workers`` processes (1: in this process).

    ``on_change(study)`` is called when a trial starts or finishes (with several workers:
    every ``poll_s`` seconds, from this process).
    """

    def refresh(*_: Any) -> None:
        if on_change is not None:
            on_change(study)

    if workers == 1:
        study.sampler = TrialSeededSampler(ctx.settings)
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(ctx.threads or old)
        try:
            worker_loop(study, ctx, budget, on_trial=refresh, on_start=refresh)
        finally:
            torch.set_num_threads(old)
        refresh()
        return

    spawn = mp.get_context("spawn")
    env_threads = str(ctx.threads or threads_per_worker(workers))
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({"OMP_NUM_THREADS": env_threads, "MKL_NUM_THREADS": env_threads})

    portable = replace(ctx, teacher=None, table=None, supernet=None)  # each worker loads its own

    def start(index: int) -> mp.process.BaseProcess:
        job = WorkerJob(index=index, ctx=portable, table_path=table_path, storage_url=storage_url,
                        study_name=study.study_name, budget=budget, threads=int(env_threads), parent_pid=os.getpid())
        p = spawn.Process(target=_worker_main, args=(job,), name=f"archsearch-worker-{index}", daemon=True)
        p.start()
        return p

    procs: dict[int, mp.process.BaseProcess] = {}
    restarts = 0
    try:
        for i in range(workers):
            procs[i] = start(i)
        while procs:
            time.sleep(poll_s)
            refresh()
            for i, p in list(procs.items()):
                if p.is_alive():
                    continue
                p.join()
                del procs[i]
                if p.exitcode != 0:
                    _fail_orphans(study, p.pid, p.exitcode)
                    if restarts < 2 * workers and not budget.exhausted(study):
                        restarts += 1
                        procs[workers + restarts] = start(workers + restarts)
    except KeyboardInterrupt:
        for p in procs.values():  # the workers got SIGINT too; give them a moment to record it
            p.join(timeout=10)
        raise
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        refresh()
