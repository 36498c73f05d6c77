"""``archsearch report``: write a study's HTML report, or compare several studies."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from archsearch.cli._common import err_console, user_errors
from archsearch.errors import ArchsearchError

__all__ = ["register", "resolve_study"]


def _available(reports_dir: Path) -> list[str]:
    if not reports_dir.is_dir():
        return []
    return sorted(p.name for p in reports_dir.iterdir() if (p / "meta.json").is_file())


def resolve_study(study: str, reports_dir: Path) -> Path:
    """A study folder from a name under ``reports_dir`` or a path to the folder itself."""
    direct = Path(study)
    if direct.is_dir():
        return direct
    under = reports_dir / study
    if under.is_dir():
        return under
    known = _available(reports_dir)
    hint = (
        f"studies in {reports_dir}: {', '.join(known)}" if known else f"no studies in {reports_dir}"
    )
    raise ArchsearchError(f"study {study!r} not found: no folder {direct} or {under} ({hint})")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "study"


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to ``app``."""

    @app.command("report")
    @user_errors
    def report(
        studies: list[str] = typer.Argument(
            ...,
            metavar="STUDY",
            help="Study name (a folder under --reports-dir) or a path to a study folder.",
        ),
        compare: bool = typer.Option(
            False,
            "--compare",
            help="Overlay the fronts of two or more studies (e.g. NSGA-II vs random).",
        ),
        reports_dir: Path = typer.Option(
            Path("reports"), "--reports-dir", help="Folder holding one sub-folder per study."
        ),
        out: Optional[Path] = typer.Option(
            None,
            "--out",
            help="HTML file to write (default: <study>/index.html, or "
            "<reports-dir>/compare_<A>_vs_<B>.html with --compare).",
        ),
        png: Optional[Path] = typer.Option(
            None,
            "--png",
            help="Also write each figure of the report as DIR/<figure>.png (for papers and slides; "
            "needs Chrome or Chromium).",
        ),
    ) -> None:
        """Write reports/<study>/index.html: Pareto front, latency breakdown, progress, choices.

        The page is self-contained and opens offline. Prints the path written.

        Example:

          archsearch report unet_mobile --png reports/unet_mobile/figures
        """
        from archsearch.report import load_study, write_compare, write_report
        from archsearch.store import refresh_store

        if png is not None and compare:
            raise ArchsearchError("--png: give one study (the comparison page has no picture export)")
        if out is not None and out.suffix.lower() not in (".html", ".htm"):
            raise ArchsearchError(f"--out {out}: must end in .html")
        dirs = [resolve_study(s, reports_dir) for s in studies]
        if compare:
            if len(dirs) < 2:
                raise ArchsearchError(
                    f"--compare needs two or more studies (got {len(dirs)}): "
                    "archsearch report --compare STUDY_A STUDY_B"
                )
            target = out or reports_dir / (
                "compare_" + "_vs_".join(_slug(d.resolve().name) for d in dirs) + ".html"
            )
            with err_console.status("Writing comparison…"):
                for d in dirs:
                    refresh_store(d)
                path = write_compare(dirs, target)
        else:
            if len(dirs) != 1:
                raise ArchsearchError(
                    f"give one study (got {len(dirs)}); to compare several, add --compare"
                )
            with err_console.status(f"Writing report of {escape(str(dirs[0]))}…"):
                refresh_store(dirs[0])  # the study is the truth: a killed run, a cut-short trials.csv
                study = load_study(dirs[0])
                path = write_report(study, out, png_dir=png)
            device = study.table_device  # the table measured on another machine; then the prompt-blind
            foreign = [device.warning] if device is not None and device.differs else []
            for warning in foreign + study.warnings:
                err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
        typer.echo(str(path))
        if png is not None:
            typer.echo(f"figures: {png}/*.png")
