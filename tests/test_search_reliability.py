"""Reliability of `archsearch run` (issue 13): resume after a real ``kill -9`` re-runs the
interrupted trials and reaches the front of an uninterrupted run; a killed study can be
reported; two runs on one study never train one candidate twice; bad storage paths and worker
counts are refused; a cut-short trials.csv is noticed and rebuilt from the study."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from search_helpers import ROOT, make_spec
from typer.testing import CliRunner

from archsearch.errors import ArchsearchError, ParameterError, SpecError
from archsearch.search import (
    INTERRUPTED,
    SearchSettings,
    TrialSeededSampler,
    available_cores,
    recover_interrupted,
    requeue_interrupted,
    run_search,
    storage_url,
)
from archsearch.spec import load_space
from archsearch.store import check_store, load_trials, refresh_store, write_store

runner = CliRunner()


def _states(db: Path) -> dict[int, str]:
    """Trial number -> state, read-only (opening it with Optuna would race the run's schema setup)."""
    if not db.is_file():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return dict(con.execute("SELECT number, state FROM trials").fetchall())
    except sqlite3.OperationalError:  # tables not created yet
        return {}


def _stored(study_dir: Path) -> int:
    """Finished trials in the store folder's trials.csv (0 while there is none)."""
    try:
        df = pd.read_csv(study_dir / "trials.csv")
    except (OSError, pd.errors.EmptyDataError):
        return 0
    return int(df["state"].isin(["complete", "infeasible", "failed"]).sum())


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "archsearch.cli.main", *args]


def _front(df: pd.DataFrame) -> dict[str, float]:
    """candidate id -> quality on the Pareto front."""
    front = df[df["pareto"].astype(bool)].drop_duplicates("candidate_id")
    return {str(c): float(q) for c, q in zip(front["candidate_id"], front["quality"])}


def _scored(df: pd.DataFrame) -> set[str]:
    return set(df.loc[df["state"].isin(["complete", "infeasible"]), "candidate_id"].astype(str))


# --------------------------------------------------------------------------- no training


def _fake_trials(study: optuna.Study, space, n: int, *, stop_at: int | None = None) -> None:  # noqa: ANN001
    """Ask and tell ``n`` trials with made-up scores; trial ``stop_at`` is left RUNNING."""
    from archsearch.search._objective import TrialRecord, record, resolve_candidate

    for _ in range(n):
        trial = study.ask()
        trial.set_user_attr("owner", "another-host:1")
        cand = resolve_candidate(trial, space)
        if trial.number == stop_at:
            trial.set_user_attr("owner", f"{__import__('socket').gethostname()}:999999999")  # a dead process
            continue
        rec = TrialRecord(candidate=cand, state="complete", params=1, flops=1, latency_ms=1.0,
                          quality=int(cand.id[:6], 16) / 16**6)
        record(study, trial, rec, ("quality", "latency_ms", "params"))


@pytest.mark.parametrize("sampler", ["random", "nsga2"])
def test_an_interrupted_trial_is_queued_again_and_the_study_proposes_what_an_uninterrupted_one_does(
    tiny_space, sampler: str
) -> None:
    settings = SearchSettings.from_space(tiny_space).with_overrides(sampler=sampler, trials=6, seed=3)
    plain = optuna.create_study(directions=settings.directions, sampler=TrialSeededSampler(settings))
    _fake_trials(plain, tiny_space, 6)
    killed = optuna.create_study(directions=settings.directions, sampler=TrialSeededSampler(settings))
    _fake_trials(killed, tiny_space, 3, stop_at=2)  # trial 2 "was running" when the process died

    marked, elsewhere = recover_interrupted(killed)
    assert marked == [2] and elsewhere == []
    assert killed.trials[2].state == TrialState.FAIL and killed.trials[2].user_attrs["fail_reason"] == INTERRUPTED
    assert requeue_interrupted(killed) == [(2, 3)]
    assert requeue_interrupted(killed) == []  # queued once, however often a run resumes
    assert killed.trials[3].state == TrialState.WAITING and killed.trials[3].user_attrs["retry_of"] == 2
    _fake_trials(killed, tiny_space, 4)  # the re-run first, then new proposals

    def ids(st: optuna.Study) -> list[str]:
        return [t.user_attrs["candidate_id"] for t in st.trials if t.state == TrialState.COMPLETE]

    assert ids(killed) == ids(plain)  # the same candidates, in the same order
    assert killed.trials[3].user_attrs["candidate_id"] == plain.trials[2].user_attrs["candidate_id"]


def test_a_storage_file_in_a_missing_folder_is_refused(tmp_path: Path, tiny_table: Path) -> None:
    from archsearch.cli.main import app

    spec = make_spec(tmp_path, tiny_table, search={"n_trials": 1})
    missing = tmp_path / "nonexistent_dir"
    with pytest.raises(ParameterError, match=r"^storage 'sqlite:///.*nonexistent_dir/x\.db': folder .* does not exist"):
        run_search(load_space(spec), storage=str(missing / "x.db"), reports_dir=tmp_path / "r")
    res = runner.invoke(app, ["run", str(spec), "--storage", str(missing / "j.log"), "--reports-dir",
                              str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 2 and res.output.startswith(f"error: --storage '{missing / 'j.log'}': folder")
    assert not missing.exists()


def test_more_workers_than_cores_is_a_one_line_error(tmp_path: Path, tiny_table: Path) -> None:
    from archsearch.cli.main import app

    cores = available_cores()
    spec = make_spec(tmp_path, tiny_table, search={"n_trials": 1})
    res = runner.invoke(app, ["run", str(spec), "--workers", "1000", "--reports-dir", str(tmp_path / "r"),
                              "--no-progress"])
    assert res.exit_code == 2, res.output
    assert res.output == (f"error: --workers 1000: more local workers than CPU cores "
                          f"(allowed: 1 to {cores}, the CPU cores of this machine)\n")
    in_spec = make_spec(tmp_path, tiny_table, search={"n_trials": 1, "workers": 1000}, name="w")
    with pytest.raises(SpecError, match=rf"w\.yaml:\d+: search\.workers: bad value 1000 \(allowed: 1 to {cores}"):
        run_search(load_space(in_spec), reports_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before any work


def test_an_unknown_target_lists_the_known_targets(tmp_path: Path, tiny_table: Path) -> None:
    spec = make_spec(tmp_path, tiny_table, search={"target": "tpu"})
    with pytest.raises(SpecError, match=r"search\.target: bad value 'tpu' \(allowed: cpu, cuda, mps, coreml, ane, xnnpack\)") as info:
        run_search(load_space(spec), reports_dir=tmp_path / "r")
    assert "archsearch profile" not in str(info.value)


# --------------------------------------------------------------------------- short real runs


def test_progress_and_notices_go_to_callbacks_and_the_store_is_written_as_trials_finish(
    tmp_path: Path, tiny_table: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = load_space(make_spec(tmp_path, tiny_table, search={"n_trials": 2, "sampler": "random"}))
    calls: list[tuple] = []
    stores: list[int] = []

    def on_trial(study: optuna.Study) -> None:
        meta = write_store(study)
        stores.append(sum(meta["counts"].values()))

    run = run_search(spec, reports_dir=tmp_path / "r", progress=lambda *a: calls.append(a), on_trial=on_trial)
    trials = [c for c in calls if c[0] == "trials"]
    assert trials[-1][2:] == (2, 2) and "2 complete" in trials[-1][1]
    assert stores[0] == 0 and stores[-1] == 2 and stores == sorted(stores)  # before the first, after each
    assert capsys.readouterr().err == ""  # the library draws nothing
    notes: list[str] = []
    run_search(spec, resume=True, reports_dir=tmp_path / "r", log=notes.append)
    assert notes == ["study 't' already has 2 of 2 trials: nothing to run (raise the number of trials to continue it)"]
    assert run.counts["complete"] == 2


def test_a_cut_short_trials_csv_is_noticed_and_rebuilt_from_the_study(tmp_path: Path, tiny_table: Path) -> None:
    spec = load_space(make_spec(tmp_path, tiny_table, search={"n_trials": 3, "sampler": "random"}))
    run = run_search(spec, reports_dir=tmp_path / "r")
    out = write_store(run.study).path
    csv = out / "trials.csv"
    full = csv.read_text()
    csv.write_text("\n".join(full.splitlines()[:2]) + "\n")  # header + 1 of 3 rows
    with pytest.raises(ArchsearchError, match=r"trials\.csv: has 1 trial rows but meta\.json records 3 "
                                              r"\(the file was cut short"):
        load_trials(out)
    meta = refresh_store(out)  # the study is the truth
    assert meta is not None and len(load_trials(out)) == 3 and csv.read_text() == full
    # without its storage, a folder is checked, not rebuilt
    (out / "study.db").rename(tmp_path / "moved.db")
    json.loads((out / "meta.json").read_text())
    csv.write_text("\n".join(full.splitlines()[:2]) + "\n")
    m = json.loads((out / "meta.json").read_text())
    m["storage"] = f"sqlite:///{tmp_path / 'gone' / 'x.db'}"
    (out / "meta.json").write_text(json.dumps(m))
    with pytest.raises(ArchsearchError, match="cut short"):
        refresh_store(out)
    check_store(tmp_path)  # no store here: nothing to check


# --------------------------------------------------------------------------- kill -9 and concurrency


@pytest.mark.slow
def test_resume_after_kill_9_reaches_the_front_of_an_uninterrupted_run_and_a_killed_study_reports(
    tmp_path: Path, tiny_table: Path
) -> None:
    from archsearch.cli.main import app

    # random proposals, 2 worker processes: what a trial proposes depends on its slot only
    spec = make_spec(tmp_path, tiny_table, search={"n_trials": 8, "sampler": "random", "seed": 5, "threads": 1})
    reports = tmp_path / "reports"
    base = run_search(load_space(spec), study="plain", reports_dir=reports)
    plain = write_store(base.study)
    plain_df = pd.read_csv(plain.path / "trials.csv", dtype={"candidate_id": str})
    assert base.counts["done"] == 8

    db = reports / "k1" / "study.db"
    proc = subprocess.Popen(_cli("run", str(spec), "--study", "k1", "--workers", "2", "--reports-dir", str(reports),
                                 "--no-progress", "--no-report"),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 180
    try:
        while True:  # kill the whole process group while a trial runs, after two are in the store
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"
            assert time.time() < deadline, "no trial finished in time"
            states = list(_states(db).values())
            if "RUNNING" in states and _stored(reports / "k1") >= 2:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    url = storage_url(None, reports / "k1")
    running = [t.number for t in optuna.load_study(study_name="k1", storage=url).trials
               if t.state == TrialState.RUNNING]
    assert running

    # the store was written as trials finished: the killed study can be reported now
    killed_df = pd.read_csv(reports / "k1" / "trials.csv", dtype={"candidate_id": str})
    assert (reports / "k1" / "meta.json").is_file() and len(killed_df) >= 2
    res = runner.invoke(app, ["report", "k1", "--reports-dir", str(reports)])
    assert res.exit_code == 0, res.output
    assert (reports / "k1" / "index.html").is_file()

    res = runner.invoke(app, ["run", str(spec), "--study", "k1", "--resume", "--reports-dir", str(reports),
                              "--no-progress", "--no-report"])
    assert res.exit_code == 0, res.output
    assert f"{len(running)} interrupted trial(s) marked failed: {', '.join(map(str, running))}" in res.output
    assert f"{len(running)} interrupted trial(s) queued to run again" in res.output
    df = pd.read_csv(reports / "k1" / "trials.csv", dtype={"candidate_id": str})
    assert (df["fail_reason"] == "interrupted").sum() == len(running)
    assert df["state"].isin(["complete", "infeasible"]).sum() == 8
    # every candidate of the uninterrupted run was evaluated, the interrupted ones included
    assert _scored(df) == _scored(plain_df)
    # the same front: the same candidates with the same scores (float32 training in two
    # processes agrees to ~1e-7, not bit for bit)
    front, plain_front = _front(df), _front(plain_df)
    assert front and set(front) == set(plain_front)
    assert front == pytest.approx(plain_front, rel=1e-5)


@pytest.mark.slow
def test_two_concurrent_runs_on_one_study_never_train_one_candidate_twice(tmp_path: Path, tiny_table: Path) -> None:
    from archsearch.search._warmstart import spread_start

    spec = make_spec(tmp_path, tiny_table, search={"n_trials": 1, "sampler": "random", "warm_start": False,
                                                   "threads": 1}, proxy={"steps": 12})
    reports = tmp_path / "reports"
    space = load_space(spec)
    first = run_search(space, study="k2", reports_dir=reports)
    # the next four trials propose two candidates, twice each, so both runs want them at once
    settings = SearchSettings.from_space(space)
    for params in spread_start(space, settings, None, 2, seed=77):
        first.study.enqueue_trial(params)
        first.study.enqueue_trial(params)
    cmd = _cli("run", str(spec), "--study", "k2", "--resume", "--trials", "5", "--reports-dir", str(reports),
               "--no-progress", "--no-report")
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
             for _ in range(2)]
    try:
        outs = [p.communicate(timeout=240)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs
    study = optuna.load_study(study_name="k2", storage=first.storage_url)
    trials = study.trials
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    trained: dict[str, list[int]] = {}
    for t in trials:
        if t.user_attrs.get("duplicate_of") is None:
            trained.setdefault(t.user_attrs["candidate_id"], []).append(t.number)
        else:  # a reused score: the trial that trained the same candidate
            orig = trials[t.user_attrs["duplicate_of"]]
            assert orig.user_attrs["candidate_id"] == t.user_attrs["candidate_id"]
            assert orig.user_attrs.get("duplicate_of") is None and t.values == orig.values
    assert all(len(v) == 1 for v in trained.values()), trained  # no candidate trained twice
    assert len(trained) == 3  # (tests/test_claim.py puts the two runs' calls in the racy order by hand)
    # the store agrees with the study after both runs wrote it
    df = load_trials(reports / "k2")
    assert len(df) == 5 and df["duplicate_of"].notna().sum() == 2
