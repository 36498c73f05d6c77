"""Latency tables: file round trip, pandas readability, atomic writes, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from archsearch.cost.latency import COLUMNS, LatencyTable, load_table
from archsearch.errors import ArchsearchError


def _rows():
    return [
        {"key": "resnet(a=1,b=2)@1x16x8x8", "type": "resnet", "params": '{"a":1,"b":2}', "in_shape": "1x16x8x8",
         "ms": 0.125, "ms_iqr": 0.004, "runs": 400, "source": "measured", "macs": 12345, "bytes": 6789,
         "example": "down.0.layer0.resnet"},
        {"key": "conv_in(in_channels=4,out_channels=16)@1x4x8x8", "type": "conv_in", "ms": 0.031,
         "source": "estimate", "macs": 36864, "coreml": "ok", "ane_flags": "rank5:2;copies:1"},
    ]


def test_round_trip_keeps_rows_metadata_and_calibration(tmp_path):
    table = LatencyTable(meta={"target": "cpu", "device": "test cpu", "threads": 2, "dtype": "float32",
                               "space": {"name": "tiny", "hash": "abc"}})
    table.add_rows(_rows())
    table.set_calibration(1.05, 0.75, [{"id": "c1", "measured_ms": 3.0, "blocks_ms": 2.1}], "test")
    path = table.save(tmp_path / "t.csv")

    back = load_table(path)
    assert len(back) == 2 and back.path == path
    assert back.meta["target"] == "cpu" and back.meta["threads"] == 2
    assert back.meta["space"] == {"name": "tiny", "hash": "abc"}
    assert back.calibration == (1.05, 0.75)
    assert back.meta["calibration"]["points"][0]["id"] == "c1"
    assert back.source == "mixed"  # one measured row, one estimate row
    row = back.row("resnet(a=1,b=2)@1x16x8x8")
    assert row["ms"] == pytest.approx(0.125) and row["runs"] == 400 and row["macs"] == 12345
    assert row["example"] == "down.0.layer0.resnet"
    assert back.ms("conv_in(in_channels=4,out_channels=16)@1x4x8x8") == pytest.approx(0.031)
    assert back.row("conv_in(in_channels=4,out_channels=16)@1x4x8x8")["ane_flags"] == "rank5:2;copies:1"
    assert math.isnan(back.row("conv_in(in_channels=4,out_channels=16)@1x4x8x8")["ms_iqr"])

    # what a user gets with plain pandas: the metadata lines are comments
    df = pd.read_csv(path, comment="#")
    assert list(df.columns) == list(COLUMNS)
    assert set(df["key"]) == {r["key"] for r in _rows()}


def test_add_rows_replaces_by_key():
    table = LatencyTable()
    table.add_rows(_rows())
    table.add_rows([{"key": "resnet(a=1,b=2)@1x16x8x8", "ms": 0.5, "source": "imported"}])
    assert len(table) == 2
    assert table.ms("resnet(a=1,b=2)@1x16x8x8") == 0.5
    assert table.row("resnet(a=1,b=2)@1x16x8x8")["source"] == "imported"
    with pytest.raises(ValueError, match="bad source"):
        table.add_rows([{"key": "x", "ms": 1.0, "source": "guessed"}])


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    table = LatencyTable(meta={"target": "cpu"})
    table.add_rows(_rows())
    path = table.save(tmp_path / "t.csv")
    before = path.read_text()

    def boom(self):
        raise RuntimeError("disk full")

    table.add_rows([{"key": "new@1", "ms": 1.0, "source": "measured"}])
    monkeypatch.setattr(LatencyTable, "to_csv_text", boom)
    with pytest.raises(RuntimeError):
        table.save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no temp file left behind


@pytest.mark.parametrize(
    "body, message",
    [
        ("key,ms\nresnet@1,fast\n", r"t\.csv:2: column ms: bad value 'fast' for key 'resnet@1' \(allowed: a number > 0\)"),
        ("key,ms\nresnet@1,-2\n", r"column ms: bad value '-2'"),
        ("key,ms,latency\nresnet@1,2,3\n", r"unknown column 'latency' \(allowed: key, type,"),
        ("key,runs\nresnet@1,2\n", r"missing column ms"),
        ("key,ms,source\nresnet@1,2,guess\n", r"column source: bad value 'guess' \(allowed: measured, estimate, imported\)"),
        ("# format: other/v9\nkey,ms\nresnet@1,2\n", r"format: unsupported 'other/v9'"),
        ("# target: cpu\n# device: [unclosed\nkey,ms\nresnet@1,2\n", r"^\S*t\.csv:\d+: invalid YAML: "),
        ("# - a\n# - b\nkey,ms\nresnet@1,2\n", r"'#' metadata lines must be a YAML mapping"),
    ],
)
def test_bad_table_files_give_one_line_errors(tmp_path, body, message):
    path = tmp_path / "t.csv"
    path.write_text(body)
    with pytest.raises(ArchsearchError, match=message) as err:
        load_table(path)
    assert "\n" not in str(err.value)


def test_missing_table_file_is_a_clear_error(tmp_path):
    with pytest.raises(ArchsearchError, match=r"nope\.csv: latency table not found"):
        load_table(tmp_path / "nope.csv")


def test_ms_array_is_aligned_with_index():
    table = LatencyTable()
    table.add_rows(_rows())
    for key in table.keys():
        assert table.ms_array[table.index_of(key)] == table.ms(key)
    assert isinstance(table.ms_array, np.ndarray)


def test_duplicated_keys_and_a_cut_short_last_line_are_refused(tmp_path):
    """A table is checked, not trusted: two rows for one block (different ms) name both
    lines; a file cut in the middle of its last row is not read as 'measured'."""
    from tests.conftest import ROOT

    text = (ROOT / "latency_tables" / "tiny-cpu-r16.csv").read_text()
    lines = text.splitlines(keepends=True)
    n = len(lines)
    dup = tmp_path / "dup.csv"
    head, tail = lines[-1].rsplit(",measured,", 1)
    ms_at = head.rindex(",", 0, head.rindex(",", 0, head.rindex(",")))  # ...,in_shape,ms,ms_iqr,runs
    again = head[:ms_at] + ",9.99" + head[head.index(",", ms_at + 1):] + ",measured," + tail
    assert again != lines[-1]
    dup.write_text(text + again)
    with pytest.raises(ArchsearchError, match=rf"dup.csv:{n}: key .* appears on lines {n}, {n + 1}") as e:
        load_table(dup)
    assert "\n" not in str(e.value)
    cut = tmp_path / "cut.csv"
    last = lines[-1]
    cut.write_text("".join(lines[:-1]) + last[: last.index(",measured,") - 4])  # '...,1x48x8x8,0.3'
    with pytest.raises(ArchsearchError, match=rf"cut.csv:{n}: .*cut short"):
        load_table(cut)
    ok = tmp_path / "ok.csv"
    ok.write_text(text.rstrip("\n"))  # no final newline but a whole row: fine
    assert len(load_table(ok).df) == len(load_table(ROOT / "latency_tables" / "tiny-cpu-r16.csv").df)
