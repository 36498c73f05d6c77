"""Resume after a real ``kill -9``, and the Ray backend on a local 2-CPU Ray."""

from __future__ import annotations

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

from archsearch.search import run_search, storage_url
from archsearch.spec import load_space
from archsearch.store import write_store


def _states(db: Path) -> dict[int, str]:
    """Trial number -> state, read-only (opening it with Optuna would race the run's schema setup)."""
    if not db.is_file():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return dict(con.execute("SELECT number, state FROM trials").fetchall())
    except sqlite3.OperationalError:  # tables not created yet
        return {}


def _snapshot(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).trials


@pytest.mark.slow
def test_resume_after_kill_9_loses_no_finished_trial(tmp_path: Path, tiny_table: Path) -> None:
    from archsearch.cli.main import app

    spec = make_spec(tmp_path, tiny_table, search={"n_trials": 6})  # trials left to catch one running
    reports = tmp_path / "reports"
    url = storage_url(None, reports / "t")
    cmd = [sys.executable, "-m", "archsearch.cli.main", "run", str(spec), "--reports-dir", str(reports),
           "--no-progress", "--no-report"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while True:  # kill while a trial runs, after two have finished
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"
            assert time.time() < deadline, "no trial finished in time"
            states = list(_states(reports / "t" / "study.db").values())
            finished = [s for s in states if s in ("COMPLETE", "PRUNED", "FAIL")]
            if len(finished) >= 2 and "RUNNING" in states:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = {t.number: (t.state, t.values) for t in _snapshot(url, "t") if t.state.is_finished()}
    running = [t.number for t in _snapshot(url, "t") if t.state == TrialState.RUNNING]
    assert len(before) >= 2 and len(running) == 1

    res = CliRunner().invoke(app, ["run", str(spec), "--resume", "--reports-dir", str(reports),
                                   "--no-progress", "--no-report"])
    assert res.exit_code == 0, res.output
    assert f"1 interrupted trial(s) marked failed: {running[0]}" in res.output
    after = {t.number: t for t in _snapshot(url, "t")}
    for number, (state, values) in before.items():  # nothing finished was lost or changed
        assert (after[number].state, after[number].values) == (state, values)
    df = pd.read_csv(reports / "t" / "trials.csv")
    killed = df[df["number"] == running[0]].iloc[0]
    assert (killed["state"], killed["fail_reason"]) == ("failed", "interrupted")
    # the budget counts finished trials only: 6 done besides the interrupted one
    assert len(df) == 7 and df["state"].isin(["complete", "infeasible"]).sum() == 6


@pytest.mark.slow
def test_ray_backend_writes_the_same_store(tmp_path: Path, tiny_table: Path) -> None:
    ray = pytest.importorskip("ray")
    spec = load_space(make_spec(tmp_path, tiny_table, search={"n_trials": 2},
                                constraints={"max_latency_ms": 5.0}))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run = run_search(spec, backend="ray", reports_dir=tmp_path / "reports", progress=None)
    finally:
        ray.shutdown()
    trials = run.study.trials
    assert len(trials) == 2 and run.counts["done"] == 2
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert all(t.user_attrs["owner"].endswith(f":{os.getpid()}") for t in trials)  # the driver records
    meta = write_store(run.study)
    df = pd.read_csv(meta.path / "trials.csv", dtype={"candidate_id": str})
    done = df[df["state"] == "complete"]
    assert len(done) >= 1 and done["quality"].notna().all() and (done["latency_ms"] <= 5.0).all()
    assert (df.loc[df["state"] == "infeasible", "latency_ms"] > 5.0).all()
    assert set(meta["pareto"]) <= set(done["candidate_id"]) and meta["pareto"]
