"""``archsearch export``: a whole UNet as a Core ML package in the Neural-Engine layout, or as an
ExecuTorch program (XNNPACK) for phone CPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from archsearch.cli._common import console, flag_errors, user_errors
from archsearch.errors import ArchsearchError

__all__ = ["register"]

_FLAGS = {"palettize": "--palettize", "compute_units": "--compute-units", "layout": "--layout",
          "format": "--format", "batch": "--batch", "pipeline": "--pipeline", "teacher": "--teacher"}


def register(app: typer.Typer) -> None:
    """Add ``export`` to ``app``."""

    @app.command("export")
    @user_errors
    @flag_errors(_FLAGS)
    def export(
        model: Annotated[Path, typer.Argument(help="A candidate YAML (random weights), a one-assignment space "
                                                   "(reference backbones), or a folder written by save_pretrained "
                                                   "(archsearch train).", show_default=False)],
        format: Annotated[str, typer.Option("--format", help="coreml (a .mlpackage for the Neural "
                                                   "Engine) or pte (an ExecuTorch/XNNPACK program for phone CPUs).")] = "coreml",
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="The .mlpackage to write (default: "
                                                    "exports/<id>.mlpackage; with --pipeline the folder, "
                                                    "exports/<id>-coreml).")] = None,
        palettize: Annotated[Optional[int], typer.Option(help="k-means weight palettization: 4, 6 or 8 bits "
                                                         "(coremltools.optimize).")] = None,
        compute_units: Annotated[str, typer.Option(help="CPU_ONLY, CPU_AND_GPU, CPU_AND_NE or ALL.")] = "CPU_AND_NE",
        layout: Annotated[str, typer.Option(help="ane (apple/ml-stable-diffusion's (B, C, 1, S) layout, "
                                            "split-einsum attention) or torch (as built).")] = "ane",
        check: Annotated[bool, typer.Option("--check/--no-check", help="Evaluate the converted program with "
                                            "numpy (MIL, every op) and compare with torch.")] = True,
        batch: Annotated[Optional[int], typer.Option(help="The model's batch (default: coreml 2, classifier-free "
                                                     "guidance in one call as Apple's app runs it; 1 for few-step "
                                                     "models sampled without guidance; pte 1).")] = None,
        pipeline: Annotated[bool, typer.Option("--pipeline", help="coreml: write the whole folder the Swift "
                                               "StableDiffusionPipeline loads (Unet, TextEncoder, VAEDecoder "
                                               "packages, vocab.json, merges.txt, pipeline.json) from the "
                                               "diffusers teacher.")] = False,
        teacher: Annotated[Optional[Path], typer.Option(help="With --pipeline: the diffusers checkpoint the model "
                                                        "was trained against (default: the pipeline/ folder "
                                                        "archsearch train wrote beside the model).")] = None,
    ) -> None:
        """Convert a whole UNet to Core ML (mlprogram, fp16, minimum iOS 17) for the Neural Engine.

        The package has the inputs and outputs apple/ml-stable-diffusion's Swift app feeds
        (sample, timestep, encoder_hidden_states -> noise_pred); --pipeline writes the folder
        its StableDiffusionPipeline loads (compile each .mlpackage to .mlmodelc on a Mac).

        Examples:
          archsearch export reports/tiny/pareto/1a2b3c4d5e6f.yaml
          archsearch export trained/1a2b3c4d5e6f --pipeline -o MyApp   (Swift app)
          archsearch export trained/1a2b3c4d5e6f --batch 1   (no guidance)
          archsearch export search_spaces/reference/snapgen_unet.yaml --palettize 6
          archsearch export trained/1a2b3c4d5e6f --format pte   (ExecuTorch)
        """
        from archsearch.export import export_model

        def show(phase: str, what: str, done: int, total: int) -> None:
            status.update(f"{escape(what)} ...")

        with console.status(f"exporting {escape(str(model))} ...") as status:
            result = export_model(model, format, out, compute_units=compute_units, layout=layout,
                                  palettize=palettize, check=check, batch=batch, pipeline=pipeline,
                                  teacher=str(teacher) if teacher is not None else None, progress=show)
        console.print(f"[green]wrote[/green] {escape(str(result.path))} {escape(result.summary)}")
        if result.check is not None:
            console.print(f"numerics: {escape(result.check.line())}")
        for note in result.notes:
            label = f"[yellow]{escape(note.label)}[/yellow]" if note.warn else escape(note.label)
            console.print(f"{label}: {escape(note.text)}")
        if result.problem:
            raise ArchsearchError(result.problem)
