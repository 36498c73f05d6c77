"""``archsearch generate``: draw with a trained model's diffusers pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from archsearch.cli._common import console, flag_errors, user_errors

FLAGS = {"steps": "--steps", "n": "-n", "device": "--device", "model": "MODEL", "guidance": "--guidance",
         "seed": "--seed", "height": "--height", "width": "--width", "frames": "--frames", "format": "--format"}


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    @flag_errors(FLAGS)
    def generate(
        model: Annotated[Path, typer.Argument(help="An `archsearch train` output folder (or its pipeline/).")],
        prompt: Annotated[str, typer.Option(help="What to draw.")],
        steps: Annotated[Optional[int], typer.Option(help="Sampling steps, 1 to the scheduler's training timesteps "
                                                     "(default: 25).")] = None,
        guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale, >= 0 (1 or less: "
                                                          "none; default: 7.5).")] = None,
        seed: Annotated[int, typer.Option(help="Seed of the first picture (picture i uses seed + i).")] = 0,
        n: Annotated[int, typer.Option("-n", "--n", help="How many pictures (1 to 1000).")] = 1,
        height: Annotated[Optional[int], typer.Option(help="Pixels (default: the UNet's size x VAE factor).")] = None,
        width: Annotated[Optional[int], typer.Option(help="Pixels (default: the UNet's size x VAE factor).")] = None,
        frames: Annotated[Optional[int], typer.Option(help="Video: frames per clip (default and only value: the "
                                                      "model's frame count).")] = None,
        format: Annotated[Optional[str], typer.Option(  # noqa: A002
            help="png (image model); gif (default) | mp4 (video model).")] = None,
        out: Annotated[Optional[Path], typer.Option(help="Folder for the pictures (default: MODEL/generated); an "
                                                    "existing file is never overwritten.")] = None,
        device: Annotated[str, typer.Option(help="cpu | cuda | mps | auto")] = "auto",
    ) -> None:
        """Draw N pictures of PROMPT with MODEL's pipeline (PNGs; GIFs or MP4s for a video model).

        Files are named <prompt>-<seed>.png; when that name is taken, <prompt>-<seed>-2.png and
        so on: nothing is overwritten.

        Example:

          archsearch generate trained/1a2b3c4d5e6f --prompt "a red circle" -n 4
        """
        from archsearch.distill import generate as run

        paths = run(model, prompt, out, steps=steps, guidance=guidance, seed=seed, n=n, height=height, width=width,
                    frames=frames, format=format, device=device)
        for p in paths:
            console.print(escape(str(p)), soft_wrap=True)
