"""Search benchmarks on the tiny space (prints figures; not a test).

1. Sample efficiency: hypervolume after N trials for nsga2, tpe and gp versus random after N
   and 3N trials, for several seeds. Target: nsga2/tpe at N >= random at 3N.
2. Throughput: trials per hour with 1 versus 2 local worker processes (same proxy settings).
   Target: 2 workers >= 1.7x one.
3. Trial overhead on unet_mobile with the demo's proxy settings: the share of a trial's wall
   time that is not training steps (costs, FLOPs, building the student, the held-out score),
   with the block-FLOP disk cache cold (what every trial paid before it existed, and what a
   first search still pays for blocks never seen) and warm. Target: <= 5%.

Every trial is a real proxy distillation run against the built-in teacher. In part 1 a
candidate's score is computed once and reused by every later study that proposes it (the
score is deterministic for a candidate and the proxy settings), so the samplers are compared
on the same scores at a fraction of the cost; part 2 trains every trial.

    .venv/bin/python benchmarks/bench_search.py                 # both parts
    .venv/bin/python benchmarks/bench_search.py --n 15 --seeds 3 --skip-workers
    .venv/bin/python benchmarks/bench_search.py --json out.json
    .venv/bin/python benchmarks/bench_search.py --skip-hv --skip-workers --overhead 6   # part 3 only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent

#: Proxy settings of part 1 (quality must separate candidates) and part 2 (longer trials so
#: that the per-trial work dominates, as in a real search).
PROXY_HV = {"steps": 10, "batch": 4, "resolution": 8, "holdout": 16, "width_mult": 0.5,
            "teacher": {"builtin": "image", "train_steps": 300, "width": 32, "batch": 8, "data_size": 256}}
PROXY_RATE = {**PROXY_HV, "steps": 40, "resolution": 16, "batch": 8}


def _spec(tmp: Path, name: str, proxy: dict[str, Any], table: Path, **search: Any) -> Path:
    data = yaml.safe_load((ROOT / "search_spaces" / "tiny.yaml").read_text())
    data.update(name=name, proxy=proxy, search={"latency_table": str(table), **search})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _table(tmp: Path) -> Path:
    shipped = ROOT / "latency_tables" / "tiny-cpu-r16.csv"
    if shipped.is_file():
        return shipped
    from archsearch.cost.latency import profile_space
    from archsearch.spec import load_space

    out = tmp / "tiny-ane-r16-estimate.csv"
    profile_space(load_space(ROOT / "search_spaces" / "tiny.yaml"), "ane", out, convert=False, calibrate=0)
    return out


def _points(study: Any, n: int) -> np.ndarray:
    """Objective values of the feasible complete trials among the first ``n``."""
    from optuna.trial import TrialState

    rows = [t.values for t in study.trials[:n]
            if t.state == TrialState.COMPLETE and all(v <= 0 for v in t.constraints.values())]
    return np.asarray(rows, dtype=float).reshape(-1, len(study.directions))


# --------------------------------------------------------------------------- part 1


def sample_efficiency(tmp: Path, table: Path, n: int, seeds: int, samplers: list[str]) -> dict[str, Any]:
    import archsearch.distill as distill
    from archsearch.pareto import hypervolume, non_dominated
    from archsearch.search import run_search
    from archsearch.spec import load_space

    real = distill.distill
    memo: dict[str, Any] = {}
    trained = {"n": 0, "s": 0.0}

    def memo_proxy(candidate, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if candidate.id not in memo:
            t0 = time.perf_counter()
            memo[candidate.id] = real(candidate, *args, **kwargs)
            trained["n"] += 1
            trained["s"] += time.perf_counter() - t0
        return memo[candidate.id]

    distill.distill = memo_proxy
    # one torch thread: on a 2-core machine shared with anything else, 2 threads of a tiny model
    # run several times slower than 1 (see the throughput part)
    space = load_space(_spec(tmp, "hv", PROXY_HV, table, threads=1))
    runs: dict[tuple[str, int], Any] = {}
    try:
        for seed in range(seeds):
            for sampler, trials in [*((s, n) for s in samplers), ("random", 3 * n)]:
                t0 = time.perf_counter()
                run = run_search(space, trials=trials, seed=seed, sampler=sampler, study=f"{sampler}-s{seed}",
                                 reports_dir=tmp / "reports", progress=False)
                runs[(sampler, seed)] = run.study
                distinct = len({t.user_attrs.get("candidate_id") for t in run.study.trials})
                print(f"  seed {seed} {sampler:6s} {trials:3d} trials, {distinct:3d} distinct candidates  "
                      f"{time.perf_counter() - t0:6.1f} s  ({len(memo)} trained in all so far)", flush=True)
    finally:
        distill.distill = real

    directions = ["minimize"] * 3
    union = np.vstack([_points(st, len(st.trials)) for st in runs.values()])
    # one reference for every run: the worst value seen per objective plus 10% of its range,
    # so that every evaluated feasible candidate adds volume
    ref = union.max(axis=0) + 0.1 * np.ptp(union, axis=0)
    best = hypervolume(union[non_dominated(union, directions)], ref, directions)
    cases = [*((f"{s}@N", s, n) for s in samplers), ("random@N", "random", n), ("random@3N", "random", 3 * n)]
    table_rows: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    for seed in range(seeds):
        for label, sampler, k in cases:
            pts = _points(runs[(sampler, seed)], k)
            table_rows[label].append(hypervolume(pts, ref, directions) / best if len(pts) else 0.0)
    return {
        "n": n, "seeds": seeds, "reference": ref.tolist(), "hv_fraction_of_union_front": table_rows,
        "mean": {k: statistics.mean(v) for k, v in table_rows.items()},
        "distinct_candidates_trained": trained["n"], "mean_proxy_s": trained["s"] / max(1, trained["n"]),
    }


# --------------------------------------------------------------------------- part 2


def throughput(tmp: Path, table: Path, trials: int) -> dict[str, Any]:
    """Trials per hour: 1 worker (torch threads = cores, the default), 1 worker with 1 thread,
    and 2 workers (threads = cores // 2 each)."""
    from archsearch.search import run_search
    from archsearch.search._local import available_cores, threads_per_worker
    from archsearch.spec import load_space

    cores = available_cores()
    out: dict[str, Any] = {"trials": trials, "cores": cores}
    for label, workers, threads in (("1 worker, 1 thread", 1, 1), ("1 worker", 1, None), ("2 workers", 2, None)):
        space = load_space(_spec(tmp, f"rate{workers}{threads or ''}", PROXY_RATE, table, threads=threads))
        t0 = time.perf_counter()
        run = run_search(space, trials=trials, workers=workers, sampler="random", seed=100,
                         reports_dir=tmp / "reports", progress=False)
        wall = time.perf_counter() - t0
        ts = [t for t in run.study.trials if t.datetime_complete is not None]
        span = (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)).total_seconds()
        out[label] = {
            "workers": workers, "threads": threads or threads_per_worker(workers), "wall_s": wall,
            "trials_per_hour": 3600 * len(ts) / wall,
            "steady_trials_per_hour": 3600 * len(ts) / span if span > 0 else float("nan"),
            "states": run.counts,
        }
        print(f"  {label:18s} ({out[label]['threads']} thread(s) each): {len(ts)} trials in {wall:.1f} s "
              f"= {3600 * len(ts) / wall:.0f} trials/h ({3600 * len(ts) / span:.0f}/h first start to last end)",
              flush=True)
    # headline: trials per hour while the study runs (first trial start to last trial end),
    # which leaves out the fixed start-up (teacher load, process spawn) of a short benchmark
    steady = {k: out[k]["steady_trials_per_hour"] for k in ("1 worker", "1 worker, 1 thread", "2 workers")}
    out["speedup"] = steady["2 workers"] / steady["1 worker"]
    out["speedup_vs_1_thread"] = steady["2 workers"] / steady["1 worker, 1 thread"]
    out["speedup_wall"] = out["2 workers"]["trials_per_hour"] / out["1 worker"]["trials_per_hour"]
    return out


# --------------------------------------------------------------------------- part 3


def trial_overhead(tmp: Path, k: int, seed: int = 0) -> dict[str, Any]:
    """Share of each trial's wall time outside the training steps, FLOP cache cold vs warm.

    The same ``k`` feasible unet_mobile candidates are evaluated twice in this process with the
    demo's proxy settings, teacher and latency table: first with an empty block-FLOP disk cache
    and no in-process cache (every block traced by fvcore, as each trial did before the cache),
    then again with only the disk cache kept (a later trial, worker or run).
    """
    import archsearch.distill as distill
    from archsearch.candidate import sample_many
    from archsearch.cost import FlopCache
    from archsearch.cost import _params_flops as pf
    from archsearch.cost.latency import load_table
    from archsearch.search import SearchSettings, TrialContext, evaluate
    from archsearch.spec import load_space

    space = load_space(ROOT / "search_spaces" / "unet_mobile.yaml")
    settings = SearchSettings.from_space(space)
    proxy = distill.ProxyConfig.from_space(space)
    table = load_table(ROOT / "latency_tables" / "unet_mobile-ane-r128-estimate.csv")
    t0 = time.perf_counter()
    teacher = distill.load_teacher(proxy, kind=space.kind)
    teacher_s = time.perf_counter() - t0
    ctx = TrialContext(space=space, settings=settings, proxy=proxy, teacher=teacher, table=table, threads=1)

    real = distill.distill
    train_s: dict[str, float] = {}

    def spy(candidate, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        result = real(candidate, *args, **kwargs)
        train_s[candidate.id] = float(result.metrics["train_s"])
        return result

    from archsearch.search._objective import constraint_values, costs_of

    cands = []
    for c in sample_many(space, 8 * k, seed=seed):
        if len(cands) == k:
            break
        if all(v <= 0 for v in constraint_values(costs_of(c, table), settings).values()):
            cands.append(c)
    pf._DISK = FlopCache(tmp / "flops-cold.jsonl")  # an empty disk cache
    distill.distill = spy
    out: dict[str, Any] = {"candidates": [c.id for c in cands], "teacher_load_s": teacher_s}
    try:
        real(cands[0], teacher, proxy, threads=1)  # warm the per-process data caches once
        for label in ("cold", "warm"):
            pf._flops_by_key.cache_clear()  # no in-process cache: a fresh worker each time
            pf.block_params.cache_clear()
            walls, trains = [], []
            for c in cands:
                rec = evaluate(c, ctx)
                if rec.state != "complete":
                    continue
                walls.append(rec.wall_time_s)
                trains.append(train_s[c.id])
            share = 1.0 - sum(trains) / sum(walls)
            out[label] = {"trials": len(walls), "wall_s": sum(walls), "train_s": sum(trains),
                          "overhead_share": share, "per_trial_overhead_s": (sum(walls) - sum(trains)) / len(walls)}
            print(f"  FLOP cache {label}: {len(walls)} trials, {sum(walls):.1f} s in all, {sum(trains):.1f} s "
                  f"training steps: {100 * share:.1f}% outside training "
                  f"({out[label]['per_trial_overhead_s']:.2f} s per trial)", flush=True)
    finally:
        distill.distill = real
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=15, help="N: trials of nsga2/tpe (random gets N and 3N)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samplers", default="nsga2,tpe,gp", help="compared with random (comma-separated)")
    ap.add_argument("--rate-trials", type=int, default=12, help="trials per run of the throughput part")
    ap.add_argument("--skip-hv", action="store_true")
    ap.add_argument("--skip-workers", action="store_true")
    ap.add_argument("--overhead", type=int, default=6, help="unet_mobile trials of part 3 (0: skip it)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    results: dict[str, Any] = {"loadavg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    with tempfile.TemporaryDirectory(prefix="bench_search_") as d:
        tmp = Path(d)
        table = _table(tmp)
        results["latency_table"] = str(table)
        if not args.skip_hv:
            print(f"sample efficiency: N={args.n}, {args.seeds} seeds (tiny space)", flush=True)
            hv = sample_efficiency(tmp, table, args.n, args.seeds, args.samplers.split(","))
            results["sample_efficiency"] = hv
            print("hypervolume as a fraction of the union front's (higher is better):")
            for k, v in hv["hv_fraction_of_union_front"].items():
                print(f"  {k:10s} mean {statistics.mean(v):.3f}   per seed {', '.join(f'{x:.3f}' for x in v)}")
            m = hv["mean"]
            print("  target <sampler>@N >= random@3N: " + "; ".join(
                f"{s} {'met' if m[f'{s}@N'] >= m['random@3N'] else 'NOT met'}" for s in args.samplers.split(",")))
        if not args.skip_workers:
            print(f"throughput: {args.rate_trials} trials with 1 and 2 local workers", flush=True)
            rate = throughput(tmp, table, args.rate_trials)
            results["throughput"] = rate
            print(f"  2 workers vs 1 (trials/h while running): {rate['speedup']:.2f}x (target >= 1.7x: "
                  f"{'met' if rate['speedup'] >= 1.7 else 'NOT met'}); vs 1 worker with 1 thread: "
                  f"{rate['speedup_vs_1_thread']:.2f}x; wall clock incl. start-up: {rate['speedup_wall']:.2f}x")
        if args.overhead > 0:
            print(f"trial overhead: {args.overhead} unet_mobile trials, demo proxy settings", flush=True)
            over = trial_overhead(tmp, args.overhead)
            results["trial_overhead"] = over
            print(f"  target <= 5% outside training with a warm cache: "
                  f"{'met' if over['warm']['overhead_share'] <= 0.05 else 'NOT met'}")
    results["loadavg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"load average at start {results['loadavg_start']}, at end {results['loadavg_end']} "
          "(other processes on the machine distort the timings)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
