"""``search: {method: evolve}``: SnapFusion's architecture evolving over the trained supernet.

Start from the space's largest candidate (every dimension at its largest option). An *action*
adds or removes one block at (stage, position) by moving one dimension of the space one notch:

* ``STAGE.resnet_blocks`` +-1 step: a ResNet layer (its up-path mirror follows);
* ``STAGE.transformer_depth`` +-1 step: one transformer layer in each of the stage's blocks;
* ``STAGE.layers.N`` between ``skip`` and a block (``resnet``, ``transformer``, ``cross_ffn``):
  that block at position N;
* ``STAGE.attention`` one attention part more or less (``self_cross`` <-> ``cross`` / ``self``
  <-> ``none``): the self- or cross-attention of the stage's transformers (all of them at ``none``).

Every other dimension (widths, variants) keeps the start's value. An action's **value** is the
quality the block is worth per millisecond, ``(q_without - q_with) / (lat_with - lat_without)``
(quality: the held-out score, lower is better, of the architecture's sub-network of the
trained supernet; latency: the lookup table's prediction). Over the latency budget
(``constraints.max_latency_ms``) the block of lowest value is removed, step after step, until
the architecture fits; under it, the block of highest (positive) value whose addition still
fits is added, until none does: the evolution stops at the budget (a largest candidate that
fits already is the answer). Every architecture evaluated is a trial of the study (enqueued
with its full parameters, asked, recorded as any trial: over the budget it is ``infeasible``
with its quality kept in the user attrs), so the store, the report, ``--resume`` and
optuna-dashboard work as for a sampler; a resumed evolution replays its path and reuses the
trials already finished (the supernet's scores are deterministic). The trials the evolution
stood on are listed in the study attr ``archsearch.evolution_result`` (``chosen``; the store's
front of an evolve study is taken among them, so they go to ``pareto/``), and the path -- every action evaluated, in order, with its
Δquality, Δlatency, value and whether it was taken -- is the study attr ``archsearch.evolution``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import optuna
from optuna.trial import TrialState

from archsearch.candidate import Candidate, LargestChooser, resolve
from archsearch.errors import ArchsearchError
from archsearch.search._objective import TrialContext, TrialRecord, evaluate, find_previous, record, resolve_candidate

if TYPE_CHECKING:
    from archsearch.spec import SearchSpace

__all__ = ["EVOLUTION_ATTR", "RESULT_ATTR", "EvolveAction", "EvolveResult", "block_actions", "run_evolve"]

#: Study user attr holding the path (a list of :class:`EvolveAction` dicts).
EVOLUTION_ATTR = "archsearch.evolution"
#: Study user attr: ``{final_trial, final_candidate, reached_budget, stopped, chosen}``; ``chosen``
#: lists the trials the evolution stood on (the start and every action taken).
RESULT_ATTR = "archsearch.evolution_result"

_PARTS = {"none": frozenset(), "self": frozenset({"self"}), "cross": frozenset({"cross"}),
          "self_cross": frozenset({"self", "cross"})}
_BLOCK_TOKENS = ("resnet", "transformer", "cross_ffn")


@dataclass
class EvolveAction:
    """One evaluated action of the path (``taken``: the evolution moved by it)."""

    step: int
    phase: str  # remove | add
    kind: str  # remove | add
    stage: str  # down0, mid, up1, defaults (the dimension's prefix)
    position: int | None
    block: str  # resnet | transformer | cross_ffn | self_attention | cross_attention
    dimension: str
    before: Any
    after: Any
    trial: int
    candidate_id: str
    quality: float | None
    latency_ms: float | None
    d_quality: float | None
    d_latency_ms: float | None
    value: float | None
    taken: bool = False


@dataclass
class EvolveResult:
    """What :func:`run_evolve` leaves: the path, the final architecture and why it stopped."""

    actions: list[EvolveAction] = field(default_factory=list)
    final_trial: int | None = None
    final_candidate: str | None = None
    reached_budget: bool = False
    stopped: str = ""
    chosen: list[int] = field(default_factory=list)


def _resolve(space: SearchSpace, values: dict[str, Any]) -> tuple[Candidate, dict[str, Any], dict[str, Any]]:
    """The candidate taking ``values[name]`` (where allowed), else the largest option
    (:class:`~archsearch.candidate.LargestChooser`); every value it was asked, and the options
    of each (a list, or ``(low, high, step)`` of a range)."""
    chooser = LargestChooser(values)
    cand = resolve(space, chooser)
    return cand, dict(chooser.asked), {**chooser.options, **chooser.ranges}


def _stage_of(name: str) -> str:
    return name.split(".", 1)[0]


def block_actions(values: dict[str, Any], options: dict[str, Any], phase: str) -> list[dict[str, Any]]:
    """The actions of ``phase`` (``remove`` or ``add``) from an assignment: each a dict with
    ``dimension``, ``after``, ``block``, ``position`` (see the module docstring)."""
    out: list[dict[str, Any]] = []
    for name, value in values.items():
        opts = options.get(name)
        leaf = name.rsplit(".", 1)[-1]
        parts = name.split(".")
        if isinstance(opts, tuple) and leaf in ("resnet_blocks", "transformer_depth"):
            low, high, step = opts
            new = value - step if phase == "remove" else value + step
            if low <= new <= high:
                block = "resnet" if leaf == "resnet_blocks" else "transformer"
                pos = (value - 1) if phase == "remove" else value  # the last layer goes or comes
                out.append({"dimension": name, "after": new, "block": block,
                            "position": pos if leaf == "resnet_blocks" else None})
        elif isinstance(opts, list) and len(parts) >= 3 and parts[-2] == "layers" and "skip" in opts:
            pos = int(parts[-1])
            if phase == "remove" and value in _BLOCK_TOKENS:
                out.append({"dimension": name, "after": "skip", "block": value, "position": pos})
            elif phase == "add" and value == "skip":
                for o in opts:
                    if o in _BLOCK_TOKENS:
                        out.append({"dimension": name, "after": o, "block": o, "position": pos})
        elif isinstance(opts, list) and leaf == "attention" and value in _PARTS:
            have = _PARTS[value]
            for o in opts:
                if o not in _PARTS or o == value:
                    continue
                want = _PARTS[o]
                if phase == "remove" and want < have and len(have - want) == 1:
                    out.append({"dimension": name, "after": o, "block": f"{next(iter(have - want))}_attention",
                                "position": None})
                elif phase == "add" and want > have and len(want - have) == 1:
                    out.append({"dimension": name, "after": o, "block": f"{next(iter(want - have))}_attention",
                                "position": None})
    return out


class _Evaluator:
    """Evaluates an architecture once: a trial of the study (or the finished trial of it)."""

    def __init__(self, study: optuna.Study, ctx: TrialContext) -> None:
        self.study, self.ctx = study, ctx
        self.seen: dict[str, tuple[int, TrialRecord]] = {}
        # the trials finished before this run (a resumed evolution), read once: the ones this
        # run makes are in ``seen``
        self.done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))

    def __call__(self, space: SearchSpace, values: dict[str, Any], step: int) -> tuple[int, TrialRecord, dict]:
        cand, asked, options = _resolve(space, values)
        if cand.id in self.seen:
            number, rec = self.seen[cand.id]
        else:
            prev = find_previous(self.study, cand.id, trials=self.done)
            if prev is not None:  # a resumed evolution: the trial is done already
                number, rec = prev.number, TrialRecord.from_attrs(prev.user_attrs, prev.constraints)
            else:
                number, rec = self._trial(space, asked, cand, step)
            self.seen[cand.id] = (number, rec)
        return number, rec, {"values": asked, "options": options, "candidate": cand}

    def _trial(self, space: SearchSpace, asked: dict[str, Any], cand: Candidate, step: int) -> tuple[int, TrialRecord]:
        from archsearch.search._study import owner_tag

        study, ctx = self.study, self.ctx
        study.enqueue_trial(asked, user_attrs={"evolve_step": step})
        trial = study.ask()
        trial.set_user_attr("owner", owner_tag())
        try:
            got = resolve_candidate(trial, space)
            if got.id != cand.id:
                raise ArchsearchError(f"evolve: trial {trial.number} resolved {got.id}, expected {cand.id}")
            # over a constraint the trial is infeasible, its quality kept: the evolution needs it
            # to choose what to remove
            rec = evaluate(cand, ctx, score_infeasible=True)
            record(study, trial, rec, ctx.settings.objectives)
        except KeyboardInterrupt:
            study.tell(trial, state=TrialState.FAIL)
            raise
        return trial.number, rec


def _value(cur: TrialRecord, new: TrialRecord, kind: str) -> tuple[float | None, float | None, float | None]:
    """``(d_quality, d_latency, value)`` of moving from ``cur`` to ``new`` (value: see the docstring)."""
    if cur.quality is None or new.quality is None or cur.latency_ms is None or new.latency_ms is None:
        return None, None, None
    dq = float(new.quality) - float(cur.quality)
    dl = float(new.latency_ms) - float(cur.latency_ms)
    if kind == "remove":
        value = (new.quality - cur.quality) / -dl if dl < 0 else None
    else:
        value = (cur.quality - new.quality) / dl if dl > 0 else None
    return dq, dl, (float(value) if value is not None and math.isfinite(value) else None)


def run_evolve(study: optuna.Study, ctx: TrialContext, *,
               on_change: Callable[[optuna.Study], None] | None = None) -> EvolveResult:
    """Evolve from the space's largest candidate to the latency budget (see the module docstring),
    scoring with the context's supernet (the cached one if it holds none)."""
    space, settings = ctx.space, ctx.settings
    budget = settings.max_latency_ms
    if budget is None:
        raise ArchsearchError(f"{space.path}: search.method: evolve needs constraints.max_latency_ms (its budget)")
    if ctx.table is None:
        raise ArchsearchError(f"{space.path}: search.method: evolve needs a latency table (search.latency_table)")
    ctx.scorer()  # every architecture is scored by the supernet, whatever the proxy's kind
    visit = _Evaluator(study, ctx)
    out = EvolveResult()
    step = 0
    number, rec, info = visit(space, {}, step)
    out.chosen.append(number)
    if on_change:
        on_change(study)
    if rec.latency_ms is None or rec.quality is None:
        out.stopped = f"the start could not be evaluated ({rec.fail_reason})"
        _save(study, out)
        return out
    phase = "remove" if rec.latency_ms > budget else "add"
    while True:
        step += 1
        candidates = []
        for act in block_actions(info["values"], info["options"], phase):
            values = {**info["values"], act["dimension"]: act["after"]}
            n2, r2, i2 = visit(space, values, step)
            if on_change:
                on_change(study)
            dq, dl, value = _value(rec, r2, phase)
            entry = EvolveAction(step, phase, phase, _stage_of(act["dimension"]), act["position"], act["block"],
                                 act["dimension"], info["values"].get(act["dimension"]), act["after"], n2,
                                 i2["candidate"].id, r2.quality, r2.latency_ms, dq, dl, value)
            out.actions.append(entry)
            fits = r2.latency_ms is not None and r2.latency_ms <= budget
            if value is None or (phase == "add" and (not fits or value <= 0)):
                continue
            candidates.append((entry, n2, r2, i2))
        if not candidates:
            out.stopped = ("no removable block is left" if phase == "remove"
                           else "at the budget: no block left whose addition fits it and improves quality")
            break
        pick = (min if phase == "remove" else max)(candidates, key=lambda c: (c[0].value, c[0].dimension))
        entry, number, rec, info = pick
        entry.taken = True
        out.chosen.append(number)
        _save(study, out)
        if phase == "remove" and rec.latency_ms is not None and rec.latency_ms <= budget:
            phase = "add"  # under the budget now: add back what still fits, best value first
    out.final_trial, out.final_candidate = number, info["candidate"].id
    out.reached_budget = rec.latency_ms is not None and rec.latency_ms <= budget
    _save(study, out)
    if on_change:
        on_change(study)
    return out


def _save(study: optuna.Study, out: EvolveResult) -> None:
    study.set_user_attr(EVOLUTION_ATTR, [_jsonable(asdict(a)) for a in out.actions])
    study.set_user_attr(RESULT_ATTR, {
        "final_trial": out.final_trial, "final_candidate": out.final_candidate,
        "reached_budget": out.reached_budget, "stopped": out.stopped, "chosen": list(out.chosen)})


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out
