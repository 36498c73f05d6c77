"""``archsearch generate``: draw with a trained model's diffusers pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from archsearch.cli._common import console, flag_errors, user_errors

FLAGS = {"steps": "--steps", "n": "-n", "device": "--device", "model": "MODEL"}


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    @flag_errors(FLAGS)
    def generate(
        model: Annotated[Path, typer.Argument(help="An `archsearch train` output folder (or its pipeline/).")],
        prompt: Annotated[str, typer.Option(help="What to draw.")],
        steps: Annotated[int, typer.Option(help="Sampling steps of the pipeline's scheduler.")] = 25,
        guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 7.5,
        seed: Annotated[int, typer.Option(help="Seed of the first picture (picture i uses seed + i).")] = 0,
        n: Annotated[int, typer.Option("-n", "--n", help="How many pictures.")] = 1,
        height: Annotated[Optional[int], typer.Option(help="Pixels (default: the UNet's size x VAE factor).")] = None,
        width: Annotated[Optional[int], typer.Option(help="Pixels (default: the UNet's size x VAE factor).")] = None,
        out: Annotated[Optional[Path], typer.Option(help="Folder for the PNGs (GIFs for video); default MODEL/generated.")] = None,
        device: Annotated[str, typer.Option(help="cpu | cuda | mps | auto")] = "auto",
    ) -> None:
        """Draw N pictures of PROMPT with MODEL's pipeline (PNGs; GIFs for a video model).

        Example: archsearch generate trained/1a2b3c4d5e6f --prompt "a red circle" --steps 25 -n 4
        """
        from archsearch.distill import generate as run

        out = out or Path(model) / "generated"
        paths = run(model, prompt, out, steps=steps, guidance=guidance, seed=seed, n=n, height=height, width=width,
                    device=device)
        for p in paths:
            console.print(escape(str(p)))
