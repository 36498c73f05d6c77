"""An honest report: the quality's noise, candidates within it, a suggested pick, candidates that
cannot see the prompt, latency labels that say what was measured, candidate files that list only
what the model uses, one name for FLOPs, the sampler the code defaults to."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial
from report_helpers import make_study
from rich.console import Console
from typer.testing import CliRunner

from archsearch.candidate import Candidate, sample, sample_many
from archsearch.errors import ArchsearchError
from archsearch.model import walk
from archsearch.spec import load_space
from archsearch.store import write_store

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
OBJ = ["quality", "latency_ms", "params"]
runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- the quality's noise


def test_the_held_out_score_comes_with_its_standard_error() -> None:
    from archsearch.distill._student import score_holdout

    g = torch.Generator().manual_seed(0)
    n = 6
    hold = {"xt": torch.randn(n, 4, 8, 8, generator=g), "t": torch.rand(n, generator=g),
            "ctx": torch.randn(n, 3, 5, generator=g), "teacher": torch.randn(n, 4, 8, 8, generator=g),
            "target": torch.randn(n, 4, 8, 8, generator=g)}
    forward = lambda xt, t, ctx: xt * 0.5  # noqa: E731
    held = score_holdout(forward, hold, contextlib.nullcontext)
    err = (hold["xt"] * 0.5 - hold["teacher"]) ** 2
    assert held.quality == float(torch.mean(err))  # the score itself is what it was
    per = err.flatten(1).mean(1).double().numpy()
    assert held.quality_se == pytest.approx(per.std(ddof=1) / math.sqrt(n), rel=1e-9)
    assert held.quality_se > 0
    one = score_holdout(forward, {k: v[:1] for k, v in hold.items()}, contextlib.nullcontext)
    assert math.isnan(one.quality_se)  # one sample: no spread to estimate


def test_a_trial_records_the_noise_of_its_score(tiny_space, monkeypatch: pytest.MonkeyPatch) -> None:
    import archsearch.search._objective as objective
    from archsearch import distill as stage
    from archsearch.distill import DistillResult
    from archsearch.search import TrialContext, TrialRecord, evaluate

    def fake(candidate, teacher, proxy, **kw):
        return DistillResult(quality=0.25, loss_curve=[1.0, 0.5], wall_time_s=0.1, steps=2, params=10,
                             device="cpu", metrics={"quality_se": 0.0125, "holdout_task_mse": 0.3})

    monkeypatch.setattr(stage, "distill", fake)
    monkeypatch.setattr(objective, "costs_of", lambda c, table, need_memory=False: {"params": 1, "flops": 1})
    settings = SimpleNamespace(max_latency_ms=None, max_params=None, max_memory_mb=None, objectives=OBJ)
    ctx = TrialContext(space=tiny_space, settings=settings, proxy=SimpleNamespace(kind="per_trial"), teacher=None,
                       table=None)
    rec = evaluate(sample(tiny_space, 0), ctx)
    assert rec.state == "complete" and rec.quality == 0.25 and rec.quality_se == 0.0125
    assert TrialRecord.from_attrs(rec.to_attrs()).quality_se == 0.0125  # what the store reads back


def test_a_proxy_run_reports_the_noise_of_its_score(tiny_space, tiny_teacher, one_thread) -> None:
    """The real proxy run passes score_holdout's standard error on (``metrics['quality_se']``)."""
    from conftest import TINY_PROXY

    from archsearch.distill import ProxyConfig, distill

    proxy = ProxyConfig.from_dict({**TINY_PROXY, "steps": 2, "holdout": 4})
    result = distill(sample(tiny_space, 0), tiny_teacher, proxy, device="cpu")
    se = result.metrics["quality_se"]
    assert math.isfinite(se) and 0 < se < result.quality


# --------------------------------------------------------------------------- the store and the report


def _attrs(cand: Candidate, q: float, se: float | None, lat: float, params: int) -> dict:
    return {"candidate": cand.to_dict(), "candidate_id": cand.id, "state": "complete", "quality": q,
            "quality_se": se, "latency_ms": lat, "params": params, "flops": params * 10,
            "latency_source": "measured", "feasible": True, "loss_curve": [1.0, q], "wall_time_s": 1.0}


@pytest.fixture()
def honest_study(tiny_space, tmp_path: Path) -> tuple[optuna.Study, dict[str, Candidate]]:
    """Four Pareto candidates: fast C, knee B, best-quality A, and E, whose edge over A is noise;
    C has no cross-attention anywhere."""
    pool = sample_many(tiny_space, 40, seed=5)
    blind = [c for c in pool if c.cross_attention_blocks() == 0]
    seeing = [c for c in pool if c.cross_attention_blocks() > 0]
    cands = {"A": seeing[0], "B": seeing[1], "C": blind[0], "E": seeing[2]}
    st = optuna.create_study(directions=["minimize"] * 3, study_name="honest")
    st.set_user_attr("archsearch.objectives", OBJ)
    st.set_user_attr("archsearch.study_dir", str(tmp_path / "honest"))
    st.set_user_attr("archsearch.kind", "image")
    dist = {"x": IntDistribution(0, 10)}
    rows = {"A": (0.10, 0.001, 9.0, 300), "B": (0.20, 0.001, 5.0, 200), "C": (0.30, 0.001, 2.0, 100),
            "E": (0.0999, 0.001, 9.8, 320)}  # E: 1e-4 better than A, far inside 2 * sqrt(2) * 0.001
    for i, (name, (q, se, lat, p)) in enumerate(rows.items()):
        st.add_trial(create_trial(state=TrialState.COMPLETE, values=[q, lat, p], params={"x": i}, distributions=dist,
                                  user_attrs=_attrs(cands[name], q, se, lat, p)))
    return st, cands


def test_the_store_marks_noise_the_knee_and_blind_candidates(honest_study, tmp_path: Path) -> None:
    study, c = honest_study
    meta = write_store(study)
    out = tmp_path / "honest"
    df = pd.read_csv(out / "trials.csv", dtype={"candidate_id": str, "within_noise_of": str}).set_index("candidate_id")
    assert df["pareto"].all()  # E trades latency for a better score: on the front, yet not a real trade-off
    assert df.loc[c["A"].id, "quality_se"] == 0.001
    marks = df["within_noise_of"].fillna("")
    assert marks[c["E"].id] == c["A"].id and (marks.drop(c["E"].id) == "").all()
    assert meta["quality_noise"]["within_noise_of"] == {c["E"].id: c["A"].id}
    assert meta["knee"]["candidate_id"] == c["B"].id and meta["knee"]["trial"] == 1
    assert c["C"].id in meta["knee"]["reason"] and c["A"].id in meta["knee"]["reason"]
    assert df.loc[c["C"].id, "cross_attention"] == 0 and df.loc[c["A"].id, "cross_attention"] > 0
    assert meta["warnings"] == [f"{c['C'].id}: a text-to-image candidate with no cross-attention anywhere: it "
                                "cannot see the prompt"]
    # a trial's latency is a prediction from the table's block rows, never a measured whole model
    assert set(df["latency_source"]) == {"sum of measured blocks"}
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk["knee"] == meta["knee"] and on_disk["store_version"] == 2


def test_the_report_shows_error_bars_the_knee_and_the_warnings(honest_study, tmp_path: Path) -> None:
    from archsearch.report import load_study, render_report

    study, c = honest_study
    write_store(study)
    figures: dict = {}
    page = render_report(load_study(tmp_path / "honest"), tmp_path, figures)
    text = _flat(page)
    front = figures["fig-front"]
    pareto = next(t for t in front.data if t.name.startswith("Pareto"))
    assert pareto.error_y.visible and list(pareto.error_y.array) == pytest.approx([0.002] * 4)
    knee = next(t for t in front.data if t.name == "suggested pick (knee)")
    assert list(knee.customdata) == [c["B"].id]
    assert f"within noise of <code>{c['E'].id}</code>" not in text  # E is within noise of A, not the reverse
    assert f"within noise of <code>{c['A'].id}</code>" in text
    assert f"<b><code>{c['B'].id}</code></b> (trial 1)" in text and "knee of the quality-latency_ms front" in text
    assert "suggested pick (knee)" in text
    assert f"{c['C'].id}: a text-to-image candidate with no cross-attention anywhere: it cannot see the prompt" in text
    assert "0.1 ± 0.002" in text and "FLOPs (MAC)" in text
    assert "(sum of measured blocks)" in text and "(measured)" not in text


def test_an_old_store_is_labelled_honestly_and_says_it_has_no_noise_estimate(tmp_path: Path) -> None:
    from archsearch.report import load_study, render_report

    folder = make_study(tmp_path / "reports", n=16)  # trials.csv as stores before quality_se wrote it
    data = load_study(folder)
    assert "measured" not in set(data.trials["latency_source"])
    assert "sum of measured blocks" in set(data.trials["latency_source"])
    text = _flat(render_report(data, tmp_path))
    assert "quality noise" in text and "no estimate" in text
    assert "not recorded (a store written before the suggested pick)" in text


def test_the_latency_of_measured_blocks_is_labelled_a_sum_of_them(tiny_space, monkeypatch) -> None:
    import archsearch.cost as cost
    from archsearch.cost.latency import LatencyPredictor, LatencyTable, predictor_for
    from archsearch.search._objective import costs_of

    cand = sample(tiny_space, 0)
    table = LatencyTable(meta={"target": "cpu", "resolution": cand.resolution})
    table.add_rows([{"key": s.key, "type": s.type, "ms": 0.01, "source": "measured"} for s in walk(cand)])
    assert table.source_for(cand) == "measured"  # each row was timed on the device ...
    assert predictor_for(table).source_for(cand) == "sum of measured blocks"  # ... the whole model was not
    # a trial's costs carry the predictor's label (FLOPs and memory stubbed: seconds of fvcore and meta builds)
    monkeypatch.setattr(cost, "flops", lambda c: SimpleNamespace(total=1))
    monkeypatch.setattr(LatencyPredictor, "memory", lambda self, c: SimpleNamespace(peak_mb=1.0, source="estimate"))
    assert costs_of(cand, table)["latency_source"] == "sum of measured blocks"


# --------------------------------------------------------------------------- the run's closing summary


def test_run_summary_names_flops_as_build_does_and_says_the_pick_and_the_warnings(honest_study, tmp_path: Path):
    from archsearch.cli.run import closing_notes, summary_table
    from archsearch.store import load_trials

    study, c = honest_study
    meta = write_store(study)
    console = Console(record=True, width=250)
    console.print(summary_table(load_trials(tmp_path / "honest"), meta))
    table = console.export_text()
    assert "FLOPs (MAC)" in table and "GFLOPs" not in table
    assert "3.20K" in table  # E's 320 * 10 FLOPs, written as `archsearch build` writes them
    assert f"≈ {c['A'].id}" in table and "knee" in table and "no prompt" in table and "±2 se" in table
    assert "latency: sum of measured blocks" in _flat(table)
    notes = closing_notes(meta, load_trials(tmp_path / "honest"))
    assert notes[0].startswith(f"suggested pick: {c['B'].id} (trial 1): knee of the quality-latency_ms front")
    assert notes[1] == (f"{c['E'].id}: within noise of {c['A'].id}, which is cheaper (quality 0.0999 ± 0.002 vs "
                        "0.1 ± 0.002): not a distinct trade-off")
    assert notes[2] == f"warning: {meta['warnings'][0]}"


def test_run_help_and_the_docs_name_the_sampler_the_code_defaults_to() -> None:
    import archsearch.search as search
    from archsearch.cli.main import app
    from archsearch.search import DEFAULT_SAMPLER

    r = runner.invoke(app, ["run", "--help"])
    assert r.exit_code == 0
    assert f"else {DEFAULT_SAMPLER};" in _flat(r.output.replace("│", " "))
    assert f"``{DEFAULT_SAMPLER}`` default" in search.__doc__ and "``nsga2`` default" not in search.__doc__


# --------------------------------------------------------------------------- candidate files


def _without_unused(c: Candidate) -> Candidate:
    """``c`` with every setting its YAML leaves out reset to the neutral default."""
    data = yaml.safe_load(c.to_yaml())
    for st in [*data["stages"], *data["up"], data["mid"]]:
        st.pop("unused", None)
    data.pop("id")
    return Candidate.from_dict(data)


def test_a_candidate_file_lists_only_the_settings_its_model_uses(tiny_space, tmp_path: Path) -> None:
    c = sample(tiny_space, 0)
    data = yaml.safe_load(c.to_yaml())
    mid, first = data["mid"], data["stages"][0]
    # tiny.yaml's mid says attention: self_cross, but a mid with one ResNet builds no transformer
    assert not c.builds_transformer("mid") and not any(b.stage == "mid" and b.type == "transformer" for b in walk(c))
    assert not {"heads", "head_dim", "ffn_ratio", "ffn_type", "attention", "transformer_depth"} & set(mid)
    assert mid["unused"]["attention"] == "self_cross"  # kept aside: the id covers it
    assert not {"heads", "ffn_type", "ffn_ratio", "qk_norm", "attention_variant", "temporal"} & set(first)
    assert c.summary()["mid.attention"] == "none"  # the trials table says what the model has
    # the file loads back to the same candidate and id (ids written before stay what they were)
    path = c.save(tmp_path / "c.yaml")
    assert Candidate.from_yaml(path) == c and Candidate.from_yaml(path).id == c.id
    assert Candidate.from_dict(c.to_dict()).id == c.id  # the old full form (trials.csv) still loads
    bad = c.to_yaml().replace("  resnet_variant: plain\n  unused: {", "  resnet_variant: plain\n  heads: 3\n  unused: {")
    with pytest.raises(ArchsearchError, match=r"mid\.unused\.heads: given twice"):
        Candidate.from_yaml(bad)


@pytest.mark.parametrize("space", ["tiny.yaml", "video_temporal.yaml", "reference/snapgen_unet.yaml"])
def test_the_settings_left_out_change_no_block(space: str) -> None:
    """Every setting a candidate file leaves out is one no block reads: with them reset the model
    walks to the same blocks, and the cross-attention count is the model's."""
    for c in sample_many(load_space(SPACES / space), 6, seed=1):
        blocks = [(b.name, b.type, b.params, b.in_shape) for b in walk(c)]
        assert [(b.name, b.type, b.params, b.in_shape) for b in walk(_without_unused(c))] == blocks
        cross = sum(1 for b in walk(c) if b.type in ("cross_ffn", "temporal_cross1d", "temporal_cross3d")
                    or (b.type == "transformer" and dict(b.params)["attention"] in ("cross", "self_cross")))
        assert c.cross_attention_blocks() == cross


def test_reference_candidates_keep_their_ids(tiny_space) -> None:
    """Leaving settings out of the file changes no id (tests/test_candidate.py pins two)."""
    for c in sample_many(tiny_space, 5, seed=0):
        assert Candidate.from_yaml(c.to_yaml()).id == c.id
        assert replace(c, origin="x").id == c.id
    assert np.all([isinstance(c.cross_attention_blocks(), int) for c in sample_many(tiny_space, 5, seed=0)])
