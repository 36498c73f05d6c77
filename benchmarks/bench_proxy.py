"""Proxy fidelity: do short proxy runs rank candidates like 10x longer runs?

For N candidates of a space (default: 12 of search_spaces/tiny.yaml) this runs the proxy
distillation for K steps and for 10*K steps (same seed, same teacher; the short run is the
first K steps of the long one, so only the training length differs), then prints the Spearman
and Kendall rank correlations between the two quality scores, and the proxy-run throughput.

    python benchmarks/bench_proxy.py                      # defaults of the spec's proxy: section
    python benchmarks/bench_proxy.py --steps 40 --factor 10 --n 12 --threads 2 --out fidelity.json
    python benchmarks/bench_proxy.py --set teacher.width=32 --set resolution=8

Target (issue 4): Spearman >= 0.8. The first run trains the built-in teacher (cached after).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _bench_common import add_proxy_arguments, proxy_setup  # noqa: E402 (this folder)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_proxy_arguments(ap, "teacher/text")
    ap.add_argument("--steps", type=int, default=None, help="short run K (default: proxy.steps of the spec)")
    ap.add_argument("--factor", type=int, default=10, help="long run = factor * K (default 10)")
    ap.add_argument("--out", default=None, help="write the per-candidate figures as JSON")
    args = ap.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table
    from scipy.stats import kendalltau, spearmanr

    from archsearch.candidate import sample_many
    from archsearch.distill import TrialFailed, load_teacher
    from archsearch.distill import distill as run_proxy

    console = Console()
    space, proxy, device = proxy_setup(args)
    if args.steps:
        proxy = replace(proxy, steps=args.steps)
    long = replace(proxy, steps=proxy.steps * args.factor)
    console.print(f"space {space.name} ({args.space}); proxy K={proxy.steps}, long={long.steps} steps, "
                  f"batch {proxy.batch}, resolution {proxy.resolution}, width_mult {proxy.width_mult}; "
                  f"device {device}, {torch.get_num_threads()} threads")

    t0 = time.perf_counter()
    teacher = load_teacher(proxy, kind=space.kind, cache_dir=args.cache_dir, device=device)
    console.print(f"teacher {teacher.fingerprint} ({teacher.source}) ready in {time.perf_counter() - t0:.1f} s"
                  + (f"; trained in {teacher.info['train_s']:.0f} s" if teacher.info.get("train_s") else ""))

    cands = sample_many(space, args.n, seed=args.seed)
    rows = []
    for i, cand in enumerate(cands):
        try:
            short = run_proxy(cand, teacher, proxy, device=device)
            full = run_proxy(cand, teacher, long, device=device)
        except TrialFailed as exc:
            console.print(f"[yellow]candidate {cand.id} failed: {exc.reason}")
            continue
        rows.append({
            "id": cand.id, "params": short.params, "short": short.quality, "long": full.quality,
            "short_s": short.wall_time_s, "long_s": full.wall_time_s,
            "steps_per_s": full.metrics["steps_per_s"],
        })
        console.print(f"[{i + 1}/{len(cands)}] {cand.id}: K={short.quality:.5f}  10K={full.quality:.5f}  "
                      f"({short.wall_time_s:.1f} s + {full.wall_time_s:.1f} s)")

    table = Table(title=f"Proxy fidelity on {space.name}: {len(rows)} candidates")
    for col in ("candidate", "proxy params", f"quality @{proxy.steps}", f"quality @{long.steps}", "steps/s"):
        table.add_column(col, justify="right")
    for r in sorted(rows, key=lambda r: r["long"]):
        table.add_row(r["id"], f"{r['params']:,}", f"{r['short']:.5f}", f"{r['long']:.5f}", f"{r['steps_per_s']:.1f}")
    console.print(table)
    if len(rows) < 3:
        console.print("[red]too few candidates for a rank correlation")
        return 1
    rho, p = spearmanr([r["short"] for r in rows], [r["long"] for r in rows])
    tau, _ = kendalltau([r["short"] for r in rows], [r["long"] for r in rows])
    sps = sum(r["steps_per_s"] for r in rows) / len(rows)
    mean_short = sum(r["short_s"] for r in rows) / len(rows)
    console.print(f"Spearman rho = {rho:.3f} (p = {p:.2g}), Kendall tau = {tau:.3f}  [target rho >= 0.8]")
    console.print(f"proxy run of K={proxy.steps} steps: {mean_short:.1f} s on average; "
                  f"{sps:.1f} training steps/s (batch {proxy.batch}, teacher forward included) on {device}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "space": args.space, "k": proxy.steps, "long": long.steps, "device": str(device),
            "threads": torch.get_num_threads(), "spearman": rho, "kendall": tau, "rows": rows,
        }, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
