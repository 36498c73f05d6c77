"""``archsearch fewstep``: step distillation of a trained model to 8, 4 or 1 steps (SnapFusion's
CFG-aware step distillation, SnapGen's adversarial distillation, latent consistency)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from archsearch.cli._common import console, flag_errors, progress_bars, user_errors

#: The library's parameter names -> this command's flags (errors are reworded with them).
FLAGS = {
    "method": "--method",
    "steps": "--steps-to",
    "train_steps": "--train-steps",
    "lr": "--lr",
    "proxy.lr": "--lr",
    "batch": "--batch",
    "proxy.batch": "--batch",
    "teacher": "--teacher",
    "data": "--data",
    "out": "--out",
    "overwrite": "--overwrite",
    "resume": "--resume",
    "device": "--device",
    "model": "MODEL",
    "guidance": "--guidance",
    "guidance_range": "--guidance-range",
    "plain_ratio": "--plain-ratio",
    "steps_from": "--steps-from",
    "teacher_steps": "--teacher-steps",
    "adv_weight": "--adv-weight",
    "kd_weight": "--kd-weight",
    "disc_backbone": "--disc-backbone",
    "ddim_steps": "--ddim-steps",
    "loss": "--loss",
    "prediction": "--prediction",
    "checkpoint_every": "--checkpoint-every",
    "keep": "--keep",
    "ema_decay": "--ema-decay",
    "mixed_precision": "--mixed-precision",
    "teacher_dtype": "--teacher-dtype",
    "grad_accum": "--grad-accum",
    "log_every": "--log-every",
}


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    @flag_errors(FLAGS)
    def fewstep(
        model: Annotated[Path, typer.Argument(help="An `archsearch train` output folder (or its pipeline/).")],
        method: Annotated[str, typer.Option(help="step (SnapFusion) | adversarial (SnapGen) | lcm.")] = "step",
        steps_to: Annotated[int, typer.Option(help="The steps the distilled model draws in.")] = 4,
        teacher: Annotated[Optional[Path], typer.Option(help="A diffusers checkpoint folder (default: the "
                                                        "teacher MODEL was trained against).")] = None,
        data: Annotated[Optional[Path], typer.Option(help="Latent cache (default: MODEL's training data).")] = None,
        out: Annotated[Optional[Path], typer.Option(help="Output folder (default: MODEL-<method><steps>): new or "
                                                    "empty, or this run's with --resume / --overwrite.")] = None,
        train_steps: Annotated[int, typer.Option(help="Optimizer steps of the distillation.")] = 1000,
        lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: MODEL's run's).")] = None,
        batch: Annotated[Optional[int], typer.Option(help="Batch per process (default: MODEL's run's).")] = None,
        guidance: Annotated[float, typer.Option(help="The guidance scale drawn with by default (folded into "
                                                "the model; adversarial: the one distilled).")] = 7.5,
        guidance_range: Annotated[tuple[float, float], typer.Option(help="step, lcm: guidance scales sampled per "
                                                                    "sample (the model takes the scale as input).")] = (2.0, 14.0),
        plain_ratio: Annotated[float, typer.Option(help="step: share of unguided (scale 1) targets.")] = 0.25,
        steps_from: Annotated[Optional[int], typer.Option(help="step: the teacher's steps (default 2 x --steps-to: "
                                                          "its two-step move).")] = None,
        progressive: Annotated[bool, typer.Option(help="step: halve from --steps-from in rounds, each round's "
                                                  "student teaching the next.")] = False,
        teacher_steps: Annotated[int, typer.Option(help="adversarial: teacher DDIM steps of the KD target.")] = 16,
        adv_weight: Annotated[float, typer.Option(help="adversarial: weight of the hinge loss.")] = 0.1,
        kd_weight: Annotated[float, typer.Option(help="adversarial: weight of the KD term.")] = 1.0,
        disc_backbone: Annotated[str, typer.Option(help="adversarial: teacher | student (frozen features "
                                                   "under the discriminator heads).")] = "teacher",
        ddim_steps: Annotated[int, typer.Option(help="lcm: the DDIM solver's skipping schedule.")] = 50,
        loss: Annotated[str, typer.Option(help="lcm: huber | l2.")] = "huber",
        prediction: Annotated[Optional[str], typer.Option(help="The student's parameterisation (default "
                                                          "v_prediction; flow for a flow teacher).")] = None,
        freeze_spatial: Annotated[bool, typer.Option(help="Video: keep the spatial layers frozen.")] = False,
        device: Annotated[str, typer.Option(help="cpu | cuda | mps | auto")] = "auto",
        seed: Annotated[Optional[int], typer.Option(help="Seed of the batches (default: MODEL's run's).")] = None,
        resume: Annotated[Optional[str], typer.Option(help="latest | a checkpoint folder.")] = None,
        overwrite: Annotated[bool, typer.Option(help="Start again in this run's earlier output.")] = False,
        checkpoint_every: Annotated[int, typer.Option(help="Checkpoint interval in steps (0: at the end only).")] = 500,
        keep: Annotated[int, typer.Option(help="Checkpoints kept.")] = 3,
        ema_decay: Annotated[float, typer.Option(help="EMA decay (0: off); the EMA weights are the output.")] = 0.999,
        mixed_precision: Annotated[str, typer.Option(help="no | bf16 | fp16")] = "no",
        teacher_dtype: Annotated[Optional[str], typer.Option(help="bf16 | fp16: the teacher in lower precision.")] = None,
        grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
        log_every: Annotated[int, typer.Option(help="Steps between log.csv rows.")] = 10,
        evaluate: Annotated[bool, typer.Option(help="Compare samples with the teacher's 50-step ones "
                                               "(metrics.json).")] = True,
    ) -> None:
        """Distil MODEL (an `archsearch train` output) to draw in --steps-to steps, one UNet call each.

        The same loop as `archsearch train` (accelerate, EMA, checkpoints, --resume latest),
        starting from MODEL's weights, against its teacher. --method step: the teacher's
        guided two-step DDIM move as target (SnapFusion); adversarial: KD to the teacher's
        multi-step result + a hinge discriminator on the teacher's encoder features (SnapGen;
        temporal heads for video); lcm: latent consistency distillation (LCMScheduler). Writes
        a train output folder (model with the guidance folded in, fewstep.json: scheduler,
        default steps and guidance) and, with a diffusers teacher, pipeline/ for
        `archsearch generate`.

        [bold]Examples:[/bold]

        [dim]# 4 steps, CFG-aware step distillation[/dim]
        archsearch fewstep trained/1a2b3c4d5e6f --method step --steps-to 4

        [dim]# progressive rounds 32 -> 16 -> 8 (SnapFusion)[/dim]
        archsearch fewstep trained/1a2b3c4d5e6f --steps-to 8 --steps-from 32 \\
            --progressive

        [dim]# latent consistency, then draw in 4 steps[/dim]
        archsearch fewstep trained/1a2b3c4d5e6f --method lcm --out trained/lcm4
        archsearch generate trained/lcm4 --prompt "a red circle"

        [dim]# continue after a stop[/dim]
        archsearch fewstep trained/1a2b3c4d5e6f --method adversarial \\
            --out trained/adv4 --resume latest
        """
        from archsearch.distill import FewStepConfig, step_distill

        options = {"guidance": guidance, "guidance_range": list(guidance_range), "plain_ratio": plain_ratio,
                   "progressive": progressive, "teacher_steps": teacher_steps, "adv_weight": adv_weight,
                   "kd_weight": kd_weight, "disc_backbone": disc_backbone, "ddim_steps": ddim_steps, "loss": loss,
                   "freeze_spatial": freeze_spatial}
        if steps_from is not None:
            options["steps_from"] = steps_from
        if prediction is not None:
            options["prediction"] = prediction
        train = {"checkpoint_every": checkpoint_every, "keep": keep, "ema_decay": ema_decay,
                 "mixed_precision": mixed_precision, "teacher_dtype": teacher_dtype, "grad_accum": grad_accum,
                 "log_every": log_every}
        config = FewStepConfig(method=method, steps=steps_to, train_steps=train_steps, lr=lr, batch=batch, seed=seed,
                               options=options, train=train, evaluate=evaluate)
        config.check()
        out = out or Path(f"{str(model).rstrip('/')}-{method}{steps_to}")
        with progress_bars() as progress:
            result = step_distill(model, out, config, teacher=teacher, data=data, device=device, resume=resume,
                                  progress=progress, log=lambda m: console.print(escape(m), soft_wrap=True),
                                  overwrite=overwrite)
        info = result.metrics.get("fewstep", {})
        console.print(f"distilled {escape(str(model))} to {info.get('steps')} steps ({info.get('method')}, "
                      f"{info.get('calls_per_step')} UNet call per step, guidance {info.get('distilled_guidance')}) "
                      f"in {result.steps} training steps, {result.wall_time_s:.1f} s", soft_wrap=True)
        q = info.get("quality")
        if q:
            console.print(f"latent MSE vs the teacher's {q['reference_steps']}-step samples (same prompts and seeds, "
                          f"guidance {q['guidance']}):", soft_wrap=True)
            for n, row in q["mse"].items():
                line = f"  {n} step(s): distilled {row['distilled']:.5f}"
                if "trained" in row:
                    line += (f"; before, guided ({q['calls_per_step']['trained']} calls a step): "
                             f"{row['trained']:.5f} with its own sampler, {row['trained_same_scheduler']:.5f} with "
                             "this one")
                console.print(line, soft_wrap=True)
        console.print(f"saved to {escape(str(out))}/ ({info.get('scheduler')}, fewstep.json)", soft_wrap=True)
        if result.pipeline is not None:
            console.print(f"pipeline: {escape(str(result.pipeline))}/ -> archsearch generate {escape(str(out))} "
                          "--prompt \"...\"", soft_wrap=True)
