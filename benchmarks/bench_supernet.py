"""Supernet proxy: throughput and fidelity against per-trial proxy runs (issue 12 §3).

For N candidates of a space (default: 12 of search_spaces/tiny.yaml) this

1. trains (or loads from the cache) the space's supernet (``proxy.supernet_steps``; timed when
   trained now, ``--retrain`` forces it into a fresh cache folder),
2. scores every candidate by its sub-network of the supernet (``Supernet.score``) and by a
   per-trial proxy run (``distill``, ``proxy.steps`` steps), both with the same teacher,
   held-out batch and device,
3. times ``--rate-n`` more supernet scores of distinct candidates (first-seen: the sub-network
   is built for each, as in a search),

and prints candidates/s each way, candidates per CPU-hour (the supernet's including its
training, amortised over one hour), the ratio, and the Spearman / Kendall rank correlations
between the supernet score and the per-trial proxy score.

    python benchmarks/bench_supernet.py                         # the spec's proxy: section
    python benchmarks/bench_supernet.py --threads 1 --n 12 --supernet-steps 800 --out sn.json
    python benchmarks/bench_supernet.py --set teacher.train_steps=30 --set resolution=8 --n 4   # smoke

Targets (issue 12): >= 100x more candidates scored per CPU-hour than per-trial proxy runs;
Spearman >= 0.8 on 12 tiny candidates. Timings are only meaningful on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _bench_common import add_proxy_arguments, proxy_setup  # noqa: E402 (this folder)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_proxy_arguments(ap, "teacher/supernet")
    ap.add_argument("--rate-n", type=int, default=200, help="extra candidates timed for the supernet rate")
    ap.add_argument("--supernet-steps", type=int, default=None, help="supernet training steps (default: the spec's)")
    ap.add_argument("--retrain", action="store_true", help="train the supernet afresh (a temp cache) and time it")
    ap.add_argument("--out", default=None, help="write the figures as JSON")
    args = ap.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table
    from scipy.stats import kendalltau, spearmanr

    from archsearch.candidate import sample_many
    from archsearch.distill import TrialFailed, load_supernet, load_teacher
    from archsearch.distill import distill as run_proxy

    console = Console()
    space, proxy, device = proxy_setup(args)
    if args.supernet_steps:
        proxy = replace(proxy, supernet_steps=args.supernet_steps)
    console.print(f"space {space.name} ({args.space}); proxy K={proxy.steps} steps, supernet "
                  f"{proxy.supernet_training_steps} steps, batch {proxy.batch}, resolution {proxy.resolution}, "
                  f"width_mult {proxy.width_mult}; device {device}, {torch.get_num_threads()} threads")

    teacher = load_teacher(proxy, kind=space.kind, cache_dir=args.cache_dir, device=device)
    sn_cache = tempfile.mkdtemp(prefix="bench-supernet-") if args.retrain else args.cache_dir
    t0 = time.perf_counter()
    net = load_supernet(space, proxy, teacher, device=device, cache_dir=sn_cache)
    load_s = time.perf_counter() - t0
    train_s = float(net.info.get("train_s") or 0.0)
    console.print(f"supernet {net.key}: {net.plan.n_params:,} parameters, "
                  + (f"trained now in {load_s:.1f} s" if net.info.get("trained_now")
                     else f"loaded from the cache in {load_s:.1f} s (recorded training {train_s:.1f} s)"))

    cands = sample_many(space, args.n, seed=args.seed)
    rows = []
    for i, cand in enumerate(cands):
        try:
            s0 = time.perf_counter()
            sn = net.score(cand)
            sn_s = time.perf_counter() - s0
            per = run_proxy(cand, teacher, proxy, device=device)
        except TrialFailed as exc:
            console.print(f"[yellow]candidate {cand.id} failed: {exc.reason}")
            continue
        rows.append({"id": cand.id, "supernet": sn.quality, "per_trial": per.quality,
                     "supernet_s": sn_s, "per_trial_s": per.wall_time_s})
        console.print(f"[{i + 1}/{len(cands)}] {cand.id}: supernet {sn.quality:.5f} ({sn_s * 1e3:.0f} ms)  "
                      f"per-trial {per.quality:.5f} ({per.wall_time_s:.2f} s)")

    extra = [c for c in sample_many(space, args.rate_n + args.n, seed=args.seed + 1) if c.id not in {r["id"] for r in rows}]
    extra = extra[: args.rate_n]
    s0 = time.perf_counter()
    for c in extra:
        net.score(c)
    rate_s = time.perf_counter() - s0

    table = Table(title=f"Supernet vs per-trial proxy on {space.name}: {len(rows)} candidates")
    for col in ("candidate", "supernet score", "per-trial score", "supernet ms", "per-trial s"):
        table.add_column(col, justify="right")
    for r in sorted(rows, key=lambda r: r["per_trial"]):
        table.add_row(r["id"], f"{r['supernet']:.5f}", f"{r['per_trial']:.5f}", f"{r['supernet_s'] * 1e3:.1f}",
                      f"{r['per_trial_s']:.2f}")
    console.print(table)
    if not rows:
        console.print("[red]no candidate scored")
        return 1
    per_rate = len(rows) / sum(r["per_trial_s"] for r in rows)
    n_sn = len(extra) + len(rows)
    sn_rate = n_sn / (rate_s + sum(r["supernet_s"] for r in rows))
    hour = 3600.0
    per_hour = per_rate * hour
    sn_hour = max(0.0, hour - train_s) * sn_rate  # the supernet's training comes out of the hour
    console.print(f"per-trial proxy runs: {per_rate:.3f} candidates/s ({per_hour:,.0f} per CPU-hour)")
    console.print(f"supernet scores:      {sn_rate:.2f} candidates/s ({sn_hour:,.0f} per CPU-hour after "
                  f"{train_s:.0f} s of training; {n_sn} timed)")
    console.print(f"ratio: {sn_hour / per_hour:.1f}x per CPU-hour (scoring alone {sn_rate / per_rate:.1f}x)  "
                  "[target >= 100x]")
    out: dict = {"space": args.space, "device": str(device), "threads": torch.get_num_threads(),
                 "proxy_steps": proxy.steps, "supernet_steps": proxy.supernet_training_steps,
                 "supernet_train_s": train_s, "per_trial_per_s": per_rate, "supernet_per_s": sn_rate,
                 "per_trial_per_hour": per_hour, "supernet_per_hour": sn_hour, "rows": rows}
    if len(rows) >= 3:
        rho, p = spearmanr([r["supernet"] for r in rows], [r["per_trial"] for r in rows])
        tau, _ = kendalltau([r["supernet"] for r in rows], [r["per_trial"] for r in rows])
        console.print(f"Spearman rho = {rho:.3f} (p = {p:.2g}), Kendall tau = {tau:.3f}  [target rho >= 0.8]")
        out.update(spearman=rho, kendall=tau)
    else:
        console.print("[yellow]too few candidates for a rank correlation")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
