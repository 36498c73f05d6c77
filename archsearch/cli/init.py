"""``archsearch init [DIR]``: a working folder with a bundled example space and its latency table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from archsearch.cli._common import console, flag_errors, user_errors

__all__ = ["register"]

#: The library's parameter names -> this command's flags.
FLAGS = {"space": "--space", "force": "--force", "directory": "DIR"}


def register(app: typer.Typer) -> None:
    """Add the ``init`` command to ``app``."""

    @app.command("init")
    @user_errors
    @flag_errors(FLAGS)
    def init(
        directory: Annotated[Path, typer.Argument(help="Working folder (created if absent).")] = Path("."),
        space: Annotated[str, typer.Option("--space", "-s", help="Bundled space to copy: unet_mobile, "
                                           "video_mobile, tiny, tiny_video.")] = "unet_mobile",
        force: Annotated[bool, typer.Option("--force", help="Overwrite files that differ from the "
                                            "bundled ones.")] = False,
    ) -> None:
        """Copy a bundled example space (and its shipped latency table) into DIR.

        Then `archsearch run SPACE.yaml` works there: the table a run looks up by default
        (latency_tables/<space>-<target>-r<res>[-estimate].csv) is beside the space. Edit the
        copy freely; your files always win over the bundled ones.

        Examples:

          archsearch init                      (unet_mobile.yaml + its ANE estimate table, here)

          archsearch init work --space tiny
        """
        from archsearch._resources import init_workdir

        result = init_workdir(directory, space, force=force)
        for p in result.written:
            console.print(f"wrote {escape(str(p))}", soft_wrap=True)
        for p in result.kept:
            console.print(f"kept {escape(str(p))} (same as the bundled file)", soft_wrap=True)
        if not result.tables:
            console.print(f"[yellow]no bundled latency table of {escape(space)} for target {result.target} "
                          f"at resolution {result.resolution}[/yellow]: make one with `archsearch profile "
                          f"{escape(str(result.space))} --target {result.target}`", soft_wrap=True)
        run = result.space.name if Path(directory) == Path(".") else str(result.space)
        console.print(f"next: archsearch run {escape(run)}", soft_wrap=True)
