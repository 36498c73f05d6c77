"""Per-position layouts, SnapGen's blocks (cross-attention + FFN, 2D RoPE), SDXL's added
conditioning and SnapGen-V's six temporal layers: DSL -> candidate -> walk -> build ->
params/FLOPs -> latency table -> prediction, all through the one walker."""

from __future__ import annotations

import textwrap

import pytest
import torch

from archsearch.candidate import Candidate, enumerate_candidates, sample, sample_many
from archsearch.cost import count_params, flops, model_flops
from archsearch.model import build_block, build_model, example_inputs, walk
from archsearch.spec import TEMPORAL_TYPES, load_space_text

TEMPORAL = [t for t in TEMPORAL_TYPES if t != "none"]

#: an image space with searchable positions (adjacent skips included) and its own up layout
LAYOUT_IMAGE = """\
schema_version: 1
name: tiny_layout
latent_channels: 4
resolution: 8
context_dim: 32
context_length: 8
norm_groups: 8
defaults: {head_dim: 16, attention: self_cross, ffn_ratio: 2}
stages:
  - channels: 16
    layers: [resnet, {choice: [cross_ffn, skip]}, {choice: [resnet, skip]}]
  - channels: 32
    rope: {choice: [false, true]}
    layers: [resnet, {choice: [transformer, skip]}, {choice: [transformer, skip]}, resnet]
mid:
  layers: [resnet, transformer, resnet, {choice: [resnet, skip]}]
up:
  - {layers: [resnet, transformer, transformer, {choice: [resnet, skip]}]}
  - null
"""

#: one video space holding every temporal layer type (and text_time conditioning)
ALL_TEMPORAL = """\
schema_version: 1
name: tiny_temporal
kind: video
latent_channels: 4
resolution: 4
frames: 2
context_dim: 16
context_length: 4
norm_groups: 8
added_conditioning: {type: text_time, pooled_dim: 8, time_ids: 6, time_id_dim: 8}
defaults: {head_dim: 8, attention: self_cross, ffn_ratio: 2}
stages:
  - channels: 16
    layers: [resnet, {choice: [conv1d, conv3d]}, transformer, {choice: [attn1d, cross1d]}]
  - channels: 16
    layers: [resnet, {choice: [attn3d, cross3d]}]
mid: none
"""


@pytest.fixture(scope="module")
def layout_space():
    return load_space_text(LAYOUT_IMAGE, "tiny_layout.yaml")


@pytest.fixture(scope="module")
def temporal_space():
    return load_space_text(ALL_TEMPORAL, "tiny_temporal.yaml")


def _inputs(c, batch=2, added=True):
    g = torch.Generator().manual_seed(0)
    lead = (c.frames,) if c.kind == "video" else ()
    x = torch.randn(batch, c.latent_channels, *lead, c.resolution, c.resolution, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    ctx = torch.randn(batch, c.context_length, c.context_dim, generator=g)
    kw = None
    if added and c.added_cond is not None:
        kw = {"text_embeds": torch.randn(batch, c.added_cond.pooled_dim, generator=g),
              "time_ids": torch.tensor([[512.0, 512, 0, 0, 512, 512]] * batch)[:, : c.added_cond.time_ids]}
    return x, t, ctx, kw


def test_layout_size_is_the_number_of_distinct_candidates(layout_space, temporal_space):
    # down0 [R, cf|-, R|-]: 4 (its mirror up1 follows). down1 [R, T|-, T|-, R]: the adjacent
    # {transformer, skip} positions give [R R], [R T R] (twice: counted once), [R T T R];
    # rope is asked only with a transformer: 1 + 2 + 2 = 5 down stages; up0 has its own
    # layout (x2) and re-asks rope when down1 had no transformer: 2*2 + 4*2 = 12; mid: 2.
    assert layout_space.size() == 4 * 12 * 2
    for space in (layout_space, temporal_space):
        cands = list(enumerate_candidates(space))
        assert len({c.id for c in cands}) == len(cands) == space.size()


def test_positions_are_dimensions_with_lines(layout_space):
    dims = {d.name: d for d in layout_space.dimensions()}
    assert dims["down0.layers.1"].options == ("cross_ffn", "skip")
    assert dims["down1.layers.2"].line == 14
    assert dims["up0.layers.3"].options == ("resnet", "skip")


def test_layouts_build_walk_count_and_trace_consistently(layout_space):
    for c in enumerate_candidates(layout_space):
        specs = walk(c)
        model = build_model(c)
        assert [s.name for s in model.block_specs] == [s.name for s in specs]
        assert count_params(c) == sum(p.numel() for p in model.parameters())
        # the walker emits exactly the layout's blocks, stage by stage
        for stage, st in [("down.0", c.stages[0]), ("down.1", c.stages[1]), ("mid", c.mid), ("up.0", c.up[0])]:
            kinds = [s.type.replace("temporal_", "") for s in specs
                     if s.stage == stage and s.type not in ("downsample", "upsample")]
            assert kinds == list(st.layout), (stage, kinds, st.layout)
        x, t, ctx, _ = _inputs(c)
        y = model(x, t, ctx)
        assert y.shape == x.shape
        y.square().mean().backward()
        assert all(p.grad is not None for p in model.parameters())
    for c in sample_many(layout_space, 3, seed=4):
        assert flops(c).total == model_flops(c)


def test_up_stage_mirrors_a_down_layout_with_one_more_group():
    text = LAYOUT_IMAGE.split("mid:")[0] + "mid: none\n"  # and up: mirror
    for c in enumerate_candidates(load_space_text(text, "m.yaml")):
        down = c.stages[0].layout  # e.g. [R cf R] -> up [R cf R R]; [R cf] -> [R cf R cf]
        last = max(i for i, t in enumerate(down) if t == "resnet")
        assert c.up[1].layout == down + down[last:]
        assert c.up[1].resnet_blocks == c.stages[0].resnet_blocks + 1
        down1 = c.stages[1].layout
        assert c.up[0].layout == down1 + down1[max(i for i, t in enumerate(down1) if t == "resnet"):]


def test_rope_is_its_own_block_key_and_changes_the_output(layout_space):
    on = next(c for c in enumerate_candidates(layout_space) if c.stages[1].rope)
    off = Candidate(**{**{f: getattr(on, f) for f in on.__dataclass_fields__},
                       "stages": (on.stages[0], type(on.stages[1])(**{**on.stages[1].__dict__, "rope": False}))})
    key_on = [s.key for s in walk(on) if s.stage == "down.1" and s.type == "transformer"]
    key_off = [s.key for s in walk(off) if s.stage == "down.1" and s.type == "transformer"]
    assert all("rope=1" in k for k in key_on) and not any("rope" in k for k in key_off)
    assert count_params(on) == count_params(off)  # RoPE has no parameters
    spec = next(s for s in walk(on) if s.stage == "down.1" and s.type == "transformer")
    spec_off = next(s for s in walk(off) if s.stage == "down.1" and s.type == "transformer")
    torch.manual_seed(0)
    a = build_block(spec)
    b = build_block(spec_off)
    b.load_state_dict(a.state_dict())
    inputs = example_inputs(spec, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(a(*inputs), b(*inputs))


def test_old_candidates_keep_their_files_and_ids(tiny_space, layout_space):
    c = sample(tiny_space, 0)
    text = c.to_yaml()
    assert "layout" not in text and "rope" not in text and "added_cond" not in text
    new = sample(layout_space, 1)
    back = Candidate.from_yaml(new.to_yaml())
    assert back == new and back.id == new.id and "layout" in new.to_yaml()


def test_every_block_type_runs_forward_and_backward(temporal_space):
    seen = set()
    for c in enumerate_candidates(temporal_space):
        for spec in walk(c):
            if spec.type in seen:
                continue
            seen.add(spec.type)
            block = build_block(spec)
            with torch.no_grad():
                for p in block.parameters():  # zero-initialised temporal convs must still get gradients
                    p.add_(0.01 * torch.randn_like(p))
            x, temb, ctx = example_inputs(spec, batch=2)
            x = x.clone().requires_grad_(x.is_floating_point() and spec.type != "time_embed")
            out = block(x, temb, ctx)
            assert torch.isfinite(out).all()
            out.square().mean().backward()
            assert all(p.grad is not None for p in block.parameters()), spec.type
    assert {f"temporal_{t}" for t in TEMPORAL} <= seen
    assert "text_time_embed" in seen


def test_six_temporal_layers_are_distinct_profiled_and_predicted(temporal_space, tmp_path):
    from archsearch.cost.latency import MeasureSettings, load_predictor, profile_space

    fast = MeasureSettings(min_run_time=0.001, max_run_time=0.005, threshold=0.9, flush_bytes=0)
    out = tmp_path / "tiny_temporal-cpu.csv"
    table = profile_space(temporal_space, "cpu", out, threads=1, settings=fast, calibrate=0)
    types = set(table.df["type"])
    assert {f"temporal_{t}" for t in TEMPORAL} | {"text_time_embed", "transformer"} <= types
    keys = {t: set(table.df.loc[table.df["type"] == f"temporal_{t}", "key"]) for t in TEMPORAL}
    assert all(keys[t] for t in TEMPORAL) and sum(len(k) for k in keys.values()) == len(set().union(*keys.values()))
    predictor = load_predictor(out)
    for c in enumerate_candidates(temporal_space):
        df = predictor.breakdown(c)
        blocks = df[df["name"] != "overhead"] if "overhead" in set(df["name"]) else df
        assert list(blocks["key"]) == [s.key for s in walk(c)]
        assert predictor.predict(c)[0] == pytest.approx(blocks["ms"].sum() + predictor.calibration[1])


def test_video_model_with_added_conditioning_runs(temporal_space):
    c = sample(temporal_space, 3)
    model = build_model(c)
    x, t, ctx, kw = _inputs(c)
    y = model(x, t, ctx, added_cond_kwargs=kw)
    assert y.shape == x.shape
    assert model(x, t, ctx).shape == x.shape  # no added inputs: zeros
    with pytest.raises(ValueError, match="added_cond_kwargs: text_embeds must be"):
        model(x, t, ctx, added_cond_kwargs={"text_embeds": torch.zeros(2, 3)})


def test_added_conditioning_changes_the_prediction():
    text = textwrap.dedent("""\
        schema_version: 1
        name: tiny_xl
        latent_channels: 4
        resolution: 8
        context_dim: 16
        context_length: 4
        norm_groups: 8
        added_conditioning: {type: text_time, pooled_dim: 8, time_ids: 6, time_id_dim: 8}
        defaults: {head_dim: 8, resnet_blocks: 1}
        stages: [{channels: 16}, {channels: 16, attention: self_cross}]
        """)
    c = sample(load_space_text(text, "xl.yaml"))
    assert c.added_cond is not None and [s.type for s in walk(c)][:2] == ["time_embed", "text_time_embed"]
    model = build_model(c).eval()
    x, t, ctx, kw = _inputs(c)
    with torch.no_grad():
        a = model(x, t, ctx, added_cond_kwargs=kw)
        kw2 = {**kw, "time_ids": kw["time_ids"] * 2}
        assert not torch.allclose(a, model(x, t, ctx, added_cond_kwargs=kw2))
    assert count_params(c) == sum(p.numel() for p in model.parameters())
