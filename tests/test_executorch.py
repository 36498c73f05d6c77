"""The ``xnnpack`` target: blocks exported with torch.export, lowered to ExecuTorch programs
with XNNPACK delegation and timed by ExecuTorch's runtime on this CPU (what Android and iOS
CPU deployments run). Each program's output is checked against the torch block first."""

from __future__ import annotations

import pytest
import torch

from archsearch.candidate import sample_many
from archsearch.cost.latency import BlockSet, MeasureSettings, enumerate_blocks, load_table, profile_space
from archsearch.export._executorch import _TensorArgs, lower_to_xnnpack
from archsearch.model import build_block, example_inputs

FAST = MeasureSettings(min_run_time=0.01, max_run_time=0.05, threshold=0.5, flush_bytes=0)


def test_blocks_are_timed_through_executorch_and_the_table_says_so(tiny_space, tmp_path):
    cand = sample_many(tiny_space, 1, seed=7)[0]
    full = enumerate_blocks([cand])
    picked = {}
    for k, s in full.specs.items():  # one block of a few kinds: lowering takes seconds a block
        if s.type in ("conv_in", "resnet", "transformer") and s.type not in {p.type for p in picked.values()}:
            picked[k] = s
    blocks = BlockSet(picked, 1, "candidates", candidates=[cand])
    out = tmp_path / "x.csv"
    pte_dir = tmp_path / "pte"
    table = profile_space([cand], "xnnpack", out, threads=1, settings=FAST, calibrate=0, blocks=blocks,
                          sentinel=None, export_dir=pte_dir)
    df = load_table(out).df
    assert len(df) == 3 and set(df["source"]) == {"measured"} and (df["ms"] > 0).all()
    assert df["note"].str.match(r"xnnpack \d+/\d+ ops$").all(), df["note"].tolist()  # and no mismatch noted
    assert table.meta["target"] == "xnnpack" and "ExecuTorch" in table.meta["device"]
    assert "executorch" in table.meta["versions"]
    assert len(list(pte_dir.glob("*.pte"))) == 3


def test_a_lowered_block_computes_what_the_torch_block_computes(tiny_space):
    from executorch.runtime import Runtime

    cand = sample_many(tiny_space, 1, seed=8)[0]
    spec = next(s for s in enumerate_blocks([cand]).specs.values() if s.type == "resnet")
    block = build_block(spec).eval()
    x, temb, _ = example_inputs(spec, generator=torch.Generator().manual_seed(1))
    module = _TensorArgs(block, (x, temb, None))
    pte, delegated, total = lower_to_xnnpack(module, (x, temb))
    assert 0 < delegated <= total
    program = Runtime.get().load_program(pte)
    out = program.load_method("forward").execute([x, temb])[0]
    with torch.no_grad():
        torch.testing.assert_close(out, block(x, temb, None), rtol=1e-4, atol=1e-5)


def test_float16_is_refused_for_xnnpack(tmp_path):
    from archsearch.cost.latency import make_backend
    from archsearch.errors import ParameterError

    with pytest.raises(ParameterError, match=r"dtype float16: the xnnpack target times float32 programs"):
        make_backend("xnnpack", dtype="float16")


@pytest.mark.slow
def test_a_whole_unet_exports_as_an_executorch_program(tiny_space, tmp_path):
    from typer.testing import CliRunner

    from archsearch.cli.main import app
    from archsearch.model import walk

    # a whole UNet, the fewest blocks of 40 drawn: ExecuTorch's lowering time grows with the
    # graph (12 blocks lower in about half the time of 17)
    cand = min(sample_many(tiny_space, 40, seed=0), key=lambda c: (len(walk(c)), c.id))
    cfile = tmp_path / "c.yaml"
    cfile.write_text(cand.to_yaml())
    out = tmp_path / "m.pte"
    res = CliRunner().invoke(app, ["export", str(cfile), "--format", "pte", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 0 and "max relative error" in res.output and "XNNPACK took" in res.output
    assert not list(tmp_path.glob(".*.tmp"))
