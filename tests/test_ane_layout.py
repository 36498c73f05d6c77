"""The Neural-Engine layout (apple/ml-stable-diffusion's): numerically the torch model; a whole
tiny UNet converts to Core ML in it and matches torch through its MIL program."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from archsearch.candidate import sample_many
from archsearch.export import ANESpatialTransformer, ane_block, ane_model, model_inputs
from archsearch.model import build_block, build_model, example_inputs, walk
from archsearch.model._blocks import SpatialTransformer
from tests.conftest import ROOT


def _perturb(module):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return module.eval()


@pytest.mark.parametrize("variant,qk_norm,rope,ffn", [("mha", False, False, "geglu"), ("mqa", True, False, "gelu"),
                                                     ("mha", True, True, "geglu")])
def test_transformer_in_ane_layout_is_the_same_function(variant, qk_norm, rope, ffn):
    block = _perturb(SpatialTransformer(64, 2, "self_cross", 2, 32, 24, 7, variant, qk_norm, 2.0, ffn, 8, rope))
    x = torch.randn(1, 64, 6, 6)
    ctx = torch.randn(1, 7, 24)
    ane = ane_block(block, query_chunk=16)  # 36 tokens: three query chunks
    assert isinstance(ane, ANESpatialTransformer)
    assert not any(isinstance(m, torch.nn.Linear) for m in ane.modules())  # 1x1 convolutions only
    with torch.no_grad():
        torch.testing.assert_close(ane(x, None, ctx), block(x, None, ctx), rtol=1e-4, atol=1e-5)


def test_whole_models_in_ane_layout_are_the_same_function(tiny_space):
    for cand in sample_many(tiny_space, 3, seed=41):
        model = _perturb(build_model(cand))
        inputs = model_inputs(cand)
        with torch.no_grad():
            torch.testing.assert_close(ane_model(model)(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)
        spec = next(s for s in walk(cand) if s.type == "resnet")
        block = _perturb(build_block(spec))
        x = example_inputs(spec)
        with torch.no_grad():  # convolutional blocks: GroupNorm through a rank-4 view
            torch.testing.assert_close(ane_block(block)(*x), block(*x), rtol=1e-4, atol=1e-5)


def test_a_video_unet_with_temporal_cross_attention_keeps_its_function(tmp_path):
    """Temporal layers stay in their torch layout (they read the (B, L, D) context) while the
    spatial transformers run on (B, C, 1, S)."""
    from archsearch.spec import load_space_text

    text = (ROOT / "search_spaces" / "tiny_video.yaml").read_text()
    text = text.replace("type: {choice: [conv1d, attn1d, attn3d]}", "type: cross3d")
    cand = sample_many(load_space_text(text, "video.yaml"), 1, seed=3)[0]
    assert any(s.type == "temporal_cross3d" for s in walk(cand))
    model = _perturb(build_model(cand))
    ane = ane_model(model)
    assert ane.kept and all("temporal" in k for k in ane.kept)
    inputs = model_inputs(cand)
    with torch.no_grad():
        torch.testing.assert_close(ane(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_whole_tiny_unet_converts_in_ane_layout_and_matches_torch_through_mil(tiny_space):
    from archsearch.export import convert_model

    cand = sample_many(tiny_space, 1, seed=5)[0]
    result = convert_model(cand, check=True)
    assert result.ok, result.error
    assert result.check.done and result.check.ok, result.check.line()
    assert result.check.max_rel_error < 0.02
    assert not result.off_ane, result.off_ane  # nothing falls off the Neural Engine
    assert "rank5" not in result.flags  # GroupNorm no longer goes through 5-D reshapes
    ops = result.op_counts
    assert ops["einsum"] > 0 and ops.get("matmul", 0) == 0  # split-einsum attention, no batched matmul
    assert sum(o.macs for o in result.mil_ops) > 0  # what the estimator counts


def test_ane_layout_exports_without_alias_nodes():
    """coremltools refuses torch.export's `alias` (a whole-axis slice): one K/V head (MQA), one
    query head and one query chunk must not slice."""
    block = SpatialTransformer(32, 1, "self_cross", 1, 32, 16, 5, "mqa", True, 2.0, "geglu", 8, True).eval()
    ane = ane_block(block)
    x, ctx = torch.randn(1, 32, 4, 4), torch.randn(1, 5, 16)
    from archsearch.export import PositionalCall

    prog = torch.export.export(PositionalCall(ane, [True, False, True]), (x, ctx)).run_decompositions({})
    assert not [n for n in prog.graph.nodes if "alias" in str(n.target)]


def test_cli_export_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from archsearch.cli.main import app

    res = CliRunner().invoke(app, ["export", str(tmp_path / "none.yaml"), "--format", "onnx"])
    assert res.exit_code == 2 and "--format onnx: unknown (allowed: coreml, pte)" in res.output


def test_a_registered_format_exports_through_the_one_registry(tiny_space, tmp_path, monkeypatch):
    """A format is one registered function; ``export_model`` checks the format first, loads
    the source, names the default file and reports progress; every format gives one result type."""
    from archsearch.errors import ParameterError
    from archsearch.export import ExportResult, NumericCheck, _registry, export_formats, export_model, register_format

    monkeypatch.setattr(_registry, "_FORMATS", dict(_registry._FORMATS))  # the test's format stays here
    seen = []

    @register_format("raw", suffix=".raw", activity="writing {source} raw (batch {batch})")
    def _raw(model, path, options, name):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
        check = NumericCheck(done=True, ok=False, max_rel_error=0.5, tolerance=1e-3, how="runtime")
        return ExportResult("raw", path, model.candidate.id, f"({options.batch} x raw)", check=check,
                            problem=f"{path}: differs")

    assert export_formats() == ("coreml", "pte", "raw")
    with pytest.raises(ParameterError, match=r"^format onnx: unknown \(allowed: coreml, pte, raw\)$") as err:
        export_model(tmp_path / "none.yaml", "onnx")  # before the (missing) file is read
    assert err.value.param == "format"
    cand = sample_many(tiny_space, 1, seed=3)[0]
    monkeypatch.chdir(tmp_path)
    res = export_model(cand, "raw", batch=2, progress=lambda *a: seen.append(a))
    assert res.path == Path("exports") / f"{cand.id}.raw" and (tmp_path / res.path).read_bytes() == b"weights"
    assert res.summary == "(2 x raw)" and not res.ok and res.check.line() == "max relative error 0.5 against torch"
    assert seen == [("export", f"writing candidate {cand.id} raw (batch 2)", 0, 1),
                    ("export", f"writing candidate {cand.id} raw (batch 2)", 1, 1)]


def test_a_video_unet_with_temporal_convolutions_runs_them_in_the_ane_layout():
    """temporal_conv1d/conv3d are rewritten to rank 4 (Core ML refused their 5-D GroupNorm);
    the whole video UNet stays the torch function."""
    from archsearch.export import ANETemporalConv
    from archsearch.spec import load_space_text

    text = (ROOT / "search_spaces" / "tiny_video.yaml").read_text()
    text = text.replace("type: {choice: [none, conv1d, attn1d]}", "type: conv1d")
    text = text.replace("type: {choice: [conv1d, attn1d, attn3d]}", "type: conv3d")
    cand = sample_many(load_space_text(text, "video.yaml"), 1, seed=2)[0]
    model = _perturb(build_model(cand))
    ane = ane_model(model)
    convs = [b for b in ane.blocks if isinstance(b, ANETemporalConv)]
    assert len(convs) == sum(s.type in ("temporal_conv1d", "temporal_conv3d") for s in walk(cand)) >= 2
    assert not any("TemporalConv" in k for k in ane.kept)
    inputs = model_inputs(cand)
    with torch.no_grad():
        torch.testing.assert_close(ane(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)
