"""Search methods: how a search proposes candidates (``search.method``), one strategy each.

A :class:`SearchMethod` is registered by name (:func:`register_method`, into
:data:`~archsearch.search._study.METHODS`) and holds, in one place, all that the search does
differently for it:

* what its ``search:`` section must hold (:class:`~archsearch.search._study.MethodRules`: a
  default sampler, a latency budget, a backbone), read by ``SearchSettings.from_space``;
* :meth:`~SearchMethod.check` -- what ``validate`` (and so every run) refuses before any work;
* :meth:`~SearchMethod.context` -- the one :class:`~archsearch.search.TrialContext` its trials
  run with, built once per run (a local worker process gets a copy);
* :meth:`~SearchMethod.queue` -- what a new or resumed study runs first;
* :meth:`~SearchMethod.run` -- the trials, on the study ``run_search`` opened.

Built in: ``optuna`` (the default: the sampler proposes, trials run in local processes or Ray
Tune), ``evolve`` (SnapFusion's architecture evolving over the trained supernet,
:mod:`._evolve`) and ``temporal`` (SnapGen-V's temporal layers on a frozen image backbone,
:mod:`._temporal`; an optuna search with NSGA-II).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import optuna

from archsearch.errors import ParameterError
from archsearch.search._job import SearchJob, SearchRun
from archsearch.search._objective import TrialContext
from archsearch.search._study import METHODS, MethodRules, SearchSettings, count_trials

if TYPE_CHECKING:
    from archsearch.distill import ProxyConfig
    from archsearch.search._evolve import EvolveResult
    from archsearch.spec import SearchSpace

__all__ = ["EvolveMethod", "OptunaMethod", "SearchMethod", "TemporalMethod", "register_method", "search_method"]

#: ``watch(study)`` after any change of the study (:class:`~archsearch.search.TrialsProgress`)
Watch = Callable[[optuna.Study], object]


class SearchMethod(MethodRules):
    """One way of searching (see the module docstring). Subclasses set :attr:`name` and the
    :class:`~archsearch.search._study.MethodRules`, and implement :meth:`trials`."""

    #: scores candidates with the space's supernet, trained before the study opens (else only
    #: ``proxy.kind: supernet`` does)
    uses_supernet = False

    def check(self, space: SearchSpace, settings: SearchSettings, proxy: ProxyConfig) -> None:
        """Refuse, in one line, a space this method cannot search (no weights loaded)."""
        if self.needs_supernet(proxy):  # a space the supernet cannot cover
            from archsearch.distill import check_supernet

            check_supernet(space, proxy)

    def needs_supernet(self, proxy: ProxyConfig) -> bool:
        """Whether a run trains (or loads) the space's supernet before its study opens."""
        return self.uses_supernet or proxy.kind == "supernet"

    def threads(self, job: SearchJob) -> int | None:
        """torch threads per trial: ``search.threads`` (None: torch's default)."""
        return job.settings.threads

    def context(self, job: SearchJob) -> TrialContext:
        """The trial context of the run: THE place a :class:`TrialContext` is built."""
        return TrialContext(job.space, job.settings, job.proxy, job.teacher, job.table, job.options.torch_device(),
                            self.threads(job), lock=job.lock, supernet=job.supernet)

    def fingerprint(self, ctx: TrialContext) -> str:
        """What the trials' scores depend on besides the space and the proxy (a study resumes
        only with the same): the teacher's fingerprint."""
        return ctx.teacher.fingerprint

    def queue(self, study: optuna.Study, job: SearchJob, resumed: bool) -> list[tuple[int, int]]:
        """Enqueue what the study runs first; returns the re-runs of interrupted trials queued
        (``(interrupted, re-run)``). Nothing by default."""
        return []

    def run(self, job: SearchJob, ctx: TrialContext, study: optuna.Study, run: SearchRun, watch: Watch) -> None:
        """Run the trials; ``run`` gets how it went (Ctrl-C stops it: the trial in flight is
        recorded as interrupted, what is done is kept)."""
        try:
            run.evolution = self.trials(job, ctx, study, run, watch)
        except KeyboardInterrupt:
            run.stopped = "interrupted"
        run.elapsed_s = time.time() - job.started
        run.counts = count_trials(study)

    def trials(self, job: SearchJob, ctx: TrialContext, study: optuna.Study, run: SearchRun,
               watch: Watch) -> EvolveResult | None:
        """Run the trials onto ``study``, calling ``watch(study)`` after each change; returns what
        the method leaves besides the study (``evolve``: its path, :class:`~._evolve.EvolveResult`)."""
        raise NotImplementedError


class OptunaMethod(SearchMethod):
    """``optuna``: the study's sampler proposes every candidate; the trials run in local worker
    processes or as Ray Tune trials (``backend``) until ``n_trials`` or the timeout."""

    name = "optuna"

    def threads(self, job: SearchJob) -> int | None:
        """``search.threads``; else, local processes share the cores (``cores // workers``)."""
        from archsearch.search._local import threads_per_worker

        settings = job.settings
        if job.options.backend == "ray":  # a Ray trial sets them from its CPUs
            return settings.threads
        return settings.threads or threads_per_worker(settings.workers or 1)

    def queue(self, study: optuna.Study, job: SearchJob, resumed: bool) -> list[tuple[int, int]]:
        """A new study starts from feasible candidates spread over cost (the samplers with
        start-up trials, ``warm_start``); a resumed one re-runs its interrupted trials first."""
        from archsearch.search._study import requeue_interrupted
        from archsearch.search._warmstart import spread_start

        settings = job.settings
        if not resumed and not study.trials and settings.warm_start and settings.startup():
            for params in spread_start(job.space, settings, job.table, min(settings.startup(), settings.n_trials),
                                       seed=settings.seed):
                study.enqueue_trial(params, skip_if_exists=True)
        return requeue_interrupted(study) if resumed else []

    def run(self, job: SearchJob, ctx: TrialContext, study: optuna.Study, run: SearchRun, watch: Watch) -> None:
        counts = run.counts
        if job.settings.n_trials - counts["done"] - counts["running"] <= 0:
            job.log(f"study {job.settings.study!r} already has {counts['done']} of {job.settings.n_trials} trials: "
                    "nothing to run (raise the number of trials to continue it)")
            return
        super().run(job, ctx, study, run, watch)

    def trials(self, job: SearchJob, ctx: TrialContext, study: optuna.Study, run: SearchRun,
               watch: Watch) -> None:
        settings = job.settings
        if job.options.backend == "ray":
            from archsearch.search._ray import run_ray

            remaining = settings.n_trials - run.counts["done"] - run.counts["running"]
            run_ray(study, ctx=ctx, remaining=remaining, address=job.options.address, timeout=settings.timeout,
                    storage_dir=job.study_dir, on_change=watch)
            return
        from archsearch.search._local import Budget, run_local

        deadline = job.started + settings.timeout if settings.timeout else None
        budget = Budget(settings.n_trials, deadline, job.lock.path)
        run_local(study, ctx=ctx, storage_url=job.storage_url, budget=budget, workers=settings.workers or 1,
                  table_path=str(job.table_path) if job.table_path else None, on_change=watch)


class EvolveMethod(SearchMethod):
    """``evolve``: SnapFusion's architecture evolving over the trained supernet, from the
    space's largest candidate to the latency budget, in this process (:mod:`._evolve`). A
    resumed evolution replays its own path: nothing is queued for a sampler to run."""

    name = "evolve"
    needs_budget = True
    uses_supernet = True

    def trials(self, job: SearchJob, ctx: TrialContext, study: optuna.Study, run: SearchRun,
               watch: Watch) -> EvolveResult:
        from archsearch.search._evolve import run_evolve

        return run_evolve(study, ctx, on_change=watch)


class TemporalMethod(OptunaMethod):
    """``temporal``: SnapGen-V's temporal search, an optuna search (NSGA-II unless
    ``search.sampler`` names another) whose trials train only the temporal layers on the frozen
    spatial layers of an image backbone (``search.backbone``, :mod:`._temporal`)."""

    name = "temporal"
    sampler = "nsga2"  # SnapGen-V's search is evolutionary
    takes_backbone = True

    def check(self, space: SearchSpace, settings: SearchSettings, proxy: ProxyConfig) -> None:
        from archsearch.search._temporal import check_temporal

        check_temporal(space, proxy, settings.backbone)  # the space against its backbone (no weights loaded)
        super().check(space, settings, proxy)

    def context(self, job: SearchJob) -> TrialContext:
        """The frozen backbone loaded (the built-in one trained on first use) and checked against
        the teacher, once: every trial's student takes its spatial weights."""
        from archsearch.search._temporal import load_backbone, temporal_context

        backbone = load_backbone(job.space, job.proxy, job.settings.backbone, progress=job.progress,
                                 threads=job.settings.threads)
        return temporal_context(super().context(job), backbone)

    def fingerprint(self, ctx: TrialContext) -> str:
        """The teacher's and the backbone's: the trials' students start from its weights."""
        from archsearch.search._temporal import TemporalContext

        if not isinstance(ctx, TemporalContext) or ctx.backbone is None:
            raise TypeError("the temporal search's context holds its backbone (TemporalMethod.context)")
        return f"{ctx.teacher.fingerprint}+{ctx.backbone.fingerprint}"


def register_method(method: SearchMethod) -> SearchMethod:
    """Make ``method`` the ``search.method`` named ``method.name`` (it replaces one of that name)."""
    METHODS[method.name] = method
    return method


def search_method(name: str) -> SearchMethod:
    """The registered method named ``name``."""
    method = METHODS.get(name)
    if not isinstance(method, SearchMethod):
        raise ParameterError("method", f"{name!r}: unknown (allowed: {', '.join(METHODS)})")
    return method


register_method(OptunaMethod())
register_method(EvolveMethod())
register_method(TemporalMethod())
