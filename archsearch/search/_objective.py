"""One trial of ``archsearch run``: candidate -> costs -> constraint check -> distillation run.

The steps are split so that both backends share them:

* :func:`resolve_candidate` asks the Optuna trial (define-by-run) for a candidate;
* :func:`evaluate` (no Optuna) computes params, FLOPs and predicted latency, rejects a
  candidate that breaks a constraint *before any training*, else runs the distillation
  (:func:`archsearch.distill.distill`), or with ``proxy.kind: supernet`` scores the
  candidate's sub-network of the trained supernet (``Supernet.score``, no training);
  every exception of the proxy run (NaN loss, out of memory, any error) becomes a failed
  record with its one-line reason;
* :func:`record` writes the result onto the trial (user attrs, ``set_constraint``) and tells
  the study: ``COMPLETE`` with the objective values, ``PRUNED`` for an infeasible candidate
  (it has no quality), ``FAIL`` for a failed one.

The local backend runs all three in a worker process; the Ray backend resolves and records
in the driver and evaluates inside a Ray trial.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from archsearch.candidate import Candidate, OptunaChooser, resolve

if TYPE_CHECKING:
    from archsearch.cost.latency import LatencyTable
    from archsearch.distill import ProxyConfig, Supernet, Teacher
    from archsearch.search._study import SearchSettings, StudyLock
    from archsearch.spec import SearchSpace

__all__ = [
    "MAX_CURVE_POINTS",
    "TrialContext",
    "TrialRecord",
    "costs_of",
    "evaluate",
    "claim",
    "find_previous",
    "record",
    "resolve_candidate",
]

#: Longest loss curve stored on a trial (longer ones are strided, the last point kept).
MAX_CURVE_POINTS = 500


@dataclass
class TrialContext:
    """Everything a trial needs besides the candidate: built once per run by its search method
    (:meth:`~archsearch.search._methods.SearchMethod.context`); a local worker process gets a
    copy without the teacher, table and supernet, and loads them itself."""

    space: SearchSpace
    settings: SearchSettings
    proxy: ProxyConfig
    teacher: Teacher
    table: LatencyTable | None
    device: str | None = None
    threads: int | None = None
    lock: StudyLock | None = None  # serialises candidate claims across processes
    supernet: Supernet | None = None  # proxy.kind: supernet (loaded on first use if None), or evolve's

    @property
    def scores_by_supernet(self) -> bool:
        """Whether candidates are scored by a supernet instead of a proxy run: ``proxy.kind:
        supernet``, or a context given one (``search.method: evolve`` scores with its supernet
        whatever the proxy's kind)."""
        return self.supernet is not None or getattr(self.proxy, "kind", "per_trial") == "supernet"

    def scorer(self) -> Supernet:
        """The supernet that scores candidates (``proxy.kind: supernet`` or ``search.method:
        evolve``): this context's, else loaded from the cache (a worker process; the run trained
        it before the first trial)."""
        if self.supernet is None:
            from archsearch.distill import load_supernet

            self.supernet = load_supernet(self.space, self.proxy, self.teacher, device=self.device,
                                          threads=self.threads)
        return self.supernet


@dataclass
class TrialRecord:
    """The outcome of one trial, independent of Optuna (what the store reads back)."""

    candidate: Candidate | None  # None: the trial failed before a candidate was resolved
    state: str  # complete | infeasible | failed
    params: int | None = None
    flops: int | None = None
    latency_ms: float | None = None
    latency_source: str | None = None
    memory_mb: float | None = None
    memory_source: str | None = None
    constraints: dict[str, float] = field(default_factory=dict)
    quality: float | None = None
    quality_se: float | None = None  # standard error of the held-out score over its samples
    fail_reason: str | None = None
    loss_curve: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    proxy: dict[str, Any] = field(default_factory=dict)
    duplicate_of: int | None = None

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.constraints.values())

    def values(self, objectives: tuple[str, ...] | list[str]) -> list[float]:
        """The objective values, in the study's order."""
        return [float(getattr(self, name)) for name in objectives]

    def to_attrs(self) -> dict[str, Any]:
        """Trial user attrs (JSON-safe)."""
        return {
            "candidate": self.candidate.to_dict() if self.candidate is not None else None,
            "candidate_id": self.candidate.id if self.candidate is not None else None,
            "state": self.state,
            "params": self.params,
            "flops": self.flops,
            "latency_ms": self.latency_ms,
            "latency_source": self.latency_source,
            "memory_mb": self.memory_mb,
            "memory_source": self.memory_source,
            "feasible": self.feasible,
            "quality": self.quality,
            "quality_se": self.quality_se,
            "fail_reason": self.fail_reason,
            "loss_curve": _stride(self.loss_curve),
            "wall_time_s": round(self.wall_time_s, 4),
            "proxy": self.proxy,
            "duplicate_of": self.duplicate_of,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], constraints: dict[str, float] | None = None) -> "TrialRecord":
        cand = attrs.get("candidate")
        return cls(
            candidate=Candidate.from_dict(cand) if cand else None,
            state=attrs.get("state", "complete"),
            params=attrs.get("params"),
            flops=attrs.get("flops"),
            latency_ms=attrs.get("latency_ms"),
            latency_source=attrs.get("latency_source"),
            memory_mb=attrs.get("memory_mb"),
            memory_source=attrs.get("memory_source"),
            constraints=dict(constraints or {}),
            quality=attrs.get("quality"),
            quality_se=attrs.get("quality_se"),
            fail_reason=attrs.get("fail_reason"),
            loss_curve=list(attrs.get("loss_curve") or []),
            wall_time_s=float(attrs.get("wall_time_s") or 0.0),
            proxy=dict(attrs.get("proxy") or {}),
            duplicate_of=attrs.get("duplicate_of"),
        )


def _stride(curve: list[float]) -> list[float]:
    curve = [float(x) for x in curve]
    if len(curve) <= MAX_CURVE_POINTS:
        return curve
    step = math.ceil(len(curve) / MAX_CURVE_POINTS)
    out = curve[::step]
    if (len(curve) - 1) % step:
        out.append(curve[-1])
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    name = type(exc).__name__
    return f"{name}: {msg}" if msg else name


# --------------------------------------------------------------------------- steps


def resolve_candidate(trial: Any, space: Any) -> Candidate:
    """The trial's candidate, asked dimension by dimension (define-by-run)."""
    return resolve(space, OptunaChooser(trial))


def costs_of(candidate: Candidate, table: Any | None, need_memory: bool = False) -> dict[str, Any]:
    """Params and FLOPs of the full-scale candidate; with a latency table its predicted
    latency and the source, and its peak memory (the table's memory columns, or a ``meta``
    estimate for rows without them); without a table the memory only when ``need_memory``
    (a ``max_memory_mb`` constraint), estimated on ``meta``."""
    from archsearch.cost import count_params, flops

    out: dict[str, Any] = {"params": int(count_params(candidate)), "flops": int(flops(candidate).total)}
    if table is not None:
        from archsearch.cost.latency import predict, predictor_for

        predictor = predictor_for(table)
        out["latency_ms"] = float(predict([candidate], table)[0])
        out["latency_source"] = predictor.source_for(candidate)  # 'sum of measured blocks', not 'measured'
        mem = predictor.memory(candidate)
    elif need_memory:
        from archsearch.cost.latency import estimate_memory

        mem = estimate_memory(candidate)
    else:
        return out
    out["memory_mb"] = float(mem.peak_mb)
    out["memory_source"] = mem.source
    return out


def constraint_values(costs: dict[str, Any], settings: Any) -> dict[str, float]:
    """Relative violations (``value / limit - 1``; > 0 means violated) for Optuna."""
    out: dict[str, float] = {}
    if settings.max_latency_ms is not None and costs.get("latency_ms") is not None:
        out["max_latency_ms"] = costs["latency_ms"] / float(settings.max_latency_ms) - 1.0
    if settings.max_params is not None:
        out["max_params"] = costs["params"] / float(settings.max_params) - 1.0
    if getattr(settings, "max_memory_mb", None) is not None and costs.get("memory_mb") is not None:
        out["max_memory_mb"] = costs["memory_mb"] / float(settings.max_memory_mb) - 1.0
    return out


def _violation_text(costs: dict[str, Any], settings: Any, cons: dict[str, float]) -> str:
    parts = []
    if cons.get("max_latency_ms", 0) > 0:
        parts.append(f"latency {costs['latency_ms']:.3g} ms > max_latency_ms {settings.max_latency_ms:g}")
    if cons.get("max_params", 0) > 0:
        parts.append(f"params {costs['params'] / 1e6:.4g}M > max_params {settings.max_params / 1e6:g}M")
    if cons.get("max_memory_mb", 0) > 0:
        parts.append(f"peak memory {costs['memory_mb']:.4g} MiB > max_memory_mb {settings.max_memory_mb:g}")
    return "; ".join(parts)


def evaluate(candidate: Candidate, ctx: TrialContext, *, score_infeasible: bool = False) -> TrialRecord:
    """Costs, constraint check, then (for a feasible candidate) the proxy distillation run, or
    the supernet's score (:attr:`TrialContext.scores_by_supernet`).

    ``score_infeasible``: a candidate over a constraint is scored too (its record stays
    ``infeasible``, with its quality: ``search.method: evolve`` weighs what removing a block
    is worth). Never raises for a bad candidate or a failed run: the record says ``failed``
    and why. ``KeyboardInterrupt`` propagates.
    """
    t0 = time.perf_counter()
    rec = TrialRecord(candidate=candidate, state="failed")
    try:
        costs = costs_of(candidate, ctx.table, need_memory=getattr(ctx.settings, "max_memory_mb", None) is not None)
    except Exception as exc:  # a block the table cannot price, a model that cannot be built
        rec.fail_reason = f"cost model: {_one_line(exc)}"
        rec.wall_time_s = time.perf_counter() - t0
        return rec
    rec.params, rec.flops = costs["params"], costs["flops"]
    rec.latency_ms, rec.latency_source = costs.get("latency_ms"), costs.get("latency_source")
    rec.memory_mb, rec.memory_source = costs.get("memory_mb"), costs.get("memory_source")
    rec.constraints = constraint_values(costs, ctx.settings)
    from archsearch.search._convertible import core_ml_constraint  # ane/coreml tables: converts, stays on the ANE

    converts, why_not = core_ml_constraint(candidate, ctx.table)
    rec.constraints.update(converts)
    if not rec.feasible:
        rec.state = "infeasible"
        rec.fail_reason = "; ".join(filter(None, [_violation_text(costs, ctx.settings, rec.constraints), why_not]))
    if rec.feasible or score_infeasible:
        _score(candidate, ctx, rec)
    rec.wall_time_s = time.perf_counter() - t0
    return rec


def _score(candidate: Candidate, ctx: TrialContext, rec: TrialRecord) -> None:
    """The proxy's score onto ``rec``: its quality, loss curve and run facts (a feasible record
    becomes ``complete``), or ``failed`` with the reason the run failed."""
    import torch

    from archsearch import distill as stage  # looked up at call time: a test may wrap stage.distill

    try:
        if ctx.scores_by_supernet:
            result = ctx.scorer().score(candidate)
        else:
            result = stage.distill(candidate, ctx.teacher, ctx.proxy, device=ctx.device, threads=ctx.threads,
                                   prepare_student=getattr(ctx, "prepare_student", None))
    except stage.TrialFailed as exc:
        rec.state, rec.fail_reason = "failed", exc.reason
    except MemoryError:
        rec.state, rec.fail_reason = "failed", "out of memory (host)"
    except Exception as exc:  # torch.OutOfMemoryError, RuntimeError, a bug in a block: all recorded
        rec.state, rec.fail_reason = "failed", _one_line(exc)
        if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
            _free_accelerator_memory()
    else:
        if rec.feasible:
            rec.state = "complete"
        rec.quality = float(result.quality)
        rec.loss_curve = list(result.loss_curve)
        metrics = result.metrics or {}
        se = metrics.get("quality_se")
        rec.quality_se = float(se) if se is not None and math.isfinite(float(se)) else None
        rec.proxy = {
            "steps": result.steps, "params": result.params, "device": result.device,
            "wall_time_s": round(result.wall_time_s, 4),
            **{k: metrics[k] for k in ("steps_per_s", "holdout_task_mse", "proxy_candidate", "proxy_kind", "supernet")
               if k in metrics},
        }


def _free_accelerator_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


#: Trial user attr: this trial trains its candidate (set under the study lock, see :func:`claim`).
CLAIMED = "trains_candidate"


def find_previous(study: optuna.Study, candidate_id: str, *, exclude: int | None = None,
                  trials: list[FrozenTrial] | None = None) -> FrozenTrial | None:
    """A finished trial of the same candidate (complete, or infeasible): its result is reused.

    The quality of a candidate is deterministic for the study's proxy settings and teacher
    (checked on resume), and its costs are the same, so a candidate proposed again costs no
    training. The first such trial (lowest number) is returned. ``trials``: a snapshot of
    the study's trials to look in (default: read them now).
    """
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    for t in study.get_trials(deepcopy=False, states=finished) if trials is None else trials:
        if t.state not in finished or t.number == exclude:
            continue
        if t.user_attrs.get("candidate_id") == candidate_id and t.user_attrs.get("candidate"):
            return t
    return None


def _training_peer(trials: list[FrozenTrial], candidate_id: str, me: int) -> FrozenTrial | None:
    """A RUNNING trial of ``trials`` (not ``me``) that has claimed ``candidate_id`` and whose
    process lives."""
    from archsearch.search._study import owner_alive

    for t in trials:
        if t.state != TrialState.RUNNING or t.number == me:
            continue
        if t.user_attrs.get("candidate_id") != candidate_id or not t.user_attrs.get(CLAIMED):
            continue
        if owner_alive(str(t.user_attrs.get("owner", ""))) is False:
            continue  # its process died: --resume marks it interrupted
        return t
    return None


def claim(study: optuna.Study, trial: Any, candidate_id: str, lock: Any | None = None, *,
          wait: bool = True, poll_s: float = 0.5) -> tuple[str, FrozenTrial | None]:
    """Decide who scores ``candidate_id``: ``("train", None)`` when this trial trains it,
    ``("reuse", t)`` when a finished trial ``t`` of it exists, ``("wait", t)`` (only with
    ``wait=False``) when trial ``t`` of another worker is training it now.

    Looking up and claiming happen under the study's lock (every process sharing the storage
    file takes it), so two workers -- or two ``archsearch run`` on one study -- never train one
    candidate twice. With ``wait`` the call polls until the training trial finishes (then
    reuses it, or claims the candidate if that trial failed).
    """
    from contextlib import nullcontext

    while True:
        with lock.hold() if lock is not None else nullcontext():
            trial.set_user_attr("candidate_id", candidate_id)
            # one snapshot for both questions: a peer's trial that finishes between two reads
            # (its tell is not under the lock) would be neither running in the second read
            # nor finished in the first, and the candidate would be trained twice
            trials = study.get_trials(deepcopy=False)
            previous = find_previous(study, candidate_id, exclude=trial.number, trials=trials)
            if previous is not None:
                return "reuse", previous
            peer = _training_peer(trials, candidate_id, trial.number)
            if peer is None:
                trial.set_user_attr(CLAIMED, True)
                return "train", None
        if not wait:
            return "wait", peer
        time.sleep(poll_s)


def reuse(previous: FrozenTrial) -> TrialRecord:
    """The record of a repeated candidate: the earlier trial's results (``duplicate_of``
    names the trial that trained it)."""
    rec = TrialRecord.from_attrs(previous.user_attrs, previous.constraints)
    original = previous.user_attrs.get("duplicate_of")
    rec.duplicate_of = int(original) if original is not None else previous.number
    rec.wall_time_s = 0.0
    return rec


def record(study: optuna.Study, trial: optuna.Trial, rec: TrialRecord, objectives: tuple[str, ...]) -> None:
    """Write ``rec`` onto ``trial`` and tell the study (COMPLETE / PRUNED / FAIL)."""
    for key, value in rec.to_attrs().items():
        trial.set_user_attr(key, value)
    for key, value in rec.constraints.items():
        trial.set_constraint(key, value)
    if rec.state == "complete":
        study.tell(trial, rec.values(objectives))
    elif rec.state == "infeasible":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def run_trial(study: optuna.Study, trial: optuna.Trial, ctx: TrialContext) -> TrialRecord:
    """Resolve, evaluate (or reuse) and record one asked trial. Ctrl-C fails it as interrupted."""
    from archsearch.search._study import INTERRUPTED

    try:
        try:
            candidate = resolve_candidate(trial, ctx.space)
        except Exception as exc:
            rec = TrialRecord(candidate=None, state="failed", fail_reason=f"resolve: {_one_line(exc)}")
            record(study, trial, rec, ctx.settings.objectives)
            return rec
        decision, previous = claim(study, trial, candidate.id, ctx.lock)
        rec = reuse(previous) if previous is not None else evaluate(candidate, ctx)
        record(study, trial, rec, ctx.settings.objectives)
        return rec
    except KeyboardInterrupt:
        try:
            trial.set_user_attr("state", "failed")
            trial.set_user_attr("fail_reason", INTERRUPTED)
            study.tell(trial, state=TrialState.FAIL)
        except Exception:  # already told, or the storage is gone: resume marks it
            pass
        raise
