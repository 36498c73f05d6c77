"""The search-space DSL: validation errors, dimensions, exact size."""

from __future__ import annotations

import itertools
import textwrap

import pytest

from archsearch.errors import SpecError
from archsearch.spec import load_space, load_space_text
from tests.conftest import SPACES

BASE = """\
schema_version: 1
name: t
norm_groups: 8
context_dim: 16
context_length: 4
resolution: 16
stages:
  - channels: 32
    attention: self_cross
    head_dim: 16
  - channels: 64
"""

# (text to substitute / append, expected message fragment, expected line)
BAD_SPECS = [
    (BASE.replace("channels: 32", "channels: 36"), "t.yaml:8: stages[0].channels: 36 is not divisible by norm_groups 8", 8),
    (BASE.replace("head_dim: 16", "head_dim: 24"), "stages[0].channels: 32 is not divisible by head_dim 24 (allowed: a multiple of 24, or another head_dim)", 8),
    (BASE.replace("attention: self_cross", "attention: global"), "t.yaml:9: stages[0].attention: bad value 'global' (allowed: none, cross, self, self_cross)", 9),
    (BASE + "    resnet_blocks: -2\n", "t.yaml:12: stages[1].resnet_blocks: bad value -2 (allowed: an integer from 1 to 32)", 12),
    (BASE + "    resnet_blocks: two\n", "stages[1].resnet_blocks: bad value 'two' (allowed: an integer from 1 to 32)", 12),
    (BASE + "    resnet_blocks: {choice: [1, 0]}\n", "stages[1].resnet_blocks: bad value 0 (allowed: an integer from 1 to 32)", 12),
    (BASE + "    block: conv\n", "stages[1].block: unknown key (allowed: attention, attention_variant", 12),
    (BASE + "    resnet_variant: ghost\n", "stages[1].resnet_variant: bad value 'ghost' (allowed: plain, separable)", 12),
    (BASE + "    resnet_blocks: {range: [3, 1]}\n", "stages[1].resnet_blocks.range: empty range [3, 1]", 12),
    (BASE + "    resnet_blocks: [1, 2]\n", "stages[1].resnet_blocks: a bare list is ambiguous", 12),
    (BASE + "    temporal: {type: conv1d}\n", "stages[1].temporal: temporal layers need kind: video", 12),
    (BASE.replace("schema_version: 1", "schema_version: 7"), "t.yaml:1: schema_version: unsupported version 7 (allowed: 1)", 1),
    (BASE.replace("resolution: 16", "resolution: 15"), "resolution: 15 is not divisible by 2**(stages-1) = 2", 6),
    (BASE + "widths: 3\n", "t.yaml:12: widths: unknown key", 12),
    (BASE + "constraints: {max_params: -5}\n", "constraints.max_params: bad value -5 (allowed: a number > 0 or null)", 12),
    (BASE + "up: [{channels: 8}, null]\n", "up[0].channels: up stages take the width of their down stage", 12),
    ("schema_version: 1\nname: t\nstages: []\n", "t.yaml:3: stages: bad value list (allowed: a non-empty list of stage mappings)", 3),
    ("schema_version: 1\nname: t\nstages:\n  - {resnet_blocks: 1}\n", "t.yaml:4: stages[0]: missing key channels", 4),
    (BASE + "mid: {attention: self_cross, heads: 3}\n", "t.yaml:12: mid.heads: width 64 is not divisible by heads 3 (allowed: a head count that divides 64)", 12),
    # per-position layouts, RoPE and added conditioning (issue 12)
    (BASE + "    layers: [resnet, conv]\n", "t.yaml:12: stages[1].layers[1]: bad value 'conv' (allowed: resnet, transformer, cross_ffn, skip)", 12),
    (BASE + "    layers: [{choice: [resnet, skip]}, resnet]\n", "stages[1].layers[0]: bad value 'skip' (allowed: resnet: a stage's first layer is a fixed resnet", 12),
    (BASE + "    layers: [resnet, conv1d]\n", "stages[1].layers[1]: bad value 'conv1d' (temporal layers need kind: video)", 12),
    (BASE + "    layers: [resnet, {range: [1, 2]}]\n", "stages[1].layers[1]: a layer cannot be a range", 12),
    (BASE + "    layers: resnet\n", "stages[1].layers: bad value 'resnet' (allowed: a non-empty list of resnet, transformer", 12),
    (BASE + "    layers: [resnet]\n    resnet_blocks: 2\n", "t.yaml:13: stages[1].resnet_blocks: give layers or resnet_blocks, not both", 13),
    (BASE + "    layers: [resnet, {choice: [transformer, skip]}]\n", "t.yaml:12: stages[1].layers: a transformer layer in a stage with attention: none", 12),
    (BASE.replace("stages:", "defaults: {layers: [resnet]}\nstages:"), "t.yaml:7: defaults.layers: layers cannot have a default", 7),
    (BASE + "    rope: 1\n", "t.yaml:12: stages[1].rope: bad value 1 (allowed: true, false)", 12),
    (BASE + "added_conditioning: {type: pooled}\n", "t.yaml:12: added_conditioning.type: bad value 'pooled' (allowed: none, text_time)", 12),
    (BASE + "added_conditioning: {type: text_time, pooled: 5}\n", "added_conditioning.pooled: unknown key (allowed: pooled_dim, time_id_dim, time_ids, type)", 12),
    (BASE + "added_conditioning: {type: text_time, pooled_dim: 0}\n", "added_conditioning.pooled_dim: bad value 0 (allowed: an integer from 1 to 8,192)", 12),
    (BASE + "added_conditioning: [text_time]\n", "added_conditioning: bad value list (allowed: none, or a mapping with", 12),
    # absurd sizes are refused before anything is listed or built, with the bound (issue 13)
    (BASE + "    resnet_blocks: {range: [1, 100000000]}\n", "t.yaml:12: stages[1].resnet_blocks.range: bad value 100000000 (allowed: an integer from 1 to 32)", 12),
    (BASE + "    transformer_depth: {range: [0, 64]}\n    attention: cross\n    ffn_ratio: {range: [0.001, 16, 0.001]}\n", "t.yaml:14: stages[1].ffn_ratio.range: range [0.001, 16, 0.001] has 16,000 options (allowed: at most 1,024 options in one range; a larger step)", 14),
    (BASE.replace("channels: 64", "channels: {range: [8, 8192]}"), "t.yaml:11: stages[1].channels.range: range [8, 8192] has 8,185 options", 11),
    (BASE.replace("channels: 64", "channels: {choice: [" + ", ".join(str(8 * k) for k in range(1, 1100)) + "]}"), "t.yaml:11: stages[1].channels.choice: 1,099 options (allowed: at most 1,024 options in one choice)", 11),
    (BASE.replace("channels: 64", "channels: 100000"), "t.yaml:11: stages[1].channels: bad value 100000 (allowed: an integer from 1 to 8,192)", 11),
    (BASE.replace("channels: 64", "channels: 1.0e+9"), "t.yaml:11: stages[1].channels: bad value 1000000000.0, a float (allowed: an integer from 1 to 8,192)", 11),
    (BASE.replace("channels: 64", "channels: 1e5"), "t.yaml:11: stages[1].channels: bad value '1e5': YAML reads 1e5 as text, not a number, write it in digits (100000) (allowed: an integer from 1 to 8,192)", 11),
    (BASE.replace("context_length: 4", "context_length: 1000000000"), "t.yaml:5: context_length: bad value 1000000000 (allowed: an integer from 1 to 4,096)", 5),
    (BASE.replace("context_dim: 16", "context_dim: 100000"), "t.yaml:4: context_dim: bad value 100000 (allowed: an integer from 1 to 8,192)", 4),
    (BASE.replace("resolution: 16", "resolution: 4096"), "t.yaml:6: resolution: bad value 4096 (allowed: an integer from 1 to 1,024)", 6),
    (BASE + "time_embed_dim: 100000\n", "t.yaml:12: time_embed_dim: bad value 100000 (allowed: an integer from 1 to 32,768)", 12),
    (BASE + "    heads: 100000\n", "t.yaml:12: stages[1].heads: bad value 100000 (allowed: an integer from 1 to 1,024)", 12),
    (BASE.replace("head_dim: 16", "head_dim: 4096"), "t.yaml:10: stages[0].head_dim: bad value 4096 (allowed: an integer from 1 to 1,024)", 10),
    (BASE + "    transformer_depth: 1000\n", "t.yaml:12: stages[1].transformer_depth: bad value 1000 (allowed: an integer from 0 to 64)", 12),
    (BASE + "    ffn_ratio: 1.0e+6\n", "t.yaml:12: stages[1].ffn_ratio: bad value 1000000.0 (allowed: a number > 0 and <= 16)", 12),
    (BASE + "    resnet_expansion: .inf\n", "t.yaml:12: stages[1].resnet_expansion: bad value inf (allowed: a number > 0 and <= 16)", 12),
    (BASE + "width_mult: 1000\n", "t.yaml:12: width_mult: bad value 1000 (allowed: a number > 0 and <= 16)", 12),
    (BASE + "added_conditioning: {type: text_time, pooled_dim: 1000000}\n", "added_conditioning.pooled_dim: bad value 1000000 (allowed: an integer from 1 to 8,192)", 12),
    (BASE.replace("resolution: 16", "resolution: 512") + "".join("  - channels: 64\n" for _ in range(8)), "t.yaml:7: stages: 10 stages (allowed: at most 8 stages)", 7),
    (BASE + "    layers: [" + ", ".join(["resnet"] * 300) + "]\n", "t.yaml:12: stages[1].layers: 300 layers (allowed: at most 256 positions in one stage)", 12),
    (BASE + "    layers: [resnet" + ", {choice: [resnet, skip]}" * 40 + "]\n", "t.yaml:11: stages[1]: too many combinations to count: the exact count ran out of its budget (1,000,000 steps, ", 11),
    (BASE + "    resnet_blocks: {choice: [1, [2]]}\n", "t.yaml:12: stages[1].resnet_blocks.choice: bad option list (allowed: plain values", 12),
    # hostile or broken YAML: one line, nothing executed, nothing expanded
    (BASE + "name2: !!python/object/apply:os.system ['echo hi']\n", "t.yaml:12: invalid YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'", 12),
    (BASE + "description: " + "[" * 100 + "]" * 100 + "\n", "t.yaml:12: invalid YAML: nested deeper than 32 levels", 12),
    (BASE.replace("context_dim: 16", "context_dim: " + "9" * 5000), "t.yaml: invalid YAML: Exceeds the limit (4300 digits) for integer string conversion", None),
    (BASE + "x0: &x0 [a, a, a, a, a, a, a, a, a, a]\n" + "".join(f"x{k}: &x{k} [" + ", ".join([f"*x{k - 1}"] * 10) + "]\n" for k in range(1, 9)), "t.yaml:12: x0: unknown key", 12),
    (BASE + "\x00\n", "t.yaml: invalid YAML: unacceptable character #x0000", None),
    (BASE + "1: one\n2: two\n", "t.yaml:12: 1: unknown key", 12),
    ("name: t\nstages: [{channels: 32}]\n", "missing key schema_version", None),
    ("schema_version: 1\nname: t\nstages: [{channels: 32}\n", "invalid YAML", None),
]


@pytest.mark.parametrize("text, message, line", BAD_SPECS, ids=[m[:40] for _, m, _ in BAD_SPECS])
def test_bad_spec_gives_one_line_error(tmp_path, text, message, line):
    import time

    path = tmp_path / "t.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(SpecError) as exc:
        load_space(path)
    msg = str(exc.value)
    assert time.perf_counter() - t0 < 5.0  # the count's budget: about a second on a busy machine
    assert message in msg
    assert "\n" not in msg
    assert msg.startswith(str(path))
    if line is not None:
        assert msg.startswith(f"{path}:{line}:")


def test_shipped_spaces_validate():
    for path in sorted(SPACES.rglob("*.yaml")):
        space = load_space(path)
        assert space.size() >= 1, path


#: per-position choices, adjacent skips (two assignments, one architecture), temporal
#: positions, RoPE and an up stage with its own layout
LAYOUT_SPACE = """\
schema_version: 1
name: layouts
kind: video
latent_channels: 4
resolution: 8
frames: 2
context_dim: 16
context_length: 4
norm_groups: 8
defaults: {head_dim: 8, attention: self_cross}
stages:
  - channels: {choice: [8, 16]}
    layers: [resnet, {choice: [cross_ffn, conv1d, skip]}, {choice: [conv3d, skip]}]
  - channels: 16
    rope: {choice: [false, true]}
    layers: [resnet, {choice: [transformer, skip]}, {choice: [transformer, skip]}, {choice: [attn1d, cross3d, skip]}]
mid:
  layers: [resnet, {choice: [transformer, cross_ffn]}, resnet]
up:
  - {layers: [resnet, {choice: [transformer, skip]}, {choice: [resnet, skip]}], attention: {choice: [self, cross]}}
  - null
"""


def _brute_force_distinct(space):
    """Every product of every written option (whether or not it matters), resolved with a
    chooser that replays it: the distinct architectures, found without the enumerator."""
    from archsearch.candidate import resolve

    dims = space.dimensions()

    class Replay:
        def __init__(self, values):
            self.values = values

        def categorical(self, name, options):
            return self.values[name]

        def integer(self, name, low, high, step):
            return self.values[name]

    ids = set()
    for combo in itertools.product(*(d.options for d in dims)):
        values = {d.name: v for d, v in zip(dims, combo)}
        # the resolver names up stages of a mirrored space after their down stage's keys
        for d, v in zip(dims, combo):
            if d.name.startswith("down"):
                j = space.n_stages - 1 - int(d.name[4:].split(".")[0])
                values.setdefault(f"up{j}." + d.name.split(".", 1)[1], v)
        ids.add(resolve(space, Replay(values)).id)
    return ids


def test_space_size_is_exact_count_of_distinct_candidates(tiny_space, tiny_video_space):
    """Enumerate every assignment of every dimension; the distinct ids must equal size()."""
    from archsearch.candidate import enumerate_candidates

    layouts = load_space_text(LAYOUT_SPACE, "layouts.yaml")
    cands = list(enumerate_candidates(layouts))
    assert len({c.id for c in cands}) == len(cands) == layouts.size()
    assert {c.id for c in cands} == _brute_force_distinct(layouts)  # every architecture, each once
    for space in (tiny_space, tiny_video_space):
        cands = list(enumerate_candidates(space))  # full define-by-run enumeration of the whole space
        assert len({c.id for c in cands}) == len(cands) == space.size()
        assert [c.id for c in enumerate_candidates(space, limit=5)] == [c.id for c in cands[:5]]


def test_dimensions_list_choices_with_lines(tiny_space):
    dims = {d.name: d for d in tiny_space.dimensions()}
    assert dims["down0.channels"].options == (16, 32)
    assert dims["down0.resnet_blocks"].options == (1, 2)  # {range: [1, 2]} is inclusive
    assert dims["down1.attention"].line == 21


def test_hash_ignores_search_settings():
    a = load_space_text(BASE + "search: {n_trials: 3}\n", "a.yaml")
    b = load_space_text(BASE + "search: {n_trials: 9}\n", "b.yaml")
    c = load_space_text(BASE.replace("channels: 64", "channels: 128"), "c.yaml")
    assert a.hash == b.hash != c.hash


def test_fail_helper_points_at_the_line():
    space = load_space_text(BASE + "proxy:\n  steps: 0\n", "p.yaml")
    with pytest.raises(SpecError, match=r"^p\.yaml:13: proxy\.steps: bad value 0 \(allowed: an integer >= 1\)$"):
        space.fail(("proxy", "steps"), 0, "an integer >= 1")


def test_up_overrides_and_mirror():
    from archsearch.candidate import sample

    text = BASE + textwrap.dedent("""\
        up:
          - {resnet_blocks: 1}
          - {attention: none}
        """)
    c = sample(load_space_text(text, "u.yaml"), 0)
    assert [s.channels for s in c.up] == [64, 32]
    assert c.up[0].resnet_blocks == 1
    assert c.up[1].resnet_blocks == c.stages[0].resnet_blocks + 1  # mirrored + up_extra_resnets
    assert not c.up[1].has_transformer and c.stages[0].has_transformer


def test_width_mult_rounds_to_groups_and_heads():
    from archsearch.candidate import sample

    c = sample(load_space_text(BASE.replace("resolution: 16", "resolution: 16\nwidth_mult: 0.6"), "w.yaml"), 0)
    for s in itertools.chain(c.stages, c.up):
        assert s.channels % 8 == 0
        if s.has_transformer:
            assert s.heads * s.head_dim == s.channels
