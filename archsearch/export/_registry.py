"""The export registry: a format is a function that writes a model to a file and says what it
wrote (:class:`ExportResult`, one type for every format), registered under a name.

    result = export_model("reports/tiny/pareto/1a2b3c4d5e6f.yaml", "pte")
    print(result.path, result.summary, result.check.line())
    if result.problem:                       # the file is written, but its numerics differ
        ...

A new format: ``@register_format("name", suffix=".ext", activity="... {source} ...")`` on a
function ``(model: ArchUNet, path: Path, options: ExportOptions, name: str) -> ExportResult``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from archsearch.candidate import Candidate, load_candidate
from archsearch.errors import ParameterError
from archsearch.model import ArchUNet, build_model

__all__ = [
    "ExportFormat",
    "ExportNote",
    "ExportOptions",
    "ExportResult",
    "NumericCheck",
    "export_formats",
    "export_model",
    "register_format",
]

#: ``progress(phase, description, done, total)`` (the library's progress callback)
Progress = Callable[[str, str, int, int], None]


@dataclass
class NumericCheck:
    """The exported program run (or evaluated) on the example inputs against torch (fp32).

    ``ok``: ``max_rel_error`` (largest absolute difference / largest absolute torch
    output) within ``tolerance``; ``done`` is False when it could not be run (``reason``
    says why, e.g. an op the MIL evaluator does not implement): nothing could be checked.
    ``how``: ``mil`` (Core ML's MIL program evaluated with numpy, ``_mil.run_mil``) or
    ``runtime`` (the program run by its own runtime, e.g. ExecuTorch's).
    """

    done: bool
    ok: bool = False
    max_rel_error: float = float("nan")
    max_abs_error: float = float("nan")
    tolerance: float = 0.0
    reason: str = ""
    how: str = "mil"
    #: ops of the program evaluated (``mil``: every op it contains, or the check is not done)
    ops: int = 0

    def line(self) -> str:
        if not self.done:
            return f"not checked: {self.reason}"
        if self.how == "runtime":
            return f"max relative error {self.max_rel_error:.2g} against torch"
        if self.reason:  # e.g. an output of another shape
            return f"DIFFERS from torch through MIL: {self.reason}"
        every = f" (all {self.ops} ops evaluated)" if self.ops else ""
        return (f"{'matches' if self.ok else 'DIFFERS from'} torch through MIL{every}: max |diff| "
                f"{self.max_abs_error:.3g} = {100 * self.max_rel_error:.3f}% of the output's range "
                f"(tolerance {100 * self.tolerance:.1f}%)")


@dataclass(frozen=True)
class ExportOptions:
    """How to export; a format uses the options that concern it and ignores the others.

    ``batch``: the model's batch (None: the format's, Core ML 2 -- classifier-free guidance in
    one call, as Apple's app runs it --, ExecuTorch 1); ``check``: run the numeric check (Core
    ML: the MIL program evaluated with numpy, every op; an ExecuTorch program is always run
    once against torch); ``tolerance``: of that check (default: the format's, see
    ``CHECK_TOLERANCE`` and ``PTE_TOLERANCE``); ``layout``, ``compute_units``, ``palettize``:
    Core ML's (see ``convert_module``); ``pipeline``: Core ML: write the whole folder the Swift
    ``StableDiffusionPipeline`` loads (text encoder, VAE decoder, tokenizer, scheduler) from
    ``teacher``, the diffusers checkpoint the model was trained against (found by
    :func:`export_model` for an ``archsearch train`` folder).
    """

    batch: int | None = None
    check: bool = True
    tolerance: float | None = None
    layout: str = "ane"
    compute_units: str = "CPU_AND_NE"
    palettize: int | None = None
    pipeline: bool = False
    teacher: str | None = None


@dataclass(frozen=True)
class ExportNote:
    """One line about an export (``label: text``); ``warn``: something to look at."""

    label: str
    text: str
    warn: bool = False


@dataclass
class ExportResult:
    """What an export wrote: ``path``; ``summary``, one line of what it is (``(mlprogram,
    fp16, iOS 17, ane layout) in 3.1 s``); ``check``, the numeric check (None: not run);
    ``notes``, further lines; ``problem``, '' or why the written file is not to be trusted
    (its numerics differ from torch); ``details``: the format's own figures (Core ML:
    ``conversion``, the ``ConversionResult``; ExecuTorch: ``ops``, ``delegated``,
    ``max_rel_error``, ``bytes``)."""

    format: str
    path: Path
    candidate_id: str
    summary: str
    check: NumericCheck | None = None
    notes: list[ExportNote] = field(default_factory=list)
    problem: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problem


#: ``(model, path, options, name) -> ExportResult``; ``name`` names the model in errors
Exporter = Callable[[ArchUNet, Path, ExportOptions, str], ExportResult]


@dataclass(frozen=True)
class ExportFormat:
    """A registered format: its default file ``suffix``, what it is doing (``activity``, a
    template of ``{source}`` and the options' fields) and its exporter."""

    name: str
    suffix: str
    activity: str
    export: Exporter


_FORMATS: dict[str, ExportFormat] = {}


def register_format(name: str, *, suffix: str, activity: str) -> Callable[[Exporter], Exporter]:
    """Register the decorated exporter as format ``name`` (see the module's docstring)."""

    def deco(fn: Exporter) -> Exporter:
        _FORMATS[name] = ExportFormat(name, suffix, activity, fn)
        return fn

    return deco


def export_formats() -> tuple[str, ...]:
    """The registered format names."""
    return tuple(sorted(_FORMATS))


def _load(source: str | os.PathLike | Candidate | ArchUNet) -> tuple[ArchUNet, str]:
    """(the model, how errors name it): an ArchUNet as it is; a candidate built with random
    weights; a path: a folder written by ``save_pretrained``, else a candidate file (or a
    one-assignment space)."""
    if isinstance(source, ArchUNet):
        return source, f"candidate {source.candidate.id}"
    if isinstance(source, Candidate):
        return build_model(source), f"candidate {source.id}"
    path = Path(source)
    if path.is_dir():
        if (path / "model_index.json").is_file() and (path / "unet" / "config.json").is_file():
            return ArchUNet.from_pretrained(path / "unet"), str(source)  # a pipeline `archsearch train` wrote
        return ArchUNet.from_pretrained(path), str(source)
    return build_model(load_candidate(path)), str(source)


def _teacher_of(source: Any) -> str | None:
    """The diffusers checkpoint beside a trained model: ``source`` itself if it is a pipeline
    folder (``model_index.json``), else its ``pipeline/`` (what ``archsearch train`` writes)."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source)
    for folder in (path, path / "pipeline"):
        if (folder / "model_index.json").is_file():
            return str(folder)
    return None


def export_model(source: str | os.PathLike | Candidate | ArchUNet, format: str = "coreml",
                 out: str | os.PathLike | None = None, options: ExportOptions | None = None, *,
                 progress: Progress | None = None, **overrides: Any) -> ExportResult:
    """Export a whole UNet as ``format`` to ``out`` (default ``exports/<candidate id><suffix>``).

    ``source``: a built or loaded :class:`ArchUNet`, a :class:`Candidate` (random weights), a
    folder written by ``save_pretrained`` (or the diffusers ``pipeline/`` folder ``archsearch
    train`` writes beside it), or a candidate file. With ``pipeline`` the default ``out`` is a
    folder, ``exports/<candidate id>-<format>``. ``options``
    (:class:`ExportOptions`), with ``overrides`` of its fields (``check=False``...).
    Raises for a model that cannot be exported; a file written whose numerics differ from
    torch is a result with ``problem`` set (the caller decides).
    """
    fmt = _FORMATS.get(format)
    if fmt is None:
        raise ParameterError("format", f"{format}: unknown (allowed: {', '.join(export_formats())})")
    options = replace(options or ExportOptions(), **overrides)
    if options.batch is not None and not (isinstance(options.batch, int) and options.batch >= 1):
        raise ParameterError("batch", f"{options.batch}: bad value (allowed: an integer >= 1)")
    if options.pipeline and options.teacher is None:
        options = replace(options, teacher=_teacher_of(source))
    model, name = _load(source)
    if out is not None:
        path = Path(out)
    elif options.pipeline:  # a folder of packages
        path = Path("exports") / f"{model.candidate.id}-{format}"
    else:
        path = Path("exports") / f"{model.candidate.id}{fmt.suffix}"
    what = fmt.activity.format(source=name, **vars(options))
    if progress:
        progress("export", what, 0, 1)
    result = fmt.export(model, path, options, name)
    if progress:
        progress("export", what, 1, 1)
    return result
