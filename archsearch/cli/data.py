"""``archsearch data``: prepare a data set for distillation (teacher latents + text states)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from archsearch.cli._common import console, flag_errors, user_errors

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


def _bars():  # noqa: ANN202
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.fields[phase]:<7}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
                    console=console, transient=False)


class _Bars:
    """``progress(phase, description, done, total)`` -> one rich task per phase; the bars start
    on the first report, so an error before any work prints only its own line."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "_Bars":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, phase: str, desc: str, done: int, total: int) -> None:
        if self.progress is None:
            self.progress = _bars()
            self.progress.start()
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(escape(desc), total=max(total, 1), phase=phase,
                                                       completed=done)
        self.progress.update(self.tasks[phase], completed=done, total=max(total, 1), description=escape(desc))


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
        shard lost or half-written, nothing encoded twice). Bad files are skipped and counted.

        Examples:
          archsearch data prepare photos/ --teacher ckpt/sd15 --out cache/photos --resolution 512
          archsearch data prepare 'shards/data-{00000..00099}.tar' --teacher ckpt/sdxl --out cache/wds --workers 8
          archsearch data prepare clips/ --teacher ckpt/t2v --out cache/clips --frames 16 --fps 8
          archsearch data prepare prompts.txt --teacher ckpt/sd15 --out cache/gen --steps 25 --guidance 7.5
        """
        with _Bars() as bars:
            res = _prepare(source, teacher, out, resolution=resolution, frames=frames, fps=fps, crop=crop,
                           buckets=buckets, workers=workers, batch=batch, shard_size=shard_size, holdout=holdout,
                           seed=seed, dtype=dtype, device=device, format=format, image_column=image_column,
                           caption_column=caption_column, split=split, steps=steps, guidance=guidance,
                           progress=bars)
        ix = res.index
        console.print(f"{res.n_samples} samples in {escape(str(res.out))} ({ix['n_holdout']} holdout), "
                      f"{res.n_skipped} skipped; encoded {res.encoded} this run in {res.wall_time_s:.1f} s "
                      f"({res.samples_per_s:.1f}/s); latents {ix['latent_shape']}, text "
                      f"{ix['context_length']}x{ix['context_dim']}, teacher {ix['teacher_hash']}")
        for reason, n in sorted(res.skipped_reasons.items(), key=lambda kv: -kv[1])[:5]:
            console.print(f"  skipped {n}: {escape(reason)}")
        for key, why in ix["skipped"]["first"][:5]:
            console.print(f"    e.g. {escape(key)}: {escape(why)}")
