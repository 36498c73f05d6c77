"""`search: {method: evolve}` (issue 12 §2): SnapFusion's architecture evolving over the trained
supernet -- actions, a short run on the tiny space (trials, path, budget, report), resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from search_helpers import PROXY, ROOT, make_spec

from archsearch.errors import SpecError
from archsearch.search import SearchSettings, run_search
from archsearch.search._evolve import _resolve, block_actions
from archsearch.spec import load_space, load_space_text
from archsearch.store import EVOLUTION_COLUMNS, write_store

EVOLVE_PROXY = {**PROXY, "supernet_steps": 12}


def test_actions_add_or_remove_one_block(tiny_space) -> None:
    cand, values, options = _resolve(tiny_space, {})
    assert values["down0.resnet_blocks"] == 2 and values["down1.attention"] == "self_cross"
    removes = {(a["dimension"], a["after"], a["block"]) for a in block_actions(values, options, "remove")}
    assert removes == {("down0.resnet_blocks", 1, "resnet"), ("down1.transformer_depth", 1, "transformer"),
                       ("down1.attention", "cross", "self_attention")}
    assert block_actions(values, options, "add") == []  # the largest candidate: nothing to add
    _, small, opts = _resolve(tiny_space, {"down0.resnet_blocks": 1, "down1.attention": "none"})
    adds = {(a["dimension"], a["after"], a["block"]) for a in block_actions(small, opts, "add")}
    assert adds == {("down0.resnet_blocks", 2, "resnet"), ("down1.attention", "cross", "cross_attention")}


def test_layout_positions_are_actions() -> None:
    text = (ROOT / "search_spaces" / "tiny.yaml").read_text().replace(
        "    resnet_blocks: 1\n    attention: {choice: [none, cross, self_cross]}\n    transformer_depth: {range: [1, 2]}",
        "    attention: cross\n    layers: [resnet, {choice: [transformer, skip]}, {choice: [resnet, skip]}]")
    space = load_space_text(text, "layout.yaml")
    _, values, options = _resolve(space, {})
    acts = {(a["dimension"], a["after"], a["block"], a["position"]) for a in block_actions(values, options, "remove")}
    assert ("down1.layers.1", "skip", "transformer", 1) in acts and ("down1.layers.2", "skip", "resnet", 2) in acts


def test_method_is_validated_in_one_line(tmp_path: Path) -> None:
    base = (ROOT / "search_spaces" / "tiny.yaml").read_text()
    with pytest.raises(SpecError, match=r"^m\.yaml:\d+: search\.method: bad value 'grid' \(allowed: optuna, evolve, temporal\)$"):
        SearchSettings.from_space(load_space_text(base + "search:\n  method: grid\n", "m.yaml"))
    with pytest.raises(SpecError, match=r"^m\.yaml:\d+: search\.method: evolve needs a latency budget "
                                        r"\(allowed: evolve with constraints\.max_latency_ms"):
        SearchSettings.from_space(load_space_text(base + "search:\n  method: evolve\n", "m.yaml"))
    ok = load_space_text(base.replace("constraints:\n", "constraints:\n  max_latency_ms: 2\n")
                         + "search:\n  method: evolve\n", "m.yaml")
    assert SearchSettings.from_space(ok).method == "evolve"


def _largest_ms(table: Path) -> float:
    from archsearch.candidate import largest_candidate
    from archsearch.cost.latency import load_table, predict

    return float(predict([largest_candidate(load_space(ROOT / "search_spaces" / "tiny.yaml"))], load_table(table))[0])


def test_evolve_on_the_tiny_space_records_trials_a_path_and_reaches_the_budget(tmp_path: Path, tiny_table: Path,
                                                                               one_thread) -> None:
    from archsearch.report import write_report

    budget = round(0.55 * _largest_ms(tiny_table), 4)
    spec = make_spec(tmp_path, tiny_table, proxy=EVOLVE_PROXY, search={"method": "evolve"},
                     constraints={"max_latency_ms": budget})
    space = load_space(spec)
    run = run_search(space, reports_dir=tmp_path / "reports", progress=None)
    evo = run.evolution
    assert evo is not None and evo.reached_budget and evo.actions
    taken = [a for a in evo.actions if a.taken]
    assert taken and all(a.kind == "remove" for a in taken[:1])
    # every evaluated architecture is a trial; the path's candidates are those trials
    trials = run.study.trials
    by_number = {t.number: t for t in trials}
    assert len(trials) == len({t.user_attrs["candidate_id"] for t in trials})  # each evaluated once
    for a in evo.actions:
        assert by_number[a.trial].user_attrs["candidate_id"] == a.candidate_id
    final = by_number[evo.final_trial]
    assert final.user_attrs["latency_ms"] <= budget and final.state.name == "COMPLETE"
    # removals over the budget took the lowest value among the evaluated actions of their step
    for a in taken:
        if a.kind == "remove":
            rivals = [b.value for b in evo.actions if b.step == a.step and b.value is not None]
            assert a.value == min(rivals)

    meta = write_store(run.study, run.study_dir)
    out = run.study_dir
    assert meta["method"] == "evolve" and evo.final_candidate in meta["pareto"]
    chosen_ids = {by_number[n].user_attrs["candidate_id"] for n in evo.chosen}
    assert set(meta["pareto"]) <= chosen_ids and (out / "pareto" / f"{evo.final_candidate}.yaml").is_file()
    path = pd.read_csv(out / "evolution.csv")
    assert list(path.columns) == list(EVOLUTION_COLUMNS) and len(path) == len(evo.actions)
    assert path["taken"].sum() == len(taken)
    df = pd.read_csv(out / "trials.csv", dtype={"candidate_id": str})
    assert len(df) == len(trials)

    page = write_report(out).read_text()
    assert "The evolution&#x27;s path" in page or "The evolution's path" in page
    assert "Actions taken, in order" in page and "Blocks removed and added, per stage" in page
    first = taken[0]
    assert f"<code>{first.dimension}</code>" in page

    # --resume replays the path from the finished trials: nothing new is evaluated
    again = run_search(space, resume=True, reports_dir=tmp_path / "reports", progress=None)
    assert len(again.study.trials) == len(trials)
    assert [(a.dimension, a.after, a.taken) for a in again.evolution.actions] == \
        [(a.dimension, a.after, a.taken) for a in evo.actions]


def test_evolve_runs_through_the_cli(tmp_path: Path, tiny_table: Path) -> None:
    from typer.testing import CliRunner

    from archsearch.cli.main import app

    budget = round(0.8 * _largest_ms(tiny_table), 4)
    spec = make_spec(tmp_path, tiny_table, proxy=EVOLVE_PROXY, search={"method": "evolve"},
                     constraints={"max_latency_ms": budget})
    res = CliRunner().invoke(app, ["run", str(spec), "--reports-dir", str(tmp_path / "reports"), "--no-progress"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "reports" / "t"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["evolution"]["reached_budget"] and (out / "evolution.csv").is_file() and meta["pareto"]
    assert "evolution" in (out / "index.html").read_text()
