"""Eval throughput: images/s of `archsearch eval` (drawing + writing the samples + the metrics)
against the pipeline's drawing alone.

Builds (unless --model is given) the tiny SD checkpoint of the tests as the pipeline's body and a
random-weight archsearch student UNet in it (the built-in teacher's architecture at --width,
latent --resolution), a prompt file of --n captions and a folder of reference pictures; then

1. draws the same prompts with the pipeline alone (same batches, seeds, steps, guidance; PIL
   pictures kept in memory, nothing written): the generation time;
2. runs ``evaluate`` on them: the samples written one batch at a time (PNG + latents, atomic),
   then FID against the reference folder with the FID Inception's architecture (random weights
   unless --inception gives the real file; the compute is the same) and, with --clip, the CLIP
   score;

and prints images/s of each and the overhead of eval over the generation alone, split into
writing (drawing + writing - drawing alone) and metrics. Target (issue 21): overhead <= 10 %
at the scale eval is run at (a full-size UNet at 25 steps); the tiny default here is a check that
it runs and where the time goes, not that figure.

    python benchmarks/bench_eval.py                                  # tiny student, 16 prompts, 25 steps
    python benchmarks/bench_eval.py --width 64 --resolution 32 --n 32 --batch 8 --threads 2
    python benchmarks/bench_eval.py --model trained/1a2b3c4d5e6f --inception weights-inception-2015-12-05-6726825d.pth \\
        --device cuda --n 256 --batch 16

Run it on a quiet machine; do not compare figures taken on different machines.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def build_student(root: Path, width: int, resolution: int) -> tuple[Path, Path]:
    """The tests' tiny SD checkpoint, and a random-weight archsearch student pipeline in it."""
    import diffusers_fixtures as F

    from archsearch.data import seeded
    from archsearch.distill import builtin_teacher_candidate, export_pipeline
    from archsearch.model import build_model

    sd = F.build_sd_checkpoint(root / "sd")
    cand = builtin_teacher_candidate("image", width=width, resolution=resolution, latent_channels=4, context_dim=32,
                                     context_length=16)
    with seeded(0):
        model = build_model(cand)
    return export_pipeline(model, sd, root / "student"), sd


def random_inception(path: Path):
    """The FID Inception's architecture with random weights (same compute as the real one)."""
    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    real_url, real_load = fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict
    fe.load_state_dict_from_url = lambda *a, **k: None  # nothing is downloaded: the weights stay random
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None
    try:
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict = real_url, real_load
    torch.save(net.state_dict(), path)
    return path


def draw_alone(model: Path, prompts: list[str], batch: int, steps: int, guidance: float, device: str) -> float:
    """Seconds the pipeline takes to draw every prompt (seed 0) in batches, nothing written."""
    import torch

    from archsearch.distill import load_pipeline

    pipe = load_pipeline(model, device)
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    pipe(prompts[:1], num_inference_steps=2, height=size, width=size)  # warm-up
    t = time.perf_counter()
    for i in range(0, len(prompts), batch):
        part = prompts[i:i + batch]
        pipe(part, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
             generator=[torch.Generator("cpu").manual_seed(0) for _ in part])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="a pipeline folder (default: a tiny random student)")
    ap.add_argument("--width", type=int, default=32, help="student width W (default 32)")
    ap.add_argument("--resolution", type=int, default=16, help="student latent side (default 16: 32 px pictures)")
    ap.add_argument("--n", type=int, default=16, help="prompts (default 16)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--inception", type=Path, default=None, help="the real FID Inception weights (default: random)")
    ap.add_argument("--clip", type=Path, default=None, help="a local CLIP folder (default: no CLIP score)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each; the median is printed (default 2)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    import diffusers_fixtures as F
    import torch

    from archsearch.evaluate import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    model = args.model or build_student(tmp, args.width, args.resolution)[0]
    prompts = [F.CAPTIONS[i % len(F.CAPTIONS)] + ("" if i < len(F.CAPTIONS) else f" {i}") for i in range(args.n)]
    pfile = tmp / "prompts.txt"
    pfile.write_text("\n".join(prompts) + "\n")
    ref = F.build_pictures(tmp / "reference", n=max(args.n, 2), size=(64, 64))
    inception = args.inception or random_inception(tmp / "inception-random.pth")
    print(f"model {model}; {args.n} prompts, batch {args.batch}, {args.steps} steps, guidance {args.guidance:g}; "
          f"device {args.device}, {torch.get_num_threads()} threads; FID Inception "
          f"{'(real weights)' if args.inception else '(random weights)'}; CLIP {args.clip or 'off'}")

    alone, drawn, metrics = [], [], []
    for r in range(args.repeat):
        alone.append(draw_alone(model, prompts, args.batch, args.steps, args.guidance, args.device))
        res = evaluate(model, pfile, tmp / f"eval-{r}", steps=args.steps, guidance=args.guidance, seeds="0",
                       reference=ref, inception=inception, clip=args.clip, batch=args.batch, device=args.device)
        drawn.append(res.metrics["timing"]["student_s"])
        metrics.append(res.metrics["timing"]["metrics_s"])
    a, d, m = (statistics.median(x) for x in (alone, drawn, metrics))
    n = args.n
    figures = {
        "images": n, "generation_alone_s": a, "eval_draw_and_write_s": d, "eval_metrics_s": m,
        "generation_alone_images_per_s": n / a, "eval_images_per_s": n / (d + m),
        "overhead": (d + m - a) / a, "writing_overhead": (d - a) / a, "metrics_overhead": m / a,
        "reference_images": len(list(ref.glob("*.png"))),
    }
    print(f"generation alone      {a:8.2f} s  {n / a:8.2f} images/s")
    print(f"eval (draw + write)   {d:8.2f} s  (+{100 * (d - a) / a:.1f} % writing the samples)")
    print(f"eval metrics          {m:8.2f} s  (+{100 * m / a:.1f} %: FID features of {n} samples and "
          f"{figures['reference_images']} reference pictures{', CLIP' if args.clip else ''})")
    print(f"eval total            {d + m:8.2f} s  {n / (d + m):8.2f} images/s; overhead {100 * (d + m - a) / a:.1f} % "
          "of the generation alone (target <= 10 % at full scale)")
    print(f"metrics per picture   {1000 * m / (n + figures['reference_images']):8.1f} ms (samples and reference "
          "pictures; independent of the model: project the overhead of a larger model from it)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
