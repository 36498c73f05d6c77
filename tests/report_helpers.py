"""The study-folder builder shared by test_report.py and test_report_browser.py.

It writes the store's file format (trials.csv with the store's ``pareto`` column, meta.json,
pareto/*.yaml, latency_breakdown.csv, validation.csv) from a synthetic but self-consistent
study, so the report tests do not depend on the search or store stages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

XSS = "<script>alert(1)</script>"
XSS_ID = "<img src=x onerror=alert(2)>"  # no '/': it is also a file name
STAGES = ("down0", "down1", "down2", "mid", "up0", "up1", "up2")
BLOCK_TYPES = ("conv_in", "resnet", "transformer", "downsample", "upsample", "conv_out")
OBJECTIVES = [
    {"name": "quality", "direction": "minimize"},
    {"name": "latency_ms", "direction": "minimize"},
    {"name": "params", "direction": "minimize"},
]


def _naive_front(values: np.ndarray) -> np.ndarray:
    """Brute-force non-dominated mask (all objectives minimised): the test's own oracle."""
    n = len(values)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        for j in range(n):
            if i != j and all(values[j] <= values[i]) and any(values[j] < values[i]):
                mask[i] = False
                break
    return mask


def make_study(
    root: Path,
    name: str = "unet_mobile",
    *,
    n: int = 60,
    seed: int = 0,
    sampler: str = "nsga2",
    budget_ms: float | None = 14.0,
    xss_id: bool = False,
    breakdown: bool = True,
    validation: bool = True,
) -> Path:
    """Write a synthetic but self-consistent study folder and return it.

    Wider / deeper candidates cost more latency and params and reach a lower distillation
    loss, so there is a real trade-off. Trial 3 fails, trial ``n-1`` is still running, and
    candidates over the latency budget are recorded as infeasible.
    """
    rng = np.random.default_rng(seed)
    folder = root / name
    (folder / "pareto").mkdir(parents=True)
    rows = []
    for k in range(n):
        arch: dict[str, object] = {"arch.kind": "image", "arch.resolution": 64}
        cand_stages = []
        width_sum = depth_sum = 0.0
        for s, stage in enumerate(STAGES):
            ch = int(rng.choice([64, 128, 192, 256]))
            blocks = int(rng.choice([1, 2]))
            depth = int(rng.choice([0, 1, 2])) if stage not in ("down0", "up2") else 0
            attn = str(rng.choice(["none", "self", "self+cross"])) if depth else "none"
            arch[f"arch.{stage}.channels"] = ch
            arch[f"arch.{stage}.resnet_blocks"] = blocks
            arch[f"arch.{stage}.transformer_depth"] = depth
            arch[f"arch.{stage}.attention"] = attn
            arch[f"arch.{stage}.heads"] = int(rng.choice([4, 8])) if depth else None  # empty cell
            arch[f"arch.{stage}.norm_groups"] = 32  # constant: dropped from parcoords
            cand_stages.append(
                {"name": stage, "channels": ch, "resnet_blocks": blocks,
                 "transformer_depth": depth, "attention": attn}
            )  # fmt: skip
            width_sum += ch * blocks * (4 - abs(3 - s)) / 4
            depth_sum += depth * ch
        params = int(2e4 * width_sum + 3e4 * depth_sum + rng.integers(0, 10_000))
        latency = 0.004 * width_sum + 0.006 * depth_sum + rng.normal(0, 0.2)
        quality = 1.0 / (1.0 + 0.002 * width_sum + 0.003 * depth_sum) + rng.normal(0, 0.005)
        if k % 15 == 7:  # a slow block choice: over any budget below ~16 ms
            latency += 8.0
        cid = f"{k:04d}{rng.integers(0, 16**8):08x}"
        if xss_id and k == 0:
            cid = XSS_ID
            arch["arch.down1.attention"] = XSS
        state, feasible, reason = "complete", True, ""
        if budget_ms is not None and latency > budget_ms:  # not trained: no quality (as the store)
            state, feasible, reason = "infeasible", False, f"latency {latency:.2f} ms > {budget_ms} ms"
            quality = float("nan")
        if k == 3:
            state, feasible, reason = "failed", False, "RuntimeError: out of memory <b>"
            quality = latency = float("nan")
        if k == n - 1:
            state, feasible, reason = "running", False, ""
            quality = latency = float("nan")
        cand = {"kind": "image", "latent_channels": 4, "resolution": 64, "stages": cand_stages}
        rows.append(
            {
                "number": k,
                "state": state,
                "candidate_id": cid,
                "quality": quality,
                "latency_ms": latency,
                "params": params,
                "flops": params * 180,
                "latency_source": "estimate" if k % 4 else "measured",
                "feasible": feasible,
                "fail_reason": reason,
                "wall_time_s": float(rng.uniform(5, 30)),
                "datetime_start": f"2025-01-01T00:{k // 60:02d}:{k % 60:02d}",
                "datetime_complete": f"2025-01-01T00:{k // 60:02d}:{k % 60:02d}",
                "loss_curve": json.dumps([quality * 2, quality * 1.3, quality]),
                "candidate": json.dumps(cand),
                "duplicate_of": None,
                "pareto": False,
                **arch,
            }
        )
    df = pd.DataFrame(rows)
    ok = (df["state"] == "complete").to_numpy()
    vals = df.loc[ok, ["quality", "latency_ms", "params"]].to_numpy(float)
    front_ids = df.loc[ok, "candidate_id"][_naive_front(vals)].tolist()
    df.loc[ok, "pareto"] = _naive_front(vals)  # the store's column, as archsearch.store writes it
    df.to_csv(folder / "trials.csv", index=False)
    for cid in front_ids:
        cand = json.loads(df.loc[df["candidate_id"] == cid, "candidate"].iloc[0])
        (folder / "pareto" / f"{cid}.yaml").write_text(
            f"# candidate {cid}\n" + yaml.safe_dump(cand, sort_keys=False), encoding="utf-8"
        )
    meta = {
        "study": name,
        "spec": "spaces/unet_mobile.yaml",
        "objectives": OBJECTIVES,
        "reference_point": None,
        "constraints": {"max_latency_ms": budget_ms, "max_params": None},
        "target": "ane",
        "latency_table": "tables/ane.csv",
        "sampler": sampler,
        "seed": seed,
        "n_trials": n,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if breakdown:
        bd = []
        for cid in front_ids:
            total = float(df.loc[df["candidate_id"] == cid, "latency_ms"].iloc[0])
            for stage in ("stem",) + STAGES + ("head",):
                for bt in BLOCK_TYPES:
                    bd.append({"candidate_id": cid, "stage": stage, "block_type": bt,
                               "ms": total / (len(STAGES) + 2) / len(BLOCK_TYPES)})  # fmt: skip
        pd.DataFrame(bd).to_csv(folder / "latency_breakdown.csv", index=False)
    if validation:
        sub = df[ok].head(12)
        pd.DataFrame(
            {
                "candidate_id": sub["candidate_id"],
                "measured_ms": sub["latency_ms"] * rng.uniform(0.9, 1.1, len(sub)),
                "predicted_ms": sub["latency_ms"],
                "flops_fit_ms": sub["flops"] / sub["flops"].mean() * sub["latency_ms"].mean(),
            }
        ).to_csv(folder / "validation.csv", index=False)
    return folder


def front_ids_of(folder: Path) -> set[str]:
    return {p.stem for p in (folder / "pareto").glob("*.yaml")}
