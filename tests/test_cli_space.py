"""CLI: show / sample / validate / build, and errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from archsearch.candidate import Candidate
from archsearch.cli.main import app
from archsearch.errors import CandidateError
from tests.conftest import ROOT, SPACES

runner = CliRunner()


def test_validate_ok_and_size():
    r = runner.invoke(app, ["validate", str(SPACES / "tiny.yaml")])
    assert r.exit_code == 0, r.output
    assert "2,112 candidates" in r.output


def test_validate_bad_spec_one_line_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\nname: x\nstages:\n  - channels: 64\n    resnet_blocks: -1\n")
    # Through the real console script: what a user sees in a terminal.
    proc = subprocess.run([sys.executable, "-m", "archsearch.cli.main", "validate", str(bad)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {bad}:5: stages[0].resnet_blocks: bad value -1 (allowed: an integer from 1 to 32)"
    )
    assert "Traceback" not in proc.stderr + proc.stdout


def test_show_lists_dimensions_size_and_samples():
    r = runner.invoke(app, ["show", str(SPACES / "tiny.yaml"), "-n", "2"])
    assert r.exit_code == 0, r.output
    assert "down1.attention" in r.output and "2,112" in r.output
    assert "FLOPs" in r.output


def test_sample_writes_candidates_then_build(tmp_path):
    out = tmp_path / "cands"
    r = runner.invoke(app, ["sample", str(SPACES / "tiny.yaml"), "-n", "3", "--seed", "4", "-o", str(out)])
    assert r.exit_code == 0, r.output
    files = sorted(out.glob("*.yaml"))
    assert len(files) == 3
    c = Candidate.from_yaml(files[0])
    assert files[0].stem == c.id
    r = runner.invoke(app, ["build", str(files[0]), "--save", str(tmp_path / "model")])
    assert r.exit_code == 0, r.output
    assert "total" in r.output
    from archsearch.cost import count_params

    assert f"{count_params(c):,}" in r.output
    assert (tmp_path / "model" / "model.safetensors").is_file()



def test_missing_file():
    r = runner.invoke(app, ["show", "nope.yaml"])
    assert r.exit_code == 2
    assert "nope.yaml: file not found" in r.output


def test_validate_checks_the_search_and_proxy_sections_with_their_lines(tmp_path):
    from archsearch.cost.latency import TARGETS

    base = (SPACES / "tiny.yaml").read_text()
    cases = {
        "proxy:\n  steps: -5\n": r"proxy\.steps: bad value -5",
        "proxy:\n  bogus: 1\n": r"proxy\.bogus: unknown key",
        "search:\n  sampler: foo\n": r"search\.sampler: bad value 'foo' \(allowed: .*nsga2",
        "search:\n  target: tpu\n": r"search\.target: bad value 'tpu' \(allowed: " + ", ".join(TARGETS) + r"\)",
        "proxy:\n  teacher: {diffusers: /nonexistent/sd15}\n": r"proxy\.teacher\.diffusers: no diffusers UNet at",
    }
    import re

    for extra, pattern in cases.items():
        spec = tmp_path / "s.yaml"
        text = re.sub(r"(?ms)^(proxy|search):.*?(?=^\S|\Z)", "", base)  # drop the shipped section
        spec.write_text(text.rstrip() + "\n" + extra)
        r = runner.invoke(app, ["validate", str(spec)])
        assert r.exit_code == 2, (extra, r.output)
        line = r.output.strip().splitlines()[-1]
        assert line.startswith(f"error: {spec}:"), line
        assert re.search(pattern, line), (pattern, line)


def test_build_and_show_take_a_one_assignment_space():
    ref = SPACES / "reference" / "sd15_unet.yaml"
    r = runner.invoke(app, ["build", str(ref)])
    assert r.exit_code == 0, r.output
    assert "859,520,964" in r.output
    r = runner.invoke(app, ["show", str(ref), "-n", "1"])
    assert r.exit_code == 0, r.output
    assert "space size: 1 distinct" in r.output.replace("\n", " ")


def test_build_of_a_many_candidate_space_names_its_size():
    r = runner.invoke(app, ["build", str(SPACES / "tiny.yaml")])
    assert r.exit_code == 2
    assert "search space with 2,112 candidates, not one candidate" in r.output


def test_sample_more_than_exist_draws_all_and_show_refuses_negative(tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text("schema_version: 1\nname: two\nstages:\n  - channels: {choice: [32, 64]}\n    attention: none\n"
                    "  - channels: 64\n    attention: none\nmid: none\n")
    r = runner.invoke(app, ["sample", str(spec), "-n", "100000", "-o", str(tmp_path / "all")])
    assert r.exit_code == 0, r.output
    assert "only 2 distinct candidates" in r.output
    assert len(list((tmp_path / "all").glob("*.yaml"))) == 2
    r = runner.invoke(app, ["show", str(spec), "-n", "-1"])
    assert r.exit_code == 2


def test_a_candidate_file_given_to_a_space_command_says_what_it_is(tmp_path):
    """A pareto/<id>.yaml (or `sample -o` file) given to validate/show/sample/run: it is a
    candidate, and these are the commands that take one (not "format: unknown key")."""
    from archsearch.candidate import sample
    from archsearch.spec import load_space

    c = sample(load_space(SPACES / "tiny.yaml"), 3)
    path = c.save(tmp_path / "pareto" / f"{c.id}.yaml")
    for command in (["validate"], ["show"], ["sample"], ["run", "--reports-dir", str(tmp_path / "r")]):
        r = runner.invoke(app, [command[0], str(path), *command[1:]])
        assert r.exit_code == 2, (command, r.output)
        flat = " ".join(r.output.split())
        assert flat.startswith(f"error: {path}: this is a candidate file (archsearch.candidate/v1, id {c.id}), "
                               "not a search space"), (command, flat)
        assert "archsearch build, train, export, profile or predict" in flat, flat
        assert "unknown key" not in flat and len(r.output.strip().splitlines()) == 1
    # a candidate without its format line is recognised by its shape
    bare = {k: v for k, v in c.to_dict().items() if k not in ("format", "id")}
    import yaml

    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(bare))
    r = runner.invoke(app, ["validate", str(tmp_path / "bare.yaml")])
    assert r.exit_code == 2 and "this is a candidate file (a resolved architecture)" in r.output, r.output
    # and the commands it names do take it
    r = runner.invoke(app, ["build", str(path)])
    assert r.exit_code == 0, r.output


def test_build_and_show_refuse_a_model_that_cannot_fit_before_allocating(tmp_path, monkeypatch):
    """The one memory guard (archsearch.model.check_memory), estimated on meta: `build --save`
    counts the whole model, `show` and `build` (costing block by block) the largest block."""
    import torch

    import archsearch.model._unet as unet
    from archsearch.model import MEMORY_ENV, build_model, estimate_memory

    ref = SPACES / "reference" / "sd15_unet.yaml"
    from archsearch.candidate import load_candidate

    est = estimate_memory(load_candidate(ref))
    assert est.params == 859_520_964  # diffusers' SD-1.5 UNet, counted on meta
    between = (est.block_bytes + est.model_bytes) / 2 / 2**30  # the largest block fits, the model does not
    monkeypatch.setenv(MEMORY_ENV, f"{between:.3f}")

    real = unet.build_block

    def no_real_blocks(spec, device=None, dtype=None):
        assert device is not None and torch.device(device).type == "meta", "a block was allocated"
        return real(spec, device, dtype)

    monkeypatch.setattr(unet, "build_block", no_real_blocks)
    r = runner.invoke(app, ["build", str(ref), "--save", str(tmp_path / "m")])
    assert r.exit_code == 2, r.output
    flat = " ".join(r.output.split())
    assert flat.startswith("error: candidate ") and "its model needs 3.2" in flat and "859,520,964 parameters" in flat
    assert f"over the limit of {between:.3g} GiB ({MEMORY_ENV}={between:.3f})" in flat, flat
    assert not (tmp_path / "m").exists()
    with pytest.raises(CandidateError, match="its model needs"):
        build_model(load_candidate(ref))
    build_model(load_candidate(ref), device="meta")  # meta is free: never refused

    monkeypatch.setenv(MEMORY_ENV, f"{est.block_bytes / 2 / 2**30:.4f}")  # not even the largest block
    for command in (["build", str(ref)], ["show", str(ref), "-n", "1"]):
        r = runner.invoke(app, command)
        assert r.exit_code == 2, (command, r.output)
        last = r.output.strip().splitlines()[-1]  # show prints the space first, then refuses the sample
        assert last.startswith("error: candidate ") and "its largest block, " in last, r.output
