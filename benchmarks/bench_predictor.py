"""Latency predictor benchmark: accuracy, throughput and table build time (prints figures).

    python benchmarks/bench_predictor.py                       # all three on unet_mobile @ 16
    python benchmarks/bench_predictor.py --skip-build --n 50   # reuse the shipped table
    python benchmarks/bench_predictor.py --ane-anchors         # device profiles vs published
    python benchmarks/bench_predictor.py --ane-anchors --fit   # ... and the efficiency each fit gives

Targets (issue 3, on this 2-core CPU): >= 99 % of candidates within ±10 % and Spearman >= 0.99,
better than a FLOPs-only fit on the same run; >= 100,000 candidates scored per second; the
unet_mobile table built in <= 5 minutes. Nothing here is asserted: it measures and prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _load(space_path: str):
    from archsearch.spec import load_space

    return load_space(space_path)  # main() runs from the repository root


def bench_build(space, resolution: int, threads: int, out: Path, statistic: str) -> float:
    from archsearch.cost.latency import MeasureSettings, profile_space

    t0 = time.perf_counter()
    table = profile_space(space, "cpu", out, resolution=resolution, threads=threads,
                          settings=MeasureSettings(0.2, 2.0, 0.05, statistic), calibrate=5)
    dt = time.perf_counter() - t0
    table.meta["build_seconds"] = round(dt, 1)
    table.save()
    info = table.meta["enumeration"]
    print(f"LUT build: {len(table)} blocks ({info['method']}, {info['samples']} samples) + 5 whole models "
          f"in {dt:.1f} s ({dt / 60:.2f} min) -> {out}")
    return dt


def bench_throughput(space, table, resolution: int, n: int) -> None:
    import numpy as np

    from archsearch.cost.latency import LatencyPredictor, candidate_blocks, sample_candidates
    from archsearch.model._walker import _walk_cached

    t0 = time.perf_counter()
    cands = sample_candidates(space, n, seed=123, resolution=resolution)
    t_sample = time.perf_counter() - t0
    candidate_blocks.cache_clear()
    _walk_cached.cache_clear()
    predictor = LatencyPredictor(table)  # a fresh predictor: empty caches
    t0 = time.perf_counter()
    cold = predictor.predict(cands, allow_missing=True)
    t_cold = time.perf_counter() - t0
    reps = max(1, 200_000 // len(cands))
    batch = cands * reps
    t0 = time.perf_counter()
    warm = predictor.predict(batch, allow_missing=True)
    t_warm = time.perf_counter() - t0
    assert np.allclose(warm[: len(cands)], cold)
    print(f"throughput: sampling {len(cands)} candidates took {t_sample:.1f} s "
          f"({len(cands) / t_sample:,.0f}/s, not part of the predictor)")
    print(f"throughput: cold (first sight of each candidate: walk + key lookup + sum): "
          f"{len(cands) / t_cold:,.0f} candidates/s")
    print(f"throughput: warm (candidates seen before, e.g. evolutionary search / re-ranking): "
          f"{len(batch) / t_warm:,.0f} candidates/s over {len(batch):,} scores")


def bench_accuracy(space, table, n: int, seed: int, html: Path | None, memory: int) -> None:
    from archsearch.cost.latency import ImplausibleCalibrationError, check_calibration, validate_table

    try:

        cal = table.meta.get("calibration") or {}
        why = check_calibration(*table.calibration, [p["measured_ms"] for p in cal.get("points", [])])
        if why:
            raise ImplausibleCalibrationError(why, scale=table.calibration[0], overhead_ms=table.calibration[1])
    except ImplausibleCalibrationError as exc:
        print(f"  note: `profile --validate` would refuse this table: {exc}; scored anyway")
    t0 = time.perf_counter()
    res = validate_table(table, space, n, seed=seed, html=html, repeat=True, check_calibration=False, memory=memory)
    dt = time.perf_counter() - t0
    print(f"accuracy on {n} unseen random candidates (seed {seed}, {dt:.0f} s; whole models measured end to end):")
    print(f"  {'predictor':<36s} {'±5%':>6s} {'±10%':>6s} {'MAPE':>7s} {'Spearman':>9s}")
    for label, acc in (("lookup table (shipped/built table)", res.lut), ("FLOPs linear fit (in sample)", res.flops),
                       ("the machine again (noise floor)", res.repeat)):
        print(f"  {label:<36s} {100 * acc.within_5:5.1f}% {100 * acc.within_10:5.1f}% {acc.mape:6.2f}% "
              f"{acc.spearman:9.4f}")
    if res.memory is not None:
        print(f"  memory predictor vs whole-model measurement: {res.memory.line()}")
    sen = table.meta.get("sentinel") or {}
    if sen:
        print(f"  table's sentinel: {sen.get('checks')} checks, {sen.get('remeasured_rows')} rows measured again")
    if res.added_blocks:
        print(f"  note: {res.added_blocks} blocks of these candidates were missing from the table and were measured")
    if html:
        print(f"  scatter: {res.html}")


def bench_anchors(fit: bool = False) -> None:
    """Every profile's checks (estimate vs published, the ratio between two UNets), and with
    ``fit`` the compute efficiency that would reproduce each ``role: fit`` anchor."""
    from archsearch.candidate import sample
    from archsearch.cost.latency import ane_model_ops, available_devices, check_published, fit_efficiency, load_device
    from archsearch.spec import load_space

    for name in available_devices():
        prof = load_device(name)
        rows = check_published(prof, ROOT)
        for r in rows:
            print(f"{name:18s} {Path(r['space']).stem:16s} b{r['batch']} estimate {r['estimate_ms']:8.1f} ms   "
                  f"published {r['published_ms']:7.1f} ms   x{r['ratio']:.2f}  ({r['role']})")
        if len(rows) >= 2:
            a, b = rows[0], rows[1]
            est, pub = a["estimate_ms"] / b["estimate_ms"], a["published_ms"] / b["published_ms"]
            print(f"{name:18s} ratio {Path(a['space']).stem}/{Path(b['space']).stem}: estimate {est:.2f}, "
                  f"published {pub:.2f} ({100 * (est / pub - 1):+.0f}%)")
        if fit:
            for chk in prof.checks:
                if chk.get("role") != "fit":
                    continue
                cand = sample(load_space(ROOT / chk["space"]), 0)
                e = fit_efficiency(prof, ane_model_ops(cand, int(chk.get("batch", 1))), float(chk["published_ms"]))
                print(f"{name:18s} fit on {Path(chk['space']).stem}: efficiency {e:.4f} "
                      f"(profile has {prof.efficiency['conv']:.4f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="search_spaces/unet_mobile.yaml")
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--table", default=None, help="existing table (default: build a fresh one in a temp dir)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--statistic", default="mean", choices=["median", "mean", "min"],
                    help="what a row holds (mean: additive when other jobs share the CPU)")
    ap.add_argument("--n", type=int, default=50, help="validation candidates")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--throughput-n", type=int, default=5000)
    ap.add_argument("--skip-build", action="store_true", help="use --table (or the shipped one) as is")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--html", type=Path, default=None)
    ap.add_argument("--ane-anchors", action="store_true", help="only compare device profiles with published figures")
    ap.add_argument("--fit", action="store_true", help="with --ane-anchors: the efficiency each fit anchor gives")
    ap.add_argument("--memory", type=int, default=20, help="validation candidates whose peak memory is measured")
    args = ap.parse_args()
    os.chdir(ROOT)  # relative paths in the table's metadata, shipped device profiles found
    if args.ane_anchors:
        bench_anchors(args.fit)
        return

    import torch

    from archsearch.cost.latency import load_table
    from archsearch.cost.latency._measure import cpu_name

    threads = args.threads or torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cpu_name()}, torch {torch.__version__}, load average {load:.2f}")
    space = _load(args.space)
    if args.skip_build:
        path = Path(args.table or ROOT / "latency_tables" / f"{space.name}-cpu-r{args.resolution}.csv")
        table = load_table(path)
        print(f"table: {path} ({len(table)} blocks, built {table.meta.get('created')}, "
              f"{table.meta.get('threads')} threads, statistic {table.meta['measure'].get('statistic')}; "
              "validation measures with the table's settings)")
        if table.meta.get("build_seconds"):
            print(f"table build time (recorded): {table.meta['build_seconds'] / 60:.2f} min")
    else:
        tmp = Path(tempfile.mkdtemp(prefix="archsearch-bench-"))
        path = Path(args.table) if args.table else tmp / f"{space.name}-cpu-r{args.resolution}.csv"
        if path.exists():
            sys.exit(f"error: {path} exists; the build benchmark needs a fresh path (or --skip-build)")
        print(f"building with {threads} threads, statistic {args.statistic}")
        bench_build(space, args.resolution, threads, path, args.statistic)
        table = load_table(path)
    bench_throughput(space, table, args.resolution, args.throughput_n)
    if not args.skip_accuracy:
        bench_accuracy(space, table, args.n, args.seed, args.html, args.memory)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "")


if __name__ == "__main__":
    main()
