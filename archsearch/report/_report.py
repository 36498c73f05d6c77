"""``write_report`` and ``write_compare``: compute, draw, assemble, write atomically."""

from __future__ import annotations

import html
import math
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from archsearch._util import atomic_write_text, first_line
from archsearch.errors import ArchsearchError, ParameterError
from archsearch.pareto import default_reference, hypervolume, to_losses
from archsearch.report import _compute as C
from archsearch.report import _figures as F
from archsearch.report._data import STATES, StudyData, load_study
from archsearch.report._html import Page, esc

__all__ = ["render_compare", "render_report", "write_compare", "write_report"]

# JS for the front plot: clicking a point shows its candidate YAML (textContent: no HTML).
_SHOW_JS = """
function archsearchShowCandidate(id) {
  var data = JSON.parse(document.getElementById('candidate-yaml').textContent);
  var title = document.getElementById('yaml-title');
  var view = document.getElementById('yaml-view');
  title.textContent = 'Candidate ' + id;
  view.textContent = Object.prototype.hasOwnProperty.call(data, id)
      ? data[id] : '(no YAML stored for this candidate)';
}
"""
_CLICK_POST = (
    "var gd = document.getElementById('{plot_id}');"
    "gd.on('plotly_click', function(ev) {"
    "  if (ev && ev.points && ev.points.length && ev.points[0].customdata !== undefined) {"
    "    archsearchShowCandidate(String(ev.points[0].customdata));"
    "  }"
    "});"
)


_MAX_FAILED = 20


def _display_path(p: Path) -> str:
    """``p`` relative to the working directory when it lies under it, else absolute."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p.resolve())


def _rel_link(target: Path, out_dir: Path) -> str:
    rel = os.path.relpath(target.resolve(), out_dir.resolve())
    return quote(rel.replace(os.sep, "/"))


def _fmt_float(v: object, digits: int = 4) -> str:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return f"{f:.{digits}g}" if math.isfinite(f) else "n/a"


# --------------------------------------------------------------------------- single study


def _header(study: StudyData) -> str:
    meta = study.meta
    bits = [f"study folder {esc(_display_path(study.path))}"]
    for key in ("target", "sampler", "seed"):
        if meta.get(key) is not None:
            bits.append(f"{key} {esc(meta[key])}")
    return f"<h1>archsearch report: {esc(study.name)}</h1><p class=\"note\">{' · '.join(bits)}</p>"


def _data_used(meta: dict) -> str:
    """Which data the proxy runs learned from: a prepared latent cache, else the built-in set."""
    proxy = meta.get("proxy") if isinstance(meta.get("proxy"), dict) else {}
    data = proxy.get("data")
    teacher = proxy.get("teacher") if isinstance(proxy.get("teacher"), dict) else {}
    if data:
        return f"latent cache {data} (archsearch data prepare)"
    if "diffusers" in teacher:
        return "built-in synthetic shapes and captions, fed to the diffusers teacher"
    return "built-in synthetic shapes and captions (no download)"


def _foreign_table(study: StudyData) -> str:
    """The one line saying the study's latency table was measured on another machine than
    this one ('' when it was not, or the table is an estimate, an import or not there)."""
    check = study.table_device
    return f"{check.label} — {check.warning}" if check is not None and check.differs else ""


def _noise_text(study: StudyData) -> str:
    """How the quality's noise is estimated, or why there is no estimate."""
    if not study.has_noise:
        return ("no estimate (trials.csv has no quality_se: a store written before it, or one held-out "
                "sample); close qualities may not be distinct")
    z = study.noise_z
    return (f"error bars are ± {z:g} standard errors of each held-out score over its samples (quality_se); "
            f"a Pareto candidate whose quality edge over a cheaper one is within {z:g} standard errors of the "
            "difference is marked \"within noise of\" it. The proxy run's own seed-to-seed noise is not included.")


def _knee_text(study: StudyData) -> str:
    knee = study.knee
    if knee is None:
        return esc("not recorded (a store written before the suggested pick)")
    cid = knee.get("candidate_id")
    if not cid:
        return esc(knee["reason"])
    return f"<b><code>{esc(cid)}</code></b> (trial {esc(knee.get('trial'))}): {esc(knee['reason'])}"


def _warnings_html(study: StudyData) -> str:
    if not study.warnings:
        return ""
    items = "".join(f"<li>{esc(w)}</li>" for w in study.warnings)
    return f'<div class="warn" id="warnings"><b>Warnings</b><ul>{items}</ul></div>'


def _summary(study: StudyData, reference: np.ndarray | None, ref_origin: str, n_front: int) -> str:
    meta = study.meta
    counts = study.trials["state"].value_counts()
    states = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in STATES if counts.get(s, 0))
    hv = C.final_hypervolume(study, reference)
    items: list[tuple[str, str]] = [
        ("study", esc(study.name)),
        ("spec", esc(meta.get("spec", "n/a"))),
        ("objectives", esc(", ".join(f"{o.name} ({o.direction})" for o in study.objectives))),
        ("trials", esc(f"{len(study.trials)} recorded ({states or 'none'})")
         + (f", {esc(meta['n_trials'])} requested" if meta.get("n_trials") is not None else "")),
        ("constraints", esc(", ".join(
            f"{k} = {v}" for k, v in study.constraints.items() if v is not None) or "none")),
        ("target / latency table",
         esc(f"{meta.get('target') or 'not set'} / {meta.get('latency_table') or 'none'}")
         + (f' <span class="missing">({esc(foreign)})</span>' if (foreign := _foreign_table(study)) else "")),
        ("sampler / seed", esc(f"{meta.get('sampler', 'n/a')} / {meta.get('seed', 'n/a')}")),
        ("data", esc(_data_used(meta))),
        ("Pareto candidates", str(n_front)),
        ("quality noise", esc(_noise_text(study))),
        ("suggested pick", _knee_text(study)),
    ]  # fmt: skip
    if reference is not None:
        ref_txt = ", ".join(
            f"{o.name} = {_fmt_float(r)}" for o, r in zip(study.objectives, reference)
        )
        items.append(("reference point", esc(f"{ref_txt} ({ref_origin})")))
        items.append(("hypervolume", esc(_fmt_float(hv, 6))))
    html_out = _warnings_html(study) + Page.kv(items)
    failed = study.trials[study.trials["state"] == "failed"]
    if len(failed):
        shown = failed.head(_MAX_FAILED)
        rows = [
            [str(int(r.number)), f"<code>{esc(r.candidate_id)}</code>", esc(r.fail_reason[:300])]
            for r in shown.itertuples(index=False)
        ]
        more = f" (first {_MAX_FAILED} of {len(failed)})" if len(failed) > _MAX_FAILED else ""
        html_out += f"<h3>Failed trials{more}</h3>"
        html_out += Page.table(["trial", "candidate", "reason"], rows)
    return html_out


def _front_section(page: Page, study: StudyData) -> str:
    front = C.front_data(study)
    if front.points.empty:
        return '<p class="missing">No complete trial with a quality and a latency yet.</p>'
    fig = F.front_figure(front, "Quality vs predicted latency")
    # the YAML of every plotted point, shown when it is clicked
    yaml_ids = front.points["candidate_id"].tolist()
    page.data_script("candidate-yaml", C.candidate_yaml_map(study, yaml_ids))
    budget = (
        f" The dashed line is the latency budget ({esc(C.fmt_ms(front.budget_ms))})."
        if front.budget_ms is not None
        else ""
    )
    note = (
        '<p class="note">Each point is a trial; colour is the parameter count. Solid points '
        "are Pareto-optimal on all objectives, faded ones are dominated, x marks infeasible "
        "trials (over a constraint; those never trained have no quality and sit on the top "
        "edge). The staircase is the quality-vs-latency front of the "
        f"feasible trials.{budget}"
        + (f" Error bars: quality ± {front.noise_z:g} standard errors (its noise); an orange ring marks a Pareto "
           "candidate within the noise of a cheaper one, a red star the suggested pick (knee)."
           if study.has_noise or front.knee_id else "")
        + " Hover for the architecture; click a point to show its YAML below.</p>"
    )
    panel = (
        '<h3 id="yaml-title">Click a point to see its candidate YAML</h3>'
        '<pre id="yaml-view">(nothing selected)</pre>'
    )
    return note + page.figure(fig, "fig-front", post_script=_CLICK_POST) + panel


def _breakdown_section(page: Page, study: StudyData, ids: list[str]) -> str:
    if study.breakdown is None:
        return (
            '<p class="missing">No latency breakdown: '
            f"{esc(_display_path(study.path / 'latency_breakdown.csv'))} "
            "does not exist (the store writes it for the Pareto candidates from the latency "
            "table the predictor used).</p>"
        )
    tables = C.breakdown_tables(study, ids)
    if tables is None:
        return (
            '<p class="missing">latency_breakdown.csv has no rows for the current Pareto '
            "candidates.</p>"
        )
    by_stage, by_type = tables
    note = (
        '<p class="note">Predicted latency of each Pareto candidate, summed per stage and '
        "per block type from latency_breakdown.csv (the table the predictor used).</p>"
    )
    return note + '<div class="grid2">' + "".join(
        [
            page.figure(F.breakdown_figure(by_stage, "stage", "By stage"), "fig-breakdown-stage"),
            page.figure(
                F.breakdown_figure(by_type, "block type", "By block type"), "fig-breakdown-type"
            ),
        ]
    ) + "</div>"


def _progress_section(page: Page, study: StudyData, reference: np.ndarray | None) -> str:
    prog = C.progress_table(study, reference)
    if not C.feasible_mask(study).any():
        return '<p class="missing">No complete, feasible trial yet.</p>'
    note = (
        '<p class="note">Hypervolume of the feasible trials so far (all objectives, against '
        "the reference point in the summary) and the best value of each objective so far; "
        "faded dots are individual feasible trials.</p>"
    )
    fig = F.progress_figure(prog, study.objectives, "Search progress")
    return note + page.figure(fig, "fig-progress")


def _parcoords_section(page: Page, study: StudyData) -> str:
    dims, dropped = C.parcoords_dims(study)
    if not C.evaluated_mask(study).any():
        return '<p class="missing">No evaluated trial yet.</p>'
    colour = next(d for d in dims if d.label == html.escape(study.objectives[0].name))
    fig = F.parcoords_figure(dims, colour, "")  # the section heading names it
    note = (
        '<p class="note">One line per evaluated trial, coloured by '
        f"{esc(study.objectives[0].name)}. Drag along an axis to filter. Text and boolean "
        "choices are shown as categories."
    )
    if dropped:
        note += f" Not shown (same value in every trial): {esc(', '.join(dropped))}."
    if not study.arch_columns:
        note += " trials.csv has no arch.* columns, so only the objectives are shown."
    return note + "</p>" + page.figure(fig, "fig-parcoords")


def _validation_section(page: Page, study: StudyData) -> str:
    if study.validation is None:
        return (
            '<p class="missing">No predictor validation: '
            f"{esc(_display_path(study.path / 'validation.csv'))} "
            "does not exist (copy the validation.csv of a predictor-accuracy run there).</p>"
        )
    stats = C.validation_stats(study.validation)
    if not stats:
        return '<p class="missing">validation.csv has no rows with a measured latency.</p>'
    rows = []
    names = {"predicted_ms": "latency-table predictor", "flops_fit_ms": "FLOPs fit"}
    for col, s in stats.items():
        rows.append(
            [
                esc(names[col]),
                str(int(s["n"])),
                f"{s['mape']:.1f}%",
                _fmt_float(s["spearman"], 3),
                _fmt_float(s["kendall"], 3),
            ]
        )
    table = Page.table(
        ["predictor", "candidates", "MAPE", "Spearman ρ", "Kendall τ"], rows, numeric=(1, 2, 3, 4)
    )
    fig = F.validation_figure(study.validation, stats, "Measured vs predicted latency")
    return table + page.figure(fig, "fig-validation")


def _pareto_table_section(study: StudyData, out_dir: Path) -> str:
    tab = C.pareto_table(study)
    if tab.empty:
        return '<p class="missing">No Pareto candidate yet.</p>'
    extra_obj = [o for o in study.objectives if o.name not in ("quality", "latency_ms", "params")]
    headers = ["#", "candidate", "quality", "latency", "peak memory", "params", "FLOPs (MAC)"]
    headers += [o.name for o in extra_obj] + ["trial", "note", "train it"]
    knee_id = (study.knee or {}).get("candidate_id")
    z = study.noise_z
    if _foreign_table(study):  # the table's latencies describe another machine
        from archsearch.cost.latency import FOREIGN_DEVICE_LABEL

        headers[3] = f"latency ({FOREIGN_DEVICE_LABEL})"
    rows = []
    for i, r in enumerate(tab.itertuples(index=False), start=1):
        rd = r._asdict()
        cid = str(rd["candidate_id"])
        yaml_path = study.path / "pareto" / f"{cid}.yaml"
        if cid in study.pareto_yaml:
            link = f'<a href="{esc(_rel_link(yaml_path, out_dir))}"><code>{esc(cid)}</code></a>'
            cmd = f"archsearch train {shlex.quote(_display_path(yaml_path))}"
            train = f"<code>{esc(cmd)}</code>"
        else:
            link = f"<code>{esc(cid)}</code> (no YAML file in pareto/)"
            train = "n/a"
        src = str(rd.get("latency_source") or "")
        notes = []
        if cid == knee_id:
            notes.append("<b>suggested pick (knee)</b>")
        if str(rd.get("within_noise_of") or ""):
            notes.append(f"within noise of <code>{esc(rd['within_noise_of'])}</code>")
        if C._finite(rd.get("cross_attention")) == 0:
            notes.append("no cross-attention: cannot see the prompt")
        row = [
            str(i),
            link,
            _fmt_float(rd["quality"]) + esc(C.fmt_noise(rd.get("quality_se"), z)),
            esc(C.fmt_ms(rd["latency_ms"]) + (f" ({src})" if src else "")),
            esc(C.fmt_mb(rd.get("memory_mb")) + (f" ({rd.get('memory_source')})" if rd.get("memory_source") else "")),
            esc(C.fmt_count(rd.get("params"))),
            esc(C.fmt_count(rd.get("flops"))),
        ]
        row += [_fmt_float(study.trials.loc[study.trials["candidate_id"] == cid, o.name].iloc[0])
                for o in extra_obj]  # fmt: skip
        row += [str(int(rd["number"])), "; ".join(notes), train]
        rows.append(row)
    noise = (f" Quality ± {z:g} standard errors of its held-out score." if study.has_noise else
             " No quality noise estimate in this store: close qualities may not be distinct.")
    note = (
        '<p class="note">Sorted by latency.' + esc(noise) + " Latency is predicted from the latency "
        "table: <i>sum of measured blocks</i> means each block was timed on the device, not the whole "
        "model. FLOPs count one multiply-add as one (MAC). Each YAML file is a complete candidate; the "
        "command trains it.</p>"
    )
    return note + Page.table(headers, rows, numeric=(0, 2, 3, 4, 5, 6))


def _evolution_section(page: Page, study: StudyData) -> str:
    """An evolve study's path: the actions taken in order (with their Δquality / Δlatency), every
    action evaluated, and the blocks removed / added per stage and block type."""
    steps = C.evolution_steps(study)
    if steps is None:
        return ""
    evo = study.evolution
    result = study.meta.get("evolution") or {}
    start = None
    first = evo.sort_values("step", kind="stable").iloc[0] if len(evo) else None
    if first is not None and math.isfinite(float(first["quality"])) and math.isfinite(float(first["d_quality"])):
        start = (float(first["latency_ms"]) - float(first["d_latency_ms"]),
                 float(first["quality"]) - float(first["d_quality"]))
    out = "<p>SnapFusion's architecture evolving: from the space's largest candidate, each action removes " \
          "(over the latency budget) or adds (under it) the block of lowest / highest value, value = quality " \
          "the block is worth per ms (held-out score of the supernet's sub-network; lower is better).</p>"
    stopped = result.get("stopped")
    if stopped:
        reached = "reached" if result.get("reached_budget") else "<b>not reached</b>"
        out += f"<p>Stopped: {esc(stopped)}; latency budget {reached}; final trial " \
               f"{esc(result.get('final_trial'))} (<code>{esc(result.get('final_candidate'))}</code>).</p>"
    out += page.figure(F.evolution_figure(steps, start, study.max_latency_ms, "The evolution's path"), "evolution-path")

    def num(v: object) -> str:
        f = C._finite(v)  # the formatters' one parse of a finite number
        return "" if f is None else f"{f:.4g}"

    rows = [[str(int(r.step)), esc(r.kind), esc(r.stage), esc(r.block),
             f"<code>{esc(r.dimension)}</code> {esc(r.before)} &rarr; {esc(r.after)}", str(int(r.trial)),
             num(r.d_quality), num(r.d_latency_ms), num(r.value), num(r.latency_ms), num(r.quality)]
            for r in steps.itertuples(index=False)]
    out += "<h3>Actions taken, in order</h3>"
    out += Page.table(["step", "action", "stage", "block", "change", "trial", "Δquality", "Δlatency (ms)",
                       "value (quality/ms)", "latency (ms)", "quality"], rows, numeric=(0, 5, 6, 7, 8, 9, 10))
    by_stage = C.evolution_by_stage(study)
    if by_stage is not None and len(by_stage):
        out += "<h3>Blocks removed and added, per stage and block type</h3>"
        out += "<p>Mean value: the held-out quality a block of that type was worth per ms over every " \
               "action evaluated (higher = it matters more for the teacher's outputs; SnapFusion found " \
               "cross-attention carries semantics and ResNets local detail).</p>"
        out += Page.table(["stage", "block", "removed", "added", "actions evaluated", "mean value (quality/ms)"],
                          [[esc(r.stage), esc(r.block), str(r.removed), str(r.added), str(r.evaluated),
                            num(r.mean_value)] for r in by_stage.itertuples(index=False)], numeric=(2, 3, 4, 5))
    evaluated = [[str(int(r.step)), esc(r.kind), esc(r.stage), esc(r.block),
                  f"<code>{esc(r.dimension)}</code> {esc(r.before)} &rarr; {esc(r.after)}",
                  num(r.d_quality), num(r.d_latency_ms), num(r.value), "yes" if r.taken else ""]
                 for r in evo.itertuples(index=False)]
    out += f"<details><summary>Every action evaluated ({len(evaluated)})</summary>"
    out += Page.table(["step", "action", "stage", "block", "change", "Δquality", "Δlatency (ms)", "value", "taken"],
                      evaluated, numeric=(0, 5, 6, 7)) + "</details>"
    return out


def render_report(study: StudyData, out_dir: Path, figures: dict[str, Any] | None = None) -> str:
    """The report page for ``study`` as an HTML string; links are relative to ``out_dir``.
    ``figures``, if given, receives every Plotly figure of the page by its div id."""
    reference, ref_origin = C.reference_point(study)
    tab = C.pareto_table(study)
    pareto_ids = tab["candidate_id"].tolist()
    page = Page(f"archsearch report: {study.name}")
    page.header(_header(study))
    page.script(_SHOW_JS)
    page.section("summary", "Summary", _summary(study, reference, ref_origin, len(pareto_ids)))
    page.section("front", "Pareto front: quality vs latency", _front_section(page, study),
                 nav="Pareto front")  # fmt: skip
    page.section("candidates", "Pareto candidates", _pareto_table_section(study, out_dir))
    if study.evolution is not None:
        page.section("evolution", "The evolution's path", _evolution_section(page, study), nav="Evolution")
    page.section("breakdown", "Latency breakdown of the Pareto candidates",
                 _breakdown_section(page, study, pareto_ids), nav="Latency breakdown")  # fmt: skip
    page.section("progress", "Search progress", _progress_section(page, study, reference))
    page.section("choices", "Architecture choices vs objectives", _parcoords_section(page, study),
                 nav="Architecture choices")  # fmt: skip
    page.section("validation", "Predictor accuracy", _validation_section(page, study))
    if figures is not None:
        figures.update(page.figures)
    return page.render()


def write_report(study_dir: str | os.PathLike | StudyData, out: str | os.PathLike | None = None,
                 png_dir: str | os.PathLike | None = None) -> Path:
    """Write the HTML report of the study in ``study_dir`` (default ``<study_dir>/index.html``).

    The page is self-contained (Plotly's JS is inlined once) and opens offline. The file is
    replaced atomically. ``png_dir``: also write each figure as ``<png_dir>/<figure>.png`` for
    papers and slides (:func:`write_pngs`). ``study_dir`` may be a study already read
    (:func:`load_study`). Returns the path written.
    """
    study = study_dir if isinstance(study_dir, StudyData) else load_study(study_dir)
    out_path = Path(out) if out is not None else study.path / "index.html"
    if out_path.is_dir():
        raise ArchsearchError(f"--out {out_path}: is a folder; give a file name ending in .html")
    figures: dict[str, Any] = {}
    text = render_report(study, out_path.parent, figures)
    if png_dir is not None:
        write_pngs(figures, png_dir)
    return atomic_write_text(out_path, text)


def write_pngs(figures: dict[str, Any], out_dir: str | os.PathLike, scale: float = 2.0) -> list[Path]:
    """Each Plotly figure as a static PNG, ``<out_dir>/<name>.png`` (kaleido, which drives a
    local Chrome/Chromium; one browser start for all of them). Each file is written to a temporary
    name, then renamed. Returns the paths written."""
    import plotly.io as pio

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(figures)
    final = [out / f"{n.removeprefix('fig-')}.png" for n in names]
    tmp = [p.with_name(f".{p.stem}.tmp.png") for p in final]
    try:
        pio.write_images([figures[n] for n in names], tmp, format="png", scale=scale)
    except Exception as exc:  # kaleido: no browser, or it died
        for t in tmp:
            t.unlink(missing_ok=True)
        first = first_line(exc)
        raise ArchsearchError(f"png: static pictures need Chrome or Chromium for kaleido (on Debian: apt-get "
                              f"install chromium): {first}") from None
    for t, p in zip(tmp, final):
        os.replace(t, p)
    return final


# --------------------------------------------------------------------------- comparison


def _check_same_objectives(studies: Sequence[StudyData]) -> None:
    def objs(s: StudyData) -> list[tuple[str, str]]:
        return [(o.name, o.direction) for o in s.objectives]

    first = studies[0]
    for s in studies[1:]:
        if objs(s) != objs(first):
            raise ArchsearchError(
                f"{s.path / 'meta.json'}: objectives {objs(s)} differ from "
                f"{first.path / 'meta.json'}: {objs(first)}; only studies with the same "
                "objectives can be compared"
            )


def render_compare(studies: Sequence[StudyData]) -> str:
    """The comparison page of several studies as an HTML string."""
    _check_same_objectives(studies)
    directions = studies[0].directions
    all_pts = np.vstack([C.objective_points(s, C.feasible_mask(s)) for s in studies])
    if all_pts.shape[0] == 0:
        raise ArchsearchError(
            "compare: none of the studies has a complete, feasible trial to compare"
        )
    reference = default_reference(all_pts, directions)
    # the box between the union's ideal point and the reference: HV / box is in [0, 1]
    losses = to_losses(all_pts, directions)
    box = float(np.prod(to_losses(reference[None, :], directions)[0] - losses.min(axis=0)))
    names = [s.name for s in studies]
    # names may repeat (same study name in two folders): tell them apart by folder
    labels = [
        n if names.count(n) == 1 else f"{n} ({_display_path(s.path)})"
        for n, s in zip(names, studies)
    ]
    fronts, histories, rows = [], [], []
    for label, s in zip(labels, studies):
        feas = C.feasible_mask(s)
        hv = hypervolume(C.objective_points(s, feas), reference, directions)
        fronts.append((label, C.front_data(s), hv))
        histories.append((label, C.progress_table(s, reference)))
        rows.append(
            [
                esc(label),
                esc(_display_path(s.path)),
                esc(s.meta.get("sampler", "n/a")),
                esc(s.meta.get("seed", "n/a")),
                str(int((s.trials["state"] == "complete").sum())),
                str(int(feas.sum())),
                str(int(C.pareto_mask(s).sum())),
                _fmt_float(hv, 6),
                _fmt_float(hv / box if box > 0 else float("nan"), 4),
            ]
        )
    title = "archsearch comparison: " + " vs ".join(labels)
    page = Page(title)
    page.header(f"<h1>{esc(title)}</h1>")
    ref_txt = ", ".join(
        f"{o.name} = {_fmt_float(r)}" for o, r in zip(studies[0].objectives, reference)
    )
    note = (
        '<p class="note">Hypervolume on all objectives against one common reference point '
        f"({esc(ref_txt)}): the nadir of the union of the studies' Pareto fronts plus 10% of its "
        "range. Higher is better. HV / box divides it by the volume of the box between the "
        "best value of each objective over all studies and the reference point (1 = one point "
        "best at everything).</p>"
    )
    table = Page.table(
        ["study", "folder", "sampler", "seed", "complete", "feasible", "Pareto", "hypervolume",
         "HV / box"],
        rows,
        numeric=(4, 5, 6, 7, 8),
    )
    page.section("summary", "Summary", note + table)
    page.section(
        "fronts",
        "Fronts: quality vs latency",
        page.figure(
            F.compare_front_figure(fronts, "Quality vs predicted latency"), "fig-compare-front"
        ),
        nav="Fronts",
    )
    page.section(
        "progress",
        "Hypervolume over trials",
        page.figure(
            F.compare_progress_figure(histories, "Hypervolume over trials"), "fig-compare-progress"
        ),
        nav="Progress",
    )
    return page.render()


def write_compare(study_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write one page overlaying the fronts of two or more studies, with their hypervolumes
    against a common reference point. Returns the path written."""
    if len(study_dirs) < 2:
        raise ParameterError("study_dirs", f": give at least two studies to compare (got {len(study_dirs)})")
    studies = [load_study(d) for d in study_dirs]
    out_path = Path(out)
    if out_path.is_dir():
        raise ArchsearchError(f"--out {out_path}: is a folder; give a file name ending in .html")
    return atomic_write_text(out_path, render_compare(studies))
