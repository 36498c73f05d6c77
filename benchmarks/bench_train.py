"""Training throughput of `archsearch train` against a plain hand-written loop (prints figures).

Both train the same student against the same diffusers teacher on the same cached latents
(a tiny SD-style checkpoint and data set built here, nothing downloaded), with the same
objective (task + output KD + feature KD), AdamW and gradient clipping; `train` also runs its
accelerate wrapper, EMA, logging and progress. Target: samples/s ratio >= 0.95.

    python benchmarks/bench_train.py [--steps 60 --batch 4 --width 1.0 --threads 1 --device cpu]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_loop(cand, teacher, cache, proxy, device, steps):
    """What one would write by hand: no accelerate, no callbacks."""
    from archsearch.data import CacheFeed, StepBatches
    from archsearch.distill._losses import distill_loss, make_projections, pair_taps
    from archsearch.model import build_model

    small = cand.for_proxy(width_mult=proxy.width_mult, resolution=16, context_dim=teacher.context_dim,
                           context_length=teacher.context_length, latent_channels=teacher.latent_channels)
    torch.manual_seed(0)
    student = build_model(small).to(device)
    feed = CacheFeed(cache, pooled=bool(getattr(teacher.module, "pooled_dim", 0)))
    batches = StepBatches(feed, teacher.process, proxy.batch, proxy.seed, device, teacher=teacher)
    b = batches(0)
    with torch.no_grad():
        _, sf = student.forward_features(b.xt[:1], b.t[:1], b.ctx[:1])
    pairs = pair_taps({k: tuple(v.shape) for k, v in sf.items()}, {k: tuple(v.shape) for k, v in b.teacher_feats.items()})
    proj = make_projections(pairs, sf, b.teacher_feats).to(device)
    params = list(student.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=proxy.lr, weight_decay=proxy.weight_decay)
    student.train()
    t0 = time.perf_counter()
    for step in range(steps):
        b = batches(step)
        pred, feats = student.forward_features(b.xt, b.t, b.ctx)
        loss, _ = distill_loss(pred, b.target, b.teacher_pred, feats, b.teacher_feats, pairs, proj, 1.0, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * proxy.batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import diffusers_fixtures as F

    from archsearch.candidate import sample
    from archsearch.data import LatentCache
    from archsearch.distill import ProxyConfig, TrainConfig, load_teacher, train
    from archsearch.spec import load_space

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = F.build_sd_checkpoint(tmp / "sd")
        cache_dir = F.build_cache(ckpt, F.build_pictures(tmp / "pics", n=32), tmp / "cache", holdout=0.1)
        proxy = ProxyConfig.from_dict({"width_mult": args.width, "resolution": 16, "steps": args.steps,
                                       "batch": args.batch, "holdout": 4, "teacher": {"diffusers": str(ckpt)}})
        teacher = load_teacher(proxy, "image", device=device)
        cand = sample(load_space(ROOT / "search_spaces" / "tiny.yaml"), 0)
        cache = LatentCache.open(cache_dir)
        plain_loop(cand, teacher, cache, proxy, device, 5)  # warm-up
        plain = plain_loop(cand, teacher, cache, proxy, device, args.steps)
        cfg = TrainConfig(proxy=proxy, resolution=16, checkpoint_every=0, log_every=args.steps, eval_every=0,
                          sample_every=0, init_from_teacher=False, schedule="constant", warmup=0)
        res = train(cand, teacher, cache_dir, cfg, tmp / "out", device=device)
        ours = res.steps * args.batch / res.metrics["train_s"]
        print(f"plain loop        {plain:8.1f} samples/s")
        print(f"archsearch train  {ours:8.1f} samples/s  (EMA, logging, accelerate; final checkpoint excluded)")
        print(f"ratio             {ours / plain:8.3f}  (target >= 0.95)")
        print(f"peak memory       {peak_mb(device):8.1f} MB ({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})")


if __name__ == "__main__":
    main()
