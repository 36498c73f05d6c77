"""``archsearch profile`` (build a latency lookup table) and ``archsearch predict``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from archsearch.cli._common import console, flag_errors, progress_bars, user_errors
from archsearch.errors import ArchsearchError, MissingBlockError

__all__ = ["register"]

DEFAULT_SPEC = Path("search_spaces/unet_mobile.yaml")

SourceArg = Annotated[
    Optional[Path],
    typer.Argument(help="Search-space YAML (or a bundled space by name), or a candidate YAML (its "
                        "blocks only). Default: search_spaces/unet_mobile.yaml", show_default=False),
]


def _load_source(path: Path) -> tuple[Any, Any]:
    """(space, None) for a search-space file, (None, candidate) for a candidate file; ``path``
    as found by :func:`archsearch._resources.find_space` (a bundled space by name)."""
    from archsearch.candidate import Candidate
    from archsearch.spec import load_space, load_yaml

    data = load_yaml(path).data
    if isinstance(data, dict) and "schema_version" in data:
        return load_space(path), None
    return None, Candidate.from_yaml(path)


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def register(app: typer.Typer) -> None:
    """Add ``profile`` and ``predict`` to ``app``."""

    @app.command("profile")
    @user_errors
    @_flag_errors
    def profile(
        source: SourceArg = None,
        target: Annotated[Optional[str], typer.Option("--target", "-t", help="cpu, cuda, mps, coreml, ane or xnnpack (ExecuTorch on this CPU).")] = None,
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
                                                              "as an .mlpackage here (to time on a device); "
                                                              "xnnpack: each .pte program.")] = None,
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
        stable_time: Annotated[Optional[float], typer.Option(help="Seconds after which a block that is already "
                                                             "stable stops (default: a quarter of --min-time).",
                                                             min=0.0)] = None,
        sentinel_every: Annotated[int, typer.Option(help="Re-time a sentinel block after every N blocks; a "
                                                    "disturbed stretch is measured again (0: off).", min=0)] = 25,
        sentinel_drift: Annotated[float, typer.Option(help="Sentinel change that counts as disturbed.",
                                                      min=0.0)] = 0.25,
        max_overhead: Annotated[float, typer.Option(help="With --validate: refuse a calibration whose overhead "
                                                    "exceeds this share of the smallest calibration model.",
                                                    min=0.0)] = 0.15,
        compute_units: Annotated[Optional[str], typer.Option(help="coreml/ane: CPU_ONLY, CPU_AND_GPU, CPU_AND_NE "
                                                             "or ALL (default: CPU_AND_NE for ane, ALL for "
                                                             "coreml).")] = None,
        recalibrate: Annotated[Optional[Path], typer.Option("--recalibrate", help="Refit this measured table "
                                                            "(e.g. one from another machine) to this machine from "
                                                            "-n whole models timed here; writes a new table (--out).")] = None,
        models: Annotated[int, typer.Option("-n", help="With --recalibrate: whole models to time.", min=2)] = 8,
    ) -> None:
        """Measure every distinct block of a space once into a latency table (resumable).

        Examples:

          archsearch profile search_spaces/tiny.yaml --target cpu --validate 20

          archsearch profile search_spaces/unet_mobile.yaml --target cpu --resolution 32

          # on Linux: Core ML conversion + roofline estimate
          archsearch profile --target ane

          archsearch profile --import iphone.csv --target ane \\
              --out latency_tables/unet_mobile-ane-r128.csv

          # a table from another machine, refitted to this one
          archsearch profile --recalibrate latency_tables/unet_mobile-cpu-r16.csv -n 8
        """
        from archsearch.cost.latency import (
            MeasureSettings,
            ProfileOptions,
            SentinelSettings,
            import_table,
            plan_profile,
            run_profile,
        )

        if recalibrate is not None:
            _recalibrate(recalibrate, models, out, source, target)
            return
        if target is None:
            raise ArchsearchError("--target is required (allowed: cpu, cuda, mps, coreml, ane, xnnpack)")
        if max_time < min_time:
            raise ArchsearchError(f"--max-time {max_time} is below --min-time {min_time} (allowed: max >= min)")
        if keys_out is not None and not dry_run:
            raise ArchsearchError("--keys-out works with --dry-run only")
        from archsearch._resources import find_space

        path = find_space(source or DEFAULT_SPEC)  # a path, or a bundled space by name
        space, cand = _load_source(path)
        name = space.name if space is not None else f"candidate-{cand.id}"
        src = space if space is not None else [cand]

        if import_csv is not None:
            with console.status(f"enumerating the blocks of {escape(str(path))} ..."):
                table, n_rows, not_covered = import_table(import_csv, src, target, out, device,
                                                          resolution=resolution, name=name)
            console.print(f"imported {n_rows} rows from {escape(str(import_csv))} into {escape(str(table.path))} "
                          f"(source: imported); table: {len(table)} blocks, source {table.source}")
            if not_covered:
                console.print(f"[yellow]{not_covered} block(s) of the space are not in the CSV[/yellow] "
                              "(they keep their previous rows, if any)")
            return

        settings = MeasureSettings(min_time, max_time, threshold, statistic,
                                   None if flush_mb is None else int(flush_mb * (1 << 20)), stable_time)
        sentinel = SentinelSettings(every=sentinel_every, drift=sentinel_drift) if sentinel_every else None
        options = ProfileOptions(resolution=resolution, batch=batch, dtype=dtype, threads=threads, settings=settings,
                                 calibrate=calibrate, device_profile=device_profile, convert=not no_convert,
                                 export_dir=export_coreml, compute_units=compute_units, sentinel=sentinel,
                                 check_calibration=bool(validate), max_overhead_share=max_overhead)
        with console.status(f"enumerating the blocks of {escape(str(path))} ..."):
            plan = plan_profile(src, target, out, options, name=name)
        _print_plan(plan, path)
        if dry_run:
            from collections import Counter

            counts = Counter(s.type for s in plan.blocks.specs.values())
            console.print("blocks by type: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
            with console.status("timing a few blocks for the estimate ..."):
                eta = plan.estimate_time()
            console.print(f"estimated time: about {_fmt_s(eta.seconds)} (from {eta.how}"
                          f"{', plus whole-model calibration' if plan.calibration_todo else ''}; an estimate)")
            if keys_out is not None:
                from archsearch.cost.latency import write_import_template

                write_import_template(plan.blocks, keys_out, "Fill in ms (milliseconds per call, batch 1) for "
                                      "each block, then:\narchsearch profile SPEC --import THIS.csv --target ane")
                console.print(f"wrote the block list to {escape(str(keys_out))} (fill in ms and --import it)")
            return

        n_new = len(plan.new)
        with progress_bars() as bar:
            table = run_profile(plan, bar, command=_command(str(path), plan.arguments))
        console.print(f"[green]wrote[/green] {escape(str(plan.out))}: {len(table)} blocks "
                      f"({n_new} {'measured' if plan.source == 'measured' else 'estimated'} now, "
                      f"{plan.existing} kept), source {table.source}, device {escape(str(table.meta.get('device')))}")
        sen = table.meta.get("sentinel") or {}
        if sen and plan.sentinel is not None:
            console.print(f"sentinel: {sen['checks']} checks, {sen['disturbed_checks']} disturbed, "
                          f"{sen['remeasured_rows']} rows measured again, {sen['kept_disturbed_rows']} kept disturbed")
        cal = table.meta.get("calibration") or {}
        if cal:
            console.print(f"calibration: ms = {cal['scale']:.4f} x sum(blocks) + {cal['overhead_ms']:.4f} "
                          f"({escape(cal.get('method', ''))})")
        if plan.target in ("coreml", "ane"):
            _print_coreml_summary(table)
        if validate:
            _run_validation(table, space, validate, seed, resolution, plot, plan.out, repeat, max_overhead)

    @app.command("predict")
    @user_errors
    @_flag_errors
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

          archsearch predict candidates/1a2b3c4d5e6f.yaml \\
              --table latency_tables/tiny-cpu-r16.csv

          archsearch predict tiny --table latency_tables/tiny-cpu-r16.csv -n 5
        """
        from archsearch._resources import describe, find_file, find_space
        from archsearch.cost.latency import InterpolationWarning, at_resolution, load_predictor, sample_candidates

        if not table_path.exists():  # a shipped table by its repository path (latency_tables/...)
            table_path = find_file(table_path) or table_path
        predictor = load_predictor(table_path)
        table = predictor.table
        source = find_space(source)  # a path, or a bundled space by name
        space, cand = _load_source(source)
        if space is not None:
            res = resolution or table.meta.get("resolution")
            cands = sample_candidates(space, n, seed, res)
        else:
            cands = [at_resolution(cand, resolution)]
        console.print(f"table {escape(describe(table_path))}: target {table.meta.get('target')}, "
                      f"{escape(str(table.meta.get('device', '?')))}, {len(table)} blocks, source {table.source}")
        _warn_foreign_device(table)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InterpolationWarning)
            totals = predictor.predict(cands, allow_missing=allow_missing)
            breakdowns = [predictor.breakdown(c, allow_missing=allow_missing) for c in cands]
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


#: library parameters -> the flags of ``profile`` / ``predict``
_FLAGS = {
    "target": "--target", "resolution": "--resolution", "batch": "--batch", "dtype": "--dtype",
    "threads": "--threads", "min_run_time": "--min-time", "max_run_time": "--max-time",
    "threshold": "--threshold", "statistic": "--statistic", "flush_bytes": "--flush-mb",
    "device_profile": "--device-profile", "out": "--out", "n": "--validate", "seed": "--seed",
    "stable_time": "--stable-time", "compute_units": "--compute-units", "max_overhead_share": "--max-overhead",
    "sentinel.every": "--sentinel-every", "sentinel.drift": "--sentinel-drift", "models": "-n",
}


def _command(spec_path: str, arguments: dict[str, Any]) -> str:
    """The ``archsearch profile`` command that rebuilds (or extends) a table, from the
    plan's arguments (the non-default parameters of the run)."""
    parts = ["archsearch", "profile", spec_path]
    for param, value in arguments.items():
        if param == "flush_bytes":
            value = value / (1 << 20)
        parts += [_FLAGS[param], f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(parts)


def _flag_errors(fn: Any) -> Any:
    """Library errors in CLI words: parameters become flags; next steps become commands."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from archsearch.cost.latency import MissingBlocksError, UnknownBlockKeyError

        try:
            return fn(*args, **kwargs)
        except MissingBlocksError as exc:
            measure = exc.command or (f"archsearch profile SPEC --target {exc.target or 'cpu'}"
                                      + (f" --out {exc.table_path}" if exc.table_path else ""))
            raise MissingBlockError(exc.message(measure=measure, allow_missing="--allow-missing")) from None
        except UnknownBlockKeyError as exc:
            raise ArchsearchError(
                f"{exc.path}: key {exc.key!r} is not a block of {exc.source} at resolution {exc.resolution} "
                f"({exc.n_unknown} unknown key(s); list the allowed keys with "
                f"`archsearch profile SPEC --target {exc.target} --dry-run --keys-out keys.csv`)") from None

    return flag_errors(_FLAGS)(wrapper)


def _warn_foreign_device(table: Any) -> None:
    """One line when ``table`` was measured on another machine than this one."""
    from archsearch.cost.latency import check_table_device

    line = check_table_device(table).warning
    if line:
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", soft_wrap=True)


def _recalibrate(table_path: Path, models: int, out: Optional[Path], source: Optional[Path],
                 target: Optional[str]) -> None:
    """``profile --recalibrate TABLE -n K [--out NEW] [SPACE]``."""
    from archsearch._resources import find_file, find_space
    from archsearch.cost.latency import load_table, recalibrate_table

    if not table_path.exists():  # a shipped table by its repository path (latency_tables/...)
        table_path = find_file(table_path) or table_path
    table = load_table(table_path)
    if target is not None and target != table.meta.get("target"):
        raise ArchsearchError(f"--target {target}: {table_path} is a table for target {table.meta.get('target')} "
                              "(allowed: leave --target out with --recalibrate)")
    space = None
    if source is not None:
        space, _ = _load_source(find_space(source))
        if space is None:
            raise ArchsearchError(f"{source}: --recalibrate draws its models from a search space, not a candidate file")
    cmd = f"archsearch profile --recalibrate {table_path} -n {models}" + (f" --out {out}" if out else "")
    with progress_bars() as bar:
        res = recalibrate_table(table, models, out, space=space, progress=bar, command=cmd)
    console.print(f"timed {res.fit.k} whole models on {escape(res.device)} in {_fmt_s(res.seconds)}; fit: "
                  f"{escape(res.fit.line())}", soft_wrap=True)
    t = Table(title=f"whole models: {escape(str(table_path))} vs this machine")
    for col in ("candidate", "table ms", "measured ms", "recalibrated ms"):
        t.add_column(col, justify="left" if col == "candidate" else "right")
    for r in res.points.itertuples():
        t.add_row(r.id, f"{r.table_ms:.3f}", f"{r.measured_ms:.3f}", f"{r.fitted_ms:.3f}")
    console.print(t)
    console.print(f"[green]wrote[/green] {escape(str(res.out))}: {len(res.table)} blocks derived from "
                  f"{escape(str(table_path))} (its header says how); use it with --table {escape(str(res.out))}",
                  soft_wrap=True)


def _print_plan(plan: Any, path: Path) -> None:
    info = plan.blocks.info()
    how = ("every candidate" if info["method"] == "exhaustive" else
           f"{info['samples']:,} samples, last new block at sample {info['last_new_block_at']:,}")
    recheck = len(plan.recheck)
    console.print(f"{len(plan.blocks)} unique blocks in {escape(str(path))} at resolution {plan.resolution} ({how}); "
                  f"{plan.existing} already in {escape(str(plan.out))}, {len(plan.new)} to "
                  f"{'measure' if plan.source == 'measured' else 'estimate'}"
                  + (f", {recheck} estimated earlier to convert to Core ML" if recheck else ""))
    if plan.source == "estimate":
        backend = plan.backend
        prof = backend.profile
        console.print(f"[yellow]source: estimate[/yellow] — there is no Neural Engine here: latencies come "
                      f"from the roofline model {escape(prof.name)} ({escape(prof.path)}), not from a "
                      "measurement; every row says source: estimate. "
                      + ("Each block is converted to Core ML to prove it converts and to flag "
                         "ANE-hostile ops. " if backend.convert else "")
                      + "Real numbers: run this on a Mac, or --import a device CSV.")


def _print_coreml_summary(table: Any) -> None:
    from collections import Counter

    df = table.df
    conv = df["coreml"].fillna("")
    failed = df[conv.str.startswith("failed")]
    checked = int((conv != "").sum())
    if checked:
        from archsearch.export import unconvertible_types

        console.print(f"Core ML: {checked - len(failed)}/{checked} blocks converted (mlprogram, fp16)")
        bad = unconvertible_types(df.to_dict("records"))
        if bad:  # by block type: what a search on this table rejects before training
            console.print("[red]block types that do not convert to Core ML[/red] (a search on this table treats "
                          "candidates with them as infeasible):")
            for typ, b in bad.items():
                console.print(f"  {escape(typ)}: {b['failed']}/{b['blocks']} blocks: {escape(b['error'])}")
    flags: Counter = Counter()
    for text in df["ane_flags"].fillna(""):
        for part in filter(None, text.split(";")):
            flags[part.split(":")[0]] += 1
    if flags:
        console.print("ANE-hostile patterns (blocks affected): "
                      + ", ".join(f"{k} {v}" for k, v in flags.most_common()))


def _run_validation(table: Any, space: Any, n: int, seed: int, resolution: Optional[int],
                    plot: Optional[Path], out_path: Path, repeat: bool, max_overhead: float = 0.15) -> None:
    from archsearch.cost.latency import validate_table

    if space is None:
        raise ArchsearchError("--validate needs a search space (SPEC), not a candidate file")
    html = plot or Path("reports") / "latency" / f"{out_path.stem}-validation.html"
    with progress_bars() as bar:
        result = validate_table(table, space, n, seed=seed, resolution=resolution, html=html, progress=bar,
                                repeat=repeat, max_overhead_share=max_overhead)
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
    if result.memory is not None:
        console.print(f"memory predictor vs whole-model measurement: {escape(result.memory.line())}")
    if result.added_blocks:
        console.print(f"[yellow]{result.added_blocks} block(s) of these candidates were not in the table "
                      "and were measured first[/yellow]")
    console.print(f"scatter plot: {escape(str(result.html))}; figures stored in the table's metadata (validation:)")
