"""The store: an Optuna study read back into trials.csv, meta.json, pareto/*.yaml."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from archsearch.candidate import Candidate, sample_many
from archsearch.pareto import hypervolume
from archsearch.store import BASE_COLUMNS, trials_frame, write_store

OBJ = ["quality", "latency_ms", "params"]


def _attrs(cand: Candidate, state: str, q: float | None, lat: float, params: int, reason: str = "") -> dict:
    return {
        "candidate": cand.to_dict(), "candidate_id": cand.id, "state": state, "quality": q,
        "latency_ms": lat, "params": params, "flops": params * 10, "latency_source": "measured",
        "feasible": state != "infeasible", "fail_reason": reason or None,
        "loss_curve": [1.0, 0.5, 0.25] if state == "complete" else [], "wall_time_s": 1.5,
        "owner": "host:1",
    }


@pytest.fixture()
def study(tiny_space, tmp_path: Path) -> optuna.Study:
    """A hand-made study: 5 complete (3 on the front), 1 infeasible, 1 failed, 1 interrupted, 1 running,
    1 waiting."""
    cands = sample_many(tiny_space, 8, seed=3)
    st = optuna.create_study(directions=["minimize"] * 3, study_name="hand")
    st.set_user_attr("archsearch.objectives", OBJ)
    st.set_user_attr("archsearch.study_dir", str(tmp_path / "hand"))
    st.set_user_attr("archsearch.sampler", "nsga2")
    st.set_user_attr("archsearch.seed", 7)
    st.set_user_attr("archsearch.n_trials", 9)
    st.set_user_attr("archsearch.constraints", {"max_latency_ms": 10.0, "max_params": None})
    dist = {"x": IntDistribution(0, 10)}
    complete = [  # quality, latency, params
        (0.10, 9.0, 300), (0.20, 5.0, 200), (0.30, 2.0, 100),  # the front
        (0.35, 6.0, 250),  # dominated by (0.20, 5.0, 200)
        (0.40, 9.5, 310),  # dominated
    ]
    for i, (q, lat, p) in enumerate(complete):
        st.add_trial(create_trial(state=TrialState.COMPLETE, values=[q, lat, p], params={"x": i},
                                  distributions=dist, user_attrs=_attrs(cands[i], "complete", q, lat, p),
                                  system_attrs={"constraints:max_latency_ms": lat / 10 - 1}))
    st.add_trial(create_trial(state=TrialState.PRUNED, params={"x": 5}, distributions=dist,
                              user_attrs=_attrs(cands[5], "infeasible", None, 12.0, 50,
                                                "latency 12 ms > max_latency_ms 10"),
                              system_attrs={"constraints:max_latency_ms": 0.2}))
    st.add_trial(create_trial(state=TrialState.FAIL, params={"x": 6}, distributions=dist,
                              user_attrs=_attrs(cands[6], "failed", None, 1.0, 90, "TrialFailed: loss is nan")))
    st.add_trial(create_trial(state=TrialState.FAIL, params={"x": 7}, distributions=dist,
                              user_attrs={**_attrs(cands[7], "failed", None, 1.0, 90), "fail_reason": "interrupted"}))
    st.add_trial(create_trial(state=TrialState.RUNNING, params={"x": 8}, distributions=dist,
                              user_attrs={"owner": "host:2"}))
    st.enqueue_trial({"x": 3})  # WAITING (never started): not a row
    return st


def test_trials_frame_has_one_row_per_trial_with_the_documented_columns(study) -> None:
    df = trials_frame(study)
    assert list(df.columns[: len(BASE_COLUMNS)]) == list(BASE_COLUMNS)
    assert any(c.startswith("arch.down0.") for c in df.columns)
    assert df["state"].tolist() == ["complete"] * 5 + ["infeasible", "failed", "failed", "running"]
    assert math.isnan(df.loc[5, "quality"]) and df.loc[5, "latency_ms"] == 12.0
    assert not df.loc[5, "feasible"] and df.loc[5, "fail_reason"].startswith("latency 12 ms")
    assert df.loc[6, "fail_reason"] == "TrialFailed: loss is nan"
    assert df.loc[7, "fail_reason"] == "interrupted"
    assert df["pareto"].tolist() == [True, True, True, False, False, False, False, False, False]
    assert json.loads(df.loc[0, "loss_curve"]) == [1.0, 0.5, 0.25]
    assert Candidate.from_dict(json.loads(df.loc[0, "candidate"])).id == df.loc[0, "candidate_id"]


def test_write_store_files_match_the_study(study, tmp_path: Path) -> None:
    meta = write_store(study)
    out = tmp_path / "hand"
    df = pd.read_csv(out / "trials.csv", dtype={"candidate_id": str})
    assert len(df) == 9
    front = df[df["pareto"]]
    # every Pareto candidate has a YAML that loads back to the same architecture
    files = sorted(p.stem for p in (out / "pareto").glob("*.yaml"))
    assert files == sorted(front["candidate_id"])
    for cid in files:
        assert Candidate.from_yaml(out / "pareto" / f"{cid}.yaml").id == cid
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk["objectives"] == [{"name": o, "direction": "minimize"} for o in OBJ]
    assert on_disk["counts"] == {"complete": 5, "infeasible": 1, "failed": 2, "running": 1}
    assert on_disk["sampler"] == "nsga2" and on_disk["seed"] == 7 and on_disk["n_trials"] == 9
    assert on_disk["constraints"]["max_latency_ms"] == 10.0
    ref = np.array([on_disk["reference_point"][o] for o in OBJ])
    pts = df.loc[df["state"] == "complete", OBJ].to_numpy(float)
    assert on_disk["hypervolume"] == pytest.approx(hypervolume(pts, ref, ["minimize"] * 3))
    assert on_disk["hypervolume"] > 0 and meta["pareto"] == on_disk["pareto"]
    assert not [p for p in out.rglob("*.tmp")], "temp files left behind"


def test_the_report_reads_what_the_store_writes(study, tmp_path: Path) -> None:
    from archsearch.report import load_study

    write_store(study)
    data = load_study(tmp_path / "hand")
    assert data.objective_names == OBJ
    assert len(data.trials) == 9 and data.max_latency_ms == 10.0


def test_a_recorded_reference_point_is_used(study, tmp_path: Path) -> None:
    study.set_user_attr("archsearch.reference_point", {"quality": 1.0, "latency_ms": 10.0, "params": 400})
    meta = write_store(study)
    assert meta["reference_point"] == {"quality": 1.0, "latency_ms": 10.0, "params": 400.0}
    pts = np.array([[0.10, 9.0, 300], [0.20, 5.0, 200], [0.30, 2.0, 100], [0.35, 6.0, 250], [0.40, 9.5, 310]])
    assert meta["hypervolume"] == pytest.approx(hypervolume(pts, [1.0, 10.0, 400], ["minimize"] * 3))


def test_candidates_that_leave_the_front_lose_their_yaml(study, tmp_path: Path, tiny_space) -> None:
    write_store(study)
    before = set(p.stem for p in (tmp_path / "hand" / "pareto").glob("*.yaml"))
    better = sample_many(tiny_space, 12, seed=99)[-1]
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.01, 1.0, 50], params={"x": 9},
                                 distributions={"x": IntDistribution(0, 10)},
                                 user_attrs=_attrs(better, "complete", 0.01, 1.0, 50)))
    meta = write_store(study)
    after = set(p.stem for p in (tmp_path / "hand" / "pareto").glob("*.yaml"))
    assert after == {better.id} == set(meta["pareto"])
    assert before.isdisjoint(after)


def test_write_store_without_a_folder_is_a_clear_error() -> None:
    from archsearch.errors import ArchsearchError

    st = optuna.create_study(directions=["minimize", "minimize"])
    with pytest.raises(ArchsearchError, match="no study folder recorded"):
        write_store(st)


def test_latency_breakdown_adds_up_to_the_predicted_latency(tiny_space, tmp_path: Path) -> None:
    """Each Pareto candidate's breakdown rows (blocks + the calibration overhead, which may be
    negative) sum to the latency the trials table shows for it."""
    from archsearch.cost.latency import load_table, predict

    table_path = Path(__file__).resolve().parent.parent / "latency_tables" / "tiny-cpu-r16.csv"
    table = load_table(table_path)
    cands = sample_many(tiny_space, 4, seed=5)
    lat = [float(x) for x in predict(cands, table)]
    st = optuna.create_study(directions=["minimize"] * 3, study_name="bd")
    st.set_user_attr("archsearch.objectives", OBJ)
    st.set_user_attr("archsearch.study_dir", str(tmp_path / "bd"))
    st.set_user_attr("archsearch.latency_table", str(table_path))
    dist = {"x": IntDistribution(0, 10)}
    for i, (c, ms) in enumerate(zip(cands, lat)):
        q, p = 0.1 * (4 - i), 100 + i  # a front of all four
        st.add_trial(create_trial(state=TrialState.COMPLETE, values=[q, ms, p], params={"x": i},
                                  distributions=dist, user_attrs=_attrs(c, "complete", q, ms, p)))
    write_store(st)
    bd = pd.read_csv(tmp_path / "bd" / "latency_breakdown.csv", dtype={"candidate_id": str})
    assert (bd["stage"] == "calibration").sum() == len(cands)
    sums = bd.groupby("candidate_id")["ms"].sum()
    for c, ms in zip(cands, lat):
        assert sums[c.id] == pytest.approx(ms, rel=1e-9)


def test_a_stopped_trial_that_carries_only_the_candidate_id_does_not_break_the_store(study, tmp_path: Path) -> None:
    """A trial killed after claiming its candidate (id only), then re-run to the front."""
    front_id = study.trials[0].user_attrs["candidate_id"]
    st = optuna.create_study(directions=["minimize"] * 3, study_name="stopped")
    for k, v in study.user_attrs.items():
        st.set_user_attr(k, v)
    dist = {"x": IntDistribution(0, 10)}
    st.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0}, distributions=dist,
                              user_attrs={"candidate_id": front_id, "fail_reason": "interrupted", "owner": "h:1"}))
    st.add_trial(study.trials[0])
    meta = write_store(st, tmp_path / "stopped")
    assert meta["pareto"] == [front_id] and (tmp_path / "stopped" / "pareto" / f"{front_id}.yaml").is_file()
    assert meta["trials_csv"]["rows"] == 2
