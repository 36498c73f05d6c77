"""Few-step generation on the built-in teacher (prints figures; the README's "Fewer steps" table).

A built-in teacher is trained (cached), a tiny-space student is trained against it with
``train`` (KD), then step-distilled with each method (``step``, ``adversarial``, ``lcm``) to
``--steps-to`` steps through the same loop. Printed:

* quality vs steps: latent MSE against the teacher's 50-step samples (same prompts, same
  seeds, guidance ``--guidance``) at 1, 2, 4 and 8 steps, for the teacher itself, the
  undistilled student (its own DDIM sampler, guided: 2 UNet calls per step) and each distilled
  student (its own scheduler, one call per step). Step distillation follows the teacher's
  trajectory; adversarial and LCM draw as consistency models (fresh noise between steps), so
  beyond their first step their samples are not the same-seed teacher sample by design;
* the wall time per training step of each objective over plain KD training (ratio), same
  student, batch and device.

    python benchmarks/bench_fewstep.py [--teacher-steps 400 --train-steps 300 --distill-steps 200
                                        --steps-to 4 --threads 1 --device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default=str(ROOT / "search_spaces" / "tiny.yaml"))
    ap.add_argument("--seed", type=int, default=0, help="candidate sampling seed")
    ap.add_argument("--prediction", default="v_prediction", help="the built-in teacher's: v_prediction | epsilon")
    ap.add_argument("--teacher-steps", type=int, default=400, help="built-in teacher training steps")
    ap.add_argument("--train-steps", type=int, default=300, help="KD training steps of the student")
    ap.add_argument("--distill-steps", type=int, default=200, help="step-distillation training steps")
    ap.add_argument("--steps-to", type=int, default=4)
    ap.add_argument("--methods", default="step,adversarial,lcm")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--guidance-range", default="1,4", help="lo,hi of the sampled guidance (step, lcm)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=8, help="prompts (seeds 0..n-1) of the comparison")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-dir", default=None, help="teacher cache (default $ARCHSEARCH_CACHE_DIR)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cache_dir:
        os.environ["ARCHSEARCH_CACHE_DIR"] = args.cache_dir

    from archsearch.candidate import sample
    from archsearch.data import synthetic_dataset
    from archsearch.distill import (
        FewStepConfig,
        ProxyConfig,
        TrainConfig,
        draw_latents,
        load_teacher,
        sample_mse,
        step_distill,
        teacher_latents,
        train,
    )
    from archsearch.distill._fewstep import fewstep_max_steps
    from archsearch.spec import load_space

    proxy = ProxyConfig.from_dict({
        "resolution": args.resolution, "steps": args.train_steps, "batch": args.batch, "holdout": 16,
        "width_mult": 0.5, "lr": args.lr, "prediction": args.prediction,
        "teacher": {"train_steps": args.teacher_steps, "width": 32, "batch": 16}})
    dev = args.device
    t0 = time.perf_counter()
    teacher = load_teacher(proxy, "image", device=dev)
    print(f"teacher: built-in, {args.prediction}, {args.teacher_steps} steps ({time.perf_counter() - t0:.1f} s "
          "incl. cache)")
    cand = sample(load_space(args.space), args.seed)
    captions = synthetic_dataset("image", args.resolution, 4, size=64, seed=0, split="holdout").captions()
    prompts = list(dict.fromkeys(captions))[: args.prompts]
    seeds = list(range(len(prompts)))
    lo, hi = (float(v) for v in args.guidance_range.split(","))
    options = {"guidance": args.guidance, "guidance_range": [lo, hi], "teacher_steps": 8, "ddim_steps": 25,
               "loss": "l2"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        res = train(cand, teacher, None, TrainConfig(proxy=proxy, checkpoint_every=0, ema_decay=0, log_every=1000),
                    root / "trained", device=dev)
        kd_step = res.metrics["train_s"] / len(res.loss_curve)
        print(f"student {res.metrics['candidate_id']}: {res.params:,} parameters, {args.train_steps} KD steps, "
              f"{kd_step * 1e3:.1f} ms per step")
        # the same student trained on with plain KD for the distillation's step count: the time base
        base = train(cand, teacher, None, TrainConfig(proxy=ProxyConfig(**{**proxy.__dict__, "steps":
                                                                           args.distill_steps}),
                                                      checkpoint_every=0, ema_decay=0, log_every=1000,
                                                      init_from=str(root / "trained"), init_from_teacher=False),
                     root / "kd", device=dev)
        kd_per_step = base.metrics["train_s"] / len(base.loss_curve)
        shape = (4, args.resolution, args.resolution)
        ref = teacher_latents(teacher, shape, prompts, seeds, 50, args.guidance, dev)
        rows: dict[str, dict[int, float]] = {"teacher (own DDIM, 2 calls/step)": {},
                                             "student, not distilled (own DDIM, 2 calls/step)": {}}
        steps_list = [1, 2, 4, 8]
        for n in steps_list:
            rows["teacher (own DDIM, 2 calls/step)"][n] = sample_mse(
                teacher_latents(teacher, shape, prompts, seeds, n, args.guidance, dev), ref)
            rows["student, not distilled (own DDIM, 2 calls/step)"][n] = sample_mse(
                draw_latents(root / "trained", teacher, prompts, seeds, n, args.guidance, dev), ref)
        times: dict[str, float] = {}
        for method in args.methods.split(","):
            cfg = FewStepConfig(method=method, steps=args.steps_to, train_steps=args.distill_steps, lr=args.lr,
                                options=dict(options), train={"checkpoint_every": 0, "ema_decay": 0.0,
                                                               "log_every": 1000}, evaluate=False)
            out = root / method
            r = step_distill(root / "trained", out, cfg, teacher=teacher, device=dev)
            times[method] = r.metrics["train_s"] / len(r.loss_curve)
            rec = json.loads((out / "fewstep.json").read_text())
            g = args.guidance if rec.get("guidance_embedding") else None
            label = f"{method} -> {args.steps_to} ({rec['scheduler']['class']}, 1 call/step)"
            same = f"  {method}'s scheduler, student not distilled (2 calls/step)"
            rows[label], rows[same] = {}, {}
            most = fewstep_max_steps(rec) or max(steps_list)
            for n in steps_list:
                if n > most:  # an LCMScheduler over the distilled timesteps only (adversarial)
                    rows[label][n] = rows[same][n] = float("nan")
                    continue
                rows[label][n] = sample_mse(draw_latents(out, teacher, prompts, seeds, n, g, dev), ref)
                rows[same][n] = sample_mse(draw_latents(root / "trained", teacher, prompts, seeds, n, args.guidance,
                                                        dev, scheduler_of=out), ref)
    print(f"\nlatent MSE vs the teacher's 50-step samples ({len(prompts)} prompts, seeds 0..{len(prompts) - 1}, "
          f"guidance {args.guidance}; lower is closer)\n")
    print("| model | " + " | ".join(f"{n} step{'s' if n > 1 else ''}" for n in steps_list) + " |")
    print("|---|" + "---:|" * len(steps_list))
    for name, vals in rows.items():
        print(f"| {name} | " + " | ".join("-" if vals[n] != vals[n] else f"{vals[n]:.4f}" for n in steps_list) + " |")
    print(f"\nwall time per training step ({args.device}, batch {args.batch}; plain KD: {kd_per_step * 1e3:.1f} ms)\n")
    print("| objective | ms / step | vs plain KD |")
    print("|---|---:|---:|")
    print(f"| kd | {kd_per_step * 1e3:.1f} | 1.00 |")
    for method, s in times.items():
        print(f"| {method} | {s * 1e3:.1f} | {s / kd_per_step:.2f} |")


if __name__ == "__main__":
    main()
