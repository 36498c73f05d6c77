"""``archsearch train``: the full distillation of a chosen backbone (resumable, many GPUs), ending
in a model and, with a diffusers teacher, a pipeline that draws."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from archsearch.cli._common import console, flag_errors, progress_bars, user_errors
from archsearch.errors import ArchsearchError

#: The library's parameter names -> this command's flags (errors are reworded with them).
FLAGS = {
    "proxy.steps": "--steps",
    "proxy.width_mult": "--width-mult",
    "proxy.resolution": "--resolution",
    "resolution": "--resolution",
    "proxy.batch": "--batch",
    "proxy.seed": "--seed",
    "proxy.lr": "--lr",
    "device": "--device",
    "data": "--data",
    "resume": "--resume",
    "mixed_precision": "--mixed-precision",
    "teacher_dtype": "--teacher-dtype",
    "grad_accum": "--grad-accum",
    "ema_decay": "--ema-decay",
    "optimizer": "--optimizer",
    "warmup": "--warmup",
    "schedule": "--schedule",
    "keep": "--keep",
    "checkpoint_every": "--checkpoint-every",
    "sample_every": "--sample-every",
    "eval_every": "--eval-every",
    "nan": "--nan",
    "distributed": "--distributed",
    "spatial_from": "--spatial-from",
    "log_every": "--log-every",
    "out": "--out",
    "overwrite": "--overwrite",
}


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    @flag_errors(FLAGS)
    def train(
        candidate: Annotated[Path, typer.Argument(help="Candidate YAML, e.g. reports/<study>/pareto/<id>.yaml")],
        spec: Annotated[Optional[Path], typer.Option(help="Space whose teacher and proxy: settings to use "
                                                     "(default: search_spaces/<candidate origin>.yaml).")] = None,
        data: Annotated[Optional[Path], typer.Option(help="Latent cache from `archsearch data prepare` "
                                                     "(default: the spec's proxy.data, else synthetic data).")] = None,
        steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 2000,
        width_mult: Annotated[float, typer.Option(help="Width multiplier (1.0 = the candidate as designed).")] = 1.0,
        resolution: Annotated[Optional[int], typer.Option(help="Latent side; default: the cache's (a divisor "
                                                          "downscales it), else the spec's proxy resolution.")] = None,
        batch: Annotated[Optional[int], typer.Option(help="Batch per process; default: the spec's proxy batch.")] = None,
        lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the spec's proxy lr).")] = None,
        out: Annotated[Optional[Path], typer.Option(help="Output folder (default: trained/<candidate id>): new or "
                                                    "empty, or an earlier train output with --resume / --overwrite.")] = None,
        device: Annotated[str, typer.Option(help="cpu | cuda | mps | auto")] = "auto",
        seed: Annotated[int, typer.Option(help="Seed of the initialisation and the batches.")] = 0,
        resume: Annotated[Optional[str], typer.Option(help="latest | a checkpoint folder (latest skips a damaged "
                                                      "checkpoint, saying so, for the one before).")] = None,
        overwrite: Annotated[bool, typer.Option(help="Start again in an earlier train output (its checkpoints, "
                                                "logs and model are removed; other files are never touched).")] = False,
        checkpoint_every: Annotated[int, typer.Option(help="Checkpoint interval in steps (0: at the end only).")] = 500,
        keep: Annotated[int, typer.Option(help="Checkpoints kept.")] = 3,
        grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
        mixed_precision: Annotated[str, typer.Option(help="no | bf16 | fp16")] = "no",
        teacher_dtype: Annotated[Optional[str], typer.Option(help="bf16 | fp16: run the teacher in lower precision.")] = None,
        gradient_checkpointing: Annotated[bool, typer.Option(help="Re-compute blocks in backward (less memory).")] = False,
        ema_decay: Annotated[float, typer.Option(help="EMA decay (0: off); the EMA weights are the output.")] = 0.999,
        optimizer: Annotated[str, typer.Option(help="adamw | adamw8bit (bitsandbytes)")] = "adamw",
        warmup: Annotated[Optional[int], typer.Option(help="Warm-up steps (default min(500, steps/20)).")] = None,
        schedule: Annotated[str, typer.Option(help="cosine | constant (after the warm-up)")] = "cosine",
        log_every: Annotated[int, typer.Option(help="Steps between log.csv / TensorBoard rows.")] = 10,
        eval_every: Annotated[int, typer.Option(help="Steps between held-out KD losses (0: off).")] = 100,
        sample_every: Annotated[int, typer.Option(help="Steps between sample grids (0: off).")] = 500,
        nan: Annotated[str, typer.Option(help="raise | skip: what a NaN/inf loss does.")] = "raise",
        init_from_teacher: Annotated[bool, typer.Option(help="Copy matching teacher weights into the student.")] = True,
        spatial_from: Annotated[Optional[Path], typer.Option(help="Video: image `train` output whose spatial layers "
                                                             "are loaded and frozen.")] = None,
        unfreeze_spatial: Annotated[bool, typer.Option(help="Video: train the loaded spatial layers too.")] = False,
        distributed: Annotated[str, typer.Option(help="ddp | fsdp (under accelerate launch / torchrun)")] = "ddp",
    ) -> None:
        """Distil CANDIDATE against the spec's teacher for STEPS steps; save the model (and pipeline).

        The same multi-level distillation as a search trial (task + output KD + feature KD,
        timestep-aware rescaling), with accelerate (one process or `accelerate launch`),
        EMA, checkpoints every N steps and --resume latest. Writes config.json +
        model.safetensors (ArchUNet.from_pretrained; EMA weights), metrics.json, log.csv,
        samples/, checkpoints/ and, with a diffusers teacher, pipeline/ (draw with
        `archsearch generate OUT --prompt ...`).

        Examples:

          archsearch train reports/unet_mobile/pareto/1a2b3c4d5e6f.yaml --steps 500

          archsearch train CAND.yaml --data cache/photos --steps 20000 \\
              --mixed-precision bf16

          accelerate launch --multi_gpu --num_processes 8 -m archsearch.cli.main \\
              train CAND.yaml --data cache/photos

          archsearch train CAND.yaml --data cache/photos --resume latest

          archsearch train CAND.yaml --out trained/run1 --overwrite

        --out must be new or empty, or an earlier train output: --resume latest continues it
        (a damaged newest checkpoint is named and the one before it taken), --overwrite
        starts it again (only train's own files are removed). A folder with other files is
        refused; so is a second run on a folder another run is writing.
        """
        from archsearch._resources import describe, find_space
        from archsearch.candidate import Candidate
        from archsearch.distill import ProxyConfig, TrainConfig, load_teacher
        from archsearch.distill import train as run_train
        from archsearch.spec import load_space

        cand = Candidate.from_yaml(candidate)
        if spec is None:
            # ./<origin>.yaml, ./search_spaces/<origin>.yaml, then the bundled space of that name
            try:
                spec = find_space(cand.origin) if cand.origin else None
            except ArchsearchError:
                spec = None
            if spec is None:
                raise ArchsearchError(f"{candidate}: cannot find the spec it came from (origin {cand.origin!r}); "
                                      "pass --spec search_spaces/<space>.yaml")
        else:
            spec = find_space(spec)  # a path, or a bundled space by name
        space = load_space(spec)
        console.print(f"space: {escape(describe(spec))}", soft_wrap=True)
        proxy = ProxyConfig.from_space(space, steps=steps, width_mult=width_mult, seed=seed,
                                       resolution=resolution, batch=batch, lr=lr)
        config = TrainConfig(proxy=proxy, resolution=resolution, warmup=warmup, schedule=schedule,
                             grad_accum=grad_accum, mixed_precision=mixed_precision, teacher_dtype=teacher_dtype,
                             gradient_checkpointing=gradient_checkpointing, ema_decay=ema_decay, optimizer=optimizer,
                             checkpoint_every=checkpoint_every, keep=keep, log_every=log_every,
                             eval_every=eval_every, sample_every=sample_every, nan=nan,
                             init_from_teacher=init_from_teacher,
                             spatial_from=str(spatial_from) if spatial_from else None,
                             unfreeze_spatial=unfreeze_spatial, distributed=distributed, meta={"spec": str(spec)})
        out = out or Path("trained") / cand.id
        config.check(out, data=data, resume=resume, overwrite=overwrite)  # before the teacher loads
        from archsearch.model import check_memory

        # the student at the run's width and resolution, refused before the teacher loads if it
        # cannot fit (the teacher's text width changes it a little: checked again when built)
        check_memory(cand.for_proxy(width_mult=width_mult, resolution=resolution))
        with progress_bars() as progress:
            teacher = load_teacher(proxy, kind=space.kind, progress=progress, device=device)
            result = run_train(cand, teacher, data, config, out, progress, device=device, resume=resume,
                               overwrite=overwrite, log=lambda m: console.print(escape(m), soft_wrap=True))
        if result.processes > 1 and not _main_process():
            return
        trained = result.metrics.get("candidate_id", cand.id)
        asked = f" (adapted from {cand.id}; {escape(str(out))}/candidate.yaml)" if trained != cand.id else ""
        console.print(f"trained {trained}{asked} for {result.steps} steps "
                      f"({result.steps - result.start_step} this run, "
                      f"{result.processes} process(es)) in {result.wall_time_s:.1f} s, "
                      f"{result.samples_per_s:.1f} samples/s: held-out MSE vs teacher {result.quality:.5f} "
                      f"(EMA; raw {result.quality_raw:.5f}), {result.params:,} parameters", soft_wrap=True)
        console.print(f"saved to {escape(str(out))}/ (ArchUNet.from_pretrained)")
        if result.pipeline is not None:
            console.print(f"pipeline: {escape(str(result.pipeline))}/ -> archsearch generate {escape(str(out))} "
                          "--prompt \"...\"")


def _main_process() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0
