"""``archsearch train``: distil a chosen backbone for longer, at the scale you pick, and save it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from archsearch.cli._common import console, flag_errors, progress_bars, user_errors
from archsearch.errors import ArchsearchError

#: The library's parameter names -> this command's flags (errors are reworded with them).
FLAGS = {
    "proxy.steps": "--steps",
    "proxy.width_mult": "--width-mult",
    "proxy.resolution": "--resolution",
    "proxy.batch": "--batch",
    "proxy.seed": "--seed",
    "device": "--device",
}


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    @flag_errors(FLAGS)
    def train(
        candidate: Annotated[Path, typer.Argument(help="Candidate YAML, e.g. reports/<study>/pareto/<id>.yaml")],
        spec: Annotated[Optional[Path], typer.Option(help="Space whose teacher and proxy: settings to use "
                                                     "(default: search_spaces/<candidate origin>.yaml).")] = None,
        steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 2000,
        width_mult: Annotated[float, typer.Option(min=0.01, help="Width multiplier (1.0 = the candidate as designed).")] = 1.0,
        resolution: Annotated[Optional[int], typer.Option(help="Latent side; default: the spec's proxy resolution.")] = None,
        batch: Annotated[Optional[int], typer.Option(min=1, help="Batch size; default: the spec's proxy batch.")] = None,
        out: Annotated[Optional[Path], typer.Option(help="Output folder (default: trained/<candidate id>).")] = None,
        device: Annotated[str, typer.Option(help="cpu | cuda | mps | auto")] = "auto",
        seed: Annotated[int, typer.Option(help="Seed of the initialisation and the batches.")] = 0,
    ) -> None:
        """Distil CANDIDATE against the spec's teacher for STEPS steps, then save it.

        The same multi-level distillation as a search trial (task + output KD + feature KD,
        timestep-aware rescaling), run longer and at the width you choose. Writes
        config.json + model.safetensors (load with ArchUNet.from_pretrained) and metrics.json.

        Example: archsearch train reports/unet_mobile/pareto/1a2b3c4d5e6f.yaml --steps 500
        """
        from archsearch._util import atomic_write_text
        from archsearch.candidate import Candidate
        from archsearch.distill import ProxyConfig, distill, load_teacher
        from archsearch.spec import load_space

        cand = Candidate.from_yaml(candidate)
        if spec is None:
            guess = Path("search_spaces") / f"{cand.origin}.yaml"
            if not cand.origin or not guess.is_file():
                raise ArchsearchError(f"{candidate}: cannot find the spec it came from (origin {cand.origin!r}); "
                                      "pass --spec search_spaces/<space>.yaml")
            spec = guess
        space = load_space(spec)
        proxy = ProxyConfig.from_space(space, steps=steps, width_mult=width_mult, seed=seed,
                                       resolution=resolution, batch=batch)
        with progress_bars() as progress:
            teacher = load_teacher(proxy, kind=space.kind, progress=progress, device=device)
            result = distill(cand, teacher, proxy, progress, device=device, keep_student=True)
        out = out or Path("trained") / cand.id
        result.student.cpu().save_pretrained(out)
        metrics = {"candidate": cand.id, "spec": str(spec), "teacher": teacher.fingerprint,
                   "settings": proxy.to_dict(), **result.to_dict()}
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str))
        console.print(f"trained {cand.id} for {steps} steps in {result.wall_time_s:.1f} s: "
                      f"held-out MSE vs teacher {result.quality:.5f}, {result.params:,} parameters")
        console.print(f"saved to {out}/ (ArchUNet.from_pretrained)")
