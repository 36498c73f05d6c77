"""Prepare throughput: images/s of `archsearch data prepare` against the VAE's forward time alone.

Builds a checkpoint with a full-size SD VAE configuration (AutoencoderKL, block_out_channels
128/256/512/512, 2 layers per block; random weights) and a tiny CLIP text encoder, writes N
generated PNG pictures (larger than the crop, so resizing is part of the work) with sidecar
captions, then

1. runs the whole prepare pass (listing, decoding in DataLoader workers, resize + crop, VAE and
   text encoding, safetensors shards, index) and times it;
2. times the VAE's ``encode`` alone on the same batches of the same crops, and the text encoder
   alone on the same captions;

and prints images/s and the overhead: prepare time - VAE time - text time, as a fraction of the
VAE time. Target (issue 9): decode + I/O + writing overhead <= 20% of the VAE's time.

It also times the shard checksums (issue 24): checking every shard of the cache once (what a
run reading the cache does once per shard per process, and a resumed prepare for the shards on
disk) as MB/s and as a fraction of the prepare time. With ``--processes N`` it runs the same
pass again under ``torchrun --nproc-per-node N`` (``archsearch data prepare``, shard i to
process i mod N; one GPU each with ``--device cuda``), prints its time and speed-up, and checks
that its shards are byte for byte those of the one-process pass.

    python benchmarks/bench_prepare.py                          # 256 px, 64 pictures, full-size VAE
    python benchmarks/bench_prepare.py --tiny                   # a seconds-long check that it runs
    python benchmarks/bench_prepare.py --n 256 --batch 16 --workers 2 --threads 2 --device cuda
    python benchmarks/bench_prepare.py --n 1024 --device cuda --processes 8   # 8 GPUs

Run it on a quiet machine: the VAE dominates and shares the cores with the decoding workers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def build_checkpoint(root: Path, tiny: bool) -> Path:
    """vae/ (full-size SD config unless ``tiny``), text_encoder/ + tokenizer/ (tiny CLIP)."""
    import diffusers_fixtures as F
    import torch
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    if tiny:
        vae = F._vae()
    else:  # Stable Diffusion 1.x/2.x's VAE configuration (83.7M parameters)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
            block_out_channels=(128, 256, 512, 512), sample_size=512, scaling_factor=0.18215,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )
    vae.save_pretrained(str(root / "vae"))
    F.write_clip_tokenizer(root / "tokenizer")
    tok = AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    F._clip(vocab=len(tok)).save_pretrained(str(root / "text_encoder"))
    return root


def write_pictures(folder: Path, n: int, side: int) -> None:
    import diffusers_fixtures as F

    folder.mkdir(parents=True)
    for i in range(n):
        F.make_picture(i, (side + side // 4, side + side // 2)).save(folder / f"p{i:05d}.png")
        (folder / f"p{i:05d}.txt").write_text(F.CAPTIONS[i % len(F.CAPTIONS)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny VAE at 64 px, 16 pictures: checks the script runs")
    ap.add_argument("--resolution", type=int, default=None, help="crop side in px (default 256; 64 with --tiny)")
    ap.add_argument("--n", type=int, default=None, help="pictures (default 64; 16 with --tiny)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--processes", type=int, default=1, help="also run the pass under torchrun with N processes")
    ap.add_argument("--out", default=None, help="write the figures as JSON")
    args = ap.parse_args(argv)
    res = args.resolution or (64 if args.tiny else 256)
    n = args.n or (16 if args.tiny else 64)

    import torch

    from archsearch.data import DecodeDataset, LatentCache, TeacherEncoders, open_source, prepare

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        tmp = Path(tmp)
        ckpt = build_checkpoint(tmp / "ckpt", args.tiny)
        write_pictures(tmp / "pics", n, res)

        shard_size = max(args.batch, 256) if args.processes == 1 else max(args.batch, n // (2 * args.processes))
        t0 = time.perf_counter()
        result = prepare(tmp / "pics", ckpt, tmp / "cache", resolution=res, workers=args.workers, batch=args.batch,
                         shard_size=shard_size, holdout=0.0, device=args.device)
        t_prepare = time.perf_counter() - t0

        # the checksums: every shard read and hashed once, as a reader does
        shards = [(tmp / "cache" / s["file"], s) for s in result.index["shards"]]
        t0 = time.perf_counter()
        LatentCache.open(tmp / "cache").verify()
        t_verify = time.perf_counter() - t0
        cache_mb = sum(s["bytes"] for _p, s in shards) / 2**20

        t_multi = None
        if args.processes > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                   str(args.processes), "-m", "archsearch.cli.main", "data", "prepare", str(tmp / "pics"),
                   "--teacher", str(ckpt), "--out", str(tmp / "multi"), "--resolution", str(res), "--workers",
                   str(args.workers), "--batch", str(args.batch), "--shard-size", str(shard_size), "--holdout", "0",
                   "--device", args.device]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            if args.threads:
                env["OMP_NUM_THREADS"] = str(args.threads)
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            t_multi = time.perf_counter() - t0
            same = all((tmp / "multi" / s["file"]).read_bytes() == p.read_bytes() for p, s in shards)

        # the same batches of the same crops through the VAE alone, and the captions through CLIP
        src = open_source(tmp / "pics")
        items = src.items()
        ds = DecodeDataset(src, items, res, "center", None, 0)
        decoded = [ds[i] for i in range(len(items))]
        enc = TeacherEncoders(ckpt, args.device)
        vae = enc.vae
        batches = [decoded[i : i + args.batch] for i in range(0, len(decoded), args.batch)]
        sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else (lambda: None)
        with torch.no_grad():
            vae.encode(torch.stack([x["pixels"] for x in batches[0]]).to(enc.device))  # warm-up
            sync()
            t0 = time.perf_counter()
            for b in batches:
                enc.encode_images(torch.stack([x["pixels"] for x in b]))
            sync()
            t_vae = time.perf_counter() - t0
            t0 = time.perf_counter()
            for b in batches:
                enc.encode_text([x["caption"] for x in b])
            t_text = time.perf_counter() - t0

    overhead = t_prepare - t_vae - t_text
    figures = {
        "pictures": n, "resolution": res, "batch": args.batch, "workers": args.workers,
        "threads": torch.get_num_threads(), "device": args.device, "vae": "tiny" if args.tiny else "sd-full",
        "prepare_s": round(t_prepare, 3), "vae_s": round(t_vae, 3), "text_s": round(t_text, 3),
        "prepare_images_per_s": round(n / t_prepare, 2), "vae_images_per_s": round(n / t_vae, 2),
        "overhead_s": round(overhead, 3), "overhead_vs_vae": round(overhead / t_vae, 3),
        "samples": result.n_samples, "skipped": result.n_skipped,
        "cache_mb": round(cache_mb, 2), "verify_s": round(t_verify, 4),
        "verify_mb_per_s": round(cache_mb / max(t_verify, 1e-9), 1), "verify_vs_prepare": round(t_verify / t_prepare, 4),
    }
    if t_multi is not None:
        figures.update(processes=args.processes, multi_s=round(t_multi, 3), speedup=round(t_prepare / t_multi, 2),
                       multi_bytes_equal=same)
    print(f"prepare: {n} pictures at {res} px in {t_prepare:.2f} s = {n / t_prepare:.2f} images/s "
          f"(batch {args.batch}, {args.workers} workers, {torch.get_num_threads()} threads, {args.device})")
    print(f"VAE encode alone on the same batches: {t_vae:.2f} s = {n / t_vae:.2f} images/s; "
          f"text encoder alone: {t_text:.2f} s")
    print(f"overhead (decode + resize + I/O + writing + start-up): {overhead:.2f} s = "
          f"{100 * overhead / t_vae:.1f}% of the VAE's time (target <= 20%)")
    print(f"checksums: every shard of the {cache_mb:.1f} MB cache checked in {t_verify:.3f} s "
          f"({cache_mb / max(t_verify, 1e-9):.0f} MB/s) = {100 * t_verify / t_prepare:.2f}% of the prepare time")
    if t_multi is not None:
        print(f"{args.processes} processes (torchrun, incl. start-up): {t_multi:.2f} s = {t_prepare / t_multi:.2f}x "
              f"the one-process pass; shards byte for byte equal: {same}")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
