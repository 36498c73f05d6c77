"""The builder: forward/backward, shapes, block decomposition, taps, save/load."""

from __future__ import annotations

import pytest
import torch

from archsearch.candidate import sample, sample_many
from archsearch.model import ArchUNet, build_block, build_model, example_inputs, walk


def _inputs(c, batch=2):
    g = torch.Generator().manual_seed(0)
    if c.kind == "video":
        x = torch.randn(batch, c.latent_channels, c.frames, c.resolution, c.resolution, generator=g)
    else:
        x = torch.randn(batch, c.latent_channels, c.resolution, c.resolution, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    ctx = torch.randn(batch, c.context_length, c.context_dim, generator=g)
    return x, t, ctx


@pytest.mark.parametrize("space_name", ["tiny_space", "tiny_video_space"])
def test_forward_backward_of_sampled_candidates(space_name, request):
    space = request.getfixturevalue(space_name)
    for c in sample_many(space, 8, seed=11):
        model = build_model(c)
        x, t, ctx = _inputs(c)
        y = model(x, t, ctx)
        assert y.shape == x.shape
        assert torch.isfinite(y).all()
        y.square().mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), "every parameter takes part in the forward pass"


def test_feature_taps_have_declared_channels(tiny_space, tiny_video_space):
    for space in (tiny_space, tiny_video_space):
        c = sample(space, 5)
        model = build_model(c)
        x, t, ctx = _inputs(c)
        _, feats = model.forward_features(x, t, ctx)
        n = len(c.stages)
        expected = [f"down.{i}" for i in range(n)] + (["mid"] if c.mid else []) + [f"up.{i}" for i in range(n)]
        assert list(feats) == expected
        for name, f in feats.items():
            assert f.shape[1] == model.feature_channels[name]
            assert f.shape[0] == x.shape[0] * (c.frames if c.kind == "video" else 1)


def test_model_is_exactly_its_blocks(tiny_space):
    """The model's modules are the walker's blocks, built alone with build_block."""
    c = sample(tiny_space, 2)
    model = build_model(c)
    specs = walk(c)
    assert [s.name for s in model.block_specs] == [s.name for s in specs]
    for spec, block in zip(specs, model.blocks):
        alone = build_block(spec)
        assert type(alone) is type(block)
        assert sum(p.numel() for p in alone.parameters()) == sum(p.numel() for p in block.parameters())
        out = alone(*example_inputs(spec, batch=2))
        assert out.shape[0] in (2, 2 * spec.in_shape[0])


def test_block_input_shapes_match_the_real_forward(tiny_space, tiny_video_space):
    """Each BlockSpec.in_shape equals the shape the block really sees in the full model."""
    for space in (tiny_space, tiny_video_space):
        c = sample(space, 7)
        model = build_model(c)
        seen = {}
        hooks = [
            blk.register_forward_pre_hook(lambda m, args, name=spec.name, seen=seen: seen.__setitem__(name, tuple(args[0].shape)))
            for spec, blk in zip(model.block_specs, model.blocks)
        ]
        x, t, ctx = _inputs(c, batch=1)
        model(x, t, ctx)
        for h in hooks:
            h.remove()
        for spec in model.block_specs:
            assert seen[spec.name] == spec.in_shape, spec.name


def test_block_keys_are_canonical(tiny_space):
    c = sample(tiny_space, 0)
    keys = [s.key for s in walk(c)]
    assert all("@" in k for k in keys)
    assert walk(c) == walk(type(c).from_yaml(c.to_yaml()))


def test_meta_build_counts_huge_models_for_free():
    from archsearch.spec import load_space
    from tests.conftest import SPACES

    c = sample(load_space(SPACES / "reference" / "sd15_unet.yaml"))
    model = build_model(c, device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_save_load_round_trip_gives_identical_outputs(tiny_space, tiny_video_space, tmp_path):
    for space in (tiny_space, tiny_video_space):
        c = sample(space, 9)
        torch.manual_seed(0)
        model = build_model(c).eval()
        with torch.no_grad():  # make zero-initialised layers non-trivial
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        path = model.save_pretrained(tmp_path / c.id)
        assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
        back = ArchUNet.from_pretrained(path).eval()
        x, t, ctx = _inputs(c)
        with torch.no_grad():
            assert torch.equal(model(x, t, ctx), back(x, t, ctx))


def test_from_pretrained_rejects_mismatched_weights(tiny_space, tmp_path):
    from archsearch.errors import ArchsearchError

    a, b = sample_many(tiny_space, 2, seed=0)
    build_model(a).save_pretrained(tmp_path / "a")
    build_model(b).save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(ArchsearchError, match="weights do not match the config"):
        ArchUNet.from_pretrained(tmp_path / "a")


def test_wrong_input_rank_is_a_clear_error(tiny_video_space):
    c = sample(tiny_video_space, 0)
    model = build_model(c)
    with pytest.raises(ValueError, match="5-D for a video model"):
        model(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.randn(1, 8, 32))


def test_a_truncated_weights_file_is_a_one_line_error_naming_it(tiny_space, tmp_path):
    from archsearch.candidate import sample
    from archsearch.errors import ArchsearchError
    from archsearch.model import ArchUNet

    build_model(sample(tiny_space, 0)).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ArchsearchError, match=r"model\.safetensors: not a readable safetensors file") as e:
        ArchUNet.from_pretrained(tmp_path / "m")
    assert "\n" not in str(e.value)


def test_every_registered_block_is_walked_and_trains(tiny_space, tiny_video_space):
    """Each block type of the registry comes out of the walker for some candidate, and built
    alone runs forward and backward on example_inputs (the profiler's call)."""
    from archsearch.candidate import enumerate_candidates
    from archsearch.model import BLOCK_TYPES
    from archsearch.spec import load_space_text
    from tests.test_layouts import ALL_TEMPORAL, LAYOUT_IMAGE

    specs = {}
    spaces = [tiny_space, tiny_video_space, load_space_text(ALL_TEMPORAL, "t.yaml"),
              load_space_text(LAYOUT_IMAGE, "l.yaml")]
    for space in spaces:
        for c in enumerate_candidates(space, limit=200):
            for s in walk(c):
                specs.setdefault(s.type, s)
    assert set(specs) == set(BLOCK_TYPES)
    for type_, spec in specs.items():
        block = build_block(spec)
        out = block(*example_inputs(spec, batch=2))
        out.float().square().mean().backward()
        assert all(p.grad is not None for p in block.parameters()), type_
