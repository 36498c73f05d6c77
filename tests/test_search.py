"""`archsearch run`: settings, a real short search, infeasible and failing trials, determinism."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState
from search_helpers import PROXY, ROOT, make_spec
from typer.testing import CliRunner

from archsearch.errors import ArchsearchError, ParameterError, SpecError
from archsearch.search import SearchSettings, run_search, storage_url
from archsearch.spec import load_space, load_space_text
from archsearch.store import write_store

runner = CliRunner()


# --------------------------------------------------------------------------- settings (no training)


def test_search_section_defaults(tiny_space) -> None:
    s = SearchSettings.from_space(tiny_space)
    assert s.sampler == "gp" and s.n_trials == 20 and s.seed == 0
    assert s.objectives == ("quality", "latency_ms", "params") and s.directions == ["minimize"] * 3
    assert s.study == "tiny" and s.max_params == 5e6 and s.workers is None
    assert s.population() == 8 and s.startup() == 4  # gp: max(4, min(10, n_trials // 5)) random starts


@pytest.mark.parametrize(
    "search, pattern",
    [
        ({"sampler": "cmaes"}, r"search\.sampler: bad value 'cmaes' \(allowed: nsga2, tpe, gp, random\)"),
        ({"n_trials": 0}, r"search\.n_trials: bad value 0 \(allowed: an integer >= 1\)"),
        ({"objectives": ["latency", "params"]}, r"search\.objectives: a search needs quality and a cost"),
        ({"objectives": ["quality", "speed"]}, r"search\.objectives\[1\]: bad value 'speed' \(allowed: quality, latency"),
        ({"workrs": 2}, r"search\.workrs: unknown key \(allowed: objectives, sampler"),
        ({"study": "a/b"}, r"search\.study: bad study name"),
        ({"reference_point": {"quality": 1.0}}, r"search\.reference_point: missing objective latency_ms"),
    ],
)
def test_bad_search_values_are_one_line_errors_naming_file_line_and_key(search: dict, pattern: str) -> None:
    text = (Path(__file__).parent.parent / "search_spaces" / "tiny.yaml").read_text()
    text += "search:\n" + "".join(f"  {line}\n" for line in yaml.safe_dump(search).splitlines())
    space = load_space_text(text, "tiny_bad.yaml")
    with pytest.raises(SpecError, match=r"^tiny_bad\.yaml:\d+: " + pattern) as info:
        SearchSettings.from_space(space)
    assert "\n" not in str(info.value)


def test_cli_overrides_are_checked(tiny_space) -> None:
    s = SearchSettings.from_space(tiny_space).with_overrides(trials=3, seed=5, study="x-1", timeout=9)
    assert (s.n_trials, s.seed, s.study, s.timeout) == (3, 5, "x-1", 9.0)
    # the library names its parameter; `archsearch run` shows its flag (test_cli_errors_are_one_line)
    with pytest.raises(ParameterError, match=r"^trials 0: must be an integer >= 1$") as info:
        s.with_overrides(trials=0)
    assert info.value.param == "trials"
    with pytest.raises(ParameterError, match=r"^study '\.\./x'") as info:
        s.with_overrides(study="../x")
    assert info.value.param == "study"
    for kwargs, param in (({"sampler": "cmaes"}, "sampler"), ({"timeout": -1}, "timeout"), ({"seed": -1}, "seed"),
                          ({"workers": 0}, "workers"), ({"storage": " "}, "storage")):
        with pytest.raises(ParameterError) as info:
            s.with_overrides(**kwargs)
        assert info.value.param == param and "--" not in str(info.value)


def test_storage_forms(tmp_path: Path) -> None:
    assert storage_url(None, tmp_path / "s") == f"sqlite:///{(tmp_path / 's' / 'study.db').resolve()}"
    assert storage_url("postgresql://u@h/db", tmp_path) == "postgresql://u@h/db"
    assert storage_url(str(tmp_path / "x.db"), tmp_path) == f"sqlite:///{tmp_path / 'x.db'}"
    assert storage_url(str(tmp_path / "j.log"), tmp_path) == str(tmp_path / "j.log")
    with pytest.raises(ArchsearchError, match="not an Optuna URL"):
        storage_url("study.txt", tmp_path)


# --------------------------------------------------------------------------- real searches


def _trained_ids(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Spy on the proxy run: the ids of every candidate that was trained."""
    import archsearch.distill as distill

    real = distill.distill
    seen: list[str] = []

    def spy(candidate, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        seen.append(candidate.id)
        return real(candidate, *args, **kwargs)

    monkeypatch.setattr(distill, "distill", spy)
    return seen


def test_short_search_end_to_end_and_infeasible_candidates_are_never_trained(
    tmp_path: Path, tiny_table: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from archsearch.cli.main import app

    trained = _trained_ids(monkeypatch)
    # a latency limit at the space's median (the table's own predictions): some candidates
    # are rejected, whatever the device profile's absolute figures
    from archsearch.candidate import enumerate_candidates
    from archsearch.cost.latency import load_predictor

    lat = load_predictor(tiny_table).predict(list(enumerate_candidates(load_space(ROOT / "search_spaces" / "tiny.yaml"))))
    budget = float(np.median(lat))
    spec = make_spec(tmp_path, tiny_table, constraints={"max_latency_ms": budget}, search={"n_trials": 4, "warm_start": False})
    # (random: the model-based samplers start from feasible candidates only)
    res = runner.invoke(app, ["run", str(spec), "--reports-dir", str(tmp_path / "reports"), "--no-progress",
                              "--sampler", "random"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "reports" / "t"
    df = pd.read_csv(out / "trials.csv", dtype={"candidate_id": str})
    assert len(df) == 4 and set(df["state"]) <= {"complete", "infeasible"}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sampler"] == "random" and meta["n_trials"] == 4
    assert meta["constraints"]["max_latency_ms"] == budget

    done = df[df["state"] == "complete"]
    bad = df[df["state"] == "infeasible"]
    assert len(done) >= 1 and len(bad) >= 1, "the seeded trials should include both kinds"
    assert (done["latency_ms"] <= budget).all() and np.isfinite(done["quality"]).all()
    assert all(len(json.loads(c)) == PROXY["steps"] for c in done["loss_curve"])
    # infeasible: over the limit, recorded with costs and reason, never trained
    assert (bad["latency_ms"] > budget).all() and bad["quality"].isna().all()
    assert all(f"max_latency_ms {budget:g}" in r for r in bad["fail_reason"])
    assert set(bad["candidate_id"]).isdisjoint(trained)
    assert set(trained) == set(done.loc[done["duplicate_of"].isna(), "candidate_id"])

    # the front is written as loadable candidate files, and the report exists
    from archsearch.candidate import Candidate

    for cid in df.loc[df["pareto"], "candidate_id"]:
        assert Candidate.from_yaml(out / "pareto" / f"{cid}.yaml").id == cid
    assert (out / "study.db").is_file() and (out / "latency_breakdown.csv").is_file()
    assert "Pareto candidates" in res.output and f"report: {out / 'index.html'}" in res.output
    assert (out / "index.html").is_file()


def test_failing_trials_are_recorded_and_the_study_goes_on(
    tmp_path: Path, tiny_table: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import archsearch.distill as distill

    real = distill.distill
    calls = {"n": 0}
    faults = [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        distill.TrialFailed("loss is nan at step 2 of 3"),
        RuntimeError("shape mismatch in block up.0"),
    ]

    def flaky(candidate, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        calls["n"] += 1
        if calls["n"] <= len(faults):
            raise faults[calls["n"] - 1]
        return real(candidate, *args, **kwargs)

    monkeypatch.setattr(distill, "distill", flaky)
    spec = make_spec(tmp_path, tiny_table, search={"n_trials": 4, "sampler": "random"})
    run = run_search(load_space(spec), reports_dir=tmp_path / "reports", progress=None)
    assert run.counts["done"] == 4
    df = pd.read_csv(write_store(run.study).path / "trials.csv", dtype={"candidate_id": str})
    failed = df[df["state"] == "failed"]
    reasons = sorted(failed["fail_reason"])
    assert reasons == ["OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
                       "RuntimeError: shape mismatch in block up.0", "loss is nan at step 2 of 3"]
    # failed trials keep their costs; the remaining trials completed normally
    assert failed["params"].notna().all()
    assert (df["state"] == "complete").sum() == 1
    assert df.loc[df["state"] == "complete", "quality"].notna().all()


def test_same_seed_same_search(tmp_path: Path, tiny_table: Path) -> None:
    spec = load_space(make_spec(tmp_path, tiny_table, search={"n_trials": 2, "sampler": "random", "seed": 11}))
    runs = [run_search(spec, study=name, reports_dir=tmp_path / "reports", progress=None) for name in "ab"]
    a, b = ([(t.user_attrs["candidate_id"], t.values) for t in r.study.trials] for r in runs)
    assert a == b
    assert all(v is not None and math.isfinite(v[0]) for _, v in a)


def test_an_existing_study_is_only_continued_with_resume(tmp_path: Path, tiny_table: Path) -> None:
    spec_path = make_spec(tmp_path, tiny_table, search={"n_trials": 1, "sampler": "random"})
    space = load_space(spec_path)
    run_search(space, reports_dir=tmp_path / "reports", progress=None)
    with pytest.raises(ArchsearchError, match=r"resume not set and study 't' already exists .* with 1 trials: set it to continue"):
        run_search(space, reports_dir=tmp_path / "reports", progress=None)
    from archsearch.cli.main import app  # the command names its flag

    res = runner.invoke(app, ["run", str(spec_path), "--reports-dir", str(tmp_path / "reports"), "--no-progress"])
    assert res.exit_code == 2 and "error: --resume not set and study 't' already exists" in res.output
    again = run_search(space, resume=True, reports_dir=tmp_path / "reports", progress=None)
    assert again.resumed and len(again.study.trials) == 1  # nothing left to run
    changed = load_space(make_spec(tmp_path, tiny_table, proxy={"steps": 4}, search={"n_trials": 1}))
    with pytest.raises(ArchsearchError, match=r"resume set but study 't' was made with another proxy"):
        run_search(changed, resume=True, reports_dir=tmp_path / "reports", progress=None)


def test_cli_errors_are_one_line(tmp_path: Path, tiny_table: Path) -> None:
    from archsearch.cli.main import app

    res = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "file not found" in res.output
    spec = make_spec(tmp_path, tiny_table)
    res = runner.invoke(app, ["run", str(spec), "--backend", "spark", "--reports-dir", str(tmp_path)])
    assert res.exit_code == 2 and "error: --backend 'spark': unknown (allowed: local, ray)" in res.output
    assert "Traceback" not in res.output
    for args, message in (
        (["--trials", "0"], "error: --trials 0: must be an integer >= 1"),
        (["--workers", "0"], "error: --workers 0: must be an integer >= 1"),
        (["--study", "../x"], "error: --study '../x': bad study name"),
        (["--device", "tpu"], "error: --device 'tpu': unknown (allowed: auto, cpu, cuda, mps, cuda:N)"),
    ):
        res = runner.invoke(app, ["run", str(spec), "--reports-dir", str(tmp_path), *args])
        assert res.exit_code == 2 and res.output.startswith(message), (args, res.output)
        assert len(res.output.strip().splitlines()) == 1

    # the library itself names parameters, never flags
    with pytest.raises(ParameterError, match=r"^backend 'spark': unknown") as info:
        run_search(load_space(spec), backend="spark", reports_dir=tmp_path)
    assert info.value.param == "backend"
    with pytest.raises(ParameterError, match=r"^address 10\.0\.0\.1:6379: needs backend 'ray'"):
        run_search(load_space(spec), address="10.0.0.1:6379", reports_dir=tmp_path)
    with pytest.raises(ParameterError, match=r"^device 'tpu': unknown"):
        run_search(load_space(spec), device="tpu", reports_dir=tmp_path)


@pytest.mark.slow
def test_two_local_workers_share_the_study(tmp_path: Path, tiny_table: Path) -> None:
    import os

    spec = load_space(make_spec(tmp_path, tiny_table, search={"n_trials": 4, "sampler": "random"}))
    run = run_search(spec, workers=2, reports_dir=tmp_path / "reports", progress=None)
    trials = run.study.trials
    assert len(trials) == 4  # the ask lock: no overshoot
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    owners = {t.user_attrs["owner"].rsplit(":", 1)[1] for t in trials}
    assert len(owners) == 2 and str(os.getpid()) not in owners


def test_ctrl_c_keeps_finished_trials_and_marks_the_running_one_interrupted(
    tmp_path: Path, tiny_table: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import archsearch.distill as distill
    from archsearch.cli.main import app

    real = distill.distill
    calls = {"n": 0}

    def interrupted_second(candidate, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(candidate, *args, **kwargs)

    monkeypatch.setattr(distill, "distill", interrupted_second)
    spec = make_spec(tmp_path, tiny_table, search={"n_trials": 4, "sampler": "random"})
    reports = tmp_path / "reports"
    res = runner.invoke(app, ["run", str(spec), "--reports-dir", str(reports), "--no-progress", "--no-report"])
    assert res.exit_code == 130, res.output
    assert f"interrupted: continue with `archsearch run {spec} --resume`" in res.output
    df = pd.read_csv(reports / "t" / "trials.csv")
    assert df["state"].tolist() == ["complete", "failed"] and df["fail_reason"].iloc[1] == "interrupted"


def test_a_timeout_stops_new_trials(tmp_path: Path, tiny_table: Path) -> None:
    spec = load_space(make_spec(tmp_path, tiny_table, search={"n_trials": 5, "timeout": 0.001, "warm_start": False}))
    run = run_search(spec, reports_dir=tmp_path / "reports", progress=None)
    assert run.counts["done"] == 0 and run.study.trials == []
    meta = write_store(run.study)
    assert meta["counts"]["complete"] == 0 and meta["pareto"] == [] and meta["hypervolume"] == 0.0


@pytest.mark.parametrize("sampler", ["nsga2", "tpe", "gp", "random"])
def test_every_sampler_runs_past_its_start_up_phase_with_constraints(tiny_space, sampler: str) -> None:
    """Samplers on the define-by-run space with set_constraint (scores faked: no training)."""
    from archsearch.search._objective import TrialRecord, record, resolve_candidate
    from archsearch.search._study import make_sampler

    n = 5 if sampler == "gp" else 12  # start-up: 4 trials; a GP step costs seconds on 2 cores
    settings = SearchSettings.from_space(tiny_space).with_overrides(sampler=sampler, trials=n)
    study = optuna.create_study(directions=settings.directions, sampler=make_sampler(settings))
    for _ in range(n):
        trial = study.ask()
        cand = resolve_candidate(trial, tiny_space)
        h = int(cand.id[:6], 16) / 16**6
        lat = 1.0 + sum(s.channels for s in cand.stages) / 32
        rec = TrialRecord(candidate=cand, state="complete", params=int(1e5 * lat), flops=1, latency_ms=lat,
                          quality=h, constraints={"max_latency_ms": lat / 3.5 - 1})
        if rec.constraints["max_latency_ms"] > 0:
            rec.state, rec.quality = "infeasible", None
        record(study, trial, rec, settings.objectives)
    states = [t.state for t in study.trials]
    assert len(states) == n and TrialState.RUNNING not in states
    assert all(t.state == TrialState.PRUNED for t in study.trials if t.constraints["max_latency_ms"] > 0)
    assert {t.number for t in study.best_trials} <= {t.number for t in study.trials if t.state == TrialState.COMPLETE}


def test_the_warm_start_spreads_feasible_candidates_over_cost(tiny_space, tiny_table: Path) -> None:
    from archsearch.candidate import resolve
    from archsearch.cost import count_params
    from archsearch.cost.latency import load_table, predict
    from archsearch.search._warmstart import spread_start

    table = load_table(tiny_table)
    settings = SearchSettings.from_space(tiny_space)
    from archsearch.candidate import enumerate_candidates

    budget = float(np.median(predict(list(enumerate_candidates(tiny_space)), table)))  # half the space
    settings = settings.__class__(**{**settings.__dict__, "max_latency_ms": budget})
    picks = spread_start(tiny_space, settings, table, k=6, seed=0)
    assert len(picks) == 6

    class Fixed:  # replays recorded choices, as Optuna does for an enqueued trial
        def __init__(self, params: dict) -> None:
            self.params = params

        def categorical(self, name, options):  # noqa: ANN001, ANN201
            assert self.params[name] in options
            return self.params[name]

        def integer(self, name, low, high, step):  # noqa: ANN001, ANN201
            return self.params[name]

    cands = [resolve(tiny_space, Fixed(p)) for p in picks]
    lat = predict(cands, table)
    assert len({c.id for c in cands}) == 6 and (lat <= budget).all()
    # spread over the feasible range: both ends of a larger feasible sample are reached
    pool_lat = predict([resolve(tiny_space, Fixed(p)) for p in spread_start(tiny_space, settings, table, k=64)], table)
    assert lat.min() <= np.percentile(pool_lat, 10) and lat.max() >= np.percentile(pool_lat, 75)
    assert max(count_params(c) for c in cands) > 2 * min(count_params(c) for c in cands)


def test_a_video_space_searches_its_temporal_layers(tmp_path: Path, tiny_video_table: Path) -> None:
    spec = load_space(make_spec(tmp_path, tiny_video_table, base="tiny_video.yaml",
                                search={"n_trials": 3, "sampler": "random"}))
    run = run_search(spec, reports_dir=tmp_path / "reports", progress=None)
    df = pd.read_csv(write_store(run.study).path / "trials.csv", dtype={"candidate_id": str})
    assert (df["state"] == "complete").all() and df["quality"].notna().all()
    assert "arch.down0.temporal" in df.columns and "arch.frames" in df.columns
