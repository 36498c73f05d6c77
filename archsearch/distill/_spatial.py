"""The spatial layers of a video UNet taken from an image UNet, and frozen (SnapGen-V).

A video candidate is its image backbone plus temporal layers: :func:`archsearch.model.walk` names
every spatial block of a video model as it names the same block of the image model
(``down.i.layerJ.resnet``, ``...transformer``, ``stem.conv_in``, ...) and the temporal ones
``...layerJ.temporalK``, so the spatial weights carry over block by block. Two users:

* ``archsearch train --spatial-from trained/<image id>`` (:func:`~archsearch.distill.train`):
  the spatial layers of an image ``train`` output, copied where names and shapes match
  (:func:`~archsearch.distill.init_from_teacher`'s rule), frozen unless ``unfreeze_spatial``;
* the temporal search (``search: {method: temporal}``): every spatial tensor of each trial's
  student must come from the backbone, bit for bit (``strict``), and stays frozen while the
  temporal layers train.

:func:`spatial_difference` says in words where two candidates' spatial layers differ (the
blocks' types and hyperparameters: what decides the weights and what they compute), ignoring
temporal layers, resolution and frames.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from archsearch.distill._init_from_teacher import CopyReport, init_from_teacher
from archsearch.errors import ArchsearchError

__all__ = ["is_temporal", "load_spatial", "spatial_candidate", "spatial_difference", "spatial_signature"]

_TEMPORAL_PREFIX = "temporal"


def is_temporal(block_type: str) -> bool:
    """Whether a block type (``BlockSpec.type``) is a temporal layer."""
    return block_type.startswith(_TEMPORAL_PREFIX)


def spatial_signature(candidate: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{block name: (type, hyperparameters)}`` of the candidate's spatial blocks, in network order."""
    from archsearch.model import walk

    return {s.name: (s.type, s.hparams) for s in walk(candidate) if not is_temporal(s.type)}


def spatial_difference(candidate: Any, backbone: Any) -> str | None:
    """Where ``candidate``'s spatial blocks differ from ``backbone``'s, in one line (``None``:
    they are the same): the first block that differs and how (a stage's block before the stem's
    and head's), and how many others do."""
    mine, theirs = spatial_signature(candidate), spatial_signature(backbone)
    diffs: list[str] = []
    for name, (type_, hp) in mine.items():
        other = theirs.get(name)
        if other is None:
            diffs.append(f"{name} ({type_}) is in the space, not in the backbone")
            continue
        if other[0] != type_:
            diffs.append(f"{name} is a {type_} in the space, a {other[0]} in the backbone")
            continue
        keys = [k for k in sorted(set(hp) | set(other[1])) if hp.get(k) != other[1].get(k)]
        if keys:
            diffs.append(f"{name}: " + ", ".join(f"{k} {hp.get(k)!r} (backbone {other[1].get(k)!r})" for k in keys))
    diffs += [f"{name} ({t}) is in the backbone, not in the space"
              for name, (t, _) in theirs.items() if name not in mine]
    if not diffs:
        return None
    # a stage's block first: the stem and head differ as a consequence (time embedding = 4 x width)
    diffs.sort(key=lambda d: d.startswith(("stem.", "head.")))
    more = f" (and {len(diffs) - 1} more block(s) differ)" if len(diffs) > 1 else ""
    return diffs[0] + more


def spatial_candidate(candidate: Any) -> Any:
    """The image candidate of a video candidate's spatial layers (temporal layers removed)."""
    from archsearch.candidate import TemporalConfig

    def strip(st: Any) -> Any:
        layout = tuple(t for t in st.layout if t in ("resnet", "transformer", "cross_ffn"))
        return replace(st, temporal=TemporalConfig(), layout=layout)

    return replace(candidate, kind="image", frames=1, stages=tuple(strip(s) for s in candidate.stages),
                   mid=strip(candidate.mid) if candidate.mid is not None else None,
                   up=tuple(strip(s) for s in candidate.up))


def load_spatial(student: nn.Module, source: Any, *, freeze: bool = True, strict: bool = False) -> CopyReport:
    """Copy ``source``'s spatial tensors into the video ``student`` (an ``ArchUNet``) and, with
    ``freeze``, stop the gradients of every spatial block (only temporal layers train).

    ``source``: an ``ArchUNet`` (an image ``train`` output, ``ArchUNet.from_pretrained``) or
    anything :func:`~archsearch.distill.init_from_teacher` reads. ``strict``: every spatial
    tensor must be copied from the block of the same name (no index remapping, no shape
    left out), else a one-line :class:`~archsearch.errors.ArchsearchError` naming the first
    tensor that was not. Returns the copy report (temporal tensors count as new).
    """
    report = init_from_teacher(student, source, skip=(_TEMPORAL_PREFIX,))
    if strict:
        types = {s.name: s.type for s in student.block_specs}
        remapped = [u for u, t in report.layer_map.items() if u != t and not is_temporal(types.get(u, ""))]
        missing = [n for n in report.new if not is_temporal(types.get(n.split("/", 1)[0], ""))]
        if report.skipped or missing or remapped:
            if report.skipped:
                name, mine, theirs = report.skipped[0]
                what = f"{name} is {list(mine)} in the student, {list(theirs)} in the backbone"
            elif missing:
                what = f"{missing[0]} is not in the backbone"
            else:
                what = f"{remapped[0]} would come from the backbone's {report.layer_map[remapped[0]]}"
            n = len(report.skipped) + len(missing) + len(remapped)
            raise ArchsearchError(f"spatial layers: {n} tensor(s)/block(s) of the student do not come from the "
                                  f"backbone as they are, e.g. {what} (allowed: a backbone with the student's "
                                  "spatial layers)")
    if freeze:
        for spec, block in zip(student.block_specs, student.blocks):
            if not is_temporal(spec.type):
                block.requires_grad_(False)
    return report
