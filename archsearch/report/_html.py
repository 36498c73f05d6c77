"""Assemble one self-contained HTML page: Plotly's JS inlined once, figures as divs.

Escaping rules: every string from a user file goes through :func:`html.escape` before it lands
in markup, and JSON embedded in a ``<script>`` goes through :func:`json_for_script`, which
escapes ``<``, ``>`` and ``&`` so that no ``</script>`` can close the element early.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

__all__ = ["Page", "json_for_script"]

PLOT_CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": False}

CSS = """
:root { --fg:#222; --muted:#666; --line:#ddd; --accent:#1f77b4; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0; background: #fafafa; }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 16px 28px 8px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
nav { padding: 6px 0 4px; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
main { padding: 8px 28px 40px; max-width: 1400px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; margin: 18px 0;
          padding: 12px 18px 16px; }
section h2 { margin: 4px 0 6px; font-size: 18px; }
p.note { color: var(--muted); margin: 4px 0 10px; }
div.warn { color: #8a1c1c; background: #fdecea; border: 1px solid #f5c2c0; padding: 8px 10px;
            border-radius: 4px; margin: 6px 0 10px; } div.warn ul { margin: 4px 0 0; }
p.missing { color: #8a5a00; background: #fff7e0; border: 1px solid #f0d89a; padding: 8px 10px;
            border-radius: 4px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left;
         vertical-align: top; }
th { background: #f3f3f3; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { background: #f3f3f3; padding: 1px 4px; border-radius: 3px; font-size: 12.5px; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 4px; padding: 10px;
      max-height: 420px; overflow: auto; font-size: 12.5px; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
@media (max-width: 1000px) { .grid2 { grid-template-columns: 1fr; } }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 6px 0; }
dl.kv dt { color: var(--muted); } dl.kv dd { margin: 0; }
"""


def json_for_script(obj: Any) -> str:
    """JSON safe to place inside ``<script>``: ``<``, ``>``, ``&``, U+2028/9 are escaped."""
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True)
    for ch, rep in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(ch, rep)
    return text


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


class Page:
    """Collects sections, then renders one HTML document with Plotly's JS inlined once."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._nav: list[tuple[str, str]] = []
        self._sections: list[str] = []
        self._header_html = ""
        self._data_scripts: list[str] = []
        self._scripts: list[str] = []
        self._n_figs = 0
        #: every figure drawn, by div id (what :func:`write_pngs` exports as static pictures)
        self.figures: dict[str, go.Figure] = {}

    # ---- building blocks (return HTML strings)

    def figure(
        self, fig: go.Figure, div_id: str, post_script: str | None = None, height: int | None = None
    ) -> str:
        """One figure as a div; plotly.js is NOT included (the page head has it once)."""
        self._n_figs += 1
        self.figures[div_id] = fig
        h = height or int(fig.layout.height or 500)
        fixed = fig.layout.width is not None and fig.layout.autosize is False
        out = pio.to_html(
            fig,
            include_plotlyjs=False,
            full_html=False,
            div_id=div_id,
            config={**PLOT_CONFIG, "responsive": False} if fixed else PLOT_CONFIG,
            post_script=post_script,
            default_height=f"{h}px",
            default_width=f"{int(fig.layout.width)}px" if fixed else "100%",
        )
        # a figure with a fixed width (wide parallel coordinates) scrolls sideways
        return f'<div class="hscroll">{out}</div>' if fixed else out

    @staticmethod
    def table(
        headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()
    ) -> str:
        """Rows are already-escaped HTML cells; headers are escaped here."""
        head = "".join(f"<th>{esc(h)}</th>" for h in headers)
        body = []
        for row in rows:
            cells = "".join(
                f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                for i, c in enumerate(row)
            )
            body.append(f"<tr>{cells}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    @staticmethod
    def kv(items: Iterable[tuple[str, str]]) -> str:
        """A definition list; values are already-escaped HTML."""
        body = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items)
        return f'<dl class="kv">{body}</dl>'

    # ---- page structure

    def header(self, html_text: str) -> None:
        self._header_html = html_text

    def section(self, anchor: str, heading: str, body: str, nav: str | None = None) -> None:
        """Add a section; ``heading`` is escaped, ``body`` is trusted HTML built here."""
        self._nav.append((anchor, nav or heading))
        self._sections.append(
            f'<section id="{esc(anchor)}"><h2>{esc(heading)}</h2>\n{body}\n</section>'
        )

    def data_script(self, element_id: str, obj: Any) -> None:
        """Embed data as ``<script type="application/json">`` (read with JSON.parse)."""
        self._data_scripts.append(
            f'<script type="application/json" id="{esc(element_id)}">'
            f"{json_for_script(obj)}</script>"
        )

    def script(self, js: str) -> None:
        self._scripts.append(f"<script>{js}</script>")

    def render(self) -> str:
        nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in self._nav)
        return "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                '<link rel="icon" href="data:,">',
                f"<title>{esc(self.title)}</title>",
                f"<style>{CSS}</style>",
                "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>",
                f"<script>{get_plotlyjs()}</script>",
                *self._data_scripts,
                *self._scripts,
                "</head><body>",
                f"<header>{self._header_html}<nav>{nav}</nav></header>",
                "<main>",
                *self._sections,
                "</main>",
                "</body></html>",
                "",
            ]
        )
