"""``archsearch data``: prepare a data set for distillation (teacher latents + text states)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from archsearch.cli._common import console, flag_errors, progress_bars, user_errors

#: The library's parameter names -> this command's flags (errors are reworded with them).
FLAGS = {
    "teacher": "--teacher",
    "out": "--out",
    "resolution": "--resolution",
    "frames": "--frames",
    "fps": "--fps",
    "workers": "--workers",
    "batch": "--batch",
    "shard_size": "--shard-size",
    "holdout": "--holdout",
    "crop": "--crop",
    "buckets": "--buckets",
    "dtype": "--dtype",
    "device": "--device",
    "format": "--format",
    "image_column": "--image-column",
    "caption_column": "--caption-column",
    "split": "--split",
    "steps": "--steps",
    "guidance": "--guidance",
    "seed": "--seed",
    "source": "SOURCE",
}


@flag_errors(FLAGS)
def _prepare(*args: Any, **kw: Any) -> Any:
    from archsearch.data import prepare

    return prepare(*args, **kw)


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Prepare data for distillation: teacher VAE latents and text states, cached.",
                           no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("prepare")
    @user_errors
    def prepare_cmd(
        source: Annotated[str, typer.Argument(help="Image folder (metadata.jsonl/csv or .txt sidecars), WebDataset "
                                              "shards 'data-{00000..00099}.tar', a saved datasets folder, Parquet "
                                              "file(s), a folder of clips, or a prompts .txt file.")],
        teacher: Annotated[Path, typer.Option(help="Local diffusers checkpoint folder (vae/, text_encoder/, ...).")],
        out: Annotated[Path, typer.Option(help="Cache folder to write (rerun the same command to resume).")],
        resolution: Annotated[Optional[int], typer.Option(help="Crop side in pixels (default: the UNet's sample_size x VAE factor).")] = None,
        frames: Annotated[int, typer.Option(help="Frames per clip (video sources).")] = 1,
        fps: Annotated[Optional[float], typer.Option(help="Frame rate the clips are sampled at (default: every frame).")] = None,
        workers: Annotated[int, typer.Option(help="DataLoader worker processes decoding the files.")] = 2,
        batch: Annotated[int, typer.Option(help="Encoding batch size.")] = 16,
        shard_size: Annotated[int, typer.Option(help="Samples per cache shard.")] = 1024,
        crop: Annotated[str, typer.Option(help="center | random (seeded per sample; kept for SDXL conditioning).")] = "center",
        buckets: Annotated[bool, typer.Option(help="Aspect-ratio buckets of about resolution^2 pixels.")] = False,
        holdout: Annotated[float, typer.Option(help="Fraction of samples (by key hash) in the holdout split.")] = 0.01,
        dtype: Annotated[str, typer.Option(help="float16 | bfloat16 | float32 (stored tensors).")] = "float16",
        device: Annotated[str, typer.Option(help="cpu | cuda | mps | auto")] = "auto",
        format: Annotated[Optional[str], typer.Option(help="imagefolder | webdataset | datasets | parquet | video | prompts (default: detected).")] = None,  # noqa: A002
        image_column: Annotated[Optional[str], typer.Option(help="Image column (datasets, Parquet).")] = None,
        caption_column: Annotated[Optional[str], typer.Option(help="Caption column or key (default: text, caption, prompt, ...).")] = None,
        split: Annotated[Optional[str], typer.Option(help="Split of a saved DatasetDict (default: train).")] = None,
        steps: Annotated[int, typer.Option(help="Prompts: sampling steps of the teacher's scheduler.")] = 25,
        guidance: Annotated[float, typer.Option(help="Prompts: classifier-free guidance scale.")] = 7.5,
        seed: Annotated[int, typer.Option(help="Seed of random crops and of teacher-generated latents.")] = 0,
    ) -> None:
        """Encode SOURCE with the teacher's VAE and text encoders into a sharded cache in OUT.

        Resumable: after a crash or kill -9, the same command continues where it stopped (no
        shard lost or half-written, nothing encoded twice); it also checks every shard on disk
        against its checksum and encodes a damaged one again. Bad files, symlinks out of SOURCE
        and metadata rows naming no file in it are skipped and counted.

        Several GPUs or nodes: run it under torchrun or accelerate launch (OUT on a folder
        every node mounts); process r of N encodes the shards i with i % N == r.

        Examples:

          archsearch data prepare photos/ --teacher ckpt/sd15 --out cache/photos

          archsearch data prepare 'shards/{00000..00099}.tar' --teacher ckpt/sdxl \\
              --out cache/wds --workers 8

          archsearch data prepare clips/ --teacher ckpt/t2v --out cache/clips \\
              --frames 16 --fps 8

          archsearch data prepare prompts.txt --teacher ckpt/sd15 --out cache/gen \\
              --steps 25 --guidance 7.5

          torchrun --nproc-per-node 8 -m archsearch.cli.main data prepare photos/ \\
              --teacher ckpt/sd15 --out cache/photos
        """
        with progress_bars() as bars:
            res = _prepare(source, teacher, out, resolution=resolution, frames=frames, fps=fps, crop=crop,
                           buckets=buckets, workers=workers, batch=batch, shard_size=shard_size, holdout=holdout,
                           seed=seed, dtype=dtype, device=device, format=format, image_column=image_column,
                           caption_column=caption_column, split=split, steps=steps, guidance=guidance,
                           progress=bars)
        if res.rank != 0:  # one of several processes (torchrun / accelerate launch): the first one reports
            return
        ix = res.index
        if ix["n_holdout"]:
            held = f"{ix['n_holdout']} holdout"
        else:
            held = "0 holdout: quality will be scored on training samples; raise --holdout to keep some apart"
        if res.encoded:
            by = f" by {res.world} processes" if res.world > 1 else ""
            work = (f"encoded {res.encoded} this run{by} at {res.samples_per_s:.1f} samples/s "
                    f"({res.encode_time_s:.1f} s encoding, {res.wall_time_s:.1f} s in all)")
        else:
            work = "nothing left to encode"
        console.print(f"{res.n_samples} samples in {escape(str(res.out))} ({held}), {res.n_skipped} skipped; "
                      f"{work}; latents {ix['latent_shape']}, text {ix['context_length']}x{ix['context_dim']}, "
                      f"teacher {ix['teacher_hash']}", soft_wrap=True)
        if res.shards_bad:
            console.print(f"  encoded again {res.shards_bad} shard(s) that failed their check on disk")
        for reason, n in sorted(res.skipped_reasons.items(), key=lambda kv: -kv[1])[:5]:
            console.print(f"  skipped {n}: {escape(reason)}", soft_wrap=True)
        for key, why in ix["skipped"]["first"][:5]:
            console.print(f"    e.g. {escape(key)}: {escape(why)}", soft_wrap=True)
