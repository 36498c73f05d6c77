"""Absurd input refused before it costs anything (issue 13 §3, §6): candidate files within the
spec's bounds, the one memory guard estimated on meta, and a run whose latency target has no
table that lists the targets instead of sending the user to a command that fails too."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from archsearch.candidate import Candidate, load_candidate, sample
from archsearch.cli.main import app
from archsearch.errors import ArchsearchError, CandidateError
from archsearch.spec import LIMITS, load_space, load_space_text
from tests.conftest import SPACES

runner = CliRunner()


# --------------------------------------------------------------------------- candidate files


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["stages"][0].update(channels=100000), "stages[0].channels: bad value 100000 (allowed: an integer from 1 to 8,192)"),
    (lambda d: d["stages"][0].update(channels=1.0e9), "stages[0].channels: bad value 1000000000.0"),
    (lambda d: d.update(context_length=10 ** 9), "context_length: bad value 1000000000 (allowed: an integer from 1 to 4,096)"),
    (lambda d: d.update(resolution=1 << 20), "resolution: bad value 1048576 (allowed: an integer from 1 to 1,024)"),
    (lambda d: d["stages"][1].update(transformer_depth=10 ** 6), "stages[1].transformer_depth: bad value 1000000 (allowed: an integer from 0 to 64)"),
    (lambda d: d["stages"][1].update(ffn_ratio="big"), "stages[1].ffn_ratio: bad value 'big' (allowed: a number from 0 to 16)"),
    (lambda d: d["stages"][0].update(resnet_blocks=10 ** 6), "stages[0].resnet_blocks: bad value 1000000 (allowed: an integer from 1 to 48)"),
])
def test_a_candidate_file_is_held_to_the_spec_bounds(tmp_path, tiny_space, edit, message):
    d = sample(tiny_space, 1).to_dict()
    d.pop("id")
    edit(d)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(CandidateError) as exc:
        Candidate.from_yaml(path)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert str(exc.value).startswith(str(path))


def test_the_bounds_fit_every_shipped_space_and_reference_backbone():
    """SDXL (2048-wide text, depth 10) and the mobile spaces are well inside the bounds."""
    for path in sorted(SPACES.rglob("*.yaml")):
        space = load_space(path)
        assert space.size() >= 1
        c = sample(space, 0)
        assert all(s.channels <= LIMITS["channels"] for s in c.stages)
        assert c.context_dim <= LIMITS["context_dim"] and c.context_length <= LIMITS["context_length"]


def test_a_long_range_is_never_listed():
    """Counting and choosing a range does not build its list (a PathChooser computes its arity)."""
    from archsearch.spec import PathChooser

    ch = PathChooser([5])
    assert ch.integer("x", 1, 10 ** 12, 3) == 16 and ch.arity == [(10 ** 12 - 1) // 3 + 1]


# --------------------------------------------------------------------------- the memory guard


def test_the_estimate_is_the_exact_parameter_count_on_meta():
    from archsearch.cost import count_params
    from archsearch.model import estimate_memory

    sdxl = load_candidate(SPACES / "reference" / "sdxl_unet.yaml")
    est = estimate_memory(sdxl)
    assert est.params == count_params(sdxl) == 2_567_463_684
    assert est.weights_bytes == 4 * est.params and est.element_size == 4  # no buffers in this UNet
    import torch

    assert estimate_memory(sdxl, torch.bfloat16).weights_bytes == 2 * est.params
    assert est.largest_block_bytes < est.weights_bytes and est.activation_bytes > 0


def test_the_guard_refuses_before_allocating_and_names_the_limit(monkeypatch, tiny_space):
    import archsearch.model._memory as memory
    from archsearch.model import MEMORY_ENV, ArchUNet, build_model, check_memory, memory_limit

    c = sample(tiny_space, 0)
    limit, where = memory_limit()
    assert limit <= memory.MAX_MODEL_BYTES and where
    monkeypatch.setattr(memory, "_ram_bytes", lambda: 1 << 20)  # a machine with 1 MiB of RAM
    assert memory_limit() == (1 << 20, "this machine's RAM, 0.0 GiB")
    with pytest.raises(CandidateError, match=r"its model needs .* over the limit of 1 MiB \(this machine's RAM"):
        build_model(c)
    with pytest.raises(CandidateError):
        ArchUNet(c)
    build_model(c, device="meta")  # free
    monkeypatch.setenv(MEMORY_ENV, "1")  # the variable replaces both limits
    assert memory_limit() == (1 << 30, f"{MEMORY_ENV}=1")
    assert check_memory(c).params == sum(p.numel() for p in build_model(c).parameters())
    monkeypatch.setenv(MEMORY_ENV, "lots")
    with pytest.raises(CandidateError, match=f"{MEMORY_ENV}='lots': bad value"):
        check_memory(c)


def test_train_refuses_a_student_that_cannot_fit_before_loading_the_teacher(tmp_path, tiny_space, monkeypatch):
    import archsearch.distill as distill
    from archsearch.model import MEMORY_ENV

    def no_teacher(*a, **k):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(distill, "load_teacher", no_teacher)
    monkeypatch.setenv(MEMORY_ENV, "0.00001")
    c = sample(tiny_space, 0)
    path = c.save(tmp_path / f"{c.id}.yaml")
    r = runner.invoke(app, ["train", str(path), "--spec", str(SPACES / "tiny.yaml"), "--steps", "1",
                            "--out", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("error: candidate ") and "over the limit of" in last, r.output
    assert not (tmp_path / "out").exists()


def test_validate_and_run_refuse_a_space_whose_largest_block_cannot_be_costed(tmp_path):
    """A trial costs each candidate block by block at full size: a space whose largest candidate
    (the largest option of every dimension) has a block that cannot fit is refused up front."""
    text = (SPACES / "tiny.yaml").read_text().replace("channels: {choice: [32, 48]}", "channels: {choice: [32, 8192]}")
    text = text.replace("transformer_depth: {range: [1, 2]}", "transformer_depth: {range: [1, 64]}")
    text = text.replace("ffn_ratio: {choice: [2, 3]}", "ffn_ratio: {choice: [2, 16]}")
    path = tmp_path / "huge.yaml"
    path.write_text(text)
    load_space(path)  # every size is within its bound ...
    for command in (["validate", str(path)], ["run", str(path), "--reports-dir", str(tmp_path / "r")]):
        r = runner.invoke(app, command)
        assert r.exit_code == 2, r.output
        flat = " ".join(r.output.split())
        assert flat.startswith(f"error: {path}: its largest candidate cannot be costed: candidate "), flat
        assert "its largest block, down.1" in flat and "over the limit of" in flat, flat  # ... but not together


# --------------------------------------------------------------------------- latency targets


def test_a_target_without_a_table_lists_the_targets_and_what_works_here(tmp_path, monkeypatch):
    import archsearch.search._check as check
    from archsearch.cost.latency import TARGETS

    monkeypatch.setattr(check, "_unprofilable_reason",
                        lambda t: {"cuda": "no CUDA device is visible here",
                                   "mps": "the Metal backend needs macOS on Apple silicon"}.get(t))
    base = (SPACES / "tiny.yaml").read_text()
    for target in ("mps", "cuda"):
        path = tmp_path / f"{target}.yaml"
        path.write_text(base + f"search: {{target: {target}}}\n")
        r = runner.invoke(app, ["run", str(path), "--reports-dir", str(tmp_path / "r")])
        assert r.exit_code == 2, r.output
        flat = " ".join(r.output.split())
        assert f"{target} cannot be profiled here" in flat, flat
        here = ", ".join(t for t in TARGETS if t not in ("cuda", "mps"))
        assert f"known targets: {', '.join(TARGETS)}; profiled on this machine: {here};" in flat, flat
        assert "with a table for tiny at r16: cpu" in flat, flat  # the shipped tiny-cpu-r16 table
        assert f"`archsearch profile {path} --target {target}`" not in flat  # it would fail here too
        assert len(r.output.strip().splitlines()) == 1
    # a target that can be profiled here is still pointed at the profile command
    path = tmp_path / "ane.yaml"
    path.write_text(base + "search: {target: ane}\n")
    r = runner.invoke(app, ["run", str(path), "--reports-dir", str(tmp_path / "r")])
    flat = " ".join(r.output.split())
    assert r.exit_code == 2 and f"make it with `archsearch profile {path} --target ane`" in flat, flat
    assert f"known targets: {', '.join(TARGETS)}" in flat
    # an unknown target is refused by name, with the known ones
    bad = load_space_text(base + "search: {target: tpu}\n", str(tmp_path / "tpu.yaml"))
    from archsearch.search import check_space

    with pytest.raises(ArchsearchError, match=r"search\.target: bad value 'tpu' \(allowed: " + ", ".join(TARGETS)):
        check_space(bad)
