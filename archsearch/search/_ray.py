"""``--backend ray``: trials run as Ray Tune trials, proposed by Optuna through ``OptunaSearch``.

The searcher is Ray's :class:`~ray.tune.search.optuna.OptunaSearch` (metric and mode *lists*
on the searcher, one per objective) on the study's own storage and sampler, so the results
land in the same store as with the local backend, and the sampler sees earlier trials of a
resumed study. The driver resolves each candidate (define-by-run) and records each result;
the trial itself (costs, constraint check, proxy run) runs on a Ray worker with
``search.trial_resources`` (default 1 CPU; torch threads = its CPUs). The teacher travels
through the object store (``tune.with_parameters``), so an existing multi-node cluster needs
no shared cache: ``--address HOST:PORT`` (the nodes need archsearch installed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import optuna

from archsearch.errors import ArchsearchError, ParameterError
from archsearch.search._objective import (
    TrialContext,
    TrialRecord,
    claim,
    evaluate,
    record,
    resolve_candidate,
    reuse,
)
from archsearch.search._study import INTERRUPTED, TrialSeededSampler, owner_tag

__all__ = ["run_ray"]

_KEY = "archsearch"


class _Resolve:
    """The define-by-run space: resolves the candidate on the driver (no training here)."""

    def __init__(self, space: Any, lock: Any | None = None) -> None:
        self.space = space
        self.lock = lock
        self.study: optuna.Study | None = None

    def __call__(self, trial: Any) -> dict[str, Any]:
        trial.set_user_attr("owner", owner_tag())
        try:
            cand = resolve_candidate(trial, self.space)
        except Exception as exc:
            return {_KEY: {"error": f"resolve: {type(exc).__name__}: {exc}"}}
        out: dict[str, Any] = {"candidate": cand.to_dict()}
        if self.study is None:
            trial.set_user_attr("candidate_id", cand.id)
            return {_KEY: out}
        # the driver must not block: a candidate trained right now by another trial is
        # recorded when that trial finishes (StoreSearch keeps it pending)
        decision, other = claim(self.study, trial, cand.id, self.lock, wait=False)
        if decision == "reuse":
            out["reuse"] = other.number
        elif decision == "wait":
            out["wait_for"] = other.number
        return {_KEY: out}

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles the searcher; the study stays here
        return {**self.__dict__, "study": None}


def _nan_if_none(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """One Ray trial: evaluate the candidate and report the record (never raises for a bad trial)."""
    import torch
    from ray import tune

    from archsearch.candidate import Candidate

    cpus = ctx.threads or max(1, int(ctx.settings.trial_resources.get("cpu", 1)))
    torch.set_num_threads(cpus)
    data = config[_KEY]
    metrics = {name: float("nan") for name in ctx.settings.objectives}
    if "error" in data or "reuse" in data or "wait_for" in data:
        tune.report({**metrics, "archsearch_record": json.dumps(data)})
        return
    cand = Candidate.from_dict(data["candidate"])
    ctx.threads = cpus
    rec = evaluate(cand, ctx)
    payload = {"attrs": rec.to_attrs(), "constraints": rec.constraints}
    metrics = {name: _nan_if_none(getattr(rec, name)) for name in ctx.settings.objectives}
    tune.report({**metrics, "archsearch_record": json.dumps(payload)})


def _searcher_class() -> type:
    from ray.tune.search.optuna import OptunaSearch

    class StoreSearch(OptunaSearch):
        """OptunaSearch that records archsearch's trial attrs, constraints and states."""

        def __init__(self, *args: Any, objectives: tuple[str, ...], on_record: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._objectives = objectives
            self._on_record = on_record
            self._pending: dict[int, list[Any]] = {}  # trial number being trained -> Optuna trials waiting

        def _waiting_on(self, result: dict | None) -> int | None:
            raw = (result or {}).get("archsearch_record")
            data = json.loads(raw) if raw else {}
            return int(data["wait_for"]) if "wait_for" in data else None

        def _settle(self, ot_trial: Any, peer_number: int) -> bool:
            """Record a trial that waited on ``peer_number`` once that trial has finished."""
            peer = self._ot_study._storage.get_trial(  # noqa: SLF001
                self._ot_study._storage.get_trial_id_from_study_id_trial_number(  # noqa: SLF001
                    self._ot_study._study_id, peer_number))  # noqa: SLF001
            if not peer.state.is_finished():
                return False
            if peer.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
                rec = reuse(peer)
            else:  # the training trial failed: run this one again on resume
                rec = TrialRecord(candidate=None, state="failed", fail_reason=INTERRUPTED)
            record(self._ot_study, ot_trial, rec, self._objectives)
            return True

        def settle_pending(self, poll_s: float = 0.5) -> None:
            """After the run: record the trials still waiting on a trial of another process."""
            import time

            while self._pending:
                for number, waiting in list(self._pending.items()):
                    if all(self._settle(t, number) for t in waiting):
                        del self._pending[number]
                if self._pending:
                    time.sleep(poll_s)

        def __getstate__(self) -> dict[str, Any]:  # Tune pickles its config: drop the live display
            return {**self.__dict__, "_on_record": None}

        def _setup_study(self, mode: Any) -> None:
            super()._setup_study(mode)
            self._space.study = self._ot_study

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            peer = self._waiting_on(result)
            if peer is not None:
                self._completed_trials.add(trial_id)
                if not self._settle(ot_trial, peer):
                    self._pending.setdefault(peer, []).append(ot_trial)
                return
            rec = self._record_from(ot_trial, result, error)
            try:
                record(self._ot_study, ot_trial, rec, self._objectives)
            finally:
                self._completed_trials.add(trial_id)
            for waiting in self._pending.pop(ot_trial.number, []):
                self._settle(waiting, ot_trial.number)
            if self._on_record is not None:
                self._on_record(self._ot_study)

        def _record_from(self, ot_trial: Any, result: dict | None, error: bool) -> TrialRecord:
            raw = (result or {}).get("archsearch_record")
            if raw:
                data = json.loads(raw)
                if "attrs" in data:
                    return TrialRecord.from_attrs(data["attrs"], data.get("constraints"))
                if "reuse" in data:
                    prev = self._ot_study.get_trials(deepcopy=False)[int(data["reuse"])]
                    return reuse(prev)
                if "error" in data:
                    return TrialRecord(candidate=None, state="failed", fail_reason=data["error"])
            if not error:  # stopped by Tune (Ctrl-C, time budget): re-run on --resume
                return TrialRecord(candidate=None, state="failed", fail_reason=INTERRUPTED)
            cand_id = ot_trial.user_attrs.get("candidate_id", "?")
            return TrialRecord(candidate=None, state="failed",
                               fail_reason=f"the Ray trial errored (worker died or was killed; see the Ray "
                                           f"logs); candidate {cand_id}")

        # Tune checkpoints searchers with pickle; the study storage already holds every
        # result, so the checkpoint is a small JSON note and resuming goes through Optuna.
        def save(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "w", encoding="utf-8") as fh:
                json.dump({"study": self._study_name, "resume": "archsearch run SPEC --resume"}, fh)

        def restore(self, checkpoint_path: str) -> None:
            raise ArchsearchError("resume an archsearch study with `archsearch run SPEC --resume`, "
                                  "not Tuner.restore")

    return StoreSearch


def run_ray(
    study: optuna.Study,
    *,
    ctx: TrialContext,
    remaining: int,
    address: str | None = None,
    timeout: float | None = None,
    storage_dir: Path,
    on_change: Any | None = None,
) -> None:
    """Run ``remaining`` trials as Ray Tune trials; results go to ``study``'s storage.

    ``on_change(study)`` is called in the driver after each recorded trial.
    """
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        import ray
        from ray import tune
    except ImportError as exc:  # pragma: no cover - ray[tune] is a dependency
        raise ParameterError("backend", f"'ray': needs ray[tune] ({exc}); pip install 'ray[tune]'") from None

    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR")
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ParameterError("address", f"{address}: cannot connect to Ray ({exc})") from None
        started = True
    settings = ctx.settings
    res = settings.trial_resources
    resources = {"cpu": res.get("cpu", 1.0), "gpu": res.get("gpu", 0.0)}
    if resources["gpu"] and ctx.device is None:
        ctx.device = "cuda"

    def on_record(st: optuna.Study) -> None:
        if on_change is not None:
            on_change(st)

    Search = _searcher_class()
    searcher = Search(
        space=_Resolve(ctx.space, ctx.lock),
        metric=list(settings.objectives),
        mode=["min"] * len(settings.objectives),
        sampler=TrialSeededSampler(settings),
        study_name=study.study_name,
        storage=study._storage,  # noqa: SLF001 - the same storage object, not a second connection
        objectives=tuple(settings.objectives),
        on_record=on_record,
    )
    trainable = tune.with_resources(tune.with_parameters(_trainable, ctx=ctx), resources)
    storage_path = (Path(storage_dir) / "ray").resolve()
    storage_path.mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=remaining,
            max_concurrent_trials=settings.workers or None,
            time_budget_s=timeout,
        ),
        run_config=tune.RunConfig(
            name=f"{study.study_name}-{len(study.trials)}",
            storage_path=str(storage_path),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    try:
        tuner.fit()
        searcher.settle_pending()
    finally:
        if started:
            ray.shutdown()
