"""``archsearch train``: a Pareto candidate distilled further, saved and reloadable."""

from __future__ import annotations

import json

import pytest
from search_helpers import tiny_spec
from typer.testing import CliRunner

from archsearch.candidate import sample
from archsearch.cli.main import app

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_saves_a_reloadable_student(tmp_path, tiny_space, cached_teacher):
    spec = tiny_spec(tmp_path)
    c = sample(tiny_space, 0)
    cand = c.save(tmp_path / f"{c.id}.yaml")
    out = tmp_path / "trained"
    r = CliRunner().invoke(app, ["train", str(cand), "--spec", str(spec), "--steps", "3",
                                 "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["candidate"] == c.id and metrics["steps"] == 3 and len(metrics["loss_curve"]) == 3
    assert metrics["teacher"] == cached_teacher.fingerprint
    from archsearch.model import ArchUNet

    model = ArchUNet.from_pretrained(out)
    assert model.candidate.resolution == 8  # trained at the spec's proxy resolution
    assert [s.resnet_blocks for s in model.candidate.stages] == [s.resnet_blocks for s in c.stages]


def test_train_without_spec_names_the_fix(tmp_path, tiny_space):
    c = sample(tiny_space, 0)
    bare = type(c).from_dict({**c.to_dict(), "origin": "no_such_space"})
    path = bare.save(tmp_path / "c.yaml")
    r = CliRunner().invoke(app, ["train", str(path)])
    assert r.exit_code == 2
    assert "pass --spec search_spaces/<space>.yaml" in r.output


def test_train_errors_name_the_flags(tmp_path, tiny_space, cached_teacher):
    """A bad setting given on the command line is reported by its flag, not the library's name."""
    c = sample(tiny_space, 0)
    cand = c.save(tmp_path / f"{c.id}.yaml")
    spec = tiny_spec(tmp_path)
    r = CliRunner().invoke(app, ["train", str(cand), "--spec", str(spec), "--resolution", "7",
                                 "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert "error: --resolution: bad value 7 (allowed: a multiple of 2" in r.output, r.output
    r = CliRunner().invoke(app, ["train", str(cand), "--spec", str(spec), "--width-mult", "5",
                                 "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert r.exit_code == 2 and "error: --width-mult: bad value 5.0 (allowed: a number in (0, 4])" in r.output
    r = CliRunner().invoke(app, ["train", str(cand), "--spec", str(spec), "--device", "tpu",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "error: --device: bad value 'tpu'" in r.output, r.output
    # a bad value in the spec file itself still names the file, line and key
    bad = tiny_spec(tmp_path, holdout=0)
    r = CliRunner().invoke(app, ["train", str(cand), "--spec", str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and f"error: {bad}:" in r.output and "proxy.holdout" in r.output, r.output
