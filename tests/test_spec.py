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
    (BASE + "    resnet_blocks: -2\n", "t.yaml:12: stages[1].resnet_blocks: bad value -2 (allowed: an integer >= 1)", 12),
    (BASE + "    resnet_blocks: two\n", "stages[1].resnet_blocks: bad value 'two' (allowed: an integer >= 1)", 12),
    (BASE + "    resnet_blocks: {choice: [1, 0]}\n", "stages[1].resnet_blocks: bad value 0 (allowed: an integer >= 1)", 12),
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
    ("name: t\nstages: [{channels: 32}]\n", "missing key schema_version", None),
    ("schema_version: 1\nname: t\nstages: [{channels: 32}\n", "invalid YAML", None),
]


@pytest.mark.parametrize("text, message, line", BAD_SPECS, ids=[m[:40] for _, m, _ in BAD_SPECS])
def test_bad_spec_gives_one_line_error(tmp_path, text, message, line):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as exc:
        load_space(path)
    msg = str(exc.value)
    assert message in msg
    assert "\n" not in msg
    assert msg.startswith(str(path))
    if line is not None:
        assert msg.startswith(f"{path}:{line}:")


def test_shipped_spaces_validate():
    for path in sorted(SPACES.rglob("*.yaml")):
        space = load_space(path)
        assert space.size() >= 1, path


def test_space_size_is_exact_count_of_distinct_candidates(tiny_space, tiny_video_space):
    """Enumerate every assignment of every dimension; the distinct ids must equal size()."""
    from archsearch.candidate import enumerate_candidates

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
