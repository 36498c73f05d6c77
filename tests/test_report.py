"""The report stage: loading a study folder, what the page shows, escaping, CLI.

The study folders are built here with the store's file format (trials.csv, meta.json,
pareto/*.yaml, latency_breakdown.csv, validation.csv), so this file does not depend on the
search or store stages.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from plotly.offline import get_plotlyjs
from report_helpers import BLOCK_TYPES, OBJECTIVES, STAGES, XSS, XSS_ID, _naive_front, front_ids_of, make_study  # noqa: F401
from typer.testing import CliRunner

from archsearch.errors import ArchsearchError
from archsearch.pareto import default_reference, hypervolume, hypervolume_history
from archsearch.report import _compute as C
from archsearch.report import load_study, write_compare, write_report


@pytest.fixture
def study(tmp_path: Path) -> Path:
    return make_study(tmp_path / "reports")


def _plot_divs(page: str) -> list[str]:
    return re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', page)


# --------------------------------------------------------------------------- loading


def test_load_study_reads_every_file(study: Path) -> None:
    s = load_study(study)
    assert s.name == "unet_mobile"
    assert s.objective_names == ["quality", "latency_ms", "params"]
    assert len(s.trials) == 60 and s.trials["number"].is_monotonic_increasing
    assert "arch.down1.attention" in s.arch_columns
    assert s.trials.loc[s.trials["state"] == "infeasible", "feasible"].eq(False).all()
    assert set(s.pareto_yaml) == front_ids_of(study)
    assert s.breakdown is not None and s.validation is not None
    assert s.max_latency_ms == 14.0


def test_hex_ids_that_look_like_numbers_stay_text(study: Path) -> None:
    df = pd.read_csv(study / "trials.csv", dtype={"candidate_id": str})
    df.loc[0, "candidate_id"] = "1e5000000000"
    df.to_csv(study / "trials.csv", index=False)
    assert load_study(study).trials.loc[0, "candidate_id"] == "1e5000000000"


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda d: (d / "trials.csv").unlink(), r"trials\.csv: missing"),
        (lambda d: (d / "meta.json").unlink(), r"meta\.json: missing"),
        (lambda d: (d / "meta.json").write_text("{\n  'study': 1\n}"), r"meta\.json:2: not valid JSON"),
        (lambda d: (d / "trials.csv").write_text(""), r"trials\.csv: empty file"),
    ],
)
def test_missing_or_malformed_required_file_names_it(study: Path, breakage, expected) -> None:
    breakage(study)
    with pytest.raises(ArchsearchError, match=expected):
        load_study(study)


def _edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    (folder / "meta.json").write_text(json.dumps(meta))


def test_bad_meta_values_name_the_key_and_allowed_values(study: Path) -> None:
    _edit_meta(study, objectives=[{"name": "quality", "direction": "lower"}])
    with pytest.raises(ArchsearchError, match=r"objectives\[0\]\.direction.*allowed: minimize, maximize"):
        load_study(study)
    _edit_meta(study, objectives=[{"name": "acc", "direction": "maximize"}])
    with pytest.raises(ArchsearchError, match=r"objective 'acc' is not a column of trials\.csv"):
        load_study(study)
    _edit_meta(study, objectives=OBJECTIVES, reference_point={"quality": 1.0})
    with pytest.raises(ArchsearchError, match=r"reference_point\.latency_ms"):
        load_study(study)


def test_bad_trial_cells_name_row_and_column(study: Path) -> None:
    df = pd.read_csv(study / "trials.csv", dtype={"candidate_id": str})
    df["state"] = df["state"].astype(object)
    df.loc[5, "state"] = "pruned"
    df.to_csv(study / "trials.csv", index=False)
    with pytest.raises(ArchsearchError, match=r"row 7, column state: 'pruned' \(allowed: complete, failed, infeasible, running\)"):
        load_study(study)
    df.loc[5, "state"] = "complete"
    df["quality"] = df["quality"].astype(object)
    df.loc[8, "quality"] = "0.3x"
    df.to_csv(study / "trials.csv", index=False)
    with pytest.raises(ArchsearchError, match=r"row 10, column quality: '0.3x' is not a number"):
        load_study(study)


def test_missing_required_column_lists_what_is_there(study: Path) -> None:
    df = pd.read_csv(study / "trials.csv").drop(columns=["state"])
    df.to_csv(study / "trials.csv", index=False)
    with pytest.raises(ArchsearchError, match=r"trials\.csv: missing column\(s\) state \(has: number, "):
        load_study(study)


# --------------------------------------------------------------------------- what is computed


def test_front_statuses_match_a_brute_force_front(study: Path) -> None:
    s = load_study(study)
    fd = C.front_data(s)
    by_status = fd.points.groupby("status")["candidate_id"].apply(set).to_dict()
    assert by_status["Pareto"] == front_ids_of(study)
    infeasible = set(s.trials.loc[s.trials["state"] == "infeasible", "candidate_id"])
    assert by_status["infeasible"] == infeasible and infeasible
    # untrained infeasible trials have no quality: drawn on the top edge, flagged as unknown
    inf = fd.points[fd.points["status"] == "infeasible"]
    assert not inf["y_known"].any()
    assert (inf["y"] > fd.points.loc[fd.points["y_known"], "y"].max()).all()
    # failed / running trials are not plotted
    assert not set(fd.points["number"]) & {3, 59}
    # the line is the 2-D quality/latency front, sorted by latency with quality falling
    feas = s.trials[(s.trials["state"] == "complete")]
    xy = feas[["latency_ms", "quality"]].to_numpy(float)
    expected = np.sort(xy[_naive_front(xy)][:, 0])
    np.testing.assert_allclose(fd.line["x"], expected)
    assert (np.diff(fd.line["y"]) < 0).all()
    assert fd.budget_ms == 14.0


def test_hover_describes_the_candidate(study: Path) -> None:
    s = load_study(study)
    fd = C.front_data(s)
    row = fd.points[fd.points["status"] == "Pareto"].iloc[0]
    trial = s.trials.set_index("candidate_id").loc[row["candidate_id"]]
    hover = row["hover"]
    assert hover.startswith(f"<b>{row['candidate_id']}</b> (trial {trial['number']}, Pareto)")
    assert f"latency: {C.fmt_ms(trial['latency_ms'])} ({trial['latency_source']})" in hover
    assert f"params: {C.fmt_count(trial['params'])}, FLOPs: {C.fmt_count(trial['flops'])}" in hover
    for stage in STAGES:
        assert (
            f"{stage}: channels={trial[f'arch.{stage}.channels']}, "
            f"resnet_blocks={trial[f'arch.{stage}.resnet_blocks']}, "
            f"transformer_depth={trial[f'arch.{stage}.transformer_depth']}, "
            f"attention={trial[f'arch.{stage}.attention']}"
        ) in hover
    infeasible = fd.points[fd.points["status"] == "infeasible"].iloc[0]["hover"]
    assert "reason: latency" in infeasible and "&gt; 14.0 ms" in infeasible


def test_progress_is_the_hypervolume_of_feasible_trials_so_far(study: Path) -> None:
    s = load_study(study)
    ref, origin = C.reference_point(s)
    assert origin.startswith("default")
    feas = (s.trials["state"] == "complete").to_numpy()
    vals = s.trials[["quality", "latency_ms", "params"]].to_numpy(float)
    np.testing.assert_allclose(ref, default_reference(vals[feas], ["minimize"] * 3))
    prog = C.progress_table(s, ref)
    assert (np.diff(prog["hypervolume"]) >= 0).all()
    for k in (10, 30, 59):
        expected = hypervolume(vals[: k + 1][feas[: k + 1]], ref, ["minimize"] * 3)
        assert prog["hypervolume"].iloc[k] == pytest.approx(expected, rel=1e-12)
    best = prog["best:quality"].to_numpy()
    assert np.nanmin(best) == pytest.approx(np.nanmin(vals[feas, 0]))
    assert (np.diff(best[~np.isnan(best)]) <= 0).all()


def test_reference_point_from_meta_is_used(study: Path) -> None:
    _edit_meta(study, reference_point={"quality": 1.0, "latency_ms": 30.0, "params": 5e8})
    s = load_study(study)
    ref, origin = C.reference_point(s)
    assert origin == "meta.json" and list(ref) == [1.0, 30.0, 5e8]


def test_breakdown_pivots_follow_file_order_and_sum_to_latency(study: Path) -> None:
    s = load_study(study)
    ids = C.pareto_table(s)["candidate_id"].tolist()
    by_stage, by_type = C.breakdown_tables(s, ids)
    assert list(by_stage.index) == ids
    assert list(by_stage.columns) == ["stem", *STAGES, "head"]
    assert list(by_type.columns) == list(BLOCK_TYPES)
    lat = s.trials.set_index("candidate_id").loc[ids, "latency_ms"].to_numpy()
    np.testing.assert_allclose(by_stage.sum(axis=1), lat)
    np.testing.assert_allclose(by_type.sum(axis=1), lat)


def test_parcoords_encodes_categories_and_drops_constants(study: Path) -> None:
    s = load_study(study)
    dims, dropped = C.parcoords_dims(s)
    labels = [d.label for d in dims]
    assert "down1.attention" in labels and labels[-3:] == ["quality", "latency_ms", "params"]
    assert "down0.norm_groups" in dropped and "down0.transformer_depth" in dropped
    attn = dims[labels.index("down1.attention")]
    assert attn.ticktext == ["none", "self", "self+cross"]
    assert set(attn.values) <= {0.0, 1.0, 2.0}
    n_eval = int(C.evaluated_mask(s).sum())
    assert all(len(d.values) == n_eval for d in dims)


def test_validation_csv_of_the_profile_stage_is_accepted(study: Path) -> None:
    df = pd.read_csv(study / "validation.csv", dtype={"candidate_id": str})
    df.rename(columns={"candidate_id": "id", "predicted_ms": "lut_ms"}).to_csv(
        study / "validation.csv", index=False
    )
    v = load_study(study).validation
    assert v["candidate_id"].tolist() == df["candidate_id"].tolist()
    np.testing.assert_allclose(v["predicted_ms"], df["predicted_ms"])
    (study / "validation.csv").write_text("id,measured_ms\nabc,1.0\n")
    with pytest.raises(ArchsearchError, match=r"validation\.csv: missing column\(s\) predicted_ms"):
        load_study(study)


def test_validation_stats(study: Path) -> None:
    df = pd.DataFrame({"candidate_id": list("abcd"), "measured_ms": [1.0, 2.0, 3.0, 4.0],
                       "predicted_ms": [1.1, 1.8, 3.3, 4.0], "flops_fit_ms": [2.0, 1.0, 3.0, 4.0]})  # fmt: skip
    st = C.validation_stats(df)
    assert st["predicted_ms"]["mape"] == pytest.approx((10 + 10 + 10 + 0) / 4)
    assert st["predicted_ms"]["kendall"] == pytest.approx(1.0)
    assert st["flops_fit_ms"]["kendall"] == pytest.approx(4 / 6)


# --------------------------------------------------------------------------- the page


def test_report_is_self_contained_with_every_section(study: Path) -> None:
    out = write_report(study)
    assert out == study / "index.html"
    page = out.read_text(encoding="utf-8")
    # plotly.js inline exactly once, nothing fetched from the network
    assert page.count(get_plotlyjs()[:2000]) == 1
    ours = page.replace(get_plotlyjs(), "")
    assert not re.search(r"<script[^>]+src=", ours)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", ours)
    assert _plot_divs(page) == [
        "fig-front", "fig-breakdown-stage", "fig-breakdown-type", "fig-progress",
        "fig-parcoords", "fig-validation",
    ]  # fmt: skip
    for section in ("summary", "front", "candidates", "breakdown", "progress", "choices", "validation"):
        assert f'<section id="{section}">' in page
    assert "latency budget 14 ms" in page
    assert 'class="missing"' not in page


def test_report_draws_the_stores_front_and_needs_its_column(study: Path) -> None:
    """The store decides the front (trials.csv's ``pareto``); the report does not recompute it."""
    df = pd.read_csv(study / "trials.csv", dtype={"candidate_id": str})
    first = df.index[df["pareto"].astype(bool)][0]
    df.loc[first, "pareto"] = False
    df.to_csv(study / "trials.csv", index=False)
    s = load_study(study)
    ids = set(C.pareto_table(s)["candidate_id"])
    assert df.loc[first, "candidate_id"] not in ids
    assert ids == set(df.loc[df["pareto"].astype(bool), "candidate_id"])
    df.drop(columns=["pareto"]).to_csv(study / "trials.csv", index=False)
    with pytest.raises(ArchsearchError, match=r"trials\.csv: missing column\(s\) pareto"):
        load_study(study)


def test_pareto_table_lists_front_with_yaml_links_and_train_command(
    study: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(study.parent.parent)
    page = write_report(Path("reports/unet_mobile")).read_text(encoding="utf-8")
    table = page.split('<section id="candidates">')[1].split("</section>")[0]
    front = front_ids_of(study)
    for cid in front:
        assert f'href="pareto/{cid}.yaml"' in table
        assert f"archsearch train reports/unet_mobile/pareto/{cid}.yaml" in table
    s = load_study(study)
    dominated = set(s.trials["candidate_id"]) - front
    assert not any(cid in table for cid in dominated)


def test_clicking_data_holds_the_yaml_of_every_plotted_trial(study: Path) -> None:
    page = write_report(study).read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="candidate-yaml">(.*?)</script>', page, re.S)
    data = json.loads(m.group(1))
    s = load_study(study)
    plotted = set(C.front_data(s).points["candidate_id"])
    assert set(data) == plotted
    for cid in front_ids_of(study):  # pareto/ files are shown verbatim
        assert data[cid] == (study / "pareto" / f"{cid}.yaml").read_text()
    other = next(iter(plotted - front_ids_of(study)))
    assert yaml.safe_load(data[other])["stages"][0]["name"] == "down0"
    assert "plotly_click" in page and "archsearchShowCandidate" in page


def test_user_strings_are_escaped_everywhere(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "reports", name="evil", xss_id=True)
    _edit_meta(folder, study=XSS, sampler=XSS, spec=f"{XSS}.yaml")
    page = write_report(folder).read_text(encoding="utf-8")
    assert "alert(1)</script>" not in page and "<script>alert" not in page
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page  # hover text / table
    assert f"archsearch report: {XSS}".replace("<", "&lt;").replace(">", "&gt;") in page
    assert "\\u003cimg src=x onerror=alert(2)\\u003e" in page  # in the embedded JSON
    assert "out of memory &lt;b&gt;" in page or "out of memory \\u0026lt;b\\u0026gt;" in page


def test_missing_optional_files_are_said_on_the_page(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "reports", breakdown=False, validation=False)
    import shutil

    shutil.rmtree(folder / "pareto")
    page = write_report(folder).read_text(encoding="utf-8")
    assert "No latency breakdown" in page and "latency_breakdown.csv" in page
    assert "No predictor validation" in page and "validation.csv" in page
    assert "(no YAML file in pareto/)" in page
    assert _plot_divs(page) == ["fig-front", "fig-progress", "fig-parcoords"]


def test_report_is_not_replaced_when_the_study_is_broken(study: Path) -> None:
    (study / "index.html").write_text("previous report")
    (study / "trials.csv").write_text("number,state\n0,exploded\n")
    with pytest.raises(ArchsearchError):
        write_report(study)
    assert (study / "index.html").read_text() == "previous report"
    assert not [p for p in study.iterdir() if p.name.endswith(".tmp")]


def test_study_with_no_result_yet_still_renders(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "reports", n=4, breakdown=False, validation=False)
    df = pd.read_csv(folder / "trials.csv", dtype={"candidate_id": str})
    df["state"] = "running"
    df.to_csv(folder / "trials.csv", index=False)
    page = write_report(folder).read_text(encoding="utf-8")
    assert "No complete trial with a quality and a latency yet" in page
    assert _plot_divs(page) == []


def test_compare_overlays_fronts_with_common_reference_hypervolumes(tmp_path: Path) -> None:
    a = make_study(tmp_path / "reports", "nsga", seed=1)
    b = make_study(tmp_path / "reports", "rand", seed=2, sampler="random")
    out = write_compare([a, b], tmp_path / "cmp.html")
    page = out.read_text(encoding="utf-8")
    assert page.count(get_plotlyjs()[:2000]) == 1
    assert _plot_divs(page) == ["fig-compare-front", "fig-compare-progress"]
    sa, sb = load_study(a), load_study(b)
    pa = C.objective_points(sa, C.feasible_mask(sa))
    pb = C.objective_points(sb, C.feasible_mask(sb))
    ref = default_reference(np.vstack([pa, pb]), ["minimize"] * 3)
    box = np.prod(ref - np.vstack([pa, pb]).min(axis=0))
    for pts in (pa, pb):
        hv = hypervolume(pts, ref, ["minimize"] * 3)
        assert f"<td class=\"num\">{hv:.6g}</td><td class=\"num\">{hv / box:.4g}</td>" in page
        assert 0 < hv / box < 1
    assert "nsga" in page and "rand" in page and "random" in page
    last = hypervolume_history(pb, ref, ["minimize"] * 3)[-1]
    assert last == pytest.approx(hypervolume(pb, ref, ["minimize"] * 3))


def test_compare_refuses_studies_with_different_objectives(tmp_path: Path) -> None:
    a = make_study(tmp_path / "reports", "a")
    b = make_study(tmp_path / "reports", "b")
    _edit_meta(b, objectives=OBJECTIVES[:2])
    with pytest.raises(ArchsearchError, match=r"objectives .* differ from"):
        write_compare([a, b], tmp_path / "c.html")


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli():
    import typer

    from archsearch.cli.main import app
    from archsearch.cli.report import register

    if len(app.registered_commands) + len(app.registered_groups) < 2 and not app.registered_callback:
        # Typer runs a lone command without its name; until the other command groups exist,
        # test `report` inside an app that has a callback, as the full CLI will.
        app = typer.Typer()
        app.callback()(lambda: None)
        register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_cli_report_by_name_and_by_folder(study: Path, cli) -> None:
    reports = study.parent
    res = cli("report", "unet_mobile", "--reports-dir", str(reports))
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().endswith("unet_mobile/index.html")
    assert (study / "index.html").stat().st_size > 1_000_000
    out = reports.parent / "elsewhere" / "r.html"
    res = cli("report", str(study), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    assert 'href="../reports/unet_mobile/pareto/' in out.read_text(encoding="utf-8")


def test_cli_compare_writes_default_file(tmp_path: Path, cli) -> None:
    reports = tmp_path / "reports"
    make_study(reports, "nsga", seed=1)
    make_study(reports, "rand", seed=2, sampler="random")
    res = cli("report", "--compare", "nsga", "rand", "--reports-dir", str(reports))
    assert res.exit_code == 0, res.output
    assert Path(res.stdout.strip()) == reports / "compare_nsga_vs_rand.html"
    assert (reports / "compare_nsga_vs_rand.html").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "nope"], "error: study 'nope' not found: no folder nope or {r}/nope (studies in {r}: unet_mobile)"),
        (["report", "--compare", "unet_mobile"], "error: --compare needs two or more studies (got 1): archsearch report --compare STUDY_A STUDY_B"),
        (["report", "unet_mobile", "unet_mobile"], "error: give one study (got 2); to compare several, add --compare"),
        (["report", "unet_mobile", "--out", "x.txt"], "error: --out x.txt: must end in .html"),
    ],
)
def test_cli_errors_are_one_line(study: Path, cli, args, message) -> None:
    reports = str(study.parent)
    res = cli(*args, "--reports-dir", reports)
    assert res.exit_code == 2
    assert res.stderr.strip() == message.format(r=reports)
    assert "Traceback" not in res.output


def test_summary_never_prints_a_raw_none(study: Path) -> None:
    _edit_meta(study, target=None, latency_table=None)
    page = write_report(study).read_text(encoding="utf-8")
    summary = page.split('<section id="summary">')[1].split("</section>")[0]
    assert "None" not in summary and "not set / none" in summary


def test_wide_parallel_coordinates_scroll_instead_of_squeezing(study: Path) -> None:
    from archsearch.report import _figures as F

    dims, _ = C.parcoords_dims(load_study(study))
    fig = F.parcoords_figure(dims, dims[-1], "")
    assert fig.layout.width >= F.PARCOORDS_AXIS_PX * len(dims)
    page = write_report(study).read_text(encoding="utf-8")
    assert '<div class="hscroll">' in page.split('<section id="choices">')[1].split("</section>")[0]


def test_summary_says_which_data_the_study_used(study: Path) -> None:
    _edit_meta(study, proxy={"steps": 30, "data": "/data/laion-cache"})
    page = write_report(study).read_text(encoding="utf-8")
    assert "latent cache /data/laion-cache" in page.split('<section id="summary">')[1].split("</section>")[0]
    _edit_meta(study, proxy={"steps": 30})
    page = write_report(study).read_text(encoding="utf-8")
    assert "built-in synthetic" in page.split('<section id="summary">')[1].split("</section>")[0]
