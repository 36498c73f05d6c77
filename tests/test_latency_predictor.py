"""The predictor against hand-built tables: sums, calibration, breakdown, missing blocks."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from archsearch.candidate import sample_many
from archsearch.cost.latency import (
    InterpolationWarning,
    LatencyPredictor,
    LatencyTable,
    MissingBlocksError,
    load_predictor,
    predict,
    predict_breakdown,
    predictor_for,
)
from archsearch.errors import MissingBlockError
from archsearch.model import walk


def _hand_table(cands, scale=1.0, overhead=0.0, source="measured", drop=()):
    """One row per distinct key with a known latency: 0.001 * (1 + index of the key)."""
    keys = list(dict.fromkeys(s.key for c in cands for s in walk(c)))
    ms = {k: 0.001 * (1 + i) for i, k in enumerate(keys)}
    specs = {s.key: s for c in cands for s in walk(c)}
    table = LatencyTable(meta={"target": "cpu", "resolution": cands[0].resolution,
                               "command": "archsearch profile search_spaces/tiny.yaml --target cpu --out t.csv"})
    table.add_rows([{"key": k, "type": specs[k].type, "ms": v, "source": source} for k, v in ms.items()
                    if k not in drop])
    if scale != 1.0 or overhead:
        table.set_calibration(scale, overhead, [], "hand")
    return table, ms


def test_predict_is_the_calibrated_sum_of_block_rows(tiny_space):
    cands = sample_many(tiny_space, 12, seed=3)
    table, ms = _hand_table(cands, scale=1.5, overhead=2.0)
    expected = np.array([1.5 * sum(ms[s.key] for s in walk(c)) + 2.0 for c in cands])
    got = predict(cands, table)
    assert got.shape == (12,) and got.dtype == float
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # one at a time, and again (cached path), give the same numbers
    np.testing.assert_allclose([predict(c, table)[0] for c in cands], expected, rtol=1e-12)
    np.testing.assert_allclose(predict(cands[::-1], table), expected[::-1], rtol=1e-12)
    assert predict([], table).shape == (0,)


def test_a_changed_row_invalidates_cached_predictions(tiny_space):
    cands = sample_many(tiny_space, 3, seed=4)
    table, ms = _hand_table(cands)
    before = predict(cands, table)
    key = walk(cands[0])[1].key
    n_uses = sum(s.key == key for s in walk(cands[0]))
    table.add_rows([{"key": key, "ms": ms[key] + 1.0, "source": "measured"}])
    assert predict(cands[0], table)[0] == pytest.approx(before[0] + n_uses)


def test_breakdown_rows_sum_to_the_prediction(tiny_space):
    cand = sample_many(tiny_space, 1, seed=5)[0]
    table, ms = _hand_table([cand], scale=1.2, overhead=0.5)
    df = predict_breakdown(cand, table)
    assert list(df.columns) == ["name", "stage", "type", "key", "ms", "source", "table_ms"]
    assert list(df["name"][:-1]) == [s.name for s in walk(cand)]
    assert df["ms"].sum() == pytest.approx(predict(cand, table)[0])
    assert df.iloc[-1]["name"] == "overhead" and df.iloc[-1]["ms"] == pytest.approx(0.5)
    assert set(df["source"][:-1]) == {"measured"}
    per_stage = df.groupby("stage", sort=False)["ms"].sum()
    assert list(per_stage.index)[:2] == ["stem", "down.0"]


def test_missing_block_error_names_the_key_and_the_command(tiny_space):
    cands = sample_many(tiny_space, 4, seed=6)
    missing = walk(cands[2])[2]
    table, _ = _hand_table(cands, drop={missing.key})
    table.path = "latency_tables/tiny-cpu-r16.csv"
    with pytest.raises(MissingBlockError) as err:
        predict(cands, table)
    msg = str(err.value)
    assert missing.key in msg and missing.name in msg
    assert "archsearch profile search_spaces/tiny.yaml --target cpu --out t.csv" in msg
    assert "allow_missing=True" in msg and "\n" not in msg
    assert "--" not in msg.replace("--target cpu --out", "")  # the library names parameters, not flags
    e = err.value
    assert isinstance(e, MissingBlocksError)
    first = next(c for c in cands if missing.key in {s.key for s in walk(c)})  # the first candidate that needs it
    assert (e.key, e.candidate_id, e.target) == (missing.key, first.id, "cpu")
    assert str(e.table_path) == "latency_tables/tiny-cpu-r16.csv" and e.n_missing >= 1


def test_cli_predict_words_a_missing_block_with_its_flags(tiny_space, tmp_path):
    from typer.testing import CliRunner

    from archsearch.cli.main import app

    cands = sample_many(tiny_space, 2, seed=6)
    missing = walk(cands[1])[2]
    table, _ = _hand_table(cands, drop={missing.key})
    del table.meta["command"]  # a table built from Python: the CLI composes the command
    path = table.save(tmp_path / "t.csv")
    cand = cands[1].save(tmp_path / "cand.yaml")
    res = CliRunner().invoke(app, ["predict", str(cand), "--table", str(path)])
    flat = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"block {missing.key} ({missing.name}) of candidate {cands[1].id} is not in latency table" in flat
    assert f"measure it with: archsearch profile SPEC --target cpu --out {path}" in flat
    assert "(or pass --allow-missing to interpolate)" in flat
    res = CliRunner().invoke(app, ["predict", str(cand), "--table", str(path), "--allow-missing"])
    assert res.exit_code == 0, res.output
    assert "interpolated" in res.output


def test_a_predictor_owns_its_table_and_caches(tiny_space, tmp_path):
    cands = sample_many(tiny_space, 5, seed=10)
    table, ms = _hand_table(cands, scale=1.1, overhead=0.3)
    pred = LatencyPredictor(table)
    np.testing.assert_allclose(pred.predict(cands), predict(cands, table), rtol=1e-12)
    assert pred.breakdown(cands[0])["ms"].sum() == pytest.approx(pred.predict(cands[0])[0])
    assert not any(k.startswith("_pred") or k.startswith("_interp") for k in vars(table))  # caches live in the predictor
    assert predictor_for(table) is predictor_for(table) and predictor_for(pred) is pred
    assert predict(cands, pred).shape == (5,)  # the functions take a predictor too
    loaded = load_predictor(table.save(tmp_path / "t.csv"))
    np.testing.assert_allclose(loaded.predict(cands), pred.predict(cands), rtol=1e-6)
    key = walk(cands[0])[0].key
    table.add_rows([{"key": key, "ms": ms[key] + 2.0, "source": "measured"}])  # the predictor follows its table
    n_uses = sum(s.key == key for s in walk(cands[0]))
    assert pred.predict(cands[0])[0] == pytest.approx(1.1 * (sum(ms[s.key] for s in walk(cands[0])) + 2.0 * n_uses) + 0.3)


def test_missing_block_at_another_resolution_says_so(tiny_space):
    cand = sample_many(tiny_space, 1, seed=7)[0]
    table, _ = _hand_table([cand])
    with pytest.raises(MissingBlockError, match=r"measured at resolution 16 and this candidate has resolution 8"):
        predict(cand.for_proxy(resolution=8), table)


def test_allow_missing_interpolates_and_warns_how_many(tiny_space):
    from archsearch.cost.latency import block_census

    cands = sample_many(tiny_space, 40, seed=8)
    specs = {s.key: s for c in cands for s in walk(c)}
    # a latency that is exactly linear in MACs within a block type: interpolation recovers it
    truth = {}
    rows = []
    for k, s in specs.items():
        macs = block_census(s, 1, 4).macs
        truth[k] = {"resnet": 0.05, "transformer": 0.08}.get(s.type, 0.01) + 2e-8 * macs
        rows.append({"key": k, "type": s.type, "params": json.dumps(s.hparams, sort_keys=True),
                     "in_shape": "x".join(map(str, s.in_shape)), "ms": truth[k], "macs": macs, "source": "measured"})
    target = next(c for c in cands if sum(s.type == "resnet" for s in walk(c)) >= 2)
    dropped = [s.key for s in walk(target) if s.type == "resnet"][:1]
    table = LatencyTable(meta={"target": "cpu"})
    table.add_rows([r for r in rows if r["key"] not in dropped])
    exact = sum(truth[s.key] for s in walk(target))
    with pytest.raises(MissingBlockError):
        predict(target, table)
    with pytest.warns(InterpolationWarning, match=r"^1 block\(s\) missing from the latency table were interpolated"):
        got = predict(target, table, allow_missing=True)[0]
    assert got == pytest.approx(exact, rel=1e-3)
    # cached: a later strict call still refuses, a permissive one warns again
    with pytest.raises(MissingBlockError):
        predict(target, table)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict([target, target], table, allow_missing=True)
    assert sum(issubclass(w.category, InterpolationWarning) for w in caught) == 1
    with pytest.warns(InterpolationWarning):
        df = predict_breakdown(target, table, allow_missing=True)
    assert (df["source"] == "interpolated").sum() == sum(s.key in dropped for s in walk(target))
    assert table.source_for(target) == "mixed"  # measured rows + one interpolated (estimate)


def test_source_for(tiny_space):
    cands = sample_many(tiny_space, 2, seed=9)
    table, _ = _hand_table(cands, source="estimate")
    assert table.source_for(cands[0]) == "estimate"
    key = walk(cands[0])[0].key
    table.add_rows([{"key": key, "ms": 0.1, "source": "imported"}])
    assert table.source_for(cands[0]) == "mixed"
