"""The ``archsearch`` command: one Typer app, one module per command group.

Every command is wrapped in :func:`archsearch.cli._common.user_errors`, so a user mistake
prints one line and exits non-zero, and Ctrl-C one line saying how to resume (exit 130);
``ARCHSEARCH_DEBUG=1`` shows the traceback. The global options (``--quiet``,
``--log-format``) come before the command: ``archsearch --log-format json run SPEC``.
"""

from __future__ import annotations

import importlib
import inspect

import typer

from archsearch import _quiet
from archsearch.cli._common import LOG_FORMATS, OUTPUT

_quiet.install()  # before any command imports torch, diffusers or transformers

app = typer.Typer(
    name="archsearch",
    help="Hardware-aware architecture search for efficient diffusion backbones.\n\n"
         "Progress is drawn as bars on a terminal and written as plain lines (counts, rate, ETA) "
         "when the output is a file or a pipe. Global options go before the command:\n\n"
         "  archsearch --quiet run search_spaces/tiny.yaml\n\n"
         "  archsearch --log-format json train CAND.yaml --data cache/photos",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _global_options(
    quiet: bool = typer.Option(False, "--quiet", "-q", envvar="ARCHSEARCH_QUIET",
                               help="No progress bars or progress lines (results, warnings and errors still print)."),
    log_format: str = typer.Option("text", "--log-format", envvar="ARCHSEARCH_LOG_FORMAT", metavar="text|json",
                                   help="Progress in a log: text (bars on a terminal, else one plain line per "
                                        "trial / N steps / shard with counts, rate and ETA) or json (one JSON "
                                        "object per line: phase, done, total, rate, eta, elapsed, message)."),
    log_interval: float = typer.Option(10.0, "--log-interval", envvar="ARCHSEARCH_LOG_INTERVAL", min=0.0,
                                       help="Seconds between two progress lines of a phase at most (a line is also "
                                            "written every 5% and at the end)."),
) -> None:
    """Options of every command (given before the command's name)."""
    if log_format not in LOG_FORMATS:
        typer.echo(f"error: --log-format: bad value {log_format!r} (allowed: {', '.join(LOG_FORMATS)})", err=True)
        raise typer.Exit(2)
    OUTPUT.quiet, OUTPUT.log_format, OUTPUT.interval = quiet, log_format, log_interval

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

#: lines that are commands to copy, never joined with the line before
_COMMANDS = ("archsearch ", "accelerate ", "torchrun ", "python ", "pip ")


def reflow(doc: str) -> str:
    """A command's docstring as ``--help`` shows it: each prose paragraph joined into one line
    (the terminal wraps it once, at its width: no ragged hard-wrapped lines), every other
    paragraph -- example commands, indented lines, ``\\``-continued commands -- line for line, so
    an example renders as written and copies as one command."""
    out = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        lines = para.split("\n")
        if len(lines) > 1 and all(ln and not ln[0].isspace() and not ln.startswith(_COMMANDS)
                                  and not ln.rstrip().endswith("\\") for ln in lines):
            para = " ".join(ln.strip() for ln in lines)
        out.append(para)
    return "\n\n".join(out)


def _reflow_all(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        doc = info.help if info.help is not None else inspect.getdoc(info.callback)
        if doc:
            info.help = reflow(doc)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflow_all(group.typer_instance)


_reflow_all(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
