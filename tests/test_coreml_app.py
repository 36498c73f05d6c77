"""The phone path: a Neural-Engine search never recommends what cannot be exported, temporal
convolutions convert (rank <= 4), and ``archsearch export --format coreml`` writes what
apple/ml-stable-diffusion's Swift app loads -- its names and shapes, every op of every package
evaluated with numpy against torch (prediction needs macOS; the MIL program does not)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from archsearch.candidate import sample_many
from archsearch.cost.latency import LatencyTable, load_table
from archsearch.model import build_block, build_model, example_inputs, walk
from archsearch.spec import load_space_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_helpers import make_spec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
TEMPORAL_TYPES = ("temporal_conv1d", "temporal_conv3d", "temporal_attn1d", "temporal_attn3d", "temporal_cross1d",
                  "temporal_cross3d")
#: what Core ML said about temporal_conv1d before it ran at rank 4 (the issue's table row)
RANK6 = ('failed: ValueError: Core ML only supports tensors with rank <= 5. Layer "reshape_0_cast_fp16", with type '
         '"reshape", outputs a rank 6 tensor.')


def _video_text(*types: str) -> str:
    """tiny_video.yaml with every temporal choice replaced by ``types`` (one per stage, mid last)."""
    text = (ROOT / "search_spaces" / "tiny_video.yaml").read_text()
    text = text.replace("type: {choice: [none, conv1d, attn1d]}", f"type: {types[0]}")
    text = text.replace("type: {choice: [conv1d, attn1d, attn3d]}", f"type: {types[1]}")
    return text.replace("temporal: {type: {choice: [none, attn3d]}", f"temporal: {{type: {types[2]}")


def _temporal_specs() -> dict:
    """One block spec of each temporal type of the block registry."""
    specs = {}
    for types in (("conv1d", "conv3d", "attn3d"), ("attn1d", "cross1d", "cross3d")):
        cand = sample_many(load_space_text(_video_text(*types), "v.yaml"), 1, seed=0)[0]
        for s in walk(cand):
            specs.setdefault(s.type, s)
    return {t: specs[t] for t in TEMPORAL_TYPES}


def _perturb(module, scale: float = 0.05):
    """Trained-looking weights: temporal layers start as the identity and norms as 1/0, which
    the converter would fold away (a trained model's batch_norm, say, would never be met)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


# ----------------------------------------------------------------------------- rank <= 4


def test_temporal_convolutions_run_at_rank_4_in_the_ane_layout_and_are_the_same_function():
    from archsearch.export import ANETemporalConv, PositionalCall, ane_block

    specs = _temporal_specs()
    for t in ("temporal_conv1d", "temporal_conv3d"):
        block = _perturb(build_block(specs[t]), 0.3)
        x = example_inputs(specs[t], 2)  # two clips: the norm's statistics stay per clip
        ane = ane_block(block)
        assert isinstance(ane, ANETemporalConv)
        with torch.no_grad():
            torch.testing.assert_close(ane(*x), block(*x), rtol=1e-4, atol=1e-5)
        prog = torch.export.export(PositionalCall(ane, [True, False, False]), (x[0],))
        ranks = {n.meta["val"].dim() for n in prog.graph.nodes if n.op == "call_function" and "val" in n.meta
                 and torch.is_tensor(n.meta["val"])}
        assert max(ranks) <= 4, (t, ranks)


@pytest.mark.slow
def test_every_temporal_block_type_converts_and_matches_torch_through_mil():
    """SnapGen-V's six temporal layers, each in its ANE layout, converted as one program (one
    conversion: the six blocks side by side, one output each): it converts, nothing of rank
    > 4 falls off the Neural Engine, and every block's output, evaluated through MIL (every
    op), is the torch block's."""
    from archsearch.export import CHECK_TOLERANCE, ane_block, convert_module, run_mil, unevaluated_ops

    specs = _temporal_specs()
    blocks = {t: _perturb(build_block(spec), 0.3) for t, spec in specs.items()}
    inputs = {t: example_inputs(spec, 1, generator=torch.Generator().manual_seed(1)) for t, spec in specs.items()}

    class SideBySide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(ane_block(b) for b in blocks.values())
            self.present = [[a is not None for a in x] for x in inputs.values()]

        def forward(self, *args):
            it, outs = iter(args), []
            for block, present in zip(self.blocks, self.present):
                outs.append(block(*[next(it) if p else None for p in present]))
            return tuple(outs)

    args = tuple(a for x in inputs.values() for a in x if a is not None)
    res = convert_module(SideBySide().eval(), args, layout="torch", keep_program=True)  # (already in ANE layout)
    assert res.ok, res.error
    assert not res.off_ane and "rank5" not in res.flags, res.off_ane
    assert not unevaluated_ops(res.program)
    fn = res.program.functions["main"]
    outs = list(run_mil(res.program, {n: a.numpy() for n, a in zip(fn.inputs, args)}).values())
    assert len(outs) == len(TEMPORAL_TYPES)
    for (t, block), out in zip(blocks.items(), outs):
        with torch.no_grad():
            ref = block(*inputs[t]).numpy()
        assert np.abs(out - ref).max() / np.abs(ref).max() <= CHECK_TOLERANCE[None], t


# ----------------------------------------------------------------------------- the MIL check


@pytest.mark.slow
def test_batch_norm_and_pad_are_evaluated_and_a_check_that_checks_nothing_is_an_error(monkeypatch, tmp_path):
    """A trained model's per-channel scale and shift become ``batch_norm`` in the converted
    program (the issue's "op batch_norm is not evaluated here"): evaluated now, every op; and a
    program with an op the evaluator lacks is not called checked: it is the export's problem."""
    from archsearch.export import _mil
    from archsearch.export._app import _check_problem
    from archsearch.export._coreml import check_numerics, convert_exported

    class Affine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
            self.gamma = torch.nn.Parameter(torch.linspace(0.5, 2.0, 8).reshape(1, 8, 1, 1))
            self.beta = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 8).reshape(1, 8, 1, 1))

        def forward(self, x):
            h = torch.nn.functional.silu(self.conv(x))  # (a scale right after a conv folds into it)
            return torch.nn.functional.pad(h * self.gamma + self.beta, (0, 0, 0, 0, 1, 1))

    module = Affine().eval()
    x = torch.randn(1, 4, 6, 6)
    program = convert_exported(module, (x,), "CPU_ONLY")._mil_program
    kinds = {op.op_type for op in program.functions["main"].operations}
    assert {"batch_norm", "pad"} <= kinds
    name = next(iter(program.functions["main"].inputs))
    with torch.no_grad():
        ref = module(x)
    check = check_numerics(program, {name: x.numpy()}, [ref])
    assert check.done and check.ok and check.ops == _mil.program_ops(program) > 0, check.line()
    assert "all" in check.line() and not _check_problem(tmp_path / "m.mlpackage", check)

    monkeypatch.setattr(_mil, "EVALUATED_OPS", _mil.EVALUATED_OPS - {"batch_norm"})
    check = check_numerics(program, {name: x.numpy()}, [ref])
    assert not check.done and "batch_norm" in check.reason
    problem = _check_problem(tmp_path / "m.mlpackage", check)
    assert "m.mlpackage: its numerics were not checked" in problem and "batch_norm" in problem and "\n" not in problem


# ----------------------------------------------------------------------------- the app's packages


@pytest.mark.slow
def test_an_ane_temporal_unet_exports_with_apples_names_and_every_op_checked(tmp_path):
    """A trained-looking video UNet with both temporal convolutions (the issue's unconvertible
    pick): the package has the Swift app's inputs and output, batch 2, and its MIL program
    matches torch with every op evaluated (batch_norm included)."""
    from archsearch.export import TensorSpec, export_model, package_io

    cand = sample_many(load_space_text(_video_text("conv1d", "conv3d", "none"), "v.yaml"), 1, seed=1)[0]
    assert {"temporal_conv1d", "temporal_conv3d"} <= {s.type for s in walk(cand)}
    model = _perturb(build_model(cand))
    res = export_model(model, "coreml", tmp_path / "Unet.mlpackage")
    assert res.ok, res.problem
    inputs, outputs = package_io(res.path)  # read back from the saved package's spec
    c = cand
    assert inputs == [TensorSpec("sample", (2, 4, c.frames, c.resolution, c.resolution), "fp16"),
                      TensorSpec("timestep", (2,), "fp16"),
                      TensorSpec("encoder_hidden_states", (2, c.context_dim, 1, c.context_length), "fp16")]
    assert outputs == [TensorSpec("noise_pred", (2, 4, c.frames, c.resolution, c.resolution), "fp32")]
    conv = res.details["conversion"]
    assert res.check.done and res.check.ok and res.check.ops == sum(conv.op_counts.values()), res.check.line()
    assert "batch_norm" in conv.op_counts and "pad" in conv.op_counts
    hostile = {n.label.split(":")[1].split()[0]: n.text for n in res.notes if n.label.startswith("ANE-hostile")}
    assert "copies" in hostile and "unaligned_last_axis" in hostile
    assert all("change:" in text for text in hostile.values())


@pytest.mark.slow
def test_the_pipeline_folder_the_swift_app_loads(sd_checkpoint, tmp_path):
    """``archsearch export TRAINED --pipeline``: Unet, TextEncoder and VAEDecoder packages under
    the names StableDiffusionPipeline(resourcesAt:) reads, the teacher's tokenizer as
    vocab.json/merges.txt, the scheduler choice, each package's numerics checked."""
    from archsearch.cli.main import app
    from archsearch.export import TensorSpec, package_io

    space = """schema_version: 1
name: app
kind: image
latent_channels: 4
resolution: 8
context_dim: 32          # the fixture's text encoder: 16 tokens x 32
context_length: 16
norm_groups: 8
defaults: {head_dim: 16}
stages:
  - {channels: 16, resnet_blocks: 1, attention: none}
  - {channels: 32, resnet_blocks: 1, attention: cross, transformer_depth: 1}
mid: {resnet_blocks: 1, attention: none}
"""
    cand = sample_many(load_space_text(space, "app.yaml"), 1, seed=0)[0]
    trained = tmp_path / "trained"  # what `archsearch train` leaves: the model and pipeline/
    _perturb(build_model(cand)).save_pretrained(trained)
    shutil.copytree(sd_checkpoint, trained / "pipeline")
    out = tmp_path / "MyModel"
    res = runner.invoke(app, ["export", str(trained), "--pipeline", "--batch", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["TextEncoder.mlpackage", "Unet.mlpackage", "VAEDecoder.mlpackage",
                                                      "merges.txt", "pipeline.json", "vocab.json"]
    assert package_io(out / "Unet.mlpackage") == (
        [TensorSpec("sample", (1, 4, 8, 8), "fp16"), TensorSpec("timestep", (1,), "fp16"),
         TensorSpec("encoder_hidden_states", (1, 32, 1, 16), "fp16")],
        [TensorSpec("noise_pred", (1, 4, 8, 8), "fp32")])
    assert package_io(out / "TextEncoder.mlpackage") == (
        [TensorSpec("input_ids", (1, 16), "fp32")],
        [TensorSpec("last_hidden_state", (1, 16, 32), "fp32"), TensorSpec("pooled_outputs", (1, 32), "fp32")])
    assert package_io(out / "VAEDecoder.mlpackage") == ([TensorSpec("z", (1, 4, 8, 8), "fp16")],
                                                        [TensorSpec("image", (1, 3, 16, 16), "fp32")])
    # the tokenizer the Swift BPETokenizer reads: the teacher's vocabulary and merges, in order
    tok = json.loads((sd_checkpoint / "tokenizer" / "tokenizer.json").read_text())["model"]
    assert json.loads((out / "vocab.json").read_text()) == tok["vocab"]
    merges = [m for m in (out / "merges.txt").read_text().splitlines() if not m.startswith("#")]
    assert merges == [m if isinstance(m, str) else " ".join(m) for m in tok["merges"]]
    desc = json.loads((out / "pipeline.json").read_text())
    assert desc["configuration"]["schedulerType"] == "dpmSolverMultistepScheduler"  # the teacher's DDIM
    assert desc["configuration"]["decoderScaleFactor"] == 0.5 and desc["configuration"]["decoderShiftFactor"] == 0.1
    assert [p["name"] for p in desc["packages"]] == ["Unet", "TextEncoder", "VAEDecoder"]
    assert all(p["check"].startswith("matches torch through MIL (all ") for p in desc["packages"]), desc["packages"]
    printed = " ".join(res.output.split())  # (rich wraps long lines)
    assert "beta_start 0.0001 (Swift: 0.00085)" in printed  # the fixture's schedule is not the Swift one
    assert printed.count("matches torch through MIL (all ") == 3


def test_pipeline_errors_are_one_line(tmp_path, tiny_space):
    from archsearch.cli.main import app

    cand = sample_many(tiny_space, 1, seed=0)[0]
    build_model(cand).save_pretrained(tmp_path / "m")
    res = runner.invoke(app, ["export", str(tmp_path / "m"), "--pipeline"])
    assert res.exit_code == 2 and "--pipeline: needs the diffusers checkpoint" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["export", str(tmp_path / "m"), "--pipeline", "--teacher", str(tmp_path)])
    assert res.exit_code == 2 and f"--teacher {tmp_path}: not a diffusers checkpoint" in res.output


# ----------------------------------------------------------------------------- the constraint


def _core_ml_table(source: Path, dest: Path, failing: dict[str, str], off_ane: dict[str, str] | None = None) -> Path:
    """``source`` (an ane table profiled with --no-convert) as if converted: ``ok`` everywhere
    but the ``failing`` types (their status) and the ``off_ane`` flags given by type."""
    table = load_table(source)
    df = table.df.copy()
    df["coreml"] = [failing.get(t, "ok") for t in df["type"]]
    df["ane_flags"] = [(off_ane or {}).get(t, "") for t in df["type"]]
    out = LatencyTable(df=df, meta=dict(table.meta), path=dest)
    out.save(dest)
    return dest


def _video_spec(tmp_path: Path, table: Path, name: str, stage0: str) -> Path:
    """tiny_video.yaml whose first stage's temporal layer is always ``stage0``."""
    spec = make_spec(tmp_path, table, name=name, base="tiny_video.yaml",
                     search={"n_trials": 3, "warm_start": False, "sampler": "random",
                             "objectives": ["quality", "latency_ms"]},
                     # the run loads its teacher first: the least one (nothing here is trained)
                     proxy={"teacher": {"builtin": "video", "train_steps": 1, "batch": 1, "data_size": 2}})
    data = yaml.safe_load(spec.read_text())
    data["stages"][0]["temporal"] = {"type": stage0, "count": 1}
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    return spec


@pytest.mark.slow
def test_a_block_that_does_not_convert_makes_the_candidate_infeasible_before_training(
        tmp_path, tiny_video_table, monkeypatch):
    """The issue's search: an ane table whose temporal_conv1d rows failed to convert. Every
    candidate with one is infeasible before training, the reason in trials.csv and the report;
    ``validate`` warns that the space can produce nothing else; ``profile`` sums it up by type."""
    import archsearch.distill as distill
    from archsearch.cli.main import app

    table = _core_ml_table(tiny_video_table, tmp_path / "t-ane-estimate.csv", {"temporal_conv1d": RANK6})
    spec = _video_spec(tmp_path, table, "cv", "conv1d")  # every candidate has a temporal_conv1d

    def never(*a, **kw):
        raise AssertionError("an unconvertible candidate was trained")

    monkeypatch.setattr(distill, "distill", never)
    res = runner.invoke(app, ["run", str(spec), "--reports-dir", str(tmp_path / "reports"), "--no-progress"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "reports" / "cv" / "trials.csv", dtype={"candidate_id": str})
    assert len(df) == 3 and set(df["state"]) == {"infeasible"}, df[["state", "fail_reason"]]
    assert all(r.startswith("does not convert to Core ML: temporal_conv1d (ValueError: Core ML only supports tensors "
                            "with rank <= 5") for r in df["fail_reason"])
    assert "does not convert to Core ML: temporal_conv1d" in (tmp_path / "reports" / "cv" / "index.html").read_text()

    res = runner.invoke(app, ["validate", str(spec)])
    assert res.exit_code == 0, res.output
    assert "warning: every one of the 48 candidates of the space has a block that does not convert to Core ML" \
        in res.output and "temporal_conv1d (ValueError: Core ML only supports tensors with rank <= 5" in res.output
    ok_spec = _video_spec(tmp_path, table, "ok", "attn1d")  # the space can avoid it: no warning
    res = runner.invoke(app, ["validate", str(ok_spec)])
    assert res.exit_code == 0 and "does not convert" not in res.output, res.output

    res = runner.invoke(app, ["profile", str(spec), "--target", "ane", "--out", str(table), "--calibrate", "0"])
    assert res.exit_code == 0, res.output
    printed = " ".join(res.output.split())  # (rich wraps long lines)
    assert "block types that do not convert to Core ML" in printed
    n = int((load_table(table).df["type"] == "temporal_conv1d").sum())
    assert f"temporal_conv1d: {n}/{n} blocks: ValueError: Core ML only supports tensors with rank <= 5" in printed


def test_the_neural_engine_share_is_a_constraint_on_ane_tables_only(tmp_path, tiny_video_table):
    from archsearch.search._convertible import CONSTRAINT, MAX_OFF_ANE_SHARE, core_ml_constraint

    cand = sample_many(load_space_text(_video_text("attn1d", "attn3d", "attn3d"), "v.yaml"), 1, seed=0)[0]
    table = load_table(_core_ml_table(tiny_video_table, tmp_path / "a.csv", {},
                                      {"temporal_attn3d": "copies:4;off_ane:rank5:reshape:2"}))
    cons, why = core_ml_constraint(cand, table)
    from archsearch.cost.latency import candidate_blocks

    keys = candidate_blocks(cand).keys  # every block, a repeated one as often as it runs
    share = sum(table.ms(k) for k in keys if table.row(k)["type"] == "temporal_attn3d") / sum(map(table.ms, keys))
    assert 0 < share < 1 and cons[CONSTRAINT] == pytest.approx(share / MAX_OFF_ANE_SHARE - 1.0)
    assert (cons[CONSTRAINT] > 0) == bool(why) and (not why or "temporal_attn3d" in why)
    assert core_ml_constraint(cand, table, max_off_ane_share=1e-6)[0][CONSTRAINT] > 0
    table.meta["target"] = "coreml"  # any compute unit: only conversion counts
    table.version += 1
    assert core_ml_constraint(cand, table, max_off_ane_share=1e-6) == ({CONSTRAINT: -1.0}, "")
    table.meta["target"] = "cpu"
    assert core_ml_constraint(cand, table) == ({}, "")
