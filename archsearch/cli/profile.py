"""``archsearch profile`` (build a latency lookup table) and ``archsearch predict``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from archsearch.cli._common import console, user_errors
from archsearch.errors import ArchsearchError

__all__ = ["register"]

DEFAULT_SPEC = Path("search_spaces/unet_mobile.yaml")

SourceArg = Annotated[
    Optional[Path],
    typer.Argument(help="Search-space YAML, or a candidate YAML (its blocks only). "
                        "Default: search_spaces/unet_mobile.yaml", show_default=False),
]


def _load_source(path: Path) -> tuple[Any, Any]:
    """(space, None) for a search-space file, (None, candidate) for a candidate file."""
    from archsearch.candidate import Candidate
    from archsearch.spec import load_space, load_yaml

    data = load_yaml(path).data
    if isinstance(data, dict) and "schema_version" in data:
        return load_space(path), None
    return None, Candidate.from_yaml(path)


def _progress_bar():  # noqa: ANN202
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[phase]:<9}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    TextColumn("{task.description}"), console=console, transient=False)


class _Bar:
    """Adapts ``progress(phase, description, done, total)`` to one rich task per phase."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def __call__(self, phase: str, desc: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(escape(desc), total=max(total, 1), phase=phase)
        self.progress.update(self.tasks[phase], completed=done, total=max(total, 1), description=escape(desc))


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def register(app: typer.Typer) -> None:
    """Add ``profile`` and ``predict`` to ``app``."""

    @app.command("profile")
    @user_errors
    def profile(
        source: SourceArg = None,
        target: Annotated[str, typer.Option("--target", "-t", help="cpu, cuda, mps, coreml or ane.")] = ...,
        resolution: Annotated[Optional[int], typer.Option(help="Latent resolution (overrides the space's).")] = None,
        batch: Annotated[int, typer.Option(help="Batch size of every measurement.")] = 1,
        dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16 (torch targets).")] = "float32",
        threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: torch's, recorded).")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Table CSV (default: "
                                                    "latency_tables/<space>-<target>-r<res>.csv).")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Count the unique blocks and estimate the time.")] = False,
        keys_out: Annotated[Optional[Path], typer.Option(help="With --dry-run: write the block list as a CSV "
                                                         "template for --import.")] = None,
        import_csv: Annotated[Optional[Path], typer.Option("--import", help="Ingest a table measured on a "
                                                           "real device (CSV: key, ms[, ms_iqr, runs, note]).")] = None,
        device: Annotated[Optional[str], typer.Option(help="With --import: the device's name.")] = None,
        device_profile: Annotated[Optional[str], typer.Option(help="coreml/ane off macOS: device profile "
                                                              "name or YAML (latency_tables/devices/).")] = None,
        no_convert: Annotated[bool, typer.Option("--no-convert", help="coreml/ane off macOS: skip the Core ML "
                                                 "conversion check (estimate only).")] = False,
        export_coreml: Annotated[Optional[Path], typer.Option(help="coreml/ane: save each converted block "
                                                              "as an .mlpackage here (to time on a device).")] = None,
        calibrate: Annotated[int, typer.Option(help="Whole candidates measured to fit the overhead.", min=0)] = 5,
        validate: Annotated[int, typer.Option(help="Measure N random candidates end to end and report "
                                              "accuracy (LUT vs FLOPs fit).", min=0)] = 0,
        repeat: Annotated[bool, typer.Option("--repeat", help="With --validate: measure every candidate twice "
                                             "and report how repeatable the machine is.")] = False,
        seed: Annotated[int, typer.Option(help="Seed of the --validate candidates.")] = 0,
        plot: Annotated[Optional[Path], typer.Option(help="--validate scatter plot (HTML). Default: "
                                                     "reports/latency/<table>-validation.html")] = None,
        min_time: Annotated[float, typer.Option(help="Seconds each block is timed at least.", min=0.0)] = 0.2,
        max_time: Annotated[float, typer.Option(help="Seconds each block is timed at most.", min=0.0)] = 2.0,
        threshold: Annotated[float, typer.Option(help="Stop timing once IQR/median is below this.", min=0.0)] = 0.05,
        statistic: Annotated[str, typer.Option(help="What a row holds: median (default), mean (additive when "
                                               "other jobs share the CPU) or min.")] = "median",
        flush_mb: Annotated[Optional[float], typer.Option(help="CPU: MiB written before every timed call, so "
                                                          "blocks start cold as inside a model (default: twice "
                                                          "the last-level cache; 0: off).", min=0.0)] = None,
    ) -> None:
        """Measure every distinct block of a space once into a latency table (resumable).

        Examples:
          archsearch profile search_spaces/tiny.yaml --target cpu --validate 20
          archsearch profile search_spaces/unet_mobile.yaml --target cpu --resolution 32
          archsearch profile --target ane            (Linux: Core ML conversion + roofline estimate)
          archsearch profile --import iphone.csv --target ane --out latency_tables/unet_mobile-ane-r128.csv
        """
        from archsearch.cost.latency import (
            TARGETS,
            MeasureSettings,
            enumerate_blocks,
            import_table,
            profile_space,
        )
        from archsearch.cost.latency._profile import default_table_path, make_backend

        if target not in TARGETS:
            raise ArchsearchError(f"--target {target}: unknown target (allowed: {', '.join(TARGETS)})")
        if max_time < min_time:
            raise ArchsearchError(f"--max-time {max_time} is below --min-time {min_time} (allowed: max >= min)")
        if keys_out is not None and not dry_run:
            raise ArchsearchError("--keys-out works with --dry-run only")
        path = source or DEFAULT_SPEC
        space, cand = _load_source(path)
        settings = MeasureSettings(min_time, max_time, threshold, statistic,
                                   None if flush_mb is None else int(flush_mb * (1 << 20)))
        with console.status(f"enumerating the blocks of {escape(str(path))} ..."):
            blocks = enumerate_blocks(space if space is not None else [cand], resolution)
        res = resolution or (int(space.data.get("resolution", 64)) if space is not None else cand.resolution)
        name = space.name if space is not None else f"candidate-{cand.id}"

        if import_csv is not None:
            if target not in ("coreml", "ane", "cpu", "cuda", "mps"):
                raise ArchsearchError(f"--target {target}: unknown target (allowed: {', '.join(TARGETS)})")
            out_path = out or Path("latency_tables") / f"{name}-{target}-r{res}.csv"
            table, n_rows, not_covered = import_table(import_csv, blocks, target, out_path, device)
            console.print(f"imported {n_rows} rows from {escape(str(import_csv))} into {escape(str(out_path))} "
                          f"(source: imported); table: {len(table)} blocks, source {table.source}")
            if not_covered:
                console.print(f"[yellow]{not_covered} block(s) of the space are not in the CSV[/yellow] "
                              "(they keep their previous rows, if any)")
            return

        backend = make_backend(target, dtype=dtype, batch=batch, threads=threads, settings=settings,
                               device_profile=device_profile, convert=not no_convert, export_dir=export_coreml)
        out_path = out or default_table_path(name, target, res, backend)
        existing = unconverted = 0
        if out_path.exists():
            from archsearch.cost.latency import load_table

            old = load_table(out_path)
            existing = sum(1 for k in blocks.specs if k in old)
            if backend.source == "estimate" and backend.convert:
                odf = old.df
                unconverted = int(((odf["coreml"] == "") & (odf["source"] == "estimate")).sum())
        info = blocks.info()
        how = ("every candidate" if info["method"] == "exhaustive" else
               f"{info['samples']:,} samples, last new block at sample {info['last_new_block_at']:,}")
        todo = len(blocks) - existing
        per_block = backend.seconds_per_block()
        eta = (todo + unconverted) * per_block + (calibrate if backend.source == "measured" else 0) * 3.0
        console.print(f"{len(blocks)} unique blocks in {escape(str(path))} at resolution {res} ({how}); "
                      f"{existing} already in {escape(str(out_path))}, {todo} to "
                      f"{'measure' if backend.source == 'measured' else 'estimate'}"
                      + (f", {unconverted} estimated earlier to convert to Core ML" if unconverted else ""))
        if backend.source == "estimate":
            prof = backend.profile
            console.print(f"[yellow]source: estimate[/yellow] — there is no Neural Engine here: latencies come "
                          f"from the roofline model {escape(prof.name)} ({escape(prof.path)}), not from a "
                          "measurement; every row says source: estimate. "
                          + ("Each block is converted to Core ML to prove it converts and to flag "
                             "ANE-hostile ops. " if backend.convert else "")
                          + "Real numbers: run this on a Mac, or --import a device CSV.")
        if dry_run:
            from collections import Counter

            counts = Counter(s.type for s in blocks.specs.values())
            console.print("blocks by type: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
            console.print(f"estimated time: about {_fmt_s(eta)} "
                          f"({per_block:.2f} s a block{', plus whole-model calibration' if calibrate else ''})")
            if keys_out is not None:
                _write_keys(blocks, keys_out)
                console.print(f"wrote the block list to {escape(str(keys_out))} (fill in ms and --import it)")
            return

        with _progress_bar() as bar:
            table = profile_space(blocks.space if space is not None else [cand], target, out_path,
                                  resolution=resolution, batch=batch, dtype=dtype, threads=threads,
                                  settings=settings, calibrate=calibrate, device_profile=device_profile,
                                  convert=not no_convert, export_dir=export_coreml, blocks=blocks,
                                  progress=_Bar(bar), source_label=str(path))
        console.print(f"[green]wrote[/green] {escape(str(out_path))}: {len(table)} blocks "
                      f"({todo} {'measured' if backend.source == 'measured' else 'estimated'} now, "
                      f"{existing} kept), source {table.source}, device {escape(str(table.meta.get('device')))}")
        cal = table.meta.get("calibration") or {}
        if cal:
            console.print(f"calibration: ms = {cal['scale']:.4f} x sum(blocks) + {cal['overhead_ms']:.4f} "
                          f"({escape(cal.get('method', ''))})")
        if target in ("coreml", "ane"):
            _print_coreml_summary(table)
        if validate:
            _run_validation(table, space, validate, seed, resolution, plot, out_path, repeat)

    @app.command("predict")
    @user_errors
    def predict_cmd(
        source: Annotated[Path, typer.Argument(help="Candidate YAML, or a search space (then -n samples).")],
        table_path: Annotated[Path, typer.Option("--table", help="Latency table CSV (from archsearch profile).")],
        allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Interpolate blocks missing from "
                                                    "the table (nearest neighbours) instead of failing.")] = False,
        n: Annotated[int, typer.Option("-n", help="With a space: how many candidates to sample.", min=1)] = 5,
        seed: Annotated[int, typer.Option(help="With a space: sampling seed.")] = 0,
        resolution: Annotated[Optional[int], typer.Option(help="Latent resolution (a space defaults to "
                                                          "the table's).")] = None,
        blocks: Annotated[bool, typer.Option("--blocks", help="Also print every block.")] = False,
    ) -> None:
        """Predict latency from a table: total and per stage.

        Examples:
          archsearch predict candidates/1a2b3c4d5e6f.yaml --table latency_tables/tiny-cpu-r16.csv
          archsearch predict search_spaces/tiny.yaml --table latency_tables/tiny-cpu-r16.csv -n 5
        """
        from archsearch.cost.latency import InterpolationWarning, load_table, predict, predict_breakdown
        from archsearch.cost.latency._profile import at_resolution, sample_candidates

        table = load_table(table_path)
        space, cand = _load_source(source)
        if space is not None:
            res = resolution or table.meta.get("resolution")
            cands = sample_candidates(space, n, seed, res)
        else:
            cands = [at_resolution(cand, resolution)]
        console.print(f"table {escape(str(table_path))}: target {table.meta.get('target')}, "
                      f"{escape(str(table.meta.get('device', '?')))}, {len(table)} blocks, source {table.source}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InterpolationWarning)
            totals = predict(cands, table, allow_missing=allow_missing)
            breakdowns = [predict_breakdown(c, table, allow_missing=allow_missing) for c in cands]
        if len(cands) == 1:
            df = breakdowns[0]
            per_stage = df.groupby("stage", sort=False).agg(blocks=("name", "size"), ms=("ms", "sum"))
            t = Table(title=f"candidate {cands[0].id} (latent {cands[0].resolution}) — "
                            f"{table.source_for(cands[0])}")
            for col in ("stage", "blocks", "ms", "share"):
                t.add_column(col, justify="left" if col == "stage" else "right")
            for stage, r in per_stage.iterrows():
                t.add_row(stage, str(int(r["blocks"])) if stage != "overhead" else "-", f"{r['ms']:.3f}",
                          f"{100 * r['ms'] / totals[0]:.1f}%")
            t.add_section()
            t.add_row("total", str(len(df) - 1), f"{totals[0]:.3f}", "100%")
            console.print(t)
            if blocks:
                bt = Table(title="blocks")
                for col in ("name", "type", "ms", "source"):
                    bt.add_column(col, justify="right" if col == "ms" else "left")
                for r in df.itertuples():
                    bt.add_row(r.name, r.type, f"{r.ms:.4f}", r.source)
                console.print(bt)
        else:
            # one column per candidate, one row per stage (fits a terminal for a handful)
            stages = list(dict.fromkeys(s for b in breakdowns for s in b["stage"]))
            per = [b.groupby("stage", sort=False)["ms"].sum() for b in breakdowns]
            t = Table(title=f"{len(cands)} candidates of {space.name} (seed {seed}, latent "
                            f"{cands[0].resolution}): predicted ms")
            t.add_column("stage")
            for c in cands:
                t.add_column(c.id, justify="right")
            for s in stages:
                t.add_row(s, *[f"{p.get(s, 0.0):.3f}" for p in per])
            t.add_section()
            t.add_row("total", *[f"{v:.3f}" for v in totals])
            t.add_row("source", *[table.source_for(c) for c in cands])
            console.print(t)
        for w in caught:
            if issubclass(w.category, InterpolationWarning):
                console.print(f"[yellow]warning:[/yellow] {escape(str(w.message))}")
                break


def _write_keys(blocks: Any, path: Path) -> None:
    import json

    import pandas as pd

    from archsearch._util import atomic_write_text

    rows = [{"key": k, "ms": "", "type": s.type, "params": json.dumps(s.hparams, sort_keys=True),
             "in_shape": "x".join(map(str, s.in_shape)), "example": s.name} for k, s in blocks.specs.items()]
    header = ("# Fill in ms (milliseconds per call, batch 1) for each block, then:\n"
              "# archsearch profile SPEC --import THIS.csv --target ane\n")
    atomic_write_text(path, header + pd.DataFrame(rows).to_csv(index=False, lineterminator="\n"))


def _print_coreml_summary(table: Any) -> None:
    from collections import Counter

    df = table.df
    conv = df["coreml"].fillna("")
    failed = df[conv.str.startswith("failed")]
    checked = int((conv != "").sum())
    if checked:
        console.print(f"Core ML: {checked - len(failed)}/{checked} blocks converted (mlprogram, fp16)")
        for r in failed.head(5).itertuples():
            console.print(f"  [red]failed[/red] {escape(r.key)}: {escape(r.coreml)}")
    flags: Counter = Counter()
    for text in df["ane_flags"].fillna(""):
        for part in filter(None, text.split(";")):
            flags[part.split(":")[0]] += 1
    if flags:
        console.print("ANE-hostile patterns (blocks affected): "
                      + ", ".join(f"{k} {v}" for k, v in flags.most_common()))


def _run_validation(table: Any, space: Any, n: int, seed: int, resolution: Optional[int],
                    plot: Optional[Path], out_path: Path, repeat: bool) -> None:
    from archsearch.cost.latency import validate_table

    if space is None:
        raise ArchsearchError("--validate needs a search space (SPEC), not a candidate file")
    html = plot or Path("reports") / "latency" / f"{out_path.stem}-validation.html"
    with _progress_bar() as bar:
        result = validate_table(table, space, n, seed=seed, resolution=resolution, html=html, progress=_Bar(bar),
                                repeat=repeat)
    t = Table(title=f"accuracy on {n} random candidates measured end to end (seed {seed})")
    for col in ("predictor", "±5%", "±10%", "MAPE", "Spearman"):
        t.add_column(col, justify="left" if col == "predictor" else "right")
    rows = [("lookup table (calibrated on other candidates)", result.lut),
            ("FLOPs linear fit (fitted on these candidates)", result.flops)]
    if result.repeat is not None:
        rows.append(("the same models measured again (noise floor)", result.repeat))
    for label, acc in rows:
        t.add_row(label, f"{100 * acc.within_5:.1f}%", f"{100 * acc.within_10:.1f}%", f"{acc.mape:.2f}%",
                  f"{acc.spearman:.4f}")
    console.print(t)
    if result.added_blocks:
        console.print(f"[yellow]{result.added_blocks} block(s) of these candidates were not in the table "
                      "and were measured first[/yellow]")
    console.print(f"scatter plot: {escape(str(result.html))}; figures stored in the table's metadata (validation:)")
