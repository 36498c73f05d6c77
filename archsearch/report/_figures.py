"""Draw the report's Plotly figures from the values computed in :mod:`._compute`.

Nothing here reads files or decides what is Pareto-optimal; it only maps computed tables to
traces. Text that came from user files arrives already HTML-escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from archsearch.report._compute import FrontData, ParcoordsDim, fmt_ms
from archsearch.report._data import Objective

__all__ = [
    "breakdown_figure",
    "compare_front_figure",
    "compare_progress_figure",
    "evolution_figure",
    "front_figure",
    "parcoords_figure",
    "progress_figure",
    "validation_figure",
]

TEMPLATE = "plotly_white"
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
INFEASIBLE = "#d62728"


def _layout(fig: go.Figure, title: str, height: int = 520) -> go.Figure:
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.01},
        height=height,
        margin={"l": 70, "r": 30, "t": 60, "b": 60},
        hoverlabel={"align": "left"},
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


def _budget_line(fig: go.Figure, budget_ms: float | None) -> None:
    if budget_ms is not None and math.isfinite(budget_ms):
        fig.add_vline(
            x=budget_ms,
            line={"dash": "dash", "color": INFEASIBLE, "width": 1.5},
            annotation_text=f"latency budget {fmt_ms(budget_ms)}",
            annotation_position="top right",
        )


def front_figure(front: FrontData, title: str) -> go.Figure:
    """Quality vs latency: Pareto trials solid, dominated faded, infeasible as x, front line."""
    pts = front.points
    fig = go.Figure()
    has_params = bool(np.isfinite(pts["params"]).any()) if len(pts) else False

    def marker_trace(status: str, name: str, **marker: object) -> None:
        sub = pts[pts["status"] == status]
        if sub.empty:
            return
        m = dict(marker)
        if has_params and status != "infeasible":
            m.update(color=sub["params"].tolist(), coloraxis="coloraxis")
        err = sub["err"].astype(float) if "err" in sub else pd.Series(np.nan, index=sub.index)
        error_y = None
        if np.isfinite(err).any():  # the quality's noise: ± z standard errors of the held-out score
            error_y = {"type": "data", "array": [float(v) if math.isfinite(v) else None for v in err],
                       "visible": True, "thickness": 1, "width": 3, "color": "#555" if status == "Pareto" else "#bbb"}
        fig.add_trace(
            go.Scatter(
                x=sub["x"].tolist(),
                y=sub["y"].tolist(),
                mode="markers",
                name=name,
                text=sub["hover"].tolist(),
                customdata=sub["candidate_id"].tolist(),
                hovertemplate="%{text}<extra></extra>",
                marker=m,
                error_y=error_y,
            )
        )

    if len(front.line):
        fig.add_trace(
            go.Scatter(
                x=front.line["x"].tolist(),
                y=front.line["y"].tolist(),
                mode="lines",
                line={"shape": "hv", "color": "#444", "width": 1.5},
                name="front (quality vs latency)",
                hoverinfo="skip",
            )
        )
    marker_trace("dominated", "dominated", size=7, opacity=0.3, color="#888")
    marker_trace(
        "Pareto", "Pareto-optimal (all objectives)", size=11, opacity=1.0, color=PALETTE[0],
        line={"width": 1, "color": "#222"},
    )  # fmt: skip
    marker_trace("infeasible", "infeasible", size=8, opacity=0.7, color=INFEASIBLE, symbol="x")
    knee = pts[(pts["status"] == "Pareto") & (pts["candidate_id"] == front.knee_id)] if front.knee_id else pts[:0]
    if len(knee):
        fig.add_trace(
            go.Scatter(
                x=knee["x"].tolist()[:1], y=knee["y"].tolist()[:1], mode="markers", name="suggested pick (knee)",
                marker={"symbol": "star-open", "size": 22, "color": "#d62728", "line": {"width": 2}},
                customdata=knee["candidate_id"].tolist()[:1], text=knee["hover"].tolist()[:1],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    if "within_noise_of" in pts and (pts["within_noise_of"].astype(str) != "").any():
        noisy = pts[pts["within_noise_of"].astype(str) != ""]
        fig.add_trace(
            go.Scatter(
                x=noisy["x"].tolist(), y=noisy["y"].tolist(), mode="markers", name="within noise of a cheaper one",
                marker={"symbol": "circle-open", "size": 17, "color": "#ff7f0e", "line": {"width": 1.5}},
                customdata=noisy["candidate_id"].tolist(), text=noisy["hover"].tolist(),
                hovertemplate="%{text}<extra></extra>",
            )
        )
    if len(pts) and not pts["y_known"].all():
        fig.add_annotation(
            text="untrained infeasible trials are drawn on the top edge",
            xref="paper", yref="paper", x=0.0, y=1.0, xanchor="left", yanchor="bottom",
            showarrow=False, font={"size": 11, "color": INFEASIBLE},
        )  # fmt: skip
    if has_params:
        fig.update_layout(
            coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": "params"}}}
        )
    _budget_line(fig, front.budget_ms)
    fig.update_xaxes(title_text=front.x_label)
    fig.update_yaxes(title_text=front.y_label)
    fig.update_layout(clickmode="event", hovermode="closest")
    return _layout(fig, title, height=560)


def breakdown_figure(table: pd.DataFrame, by: str, title: str) -> go.Figure:
    """Stacked bars: one bar per candidate (rows of ``table``), one colour per column."""
    fig = go.Figure()
    ids = [html.escape(str(i)) for i in table.index]
    totals = table.sum(axis=1)
    for j, col in enumerate(table.columns):
        fig.add_trace(
            go.Bar(
                x=ids,
                y=table[col].tolist(),
                name=html.escape(str(col)),
                marker_color=PALETTE[j % len(PALETTE)],
                customdata=[[f"{t:.3g}"] for t in totals],
                hovertemplate=(
                    f"%{{x}}<br>{html.escape(by)}: {html.escape(str(col))}"
                    "<br>%{y:.3g} ms of %{customdata[0]} ms<extra></extra>"
                ),
            )
        )
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title_text="Pareto candidate", type="category", tickangle=-60)
    fig.update_yaxes(title_text="predicted latency (ms)")
    fig = _layout(fig, title, height=500)
    fig.update_layout(legend={"orientation": "v", "y": 1.0, "x": 1.02, "traceorder": "reversed"})
    return fig


def progress_figure(
    progress: pd.DataFrame, objectives: Sequence[Objective], title: str
) -> go.Figure:
    """Hypervolume over trials (top) and best-so-far of each objective (one row each)."""
    rows = 1 + len(objectives)
    titles = ["hypervolume (feasible trials)"] + [
        f"{html.escape(o.name)}: best so far ({'min' if o.direction == 'minimize' else 'max'})"
        for o in objectives
    ]
    fig = make_subplots(
        rows=rows, cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.06
    )
    x = progress["number"].tolist()
    fig.add_trace(
        go.Scatter(
            x=x,
            y=progress["hypervolume"].tolist(),
            mode="lines",
            line={"shape": "hv", "color": PALETTE[0]},
            name="hypervolume",
            hovertemplate="trial %{x}<br>hypervolume %{y:.4g}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    for j, o in enumerate(objectives, start=2):
        colour = PALETTE[(j - 1) % len(PALETTE)]
        name = html.escape(o.name)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=progress[f"value:{o.name}"].tolist(),
                mode="markers",
                marker={"size": 5, "color": colour, "opacity": 0.45},
                name=f"{name} (trial)",
                showlegend=False,
                hovertemplate=f"trial %{{x}}<br>{name} %{{y:.4g}}<extra></extra>",
            ),
            row=j,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=progress[f"best:{o.name}"].tolist(),
                mode="lines",
                line={"shape": "hv", "color": colour},
                name=f"best {name}",
                hovertemplate=f"trial %{{x}}<br>best {name} %{{y:.4g}}<extra></extra>",
            ),
            row=j,
            col=1,
        )
    fig.update_xaxes(title_text="trial", row=rows, col=1)
    fig.update_layout(showlegend=False)
    return _layout(fig, title, height=220 + 180 * rows)


def parcoords_figure(dims: list[ParcoordsDim], colour: ParcoordsDim, title: str) -> go.Figure:
    """Parallel coordinates of architecture choices and objectives, coloured by ``colour``."""
    dimensions = []
    for d in dims:
        item: dict = {"label": d.label, "values": d.values}
        if d.tickvals is not None:
            item.update(tickvals=d.tickvals, ticktext=d.ticktext)
        dimensions.append(item)
    fig = go.Figure(
        go.Parcoords(
            line={
                "color": colour.values,
                "colorscale": "Viridis_r",
                "showscale": True,
                "colorbar": {"title": {"text": colour.label}},
            },
            dimensions=dimensions,
            labelangle=-30 if len(dimensions) > 6 else 0,
            labelside="top",
        )
    )
    fig = _layout(fig, title, height=600)
    # every axis gets room for its tick labels: the figure widens with the number of axes
    # (the page scrolls sideways) instead of squeezing them until labels run together
    width = max(900, PARCOORDS_AXIS_PX * len(dimensions))
    fig.update_layout(width=width, autosize=False, margin={"l": 80, "r": 80, "t": 190, "b": 40})
    return fig


#: horizontal room per parallel-coordinates axis: tick labels such as "separable" fit
PARCOORDS_AXIS_PX = 125


def validation_figure(
    df: pd.DataFrame, stats: dict[str, dict[str, float]], title: str
) -> go.Figure:
    """Measured vs predicted latency per candidate, with the y = x line."""
    fig = go.Figure()
    labels = {"predicted_ms": "latency-table predictor", "flops_fit_ms": "FLOPs fit"}
    ids = [html.escape(str(i)) for i in df["candidate_id"]]
    lo, hi = math.inf, -math.inf
    for j, (col, label) in enumerate(labels.items()):
        if col not in stats:
            continue
        s = stats[col]
        name = f"{label}: MAPE {s['mape']:.1f}%, Kendall τ {s['kendall']:.2f}"
        d = df[["measured_ms", col]]
        fig.add_trace(
            go.Scatter(
                x=d["measured_ms"].tolist(),
                y=d[col].tolist(),
                mode="markers",
                name=name,
                text=ids,
                marker={"size": 8, "color": PALETTE[j], "symbol": ["circle", "diamond"][j]},
                hovertemplate=(
                    f"%{{text}}<br>measured %{{x:.3g}} ms<br>{label} %{{y:.3g}} ms<extra></extra>"
                ),
            )
        )
        vals = pd.concat([d["measured_ms"], d[col]]).dropna()
        if len(vals):
            lo, hi = min(lo, float(vals.min())), max(hi, float(vals.max()))
    if math.isfinite(lo):
        fig.add_trace(
            go.Scatter(
                x=[lo, hi], y=[lo, hi], mode="lines", name="y = x",
                line={"dash": "dot", "color": "#555"}, hoverinfo="skip",
            )
        )  # fmt: skip
    fig.update_xaxes(title_text="measured latency (ms)")
    fig.update_yaxes(title_text="predicted latency (ms)")
    return _layout(fig, title, height=520)


def compare_front_figure(
    studies: Sequence[tuple[str, FrontData, float | None]], title: str
) -> go.Figure:
    """Overlay of several studies' quality-vs-latency fronts (one colour per study)."""
    fig = go.Figure()
    for j, (name, front, hv) in enumerate(studies):
        colour = PALETTE[j % len(PALETTE)]
        label = html.escape(name) + (f" (HV {hv:.4g})" if hv is not None else "")
        pts = front.points
        feas = pts[pts["status"] != "infeasible"]
        fig.add_trace(
            go.Scatter(
                x=feas["x"].tolist(),
                y=feas["y"].tolist(),
                mode="markers",
                name=f"{html.escape(name)}: trials",
                legendgroup=str(j),
                text=feas["hover"].tolist(),
                hovertemplate="%{text}<extra></extra>",
                marker={"size": 6, "color": colour, "opacity": 0.25},
            )
        )
        if len(front.line):
            fig.add_trace(
                go.Scatter(
                    x=front.line["x"].tolist(),
                    y=front.line["y"].tolist(),
                    mode="lines+markers",
                    line={"shape": "hv", "color": colour, "width": 2},
                    marker={"size": 8, "color": colour},
                    name=f"{label}: front",
                    legendgroup=str(j),
                    hovertemplate="latency %{x:.3g} ms<br>quality %{y:.4g}<extra></extra>",
                )
            )
    budgets = {f.budget_ms for _, f, _ in studies if f.budget_ms is not None}
    if len(budgets) == 1:
        _budget_line(fig, budgets.pop())
    if studies:
        fig.update_xaxes(title_text=studies[0][1].x_label)
        fig.update_yaxes(title_text=studies[0][1].y_label)
    fig.update_layout(hovermode="closest")
    return _layout(fig, title, height=580)


def compare_progress_figure(
    histories: Sequence[tuple[str, pd.DataFrame]], title: str
) -> go.Figure:
    """Hypervolume over trials of several studies against one reference point."""
    fig = go.Figure()
    for j, (name, prog) in enumerate(histories):
        fig.add_trace(
            go.Scatter(
                x=prog["number"].tolist(),
                y=prog["hypervolume"].tolist(),
                mode="lines",
                line={"shape": "hv", "color": PALETTE[j % len(PALETTE)]},
                name=html.escape(name),
                hovertemplate="trial %{x}<br>hypervolume %{y:.4g}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="trial")
    fig.update_yaxes(title_text="hypervolume (common reference)")
    return _layout(fig, title, height=460)


def evolution_figure(steps: pd.DataFrame, start: tuple[float, float] | None, budget_ms: float | None,
                     title: str) -> go.Figure:
    """The evolution's path: quality vs predicted latency of each architecture it moved to,
    in order, from the start (``start``: its latency and quality), with the budget dashed."""
    xs = ([start[0]] if start else []) + steps["latency_ms"].astype(float).tolist()
    ys = ([start[1]] if start else []) + steps["quality"].astype(float).tolist()
    labels = (["start"] if start else []) + [
        f"step {int(r.step)}: {html.escape(str(r.kind))} {html.escape(str(r.block))} in {html.escape(str(r.stage))}"
        f" ({html.escape(str(r.dimension))} {html.escape(str(r.before))}&rarr;{html.escape(str(r.after))})"
        for r in steps.itertuples(index=False)
    ]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=xs, y=ys, mode="lines+markers+text", text=[str(i) for i in range(len(xs))], textposition="top center",
        line={"color": PALETTE[0]}, marker={"size": 8, "color": PALETTE[1]}, customdata=labels, name="path",
        hovertemplate="%{customdata}<br>latency %{x:.4g} ms<br>quality %{y:.4g}<extra></extra>",
    ))
    _budget_line(fig, budget_ms)
    fig.update_xaxes(title_text="predicted latency (ms)")
    fig.update_yaxes(title_text="quality (held-out MSE on the supernet, lower is better)")
    return _layout(fig, title, height=460)
