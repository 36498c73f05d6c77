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

__all__ = ["FLAGS", "register", "summary_table"]

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


def summary_table(df, meta: dict) -> Table:  # noqa: ANN001 - a pandas DataFrame
    """The Pareto candidates of a stored study as a rich table (best quality first)."""
    front = df[df["pareto"].astype(bool)].drop_duplicates("candidate_id").sort_values("quality")
    c = meta.get("counts", {})
    title = (f"{meta['study']}: {len(front)} Pareto candidates of {len(df)} trials "
             f"({c.get('complete', 0)} complete, {c.get('infeasible', 0)} infeasible, "
             f"{c.get('failed', 0)} failed) - hypervolume {_fmt(meta.get('hypervolume'))}")
    table = Table(title=title, title_justify="left")
    table.add_column("candidate", no_wrap=True, min_width=12)
    for name in ("trial", "quality", "latency ms", "params M", "GFLOPs"):
        table.add_column(name, justify="right")
    table.add_column("latency from")
    if front.empty:
        table.caption = "no complete, feasible trial yet: the Pareto front is empty"
    for _, r in front.iterrows():
        table.add_row(str(r["candidate_id"]), str(r["number"]), _fmt(r["quality"]), _fmt(r["latency_ms"]),
                      _fmt(r["params"], 1e6), _fmt(r["flops"], 1e9), str(r["latency_source"] or "-"))
    return table


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
                                              help="nsga2, tpe, gp or random (default: search.sampler, else nsga2)."),
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

          archsearch run search_spaces/unet_mobile.yaml --backend ray --address 10.0.0.1:6379
        """
        from archsearch._resources import describe
        from archsearch.search import RunOptions, run_search
        from archsearch.spec import load_space
        from archsearch.store import write_store

        space = load_space(spec)
        options = RunOptions(trials=trials, timeout=timeout, seed=seed, storage=storage, study=study, workers=workers,
                             sampler=sampler, resume=resume, backend=backend, address=address, device=device,
                             reports_dir=reports_dir)

        def log(message: str) -> None:
            err_console.print(escape(message), soft_wrap=True)

        with _LazyBars(progress) as bars:  # the store is written after each finished trial: a killed run is reported
            result = run_search(space, options, progress=bars, log=log, on_trial=write_store)
        meta = write_store(result.study, result.study_dir)
        from archsearch.store import load_trials

        console.print(summary_table(load_trials(result.study_dir), meta))
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
