"""The profile's whole-model timer against ``torch.utils.benchmark``, side by side on the same models.

    python benchmarks/bench_timer.py                          # 6 unet_mobile candidates at latent 16
    python benchmarks/bench_timer.py --n 12 --min-run-time 2

For each candidate (every block in the table, so the table's prediction is printed too):
``torch.utils.benchmark.Timer.blocked_autorange`` (median, ``torch.inference_mode``, the table's
thread count) twice -- the standard and the standard repeating itself -- and the profile's own
``time_module`` (what calibration, ``--validate`` and ``--recalibrate`` use) with the table's
settings (its flush and statistic) and with each of flush on/off x mean/median. Printed: the
ratio of each to the standard (median and range over the models), and the table's prediction
over the standard. Nothing is asserted; figures from a busy machine are not figures (the load
average is printed at the start and the end).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default="latency_tables/unet_mobile-cpu-r16.csv")
    ap.add_argument("--n", type=int, default=6, help="candidates")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timing")
    args = ap.parse_args()

    import numpy as np
    from bench_recalibrate import test_candidates, torch_time

    from archsearch.cost.latency import MeasureSettings, device_fingerprint, load_predictor, load_table, time_module
    from archsearch.export import model_inputs
    from archsearch.model import build_model
    from archsearch.spec import load_space

    table = load_table(ROOT / args.table)
    space = load_space(ROOT / str((table.meta.get("space") or {}).get("path", "search_spaces/unet_mobile.yaml")))
    threads = int(table.meta.get("threads") or 1)
    measure = {k: v for k, v in (table.meta.get("measure") or {}).items() if k in MeasureSettings.__dataclass_fields__}
    own = MeasureSettings(**{**measure, "min_run_time": args.min_run_time})
    variants = {
        "table's settings": own,
        "flush, median": MeasureSettings(**{**measure, "statistic": "median", "min_run_time": args.min_run_time}),
        "no flush, median": MeasureSettings(**{**measure, "statistic": "median", "flush_bytes": 0,
                                               "min_run_time": args.min_run_time}),
        "no flush, mean": MeasureSettings(**{**measure, "statistic": "mean", "flush_bytes": 0,
                                             "min_run_time": args.min_run_time}),
    }
    print(f"machine: {device_fingerprint('cpu', threads).get('cpu')}, {threads} thread(s); "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"table: {args.table} (measure: statistic {measure.get('statistic')}, flush {measure.get('flush_bytes')} B)")
    cands = test_candidates(space, table, args.n, args.seed, set())
    pred = load_predictor(ROOT / args.table)
    rows = []
    for c in cands:
        model = build_model(c).eval()
        inputs = model_inputs(c, 1)

        std = torch_time(model, inputs, threads, args.min_run_time)
        ours = {name: time_module(model, inputs, threads, st).ms for name, st in variants.items()}
        again = torch_time(model, inputs, threads, args.min_run_time)
        predicted = float(pred.predict([c])[0])
        rows.append((std, again, predicted, ours))
        print(f"  {c.id}: torch {std:.1f} ms (again {again:.1f}), table {predicted:.1f}, "
              + ", ".join(f"{k} {v:.1f}" for k, v in ours.items()), flush=True)

    def summary(ratios) -> str:
        r = np.asarray(ratios)
        return f"{np.median(r):.3f} ({r.min():.3f}-{r.max():.3f})"

    print("\nratio to torch.utils.benchmark's median (median over the models, range):")
    print(f"  torch.utils.benchmark again        {summary([a / s for s, a, _, _ in rows])}")
    for name in variants:
        print(f"  time_module, {name:<22} {summary([o[name] / s for s, _, _, o in rows])}")
    print(f"  the table's prediction             {summary([p / s for s, _, p, _ in rows])}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
