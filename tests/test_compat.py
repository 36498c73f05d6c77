"""Files an earlier archsearch wrote open and resume with this one.

``tests/fixtures/compat/v0/`` was written by ``make_compat_fixtures.py`` (beside it) with the
code of commit ba1f76f, before the package was split into the data and export stages: a tiny
diffusers checkpoint, its latent cache, a latency table, a finished 2-trial study with its
store, and a training run killed after its step-1 checkpoint (its straight run's final weights
kept). Each test copies the folder and works in the copy.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from archsearch.candidate import Candidate
from archsearch.cli.main import app

V0 = Path(__file__).resolve().parent / "fixtures" / "compat" / "v0"
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def old(tmp_path, monkeypatch) -> Path:
    dst = tmp_path / "v0"
    shutil.copytree(V0, dst)
    monkeypatch.chdir(dst)
    return dst


def _trials(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_an_old_table_predicts_what_the_old_study_recorded(old):
    from archsearch.cost.latency import load_table, predict

    table = load_table(old / "table.csv")
    rows = _trials(old / "reports" / "t" / "trials.csv")
    cands = [Candidate.from_dict(json.loads(r["candidate"])) for r in rows]
    assert [c.id for c in cands] == [r["candidate_id"] for r in rows]
    got = predict(cands, table)
    assert got == pytest.approx([float(r["latency_ms"]) for r in rows], rel=1e-9)


def test_an_old_study_and_cache_validate_and_resume(old):
    r = runner.invoke(app, ["validate", "spec.yaml"])
    assert r.exit_code == 0, r.output
    before = _trials(old / "reports" / "t" / "trials.csv")
    spec = yaml.safe_load((old / "spec.yaml").read_text())
    spec["search"]["n_trials"] = 3
    (old / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    r = runner.invoke(app, ["run", "spec.yaml", "--resume", "--reports-dir", "reports", "--no-progress"])
    assert r.exit_code == 0, r.output
    after = _trials(old / "reports" / "t" / "trials.csv")
    assert len(after) == 3 and all(a["state"] == "complete" for a in after)
    keep = ("number", "candidate_id", "quality", "latency_ms", "params")
    assert [{k: a[k] for k in keep} for a in after[:2]] == [{k: b[k] for k in keep} for b in before]
    assert (old / "reports" / "t" / "index.html").is_file()


def test_an_old_training_checkpoint_resumes_to_the_old_straight_run(old):
    straight = load_file(str(old / "trained" / "model.safetensors"))
    front = sorted((old / "reports" / "t" / "pareto").glob("*.yaml"))[0]
    r = runner.invoke(app, ["train", str(front), "--spec", "spec.yaml", "--data", "cache", "--steps", "2",
                            "--width-mult", "0.5", "--batch", "2", "--out", "trained", "--device", "cpu",
                            "--sample-every", "0", "--eval-every", "1", "--checkpoint-every", "1", "--keep", "2",
                            "--log-every", "1", "--resume", "latest"])
    assert r.exit_code == 0, r.output
    assert "(1 this run" in " ".join(r.output.split()), r.output  # step 2 only: step 1 came from the file
    resumed = load_file(str(old / "trained" / "model.safetensors"))
    assert resumed.keys() == straight.keys()
    for k in straight:
        assert torch.allclose(resumed[k], straight[k], rtol=1e-5, atol=1e-6), k
    metrics = json.loads((old / "trained" / "metrics.json").read_text())
    assert metrics["steps"] == 2
