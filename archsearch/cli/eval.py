"""``archsearch eval``: what a trained model draws -- FID, CLIP score, agreement with the teacher
-- and its model report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from archsearch.cli._common import console, flag_errors, progress_bars, user_errors

#: the library's parameter names -> this command's flags (errors are reworded with them)
FLAGS = {
    "model": "MODEL",
    "prompts_file": "--prompts",
    "teacher": "--teacher",
    "reference": "--reference",
    "steps": "--steps",
    "guidance": "--guidance",
    "seeds": "--seeds",
    "batch": "--batch",
    "limit": "--limit",
    "height": "--height",
    "width": "--width",
    "inception": "--inception",
    "clip": "--clip",
    "out": "--out",
    "device": "--device",
    "dtype": "--dtype",
    "table": "--table",
}


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else "-"


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @user_errors
    @flag_errors(FLAGS)
    def eval_(
        model: Annotated[Path, typer.Argument(help="An `archsearch train` output folder (or its pipeline/), or a "
                                                   "diffusers pipeline folder.")],
        prompts: Annotated[Path, typer.Option(help="Prompt file: one caption a line (e.g. COCO-2017 val captions).")],
        teacher: Annotated[Optional[Path], typer.Option(help="Pipeline to compare with on the same prompts and seeds "
                                                             "(the teacher checkpoint, or another trained model).")] = None,
        reference: Annotated[Optional[Path], typer.Option(help="Folder of reference pictures for FID (e.g. COCO "
                                                               "val2017); default: FID against the teacher's pictures.")] = None,
        steps: Annotated[Optional[int], typer.Option(help="Sampling steps (default: the steps a few-step model "
                                                     "records, else 25; the teacher: its own, 25 for a checkpoint).")] = None,
        guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance (default: the model's "
                                                          "recorded guidance, else 7.5; the teacher: its own, 7.5).")] = None,
        seeds: Annotated[str, typer.Option(help="Seeds drawn for every prompt: 0,1,2 or a range 0-3.")] = "0",
        batch: Annotated[int, typer.Option(help="Pictures per pipeline call (a kill loses at most one batch).")] = 8,
        limit: Annotated[Optional[int], typer.Option(help="Only the first N prompts.")] = None,
        height: Annotated[Optional[int], typer.Option(help="Pixels (default: the model's own size).")] = None,
        width: Annotated[Optional[int], typer.Option(help="Pixels (default: the model's own size).")] = None,
        inception: Annotated[Optional[Path], typer.Option(help="FID Inception weights (torch-fidelity's "
                                                               "weights-inception-2015-12-05-6726825d.pth; default: "
                                                               "its torch hub cache path).")] = None,
        clip: Annotated[Optional[Path], typer.Option(help="Local CLIP folder (transformers) for the CLIP score.")] = None,
        no_fid: Annotated[bool, typer.Option("--no-fid", help="Skip FID (no Inception weights needed).")] = False,
        out: Annotated[Optional[Path], typer.Option(help="Folder for the samples and metrics.json (default: "
                                                         "MODEL/eval); a second run resumes it.")] = None,
        report: Annotated[Optional[Path], typer.Option(help="Model report folder or .html file (default: "
                                                            "reports/trained/<id>/index.html).")] = None,
        no_report: Annotated[bool, typer.Option("--no-report", help="Do not write the model report.")] = False,
        table: Annotated[Optional[Path], typer.Option(help="Latency table: the report shows the UNet's latency "
                                                           "per step count.")] = None,
        device: Annotated[str, typer.Option(help="cpu | cuda | mps | auto")] = "auto",
        dtype: Annotated[Optional[str], typer.Option(help="fp32 | fp16 | bf16 (default: the pipeline's).")] = None,
        progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
    ) -> None:
        """Draw every prompt x seed with MODEL (and --teacher), then FID, CLIP score and agreement.

        Writes OUT/metrics.json and the model report; prints both paths. Resumable: run it again
        after a crash or a kill. Under `accelerate launch` the pictures are spread over the GPUs.

        Example:

        archsearch eval trained/1a2b3c4d5e6f --prompts captions.txt \\
            --teacher sd15/ --reference coco/val2017 --steps 25 --seeds 0 \\
            --clip clip-vit-large-patch14/
        """
        from archsearch.evaluate import evaluate
        from archsearch.report import write_model_report

        out = out or Path(model) / "eval"
        with progress_bars(enabled=progress) as bars:
            res = evaluate(model, prompts, out, teacher=teacher, steps=steps, guidance=guidance, seeds=seeds,
                           reference=reference, inception=inception, clip=clip, fid=False if no_fid else None,
                           batch=batch, limit=limit, height=height, width=width, device=device, dtype=dtype,
                           progress=bars)
        if not res.main:  # another process of `accelerate launch`: the main one prints and writes the report
            return
        m = res.metrics
        stu, tea, agr = m.get("student") or {}, m.get("teacher") or {}, m.get("agreement") or {}
        console.print(f"{m['images']} pictures ({res.drawn.get('student', 0)} drawn now, "
                      f"{res.reused.get('student', 0)} already there)")
        if m.get("reference"):
            console.print(f"FID vs reference: student {_fmt(stu.get('fid'))}"
                          + (f", teacher {_fmt(tea.get('fid'))}" if m.get("teacher") else ""))
        if m.get("clip_model"):
            console.print(f"CLIP score: student {_fmt(stu.get('clip_score'))}"
                          + (f", teacher {_fmt(tea.get('clip_score'))}" if m.get("teacher") else ""))
        if agr:
            console.print(f"vs teacher: FID {_fmt(agr.get('fid'))}, latent MSE {_fmt(agr.get('latent_mse'))}, "
                          f"PSNR {_fmt(agr.get('psnr'))} dB, LPIPS {_fmt(agr.get('lpips'))}")
        for note in m.get("notes") or []:
            console.print(escape(note))
        typer.echo(str(res.metrics_path))
        if not no_report:
            typer.echo(str(write_model_report(model, out, report, table=table)))
