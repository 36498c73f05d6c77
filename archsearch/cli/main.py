"""The ``archsearch`` command: one Typer app, one module per command group.

Every command is wrapped in :func:`archsearch.cli._common.user_errors`, so a user mistake
prints one line and exits non-zero; ``ARCHSEARCH_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="archsearch",
    help="Hardware-aware architecture search for efficient diffusion backbones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Each group module defines register(app). Order = order in --help.
_GROUPS = ("init", "space", "profile", "export", "run", "report", "train", "fewstep", "generate", "eval", "data")
for _name in _GROUPS:
    try:
        _mod = importlib.import_module(f"archsearch.cli.{_name}")
    except ModuleNotFoundError as exc:  # a group not written yet
        if exc.name != f"archsearch.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
