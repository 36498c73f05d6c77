"""SnapGen-V's temporal search on a frozen image backbone (``search: {method: temporal}``).

A video UNet is a trained image UNet plus temporal layers. The temporal search keeps the image
backbone's spatial layers as they are -- loaded bit for bit into every trial's student and
frozen -- and searches only the temporal layers of a video space: their type (``conv1d``,
``conv3d``, ``attn1d``, ``attn3d``, ``cross1d``, ``cross3d`` or ``none``), count and placement per
stage, and temporal positions of per-stage ``layers:``. Everything else is the ordinary search:

* the candidate's latency and peak memory are costed at full size before any training, and one
  over ``constraints.max_latency_ms`` / ``max_memory_mb`` is recorded infeasible without training
  (:func:`~archsearch.search.evaluate`, unchanged);
* a feasible one is trained briefly by :func:`~archsearch.distill.distill` against the video
  teacher (``proxy.teacher: {builtin: video}`` or a diffusers UNet3D) on video data (the built-in
  synthetic clips or a ``proxy.data`` cache); its ``prepare_student`` hook is
  :class:`FrozenSpatial`, which copies the backbone's spatial tensors into the student and stops
  their gradients, so only the temporal layers (and the feature-KD projections) train;
* NSGA-II proposes candidates (unless ``search.sampler`` names another), through the same study,
  store and report (the method: :class:`~archsearch.search._methods.TemporalMethod`).

**The backbone** (``search.backbone``): an ``archsearch train`` output folder (``config.json`` +
``model.safetensors``, :meth:`ArchUNet.from_pretrained <archsearch.model.ArchUNet.from_pretrained>`;
relative to the spec's folder, else to the working directory), or ``builtin`` (the default): the
built-in *image* teacher at the video teacher's width, trained and cached on first use like
every built-in teacher (:func:`~archsearch.distill.load_teacher`).

**The check** (:func:`check_temporal`, before any work): the space is a video space whose only
searchable dimensions are temporal, and its spatial layers -- at proxy scale, with the teacher's
text encoder and latents, as the trials build them -- are the backbone's: same blocks, same
hyperparameters (widths, heads, attention, norm groups, text width, ...). A space that differs
is refused in one line naming the first block that differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from archsearch._util import first_line
from archsearch.errors import ArchsearchError
from archsearch.search._objective import TrialContext
from archsearch.search._progress import Progress

__all__ = [
    "BUILTIN_BACKBONE",
    "Backbone",
    "FrozenSpatial",
    "TemporalContext",
    "check_temporal",
    "describe_backbone",
    "load_backbone",
    "prepare_temporal",
    "temporal_context",
    "temporal_dimension",
]

#: ``search.backbone`` of the built-in image model at the video teacher's width (the default)
BUILTIN_BACKBONE = "builtin"

_LAYOUT_TEMPORAL = ("conv1d", "conv3d", "attn1d", "attn3d", "cross1d", "cross3d", "skip")
_ALLOWED_DIMS = ("temporal type, count and placement per stage, and layers: positions choosing among "
                 + ", ".join(_LAYOUT_TEMPORAL))


# --------------------------------------------------------------------------- the backbone


@dataclass
class Backbone:
    """The image model whose spatial layers every trial's student takes.

    ``candidate``: its architecture (what :func:`check_temporal` compares); ``source``: where it
    comes from, in words; ``path``: the folder its weights are read from (``None`` for a built-in
    one not trained yet); ``fingerprint``: a content hash of its weights (``None`` until loaded).
    The loaded model is kept per process and not pickled (a Ray worker reads ``path`` again).
    """

    candidate: Any
    source: str
    path: Path | None = None
    fingerprint: str | None = None
    _model: Any = field(default=None, repr=False, compare=False)

    def model(self) -> Any:
        """The backbone's ``ArchUNet`` on the CPU, eval mode, no gradients (loaded once)."""
        if self._model is None:
            if self.path is None:
                raise ArchsearchError(f"backbone {self.source}: not loaded (call load_backbone first)")
            from archsearch.model import ArchUNet

            self._model = ArchUNet.from_pretrained(self.path).eval().requires_grad_(False)
        return self._model

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None
        return state


@dataclass
class FrozenSpatial:
    """The ``prepare_student`` hook of :func:`~archsearch.distill.distill`: the backbone's spatial
    tensors copied into the student (every one, from the block of the same name) and frozen.
    A student whose spatial layers are not the backbone's fails the trial in one line."""

    backbone: Backbone

    def __call__(self, student: Any) -> None:
        from archsearch.distill import load_spatial, spatial_difference

        diff = spatial_difference(student.candidate, self.backbone.candidate)
        if diff is not None:
            raise ArchsearchError(f"backbone {self.backbone.source}: the student's spatial layers differ: {diff}")
        load_spatial(student, self.backbone.model(), freeze=True, strict=True)


@dataclass
class TemporalContext(TrialContext):
    """A :class:`~archsearch.search.TrialContext` whose trials train on the frozen backbone:
    ``evaluate`` passes ``prepare_student`` to ``distill``."""

    backbone: Backbone | None = None
    prepare_student: Any | None = None  # FrozenSpatial(backbone)


# --------------------------------------------------------------------------- the checks


def _where(space: Any) -> tuple:
    """The spec key an error about the backbone points at."""
    return ("search", "backbone") if "backbone" in (space.search or {}) else ("search", "method")


def _backbone_value(space: Any, backbone: str | None) -> str:
    if backbone is None:
        backbone = (space.search or {}).get("backbone")
    if backbone is None:
        return BUILTIN_BACKBONE
    if not (isinstance(backbone, str) and backbone.strip()):
        space.fail(("search", "backbone"), backbone, f"{BUILTIN_BACKBONE}, or an `archsearch train` output folder")
    return backbone


def _folder(space: Any, value: str) -> Path:
    """A backbone folder: relative to the spec's folder if it exists there, else as given."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    beside = Path(str(space.path)).parent / p
    return beside if beside.exists() else p


def describe_backbone(space: Any, proxy: Any, backbone: str | None = None) -> Backbone:
    """The backbone named by ``backbone`` (else ``search.backbone``, else ``builtin``), without
    loading or training weights: its architecture and where it comes from."""
    from archsearch.candidate import Candidate

    value = _backbone_value(space, backbone)
    teacher = dict(proxy.teacher or {})
    if value == BUILTIN_BACKBONE:
        if "diffusers" in teacher:
            space.fail(_where(space), value, "an `archsearch train` output folder (a diffusers teacher has no "
                       "built-in image model)", message="backbone builtin needs a built-in teacher")
        from archsearch.data import TextEncoder
        from archsearch.distill import BuiltinTeacherConfig, builtin_teacher_candidate

        width = int(teacher.get("width", BuiltinTeacherConfig.width))
        text = TextEncoder.builtin()
        cand = builtin_teacher_candidate("image", width, proxy.resolution, 1,
                                         int(teacher.get("latent_channels", BuiltinTeacherConfig.latent_channels)),
                                         text.context_dim, text.context_length)
        return Backbone(cand, f"the built-in image model, width {width}")
    folder = _folder(space, value)
    cfg = folder / "config.json"
    allowed = f"{BUILTIN_BACKBONE}, or an `archsearch train` output folder (config.json + model.safetensors)"
    if not cfg.is_file() or not (folder / "model.safetensors").is_file():
        space.fail(("search", "backbone"), value, allowed, message=f"{folder}: not a trained model folder")
    try:
        cand = Candidate.from_dict(json.loads(cfg.read_text()).get("candidate"), str(cfg))
    except (ValueError, AttributeError, ArchsearchError) as exc:
        first = first_line(exc)
        space.fail(("search", "backbone"), value, allowed, message=f"{cfg}: cannot read its candidate ({first})")
    return Backbone(cand, str(folder), path=folder)


def _dim_path(name: str) -> tuple:
    """``down0.temporal.type`` -> ``("stages", 0, "temporal", "type")`` (the spec key path)."""
    head, *rest = name.split(".")
    if head.startswith("down") and head[4:].isdigit():
        path: tuple = ("stages", int(head[4:]))
    elif head.startswith("up") and head[2:].isdigit():
        path = ("up", int(head[2:]))
    else:
        path = (head,)
    return path + tuple(int(r) if r.isdigit() else r for r in rest)


def temporal_dimension(dim: Any) -> bool:
    """Whether a searchable dimension (:meth:`SearchSpace.dimensions`) changes only temporal
    layers: a stage's ``temporal.*`` entry, or a ``layers:`` position choosing among temporal
    layers and ``skip``."""
    parts = dim.name.split(".")
    if len(parts) >= 2 and parts[-2] == "temporal":
        return True
    if len(parts) >= 2 and parts[-2] == "layers":
        return all(o in _LAYOUT_TEMPORAL for o in dim.options)
    return False


def check_temporal(space: Any, proxy: Any, backbone: Backbone | str | None = None, teacher: Any = None) -> Backbone:
    """Refuse, in one line, a space the temporal search cannot run on ``backbone``; returns the
    backbone (:func:`describe_backbone` when a name is given; no weights are loaded).

    * the space must be a video space, its proxy a per-trial run (not ``kind: supernet``);
    * its searchable dimensions must all be temporal (:func:`temporal_dimension`);
    * its spatial layers, as a trial builds them (``candidate.for_proxy`` at ``proxy.width_mult``
      and ``proxy.resolution``, with the teacher's text encoder and latent channels: ``teacher``'s,
      else the backbone's), must be the backbone's (:func:`~archsearch.distill.spatial_difference`).
    """
    from archsearch.candidate import sample
    from archsearch.distill import spatial_difference

    if space.kind != "video":
        space.fail(("search", "method"), "temporal", "a video space (kind: video), or method optuna",
                   message="the temporal search needs a video space")
    if getattr(proxy, "kind", "per_trial") == "supernet":
        space.fail(("proxy", "kind"), "supernet", "per_trial (each trial trains its temporal layers on the backbone)",
                   message="the temporal search trains every candidate, it does not score a supernet")
    for dim in space.dimensions():
        if not temporal_dimension(dim):
            space.fail(_dim_path(dim.name), {"choice": list(dim.options)}, _ALLOWED_DIMS,
                       message=f"{dim.name} is searchable, but the temporal search keeps the backbone's spatial "
                               "layers: fix it to the backbone's value")
    bb = backbone if isinstance(backbone, Backbone) else describe_backbone(space, proxy, backbone)
    ref = bb.candidate
    src = teacher if teacher is not None else ref
    small = sample(space, 0).for_proxy(width_mult=proxy.width_mult, resolution=proxy.resolution, frames=proxy.frames,
                                       context_dim=src.context_dim, context_length=src.context_length,
                                       latent_channels=src.latent_channels)
    diff = spatial_difference(small, ref)
    if diff is not None:
        hint = (f"; the trials build the space at proxy.width_mult {proxy.width_mult:g}: proxy.width_mult 1 trains "
                "it at the width it is written at" if proxy.width_mult != 1.0 else "")
        space.fail(_where(space), bb.source, "a space whose spatial layers are the backbone's, temporal layers aside",
                   message=f"the space's spatial layers differ from the backbone's ({bb.source}): {diff}{hint}")
    return bb


# --------------------------------------------------------------------------- loading


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_backbone(space: Any, proxy: Any, backbone: Backbone | str | None = None, *, progress: Any = None,
                  cache_dir: Any = None, threads: int | None = None) -> Backbone:
    """:func:`check_temporal`, then the backbone's weights, kept on the CPU (each trial copies them
    to its student's device): a folder's ``model.safetensors``, or the built-in image model
    (trained on first use and cached: ``progress`` phases ``captions`` and ``teacher``;
    ``proxy.teacher``'s settings less its batch, which counts clips; ``threads`` while it trains)."""
    bb = check_temporal(space, proxy, backbone)
    if bb._model is not None:
        return bb
    if bb.path is None:  # the built-in image model
        from archsearch.distill import load_teacher

        spec = {k: v for k, v in (proxy.teacher or {}).items() if k != "batch"}
        image_proxy = replace(proxy, teacher={**spec, "builtin": "image"}, data=None)
        t = load_teacher(image_proxy, kind="image", cache_dir=cache_dir, progress=progress, device="cpu",
                         threads=threads)
        bb.path = Path(t.info["path"])
        bb.fingerprint = t.fingerprint
        bb._model = t.module.cpu().eval().requires_grad_(False)
        bb.candidate = t.module.candidate
        return bb
    bb.model()
    bb.fingerprint = _file_hash(bb.path / "model.safetensors")
    return bb


def prepare_temporal(space: Any, settings: Any, proxy: Any, teacher: Any, table: Any | None, *,
                     backbone: Backbone | str | None = None, device: str | None = None, threads: int | None = None,
                     lock: Any | None = None, progress: Any = None, cache_dir: Any = None) -> TemporalContext:
    """The trial context of a temporal search: the backbone loaded (``backbone``, else
    ``settings.backbone``, else ``search.backbone``, else ``builtin``), the space checked against
    it with the teacher's text encoder and latents, and ``prepare_student`` set to
    :class:`FrozenSpatial`. ``evaluate(candidate, ctx)`` then runs a trial as any other."""
    if teacher is not None and teacher.kind != "video":
        raise ArchsearchError(f"{space.path}: proxy.teacher: the temporal search trains against a video teacher, "
                              f"got a {teacher.kind} one (allowed: {{builtin: video}}, a diffusers UNet3D)")
    if backbone is None:
        backbone = getattr(settings, "backbone", None)
    bb = load_backbone(space, proxy, backbone, progress=progress, cache_dir=cache_dir, threads=threads)
    check_temporal(space, proxy, bb, teacher)
    return TemporalContext(space, settings, proxy, teacher, table, device, threads, lock=lock, backbone=bb,
                           prepare_student=FrozenSpatial(bb))


def temporal_context(ctx: TrialContext, backbone: Backbone | str | None = None,
                     progress: Progress | None = None) -> TemporalContext:
    """:func:`prepare_temporal` on an existing context (what the temporal search method builds),
    keeping its teacher, table, device, threads and lock."""
    return prepare_temporal(ctx.space, ctx.settings, ctx.proxy, ctx.teacher, ctx.table, backbone=backbone,
                            device=ctx.device, threads=ctx.threads, lock=ctx.lock, progress=progress)
