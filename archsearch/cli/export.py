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
          "format": "--format"}


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
                                                    "exports/<id>.mlpackage).")] = None,
        palettize: Annotated[Optional[int], typer.Option(help="k-means weight palettization: 4, 6 or 8 bits "
                                                         "(coremltools.optimize).")] = None,
        compute_units: Annotated[str, typer.Option(help="CPU_ONLY, CPU_AND_GPU, CPU_AND_NE or ALL.")] = "CPU_AND_NE",
        layout: Annotated[str, typer.Option(help="ane (apple/ml-stable-diffusion's (B, C, 1, S) layout, "
                                            "split-einsum attention) or torch (as built).")] = "ane",
        check: Annotated[bool, typer.Option("--check/--no-check", help="Evaluate the converted program with "
                                            "numpy (MIL) and compare with torch.")] = True,
    ) -> None:
        """Convert a whole UNet to Core ML (mlprogram, fp16, minimum iOS 17) for the Neural Engine.

        Examples:
          archsearch export reports/unet_mobile/pareto/1a2b3c4d5e6f.yaml --format coreml
          archsearch export search_spaces/reference/snapgen_unet.yaml --palettize 6 -o snapgen.mlpackage
          archsearch export runs/1a2b3c4d5e6f/model --format coreml     (trained weights)
          archsearch export reports/tiny/pareto/1a2b3c4d5e6f.yaml --format pte   (ExecuTorch, XNNPACK)
        """
        if format not in ("coreml", "pte"):
            raise ArchsearchError(f"--format {format}: unknown (allowed: coreml, pte)")
        if model.is_dir():
            from archsearch.model import ArchUNet

            source = ArchUNet.from_pretrained(model)
            ident = source.candidate.id
        else:
            from archsearch.candidate import load_candidate

            source = load_candidate(model)
            ident = source.id
        if format == "pte":
            from archsearch.cost.latency._executorch import export_pte

            path = out or Path("exports") / f"{ident}.pte"
            with console.status(f"lowering {escape(str(model))} to ExecuTorch (XNNPACK) ..."):
                info = export_pte(source, path)
            console.print(f"[green]wrote[/green] {escape(str(path))} (ExecuTorch program, float32, XNNPACK took "
                          f"{info['delegated']}/{info['ops']} ops; {info['bytes'] / 2**20:.1f} MiB)")
            console.print(f"numerics: max relative error {info['max_rel_error']:.2g} against torch")
            if not info["max_rel_error"] < 1e-3:
                raise ArchsearchError(f"{path}: the program differs from torch (max relative error "
                                      f"{info['max_rel_error']:.2g})")
            return
        from archsearch.cost.latency._coreml import convert_model, save_mlmodel

        with console.status(f"converting {escape(str(model))} to Core ML ({layout} layout) ..."):
            result = convert_model(source, compute_units=compute_units, layout=layout, palettize=palettize,
                                   check=check)
        if not result.ok:
            raise ArchsearchError(f"{model}: does not convert to Core ML: {result.error}")
        path = out or Path("exports") / f"{ident}.mlpackage"
        save_mlmodel(result.mlmodel, path)
        console.print(f"[green]wrote[/green] {escape(str(path))} (mlprogram, fp16, iOS 17, {layout} layout"
                      f"{f', {palettize}-bit palettized' if palettize else ''}) in {result.seconds:.1f} s")
        if result.check is not None:
            console.print(f"numerics: {escape(result.check.line())}")
        if result.off_ane:
            console.print("[yellow]ops that would fall off the Neural Engine[/yellow]: "
                          + ", ".join(f"{k} {v}" for k, v in result.off_ane.most_common()))
        else:
            console.print("ops that would fall off the Neural Engine: none found")
        if result.flags:
            console.print("ANE-hostile patterns: " + ", ".join(f"{k} {v}" for k, v in sorted(result.flags.items())))
        if result.check is not None and result.check.done and not result.check.ok:
            raise ArchsearchError(f"{path}: the converted model differs from torch ({result.check.line()})")
