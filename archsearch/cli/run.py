"""``archsearch run SPEC``: the multi-objective search, then the store, the summary and the report."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from archsearch.cli._common import console, err_console, flag_errors, progress_bars, user_errors

__all__ = ["FLAGS", "closing_notes", "register", "summary_table"]

#: run_search's parameters -> this command's flags (library errors name the parameter).
FLAGS = {
    "trials": "--trials", "timeout": "--timeout", "seed": "--seed", "sampler": "--sampler",
    "storage": "--storage", "study": "--study", "workers": "--workers", "backend": "--backend",
    "address": "--address", "device": "--device", "resume": "--resume",
}


def _fmt(v: object, scale: float = 1.0, digits: int = 4) -> str:
    try:
        x = float(v) / scale  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(x) else f"{x:.{digits}g}"


def _fmt_count(v: object) -> str:
    """1234567 -> '1.23M': FLOPs as the ``build`` and ``show`` tables write them."""
    try:
        n = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"
    if math.isnan(n):
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def summary_table(df, meta: dict) -> Table:  # noqa: ANN001 - a pandas DataFrame
    """The Pareto candidates of a stored study as a rich table (best quality first): quality
    ± its noise, FLOPs counted as the ``build`` table counts them (MAC), where the latency comes
    from, and a short note: ``knee`` (the suggested pick), ``≈ ID`` (within the noise of the
    cheaper ID), ``no prompt`` (no cross-attention); :func:`closing_notes` spells them out."""
    front = df[df["pareto"].astype(bool)].drop_duplicates("candidate_id").sort_values("quality")
    c = meta.get("counts", {})
    title = (f"{meta['study']}: {len(front)} Pareto candidates of {len(df)} trials "
             f"({c.get('complete', 0)} complete, {c.get('infeasible', 0)} infeasible, "
             f"{c.get('failed', 0)} failed) - hypervolume {_fmt(meta.get('hypervolume'))}")
    z = float((meta.get("quality_noise") or {}).get("z") or 2.0)
    knee = (meta.get("knee") or {}).get("candidate_id")
    sources = sorted({str(v) for v in front["latency_source"].fillna("") if str(v)})
    table = Table(title=title, title_justify="left", caption_justify="left")
    table.add_column("candidate", no_wrap=True, min_width=14)  # its notes on the lines below the id
    rows = []
    for _, r in front.iterrows():
        notes = ["knee"] if r["candidate_id"] == knee else []
        if isinstance(r.get("within_noise_of"), str) and r["within_noise_of"]:
            notes.append(f"≈ {r['within_noise_of']}")
        if r.get("cross_attention") == 0:
            notes.append("no prompt")
        cells = [str(int(r["number"])), _fmt(r["quality"]), _fmt(z * float(r.get("quality_se", math.nan)), digits=2),
                 _fmt(r["latency_ms"]), _fmt(r["params"], 1e6), _fmt_count(r["flops"])]
        if len(sources) > 1:
            cells.append(str(r["latency_source"] or "-"))
        rows.append(("\n".join([escape(str(r["candidate_id"]))] + [f"[dim]{escape(n)}[/dim]" for n in notes]), cells))
    headers = ["trial", "quality", f"±{z:g} se", "latency ms", "params M", "FLOPs (MAC)"]
    headers += ["latency from"] if len(sources) > 1 else []
    for j, name in enumerate(headers):  # values never wrap; a header may (latency / ms)
        widest = max([len(cells[j]) for _, cells in rows] + [max(len(w) for w in name.split())])
        table.add_column(name, justify="left" if name == "latency from" else "right", min_width=widest)
    for first, cells in rows:
        table.add_row(first, *cells)
    if front.empty:
        table.caption = "no complete, feasible trial yet: the Pareto front is empty"
    else:
        legend = ("knee: the suggested pick; ≈ ID: within the noise of the cheaper ID; no prompt: no "
                  "cross-attention anywhere") if any("\n" in first for first, _ in rows) else ""
        latency = f"latency: {sources[0]} (predicted from the latency table)" if len(sources) == 1 else ""
        table.caption = "; ".join(t for t in (latency, legend) if t) or None
    return table


def closing_notes(meta: dict, df=None) -> list[str]:  # noqa: ANN001 - a pandas DataFrame
    """The lines after the summary table: the suggested pick and its reason, each Pareto
    candidate within the noise of a cheaper one (with both qualities when ``df``, the trials,
    is given), then a warning per Pareto candidate that cannot see the prompt (meta.json's
    ``knee``, ``quality_noise`` and ``warnings``)."""
    out = []
    knee = meta.get("knee") or {}
    if knee.get("candidate_id"):
        out.append(f"suggested pick: {knee['candidate_id']} (trial {knee.get('trial')}): {knee.get('reason', '')}")
    elif knee.get("reason"):
        out.append(f"suggested pick: none ({knee['reason']})")
    noise = meta.get("quality_noise") or {}
    z = float(noise.get("z") or 2.0)
    first = df.drop_duplicates("candidate_id").set_index("candidate_id") if df is not None else None
    for cid, ref in (noise.get("within_noise_of") or {}).items():
        line = f"{cid}: within noise of {ref}, which is cheaper"
        if first is not None and cid in first.index and ref in first.index:
            a, b = first.loc[cid], first.loc[ref]
            line += (f" (quality {_fmt(a['quality'])} ± {_fmt(z * a['quality_se'], digits=2)} vs "
                     f"{_fmt(b['quality'])} ± {_fmt(z * b['quality_se'], digits=2)})")
        out.append(line + ": not a distinct trade-off")
    out += [f"warning: {w}" for w in meta.get("warnings") or []]
    return out


class _LazyBars:
    """``progress(phase, description, done, total)`` that opens ``progress_bars`` on the first
    report: an argument error (or a study with nothing to run) prints no empty display."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._stack = contextlib.ExitStack()
        self._bars = None

    def __call__(self, phase: str, description: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bars is None:
            self._bars = self._stack.enter_context(progress_bars(err_console))
        self._bars(phase, description, done, total)

    def __enter__(self) -> "_LazyBars":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def register(app: typer.Typer) -> None:
    """Add the ``run`` command to ``app``."""

    @app.command("run")
    @user_errors
    @flag_errors(FLAGS)
    def run(
        spec: Path = typer.Argument(..., help="Search-space YAML with search: and proxy: sections, or a "
                                    "bundled space by name (unet_mobile, tiny, ...)."),
        trials: Optional[int] = typer.Option(None, "--trials", "-n", help="Number of trials (default: search.n_trials)."),
        timeout: Optional[float] = typer.Option(None, "--timeout", help="Start no new trial after this many seconds."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Sampler seed (default: search.seed)."),
        sampler: Optional[str] = typer.Option(None, "--sampler",
                                              help="gp, nsga2, tpe or random (default: search.sampler, else gp; "
                                                   "nsga2 for search.method: temporal)."),
        storage: Optional[str] = typer.Option(
            None, "--storage",
            help="Optuna storage URL (sqlite:///..., postgresql://...) or a .db/.log file "
                 "(default: sqlite:///<reports-dir>/<study>/study.db)."),
        study: Optional[str] = typer.Option(None, "--study", help="Study name (default: search.study, else the space's name)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the study: finished trials are kept, "
                                    "interrupted ones re-run. Several runs may share one study "
                                    "(--storage): no candidate is trained twice."),
        backend: str = typer.Option("local", "--backend", help="local (processes on this machine) or ray (Ray Tune)."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w",
                                              help="Local worker processes (at most the CPU cores), "
                                                   "or concurrent Ray trials."),
        address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (with --backend ray)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N, mps (default: the best available)."),
        reports_dir: Path = typer.Option(Path("reports"), "--reports-dir", help="Folder of the study folders."),
        report: bool = typer.Option(True, "--report/--no-report", help="Write the HTML report at the end."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        """Search SPEC for Pareto-optimal backbones (quality x latency x size).

        Each trial resolves a candidate, predicts its latency from the latency table, rejects it
        if it breaks a constraint, else scores it with a short proxy distillation run. Results go
        to reports/<study>/: trials.csv, meta.json, pareto/<id>.yaml (the input of full
        training), latency_breakdown.csv and index.html.

        Examples:

          archsearch run search_spaces/unet_mobile.yaml

          archsearch run search_spaces/tiny.yaml --trials 40 --workers 2 --seed 1

          archsearch run search_spaces/unet_mobile.yaml --resume

          archsearch run search_spaces/unet_mobile.yaml --backend ray \\
              --address 10.0.0.1:6379
        """
        from archsearch._resources import describe, find_space
        from archsearch.search import RunOptions, run_search
        from archsearch.spec import load_space
        from archsearch.store import write_store

        space = load_space(find_space(spec))  # a path, or a bundled space by name (as validate/show)
        options = RunOptions(trials=trials, timeout=timeout, seed=seed, storage=storage, study=study, workers=workers,
                             sampler=sampler, resume=resume, backend=backend, address=address, device=device,
                             reports_dir=reports_dir)

        def log(message: str) -> None:
            err_console.print(escape(message), soft_wrap=True)

        with _LazyBars(progress) as bars:  # the store is written after each finished trial: a killed run is reported
            result = run_search(space, options, progress=bars, log=log, on_trial=write_store)
        meta = write_store(result.study, result.study_dir)
        from archsearch.store import load_trials

        trials = load_trials(result.study_dir)
        console.print(summary_table(trials, meta))
        for line in closing_notes(meta, trials):
            console.print(escape(line), soft_wrap=True)
        console.print(f"study: {escape(result.storage_url)} (open it with `optuna-dashboard "
                      f"{escape(result.storage_url)}`)", soft_wrap=True)
        if result.settings.latency_table is not None:
            console.print(f"latency table: {escape(describe(result.settings.latency_table))}", soft_wrap=True)
        console.print(f"results: {escape(str(result.study_dir))}/trials.csv, pareto/*.yaml", soft_wrap=True)
        if report:
            try:
                from archsearch.report import write_report
            except ImportError:
                write_report = None
            if write_report is not None:
                path = write_report(result.study_dir)
                console.print(f"report: {escape(str(path))}", soft_wrap=True)
        if result.stopped:
            err_console.print(f"{result.stopped}: continue with `archsearch run {escape(str(spec))} --resume`",
                              soft_wrap=True)
            raise typer.Exit(130)
