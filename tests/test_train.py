"""``archsearch train``: a Pareto candidate distilled further, saved and reloadable."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from archsearch.candidate import sample
from archsearch.cli.main import app
from tests.conftest import SPACES


def test_train_saves_a_reloadable_student(tmp_path, monkeypatch, tiny_space):
    torch.set_num_threads(1)
    spec = tmp_path / "tiny.yaml"
    spec.write_text((SPACES / "tiny.yaml").read_text() + """
proxy:
  width_mult: 1.0
  resolution: 8
  steps: 2
  batch: 2
  holdout: 4
  teacher: {builtin: image, train_steps: 3, width: 32, batch: 4, data_size: 16}
""")
    c = sample(tiny_space, 0)
    cand = c.save(tmp_path / f"{c.id}.yaml")
    out = tmp_path / "trained"
    r = CliRunner().invoke(app, ["train", str(cand), "--spec", str(spec), "--steps", "3",
                                 "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["candidate"] == c.id and metrics["steps"] == 3 and len(metrics["loss_curve"]) == 3
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
