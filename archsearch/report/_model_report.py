"""The report of one trained model: ``reports/trained/<id>/index.html``.

One self-contained page in the study report's style (:class:`~archsearch.report._html.Page`,
Plotly inlined once, every picture a ``data:`` URI, nothing fetched):

* what was evaluated (the model folder, its candidate, the evaluation's settings);
* the metrics of :func:`archsearch.evaluate.evaluate` (``metrics.json``) for the student and the
  teacher side by side, and their agreement;
* student and teacher pictures side by side, same prompt and seed;
* the training curves of ``log.csv`` (losses; the held-out KD loss where it was measured);
* with a latency table: the UNet's predicted latency per call and per picture for a range of
  step counts (calls per step: 2 with classifier-free guidance, 1 without).

It reads what ``archsearch train`` and ``archsearch eval`` wrote; it computes no metric.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from archsearch._util import atomic_write_text, first_line
from archsearch.errors import ArchsearchError, ParameterError
from archsearch.report._figures import PALETTE, _layout
from archsearch.report._html import Page, esc

__all__ = ["STEP_COUNTS", "default_model_report", "render_model_report", "write_model_report"]

#: the step counts the latency section shows (plus the evaluation's own)
STEP_COUNTS = (1, 2, 4, 8, 16, 25, 50)
#: the longest side of a picture embedded in the page (larger ones are scaled down)
THUMB = 256
LOSS_COLUMNS = ("loss", "task", "kd_output", "kd_feature")


def _model_dir(model: Path) -> Path:
    """The train output folder of ``model`` (``model`` itself, or the parent of a ``pipeline/``)."""
    if model.name == "pipeline" and (model.parent / "log.csv").is_file():
        return model.parent
    return model


def default_model_report(model: str | os.PathLike, reports_dir: str | os.PathLike = "reports") -> Path:
    """``<reports_dir>/trained/<candidate id>/index.html`` for ``model``."""
    from archsearch.evaluate import model_id

    m = Path(model)
    try:
        mid = model_id(m)
    except ArchsearchError:
        mid = _candidate_id(m) or m.resolve().name
    return Path(reports_dir) / "trained" / mid / "index.html"


def _candidate_id(d: Path) -> str | None:
    from archsearch.candidate import Candidate

    try:
        cfg = json.loads((d / "config.json").read_text())
        return Candidate.from_dict(cfg["candidate"], str(d / "config.json")).id
    except (OSError, ValueError, KeyError, TypeError, ArchsearchError):
        return None


def _candidate(model: Path) -> Any:
    """The trained UNet's candidate (train folder's config.json, else the pipeline's UNet)."""
    from archsearch.candidate import Candidate

    for cfg in (model / "config.json", model / "unet" / "config.json", model / "pipeline" / "unet" / "config.json"):
        try:
            d = json.loads(cfg.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d.get("candidate"), dict):
            try:
                return Candidate.from_dict(d["candidate"], str(cfg))
            except ArchsearchError:
                return None
    return None


def _read_log(model: Path) -> list[dict[str, float]]:
    path = model / "log.csv"
    if not path.is_file():
        return []
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                row = {}
                for k, v in r.items():
                    try:
                        row[k] = float(v) if v not in (None, "") else math.nan
                    except ValueError:
                        row[k] = math.nan
                if math.isfinite(row.get("step", math.nan)):
                    rows.append(row)
    except (OSError, csv.Error) as exc:
        raise ArchsearchError(f"{path}: unreadable ({first_line(exc)})") from None
    return rows


def _json_or_none(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _num(v: Any, digits: int = 4) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "&ndash;"
    return f"{f:.{digits}g}" if math.isfinite(f) else "&ndash;"


def _data_uri(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if max(im.size) > THUMB:
            im.thumbnail((THUMB, THUMB), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- sections


def _summary(model: Path, cand: Any, train: dict | None, run: Any) -> str:
    items: list[tuple[str, str]] = [("model folder", esc(model))]
    if cand is not None:
        from archsearch.cost import count_params

        items.append(("candidate", f"<code>{esc(cand.id)}</code> ({esc(cand.kind)}, latent {cand.resolution}x"
                                   f"{cand.resolution}, {count_params(cand) / 1e6:.3g} M parameters)"))
    if train:
        if train.get("steps") is not None:
            items.append(("training steps", esc(train["steps"])))
        for key, label in (("quality", "held-out KD (EMA)"), ("quality_raw", "held-out KD (raw weights)")):
            if isinstance(train.get(key), (int, float)):
                items.append((label, _num(train[key])))
    if run is not None:
        s = run.settings
        items.append(("evaluation", esc(run.out)))
        items.append(("prompts", f"{esc(s.get('n_prompts'))} from {esc(s.get('prompts_file'))}"))
        items.append(("seeds", esc(", ".join(str(x) for x in s.get("seeds", [])))))
        items.append(("sampling", f"{esc(s.get('steps'))} steps, guidance {esc(s.get('guidance'))}, "
                                  f"{esc(s.get('height'))}x{esc(s.get('width'))} px, {esc(s.get('dtype'))}"))
        if s.get("teacher"):
            items.append(("teacher", esc(s["teacher"])))
    return Page.kv(items)


def _metrics_section(run: Any) -> str:
    m = run.metrics if run is not None else None
    if not m:
        return ('<p class="missing">No metrics yet: run <code>archsearch eval MODEL --prompts FILE</code> '
                "(its samples are kept; a second run only scores them).</p>")
    stu, tea, agr = m.get("student") or {}, m.get("teacher") or {}, m.get("agreement") or {}
    ref = m.get("reference") or {}
    teacher = m.get("teacher") is not None
    rows = []
    if ref:
        rows.append([f"FID against the reference ({esc(ref.get('images'))} pictures in "
                     f"<code>{esc(ref.get('folder'))}</code>), lower is better",
                     _num(stu.get("fid")), _num(tea.get("fid")) if teacher else "&ndash;"])
    if m.get("clip_model"):
        rows.append([f"CLIP score (<code>{esc(m['clip_model'])}</code>), higher is better",
                     _num(stu.get("clip_score")), _num(tea.get("clip_score")) if teacher else "&ndash;"])
    out = ""
    if rows:
        out += Page.table(["metric", "student", "teacher"], rows, numeric=(1, 2))
    if teacher:
        arow = [["FID student vs teacher pictures", _num(agr.get("fid"))],
                ["latent MSE (final latents, same prompt and seed)", _num(agr.get("latent_mse"))],
                ["PSNR of the pictures (dB, mean; 100 = identical)", _num(agr.get("psnr"))],
                ["LPIPS (AlexNet), lower is closer", _num(agr.get("lpips"))]]
        out += "<h3>Agreement with the teacher</h3>" + Page.table(["metric", "value"], arow, numeric=(1,))
    extra = []
    if m.get("fid_extractor"):
        extra.append(f"FID features: {esc(m['fid_extractor'])}")
    extra.append(f"{esc(m.get('images'))} pictures per model")
    out += f'<p class="note">{" · ".join(extra)}</p>'
    for note in m.get("notes") or []:
        out += f'<p class="note">{esc(note)}</p>'
    return out or '<p class="note">No metric was asked for.</p>'


def _samples_section(run: Any, max_samples: int) -> str:
    if run is None:
        return '<p class="missing">No samples: run <code>archsearch eval</code> first.</p>'
    teacher = bool(run.settings.get("teacher"))
    cards = []
    for it in run.items:
        s = run.picture("student", it)
        if s is None:
            continue
        t = run.picture("teacher", it) if teacher else None
        pics = f'<div><img class="sample" alt="student {esc(it.name)}" src="{_data_uri(s)}"><br>student</div>'
        if teacher:
            pics += (f'<div><img class="sample" alt="teacher {esc(it.name)}" src="{_data_uri(t)}"><br>teacher</div>'
                     if t else "<div>(not drawn)<br>teacher</div>")
        cards.append(f'<figure class="pair"><div class="pics">{pics}</div>'
                     f"<figcaption>{esc(it.prompt)} <span class=\"note\">· seed {it.seed}</span></figcaption></figure>")
        if len(cards) >= max_samples:
            break
    if not cards:
        return '<p class="missing">No samples drawn yet.</p>'
    note = (f'<p class="note">The first {len(cards)} of {len(run.items)} pictures'
            + ("; each student / teacher pair starts from the same noise (same prompt and seed)." if teacher else ".")
            + "</p>")
    return note + f'<div class="pairs">{"".join(cards)}</div>'


def _training_section(page: Page, rows: list[dict[str, float]]) -> str:
    if not rows:
        return '<p class="missing">No log.csv in the model folder (a pipeline folder has none).</p>'
    steps = [r["step"] for r in rows]
    fig = go.Figure()
    for j, col in enumerate(c for c in LOSS_COLUMNS if any(math.isfinite(r.get(c, math.nan)) for r in rows)):
        pts = [(s, r[col]) for s, r in zip(steps, rows) if math.isfinite(r.get(col, math.nan))]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines", name=col,
                                 line={"color": PALETTE[j % len(PALETTE)]},
                                 hovertemplate=f"step %{{x}}<br>{col} %{{y:.4g}}<extra></extra>"))
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss", type="log")
    out = page.figure(_layout(fig, "Training losses (log.csv)", height=420), "fig-loss")
    held = [(r["step"], r["holdout_kd"]) for r in rows if math.isfinite(r.get("holdout_kd", math.nan))]
    if held:
        fig2 = go.Figure(go.Scatter(x=[h[0] for h in held], y=[h[1] for h in held], mode="lines+markers",
                                    name="held-out KD", line={"color": PALETTE[3]},
                                    hovertemplate="step %{x}<br>held-out KD %{y:.4g}<extra></extra>"))
        fig2.update_xaxes(title_text="step")
        fig2.update_yaxes(title_text="held-out KD loss")
        out += page.figure(_layout(fig2, "Held-out KD loss", height=380), "fig-holdout")
    else:
        out += '<p class="note">No held-out evaluations in log.csv (train with --eval-every N).</p>'
    return out


def _latency_section(page: Page, cand: Any, table: Path, run: Any) -> str:
    from archsearch.cost.latency import load_predictor

    if cand is None:
        return '<p class="missing">The model folder names no archsearch candidate: no latency to predict.</p>'
    pred = load_predictor(table)
    note = ""
    try:
        unet_ms = float(pred.predict(cand)[0])
    except ArchsearchError:
        with warnings.catch_warnings():  # said on the page instead
            warnings.simplefilter("ignore")
            unet_ms = float(pred.predict(cand, allow_missing=True)[0])
        note = " Some of its blocks are not in the table: their latency is interpolated from measured neighbours."
    guidance = float(run.settings.get("guidance", 7.5)) if run is not None else 7.5
    calls = 2 if guidance > 1 else 1
    steps = sorted(set(STEP_COUNTS) | ({int(run.settings["steps"])} if run is not None else set()))
    fig = go.Figure(go.Bar(x=[str(s) for s in steps], y=[s * calls * unet_ms for s in steps],
                           marker_color=PALETTE[0], name="UNet",
                           hovertemplate="%{x} steps<br>%{y:.4g} ms<extra></extra>"))
    fig.update_xaxes(title_text="sampling steps", type="category")
    fig.update_yaxes(title_text="UNet time per picture (ms)")
    out = (f'<p class="note">Table <code>{esc(table)}</code>: {_num(unet_ms)} ms per UNet call; '
           f"{calls} call{'s' if calls > 1 else ''} per step (guidance {guidance:g}"
           f"{': classifier-free guidance doubles the batch' if calls > 1 else ''}). The text encoder and the "
           f"VAE decoder are not included.{esc(note)}</p>")
    out += page.figure(_layout(fig, "UNet latency per picture by step count", height=400), "fig-latency")
    out += Page.table(["steps", "UNet calls", "UNet ms per picture"],
                      [[str(s), str(s * calls), _num(s * calls * unet_ms)] for s in steps], numeric=(0, 1, 2))
    return out


_CSS = ("<style>div.pairs { display: flex; flex-wrap: wrap; gap: 14px; }"
        " figure.pair { margin: 0; border: 1px solid var(--line); border-radius: 4px; padding: 8px; max-width: 360px; }"
        " figure.pair .pics { display: flex; gap: 8px; text-align: center; color: var(--muted); font-size: 12px; }"
        " img.sample { width: 160px; height: auto; image-rendering: pixelated; border: 1px solid var(--line); }"
        " figcaption { margin-top: 4px; }</style>")


def render_model_report(model: str | os.PathLike, eval_dir: str | os.PathLike | None = None, *,
                        table: str | os.PathLike | None = None, max_samples: int = 8,
                        figures: dict[str, Any] | None = None) -> str:
    """The model report page as an HTML string (see the module docstring)."""
    from archsearch.evaluate import EVAL_FILE, load_eval

    m = _model_dir(Path(model))
    if not m.is_dir():
        raise ParameterError("model", f": {m}: no such folder (allowed: an `archsearch train` output or a pipeline "
                                      "folder)")
    if eval_dir is None and (m / "eval" / EVAL_FILE).is_file():
        eval_dir = m / "eval"
    run = load_eval(eval_dir) if eval_dir is not None else None
    cand = _candidate(m)
    train = _json_or_none(m / "metrics.json")
    if train is not None and "candidate" not in train:
        train = None  # not train's metrics.json
    name = cand.id if cand is not None else m.resolve().name
    page = Page(f"archsearch model report: {name}")
    page.header(f"<h1>archsearch model report: {esc(name)}</h1>{_CSS}"
                f'<p class="note">model folder {esc(m)}</p>')
    page.section("summary", "Summary", _summary(m, cand, train, run))
    page.section("metrics", "Metrics", _metrics_section(run))
    page.section("samples", "Student and teacher pictures" if run is not None and run.settings.get("teacher")
                 else "Pictures", _samples_section(run, max_samples), nav="Pictures")
    page.section("training", "Training curves", _training_section(page, _read_log(m)), nav="Training")
    if table is not None:
        t = Path(table)
        if not t.is_file():
            raise ParameterError("table", f": {t}: no such file (allowed: a latency table CSV, e.g. "
                                          "latency_tables/<name>.csv)")
        page.section("latency", "Latency per step count", _latency_section(page, cand, t, run), nav="Latency")
    if figures is not None:
        figures.update(page.figures)
    return page.render()


def write_model_report(model: str | os.PathLike, eval_dir: str | os.PathLike | None = None,
                       out: str | os.PathLike | None = None, *, table: str | os.PathLike | None = None,
                       max_samples: int = 8) -> Path:
    """Write the model report of ``model`` (an ``archsearch train`` output or a pipeline folder)
    with the evaluation in ``eval_dir`` (default: ``<model>/eval`` when it is one) to ``out``:
    an ``.html`` file, or a folder (``<out>/index.html``); default
    ``reports/trained/<candidate id>/index.html``. Written atomically; returns the path."""
    target = Path(out) if out is not None else default_model_report(model)
    if target.suffix.lower() not in (".html", ".htm"):
        target = target / "index.html"
    text = render_model_report(model, eval_dir, table=table, max_samples=max_samples)
    return atomic_write_text(target, text)
