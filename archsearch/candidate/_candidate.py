"""One fully resolved architecture: frozen, hashable, with a stable content id."""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import yaml

from archsearch._util import atomic_write_text, short_hash
from archsearch.errors import CandidateError, ParameterError, SpecError
from archsearch.spec import (
    ADDED_CONDITIONING_TYPES,
    ATTENTION_KINDS,
    ATTENTION_VARIANTS,
    FFN_TYPES,
    KINDS,
    LAYER_TOKENS,
    LIMITS,
    MAX_LAYERS,
    MAX_STAGES,
    RESNET_VARIANTS,
    TEMPORAL_PLACEMENTS,
    TEMPORAL_TYPES,
    SearchSpace,
    enumerate_assignments,
    load_yaml,
    load_yaml_text,
)

__all__ = [
    "CANDIDATE_FORMAT",
    "AddedConditioning",
    "Candidate",
    "OptunaChooser",
    "RandomChooser",
    "StageConfig",
    "TemporalConfig",
    "describe_changes",
    "enumerate_candidates",
    "resolve",
    "sample",
    "sample_many",
]

CANDIDATE_FORMAT = "archsearch.candidate/v1"
#: the longest layout a stage can have: a spec's MAX_LAYERS positions, and an up stage's
#: up_extra_resnets copies of its last group
MAX_LAYOUT = MAX_LAYERS * (1 + int(LIMITS["up_extra_resnets"]))


def _int_ok(v: Any, lo: int, key: str) -> bool:
    """``v`` is an integer from ``lo`` to the spec's documented bound of ``key``."""
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= LIMITS[key]


def _int_allowed(lo: int, key: str) -> str:
    return f"an integer from {lo} to {LIMITS[key]:,}"


def _num_ok(v: Any, key: str) -> bool:
    """``v`` is a finite number from 0 to the spec's documented bound of ``key``."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= LIMITS[key]


@dataclass(frozen=True)
class TemporalConfig:
    """Temporal layers of a video stage: ``count`` layers of ``type`` spread over its layers."""

    type: str = "none"
    count: int = 0
    placement: str = "after_resnet"


@dataclass(frozen=True)
class AddedConditioning:
    """SDXL's ``text_time`` conditioning: the pooled text embedding and ``time_ids`` size and
    crop numbers (each as ``time_id_dim`` sinusoidal features), projected to the time
    embedding's width and added to it (diffusers' ``add_time_proj`` + ``add_embedding``)."""

    type: str = "text_time"
    pooled_dim: int = 1280
    time_ids: int = 6
    time_id_dim: int = 256

    @property
    def in_features(self) -> int:
        return self.pooled_dim + self.time_ids * self.time_id_dim

    @classmethod
    def from_dict(cls, d: Any, where: str = "added_cond") -> "AddedConditioning":
        if not isinstance(d, dict):
            raise CandidateError(f"{where}: expected a mapping with type, pooled_dim, time_ids, time_id_dim")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise CandidateError(f"{where}.{extra[0]}: unknown key (allowed: {', '.join(sorted(known))})")
        ac = cls(**d)
        if ac.type not in ADDED_CONDITIONING_TYPES[1:]:
            raise CandidateError(f"{where}.type: bad value {ac.type!r} (allowed: {', '.join(ADDED_CONDITIONING_TYPES[1:])})")
        for key in ("pooled_dim", "time_ids", "time_id_dim"):
            v = getattr(ac, key)
            if not _int_ok(v, 1, key):
                raise CandidateError(f"{where}.{key}: bad value {v!r} (allowed: {_int_allowed(1, key)})")
        return ac


#: StageConfig fields added after the first release: left out of a candidate's id and file
#: when they hold their default, so every id written before stays what it was
_NEW_STAGE_DEFAULTS: dict[str, Any] = {"layout": (), "rope": False}


@dataclass(frozen=True)
class StageConfig:
    """One resolved stage (down, mid or up). Unused fields hold neutral values.

    ``layout`` (empty for a stage described by counts) lists the stage's blocks in order:
    ``resnet``, ``transformer`` (``transformer_depth`` layers of ``attention``),
    ``cross_ffn`` (a cross-attention + FFN block, no self-attention) and temporal layers
    (``conv1d`` ... ``cross3d``); a layout stage's ``resnet_blocks`` is its ResNet count.
    ``rope``: 2D rotary position embedding in the stage's spatial self-attention.
    """

    channels: int
    resnet_blocks: int
    resnet_variant: str = "plain"
    resnet_expansion: float = 0.0
    transformer_depth: int = 0
    attention: str = "none"
    attention_variant: str = "mha"
    heads: int = 0
    head_dim: int = 0
    qk_norm: bool = False
    ffn_ratio: float = 0.0
    ffn_type: str = "none"
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    layout: tuple[str, ...] = ()
    rope: bool = False

    @property
    def has_transformer(self) -> bool:
        """The stage has attention blocks (and so heads)."""
        if self.layout:
            return "transformer" in self.layout or "cross_ffn" in self.layout
        return self.transformer_depth > 0 and self.attention != "none"

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "stage") -> "StageConfig":
        known = {f.name for f in fields(cls)}
        d = dict(d)
        unused = d.pop(UNUSED_KEY, None)
        if unused is not None:  # what to_yaml set aside: part of the architecture's id, built by no block
            if not isinstance(unused, dict):
                raise CandidateError(f"{where}.{UNUSED_KEY}: expected a mapping of stage settings")
            both = sorted(set(unused) & set(d))
            if both:
                raise CandidateError(f"{where}.{UNUSED_KEY}.{both[0]}: given twice (in the stage and under "
                                     f"{UNUSED_KEY}); keep one")
            d.update(unused)
        extra = sorted(set(d) - known)
        if extra:
            raise CandidateError(f"{where}.{extra[0]}: unknown key (allowed: {', '.join(sorted(known))})")
        t = d.pop("temporal", None) or {}
        if not isinstance(t, dict):
            raise CandidateError(f"{where}.temporal: expected a mapping with type, count, placement")
        if "layout" in d:
            if not isinstance(d["layout"], (list, tuple)) or len(d["layout"]) > MAX_LAYOUT:
                raise CandidateError(f"{where}.layout: expected a list of at most {MAX_LAYOUT:,} layers "
                                     f"(allowed: {', '.join(LAYER_TOKENS)})")
            d["layout"] = tuple(d["layout"])
        try:
            st = cls(**d, temporal=TemporalConfig(**t))
        except TypeError as exc:
            raise CandidateError(f"{where}: {exc}") from None
        st._check(where)
        return st

    def _check(self, where: str) -> None:
        def bad(key: str, allowed: str) -> CandidateError:
            return CandidateError(f"{where}.{key}: bad value {getattr(self, key)!r} (allowed: {allowed})")

        for key, lo in (("channels", 1), ("transformer_depth", 0)):
            if not _int_ok(getattr(self, key), lo, key):
                raise bad(key, _int_allowed(lo, key))
        v = self.resnet_blocks
        # an up stage has up_extra_resnets more than a down stage; a layout's count is its own
        hi = MAX_LAYOUT if self.layout else LIMITS["resnet_blocks"] + LIMITS["up_extra_resnets"]
        if not (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= hi):
            raise bad("resnet_blocks", f"an integer from 1 to {hi:,}")
        for key in ("resnet_expansion", "ffn_ratio"):
            if not _num_ok(getattr(self, key), key):
                raise bad(key, f"a number from 0 to {LIMITS[key]:g}")
        for key in ("qk_norm",):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "true, false")
        if not _int_ok(self.temporal.count, 0, "count"):
            raise CandidateError(f"{where}.temporal.count: bad value {self.temporal.count!r} "
                                 f"(allowed: {_int_allowed(0, 'count')})")
        if self.resnet_variant not in RESNET_VARIANTS:
            raise bad("resnet_variant", ", ".join(RESNET_VARIANTS))
        if self.attention not in ATTENTION_KINDS:
            raise bad("attention", ", ".join(ATTENTION_KINDS))
        if self.attention_variant not in ATTENTION_VARIANTS:
            raise bad("attention_variant", ", ".join(ATTENTION_VARIANTS))
        if self.has_transformer:
            if self.ffn_type not in FFN_TYPES:
                raise bad("ffn_type", ", ".join(FFN_TYPES))
            if self.heads * self.head_dim != self.channels:
                raise CandidateError(
                    f"{where}: heads {self.heads} x head_dim {self.head_dim} != channels {self.channels}"
                )
        if self.temporal.type not in TEMPORAL_TYPES:
            raise CandidateError(f"{where}.temporal.type: bad value {self.temporal.type!r} "
                                 f"(allowed: {', '.join(TEMPORAL_TYPES)})")
        if self.temporal.placement not in TEMPORAL_PLACEMENTS:
            raise CandidateError(f"{where}.temporal.placement: bad value {self.temporal.placement!r} "
                                 f"(allowed: {', '.join(TEMPORAL_PLACEMENTS)})")
        if not isinstance(self.rope, bool):
            raise bad("rope", "true, false")
        if self.layout:
            allowed = tuple(t for t in LAYER_TOKENS if t != "skip")
            for k, token in enumerate(self.layout):
                if token not in allowed:
                    raise CandidateError(f"{where}.layout[{k}]: bad value {token!r} (allowed: {', '.join(allowed)})")
            if self.layout[0] != "resnet":
                raise CandidateError(f"{where}.layout[0]: bad value {self.layout[0]!r} (allowed: resnet)")
            if self.resnet_blocks != self.layout.count("resnet"):
                raise CandidateError(f"{where}.resnet_blocks: {self.resnet_blocks} != the {self.layout.count('resnet')} "
                                     "resnet layers of its layout")
            if "transformer" in self.layout and (self.attention == "none" or self.transformer_depth < 1):
                raise CandidateError(f"{where}.layout: a transformer layer needs attention other than none "
                                     "and transformer_depth >= 1")
            if self.temporal.type != "none":
                raise CandidateError(f"{where}.temporal: a stage with a layout lists its temporal layers in it")

    def scaled(self, width_mult: float, quantum_groups: int, head_dim: int | None = None) -> "StageConfig":
        """This stage with its width multiplied (rounded to fit norm groups and heads).

        ``head_dim`` replaces the stage's head size (narrow proxies keep their head count).
        """
        if width_mult == 1.0 and head_dim is None:
            return self
        hd = (head_dim or self.head_dim) if self.has_transformer else 0
        q = math.lcm(quantum_groups, hd) if self.has_transformer else quantum_groups
        ch = max(q, int(round(self.channels * width_mult / q)) * q)
        heads = ch // hd if self.has_transformer else 0
        return replace(self, channels=ch, heads=heads, head_dim=hd)


#: the key under which :meth:`Candidate.to_yaml` sets aside a stage's settings that no block uses
UNUSED_KEY = "unused"
_ATTENTION_TEMPORAL = ("attn1d", "attn3d", "cross1d", "cross3d")
_CROSS_TEMPORAL = ("cross1d", "cross3d")
_HEAD_KEYS = ("attention_variant", "heads", "qk_norm", "ffn_ratio", "ffn_type")
_STAGE_DEFAULTS = {f.name: (f.default if f.default is not MISSING else f.default_factory())  # type: ignore[misc]
                   for f in fields(StageConfig) if f.default is not MISSING or f.default_factory is not MISSING}


class _BlockMap(dict):
    """A stage in a candidate's YAML: one setting per line, whatever it holds."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_BlockMap, lambda dumper, data: dumper.represent_mapping(
    "tag:yaml.org,2002:map", data.items(), flow_style=False))


def _builds_transformer(name: str, st: StageConfig) -> bool:
    """Whether the model has a transformer block in this stage (what ``model.walk`` builds): a
    stage described by counts has one per ResNet, a mid stage one between each two ResNets
    (diffusers' ``UNetMidBlock2DCrossAttn``), so none with ``resnet_blocks: 1``."""
    if st.layout:
        return "transformer" in st.layout
    if name == "mid":
        return st.has_transformer and st.resnet_blocks >= 2
    return st.has_transformer


def _used_keys(name: str, st: StageConfig) -> set[str]:
    """The stage settings some block of the built model reads (mirrors ``model.walk``)."""
    used = {"channels", "resnet_blocks", "resnet_variant", "layout"}
    if st.resnet_variant == "separable":
        used.add("resnet_expansion")
    transformer = _builds_transformer(name, st)
    cross_ffn = "cross_ffn" in st.layout
    if transformer:
        used |= {"transformer_depth", "attention"}
        if st.attention in ("self", "self_cross"):
            used.add("rope")
    if transformer or cross_ffn:
        used |= {*_HEAD_KEYS, "head_dim"}
    mid_counts = name == "mid" and not st.layout  # the mid's temporal layers do not read its head_dim
    temporal_types = ({t for t in st.layout if t in _ATTENTION_TEMPORAL} if st.layout else
                      ({st.temporal.type} if st.temporal.count > 0 else set()))
    if temporal_types & set(_ATTENTION_TEMPORAL) and not mid_counts:
        used.add("head_dim")
    if st.temporal.type != "none" and st.temporal.count > 0:
        used.add("temporal")
    return used


@dataclass(frozen=True)
class Candidate:
    """A fully resolved backbone: everything the builder needs, nothing searchable.

    ``stages`` is the down path (high to low resolution), ``up`` the up path (low to high
    resolution; ``up[i]`` mirrors ``stages[-1 - i]``), ``mid`` the bottleneck (or None).
    ``origin`` (the space it came from) is metadata: it is not part of :attr:`id`.
    """

    kind: str
    latent_channels: int
    resolution: int
    frames: int
    context_dim: int
    context_length: int
    time_embed_dim: int
    norm_groups: int
    stages: tuple[StageConfig, ...]
    mid: StageConfig | None
    up: tuple[StageConfig, ...]
    added_cond: AddedConditioning | None = None
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        self._check()

    # ----------------------------------------------------------------- identity
    @cached_property
    def id(self) -> str:
        """Stable 12-hex content id (sha256 of the canonical architecture)."""
        return short_hash(self._arch_dict())

    def _arch_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("origin")
        if d["added_cond"] is None:  # fields added later are omitted at their default (ids stay)
            d.pop("added_cond")
        for st in [*d["stages"], *d["up"], *([d["mid"]] if d["mid"] is not None else [])]:
            for key, default in _NEW_STAGE_DEFAULTS.items():
                if st[key] == default:
                    st.pop(key)
                elif key == "layout":
                    st[key] = list(st[key])
        return d

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        d = self._arch_dict()
        d["stages"] = list(d["stages"])
        d["up"] = list(d["up"])
        return {"format": CANDIDATE_FORMAT, "id": self.id, "origin": self.origin, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "candidate") -> "Candidate":
        if not isinstance(d, dict):
            raise CandidateError(f"{source}: expected a mapping (a candidate file written by archsearch)")
        d = dict(d)
        fmt = d.pop("format", CANDIDATE_FORMAT)
        if fmt != CANDIDATE_FORMAT:
            raise CandidateError(f"{source}: format: unsupported {fmt!r} (allowed: {CANDIDATE_FORMAT})")
        claimed = d.pop("id", None)
        if "schema_version" in d and "stages" in d:
            raise CandidateError(
                f"{source}: this is a search space, not a candidate; "
                f"run `archsearch sample {source} -n 1 -o DIR` first"
            )
        optional = {"origin", "added_cond"}
        required = {f.name for f in fields(cls)} - optional
        missing = sorted(required - set(d))
        if missing:
            raise CandidateError(f"{source}: missing key {missing[0]} (a candidate needs: {', '.join(sorted(required))})")
        unknown = sorted(set(d) - required - optional)
        if unknown:
            raise CandidateError(f"{source}: {unknown[0]}: unknown key (allowed: {', '.join(sorted(required))})")
        for key in ("stages", "up"):
            if not isinstance(d[key], list) or not d[key]:
                raise CandidateError(f"{source}: {key}: expected a non-empty list of stages")
        try:
            cand = cls(
                kind=d["kind"],
                latent_channels=d["latent_channels"],
                resolution=d["resolution"],
                frames=d["frames"],
                context_dim=d["context_dim"],
                context_length=d["context_length"],
                time_embed_dim=d["time_embed_dim"],
                norm_groups=d["norm_groups"],
                stages=tuple(StageConfig.from_dict(s, f"{source}: stages[{i}]") for i, s in enumerate(d["stages"])),
                mid=StageConfig.from_dict(d["mid"], f"{source}: mid") if d["mid"] is not None else None,
                up=tuple(StageConfig.from_dict(s, f"{source}: up[{i}]") for i, s in enumerate(d["up"])),
                added_cond=(AddedConditioning.from_dict(d["added_cond"], f"{source}: added_cond")
                            if d.get("added_cond") is not None else None),
                origin=str(d.get("origin") or ""),
            )
        except CandidateError as exc:
            if str(exc).startswith(source):
                raise
            raise CandidateError(f"{source}: {exc}") from None
        if claimed is not None and claimed != cand.id:
            raise CandidateError(f"{source}: id {claimed!r} does not match the architecture (expected {cand.id}); "
                                 "the file was edited: remove the id line to accept the change")
        return cand

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_yaml(self) -> str:
        """The candidate as YAML, listing only the settings its model uses.

        A stage setting no block reads (a stage without attention has no heads; a mid stage with
        one ResNet builds no transformer) is left out when it holds its neutral default, and set
        aside under the stage's ``unused:`` key otherwise: it is part of :attr:`id` (ids written
        before stay what they were), so :meth:`from_dict` reads it back.
        """
        d = self.to_dict()
        aside = False
        for key, stages in (("stages", self.stages), ("up", self.up), ("mid", (self.mid,) if self.mid else ())):
            names = ["mid"] if key == "mid" else [f"{key}{i}" for i in range(len(stages))]
            rows = [d["mid"]] if key == "mid" else d[key]
            for name, st, row in zip(names, stages, rows):
                used = _used_keys(name, st)
                unused = {}
                for k in [k for k in row if k not in used]:
                    value = row.pop(k)
                    default = _STAGE_DEFAULTS.get(k)
                    if k == "temporal":
                        default = asdict(TemporalConfig())
                    if value != default:
                        unused[k] = value
                if unused:
                    row[UNUSED_KEY] = unused
                    aside = True
        for key in ("stages", "up"):
            d[key] = [_BlockMap(row) for row in d[key]]
        if d["mid"] is not None:
            d["mid"] = _BlockMap(d["mid"])
        text = yaml.dump(d, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100)
        if aside:
            text = (f"# {UNUSED_KEY}: settings of the search space that no block of this model uses (e.g. a mid\n"
                    "# stage builds a transformer only between two ResNets); kept because the id covers them\n") + text
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "Candidate":
        """Read a candidate from a YAML (or JSON) file path or YAML text."""
        p = Path(path_or_text) if not (isinstance(path_or_text, str) and "\n" in path_or_text) else None
        if p is not None and (p.suffix in (".yaml", ".yml", ".json") or p.exists()):
            doc = load_yaml(p)
            source = str(p)
        else:
            doc = load_yaml_text(str(path_or_text))
            source = "<candidate>"
        try:
            return cls.from_dict(doc.data, source)
        except SpecError:
            raise

    def save(self, path: str | Path) -> Path:
        """Write the candidate as YAML, atomically."""
        return atomic_write_text(path, self.to_yaml())

    # ----------------------------------------------------------------- checks
    def _check(self) -> None:
        if self.kind not in KINDS:
            raise CandidateError(f"kind: bad value {self.kind!r} (allowed: {', '.join(KINDS)})")
        for key in ("latent_channels", "resolution", "frames", "context_dim", "context_length",
                    "time_embed_dim", "norm_groups"):
            v = getattr(self, key)
            if not _int_ok(v, 1, key):
                raise CandidateError(f"{key}: bad value {v!r} (allowed: {_int_allowed(1, key)})")
        if not 1 <= len(self.stages) <= MAX_STAGES:
            raise CandidateError(f"stages: {len(self.stages)} stages (allowed: 1 to {MAX_STAGES})")
        if len(self.up) != len(self.stages):
            raise CandidateError(f"up: has {len(self.up)} stages, the down path {len(self.stages)} (they must match)")
        if self.resolution % (2 ** (len(self.stages) - 1)):
            raise CandidateError(f"resolution: {self.resolution} is not divisible by {2 ** (len(self.stages) - 1)}")
        for name, st in self.named_stages():
            for ch in (st.channels,):
                if ch % self.norm_groups:
                    raise CandidateError(f"{name}.channels: {ch} is not divisible by norm_groups {self.norm_groups}")
            if self.kind == "image" and st.temporal.type != "none":
                raise CandidateError(f"{name}.temporal: temporal layers need kind: video")
            if self.kind == "image" and any(t in TEMPORAL_TYPES for t in st.layout):
                raise CandidateError(f"{name}.layout: temporal layers need kind: video")
        if self.added_cond is not None and not isinstance(self.added_cond, AddedConditioning):
            raise CandidateError("added_cond: expected an AddedConditioning (type, pooled_dim, time_ids, time_id_dim)")
        for i, (down, up) in enumerate(zip(self.stages, reversed(self.up))):
            if down.channels != up.channels:
                raise CandidateError(f"up[{len(self.up) - 1 - i}].channels: {up.channels} != its down stage's {down.channels}")

    def named_stages(self) -> list[tuple[str, StageConfig]]:
        out = [(f"down{i}", s) for i, s in enumerate(self.stages)]
        if self.mid is not None:
            out.append(("mid", self.mid))
        out += [(f"up{i}", s) for i, s in enumerate(self.up)]
        return out

    def builds_transformer(self, name: str) -> bool:
        """Whether stage ``name`` (``down0``, ``mid``, ``up1``: :meth:`named_stages`) has a
        transformer block in the built model: a mid stage described by counts puts one between
        each two ResNets, so ``resnet_blocks: 1`` builds none whatever its ``attention`` says."""
        return _builds_transformer(name, dict(self.named_stages())[name])

    def cross_attention_blocks(self) -> int:
        """How many blocks of the built model attend to the text encoder's output (the prompt):
        transformers with ``cross`` or ``self_cross`` attention, ``cross_ffn`` layers and the
        ``cross1d`` / ``cross3d`` temporal layers. 0: the model cannot see the prompt (an SDXL
        ``added_cond`` still gives it the pooled text embedding)."""
        n = 0
        for name, st in self.named_stages():
            cross = st.attention in ("cross", "self_cross")
            if st.layout:
                n += sum(1 for t in st.layout if t == "cross_ffn" or t in _CROSS_TEMPORAL
                         or (t == "transformer" and cross))
                continue
            if _builds_transformer(name, st) and cross:
                n += st.resnet_blocks - 1 if name == "mid" else st.resnet_blocks
            if st.temporal.type in _CROSS_TEMPORAL:
                n += st.temporal.count
        return n

    # ----------------------------------------------------------------- views
    def summary(self) -> dict[str, Any]:
        """A flat dict (one row of a results table): per-stage widths, blocks, attention."""
        row: dict[str, Any] = {"id": self.id, "kind": self.kind, "resolution": self.resolution}
        if self.kind == "video":
            row["frames"] = self.frames
        for name, st in self.named_stages():
            row[f"{name}.channels"] = st.channels
            row[f"{name}.resnet_blocks"] = st.resnet_blocks
            if st.layout:
                row[f"{name}.layers"] = " ".join(st.layout)
            row[f"{name}.resnet_variant"] = st.resnet_variant
            built = _builds_transformer(name, st) or "cross_ffn" in st.layout  # what the model has
            row[f"{name}.transformer_depth"] = st.transformer_depth if built else 0
            row[f"{name}.attention"] = st.attention if built else "none"
            if built:
                row[f"{name}.attention_variant"] = st.attention_variant
                row[f"{name}.heads"] = st.heads
                row[f"{name}.ffn_ratio"] = st.ffn_ratio
            if self.kind == "video":
                row[f"{name}.temporal"] = (
                    f"{st.temporal.count}x{st.temporal.type}@{st.temporal.placement}"
                    if st.temporal.type != "none" else "none"
                )
        return row

    def for_proxy(
        self,
        width_mult: float = 1.0,
        resolution: int | None = None,
        frames: int | None = None,
        context_dim: int | None = None,
        context_length: int | None = None,
        latent_channels: int | None = None,
    ) -> "Candidate":
        """The same block structure at proxy scale (narrower, smaller, another text encoder).

        Below width 1, norm groups and head sizes shrink with the width (head counts are
        kept, head size >= 8), so distinct widths stay distinct at proxy scale instead of all
        rounding up to one multiple of lcm(32, 64).
        """
        groups = self.norm_groups
        scale_head = None
        if width_mult < 1.0:
            groups = max(1, int(self.norm_groups * width_mult))
            scale_head = lambda st: max(8, int(round(st.head_dim * width_mult))) if st.has_transformer else None  # noqa: E731
        else:
            scale_head = lambda st: None  # noqa: E731
        stages = tuple(s.scaled(width_mult, groups, scale_head(s)) for s in self.stages)
        up = tuple(s.scaled(width_mult, groups, scale_head(s)) for s in self.up)
        mid = None
        if self.mid is not None:
            mid = self.mid.scaled(width_mult, groups, scale_head(self.mid))
            if mid.channels != stages[-1].channels:  # mid must match the last stage exactly
                ch = stages[-1].channels
                hd = mid.head_dim
                while mid.has_transformer and ch % hd:
                    hd //= 2
                mid = replace(mid, channels=ch, head_dim=hd if mid.has_transformer else 0,
                              heads=ch // hd if mid.has_transformer else 0)
        # Up widths must equal their down stage widths after rounding.
        up = tuple(_fit_width(u, d.channels) for u, d in zip(up, reversed(stages)))
        frames_ = frames if (frames is not None and self.kind == "video") else self.frames
        return replace(
            self,
            stages=stages,
            up=up,
            mid=mid,
            resolution=resolution or self.resolution,
            frames=frames_,
            context_dim=context_dim or self.context_dim,
            context_length=context_length or self.context_length,
            latent_channels=latent_channels or self.latent_channels,
            time_embed_dim=max(groups, int(round(self.time_embed_dim * width_mult))),
            norm_groups=groups,
        )


def describe_changes(before: Candidate, after: Candidate) -> list[str]:
    """What differs between two candidates, in words (``context_dim 32->384``, ``widths
    32/48->16/24``): how :meth:`Candidate.for_proxy` adapted one, for a log line."""
    out: list[str] = []
    for key in ("kind", "latent_channels", "resolution", "frames", "context_dim", "context_length",
                "time_embed_dim", "norm_groups"):
        a, b = getattr(before, key), getattr(after, key)
        if a != b:
            out.append(f"{key} {a}->{b}")

    def joined(c: Candidate, attr: str) -> str:
        return "/".join(str(getattr(st, attr)) for st in c.stages)

    for attr, label in (("channels", "widths"), ("head_dim", "head sizes")):
        a, b = joined(before, attr), joined(after, attr)
        if a != b:
            out.append(f"{label} {a}->{b}")
    if not out and before.id != after.id:
        out.append("blocks differ")
    return out


def _fit_width(st: StageConfig, channels: int) -> StageConfig:
    """``st`` at exactly ``channels`` wide (halving the head size until it divides)."""
    if st.channels == channels:
        return st
    if not st.has_transformer:
        return replace(st, channels=channels)
    hd = st.head_dim
    while channels % hd:
        hd //= 2
    return replace(st, channels=channels, head_dim=hd, heads=channels // hd)


# --------------------------------------------------------------------------- sampling


class RandomChooser:
    """Draws every dimension uniformly from a seeded :class:`random.Random`."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def categorical(self, name: str, options: list[Any]) -> Any:
        return options[self.rng.randrange(len(options))]

    def integer(self, name: str, low: int, high: int, step: int) -> int:
        return self.rng.randrange(low, high + 1, step)


class OptunaChooser:
    """Asks an Optuna trial (define-by-run): ``suggest_categorical`` / ``suggest_int``."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def categorical(self, name: str, options: list[Any]) -> Any:
        return self.trial.suggest_categorical(name, list(options))

    def integer(self, name: str, low: int, high: int, step: int) -> int:
        return self.trial.suggest_int(name, low, high, step=step)


def _from_resolved(space: SearchSpace, d: dict[str, Any]) -> Candidate:
    try:
        return Candidate(
            kind=d["kind"],
            latent_channels=d["latent_channels"],
            resolution=d["resolution"],
            frames=d["frames"],
            context_dim=d["context_dim"],
            context_length=d["context_length"],
            time_embed_dim=d["time_embed_dim"],
            norm_groups=d["norm_groups"],
            stages=tuple(StageConfig.from_dict(s, f"down{i}") for i, s in enumerate(d["stages"])),
            mid=StageConfig.from_dict(d["mid"], "mid") if d["mid"] is not None else None,
            up=tuple(StageConfig.from_dict(s, f"up{i}") for i, s in enumerate(d["up"])),
            added_cond=AddedConditioning.from_dict(d["added_cond"]) if d.get("added_cond") else None,
            origin=space.name,
        )
    except CandidateError as exc:
        raise SpecError(f"{space.path}: a candidate of this space is invalid: {exc}") from None


def resolve(space: SearchSpace, chooser: Any) -> Candidate:
    """Resolve ``space`` with any chooser (define-by-run), e.g. :class:`OptunaChooser`."""
    return _from_resolved(space, space.resolve_dict(chooser))


def sample(space: SearchSpace, seed: int = 0) -> Candidate:
    """One candidate drawn uniformly per dimension, reproducible from ``seed``."""
    return resolve(space, RandomChooser(random.Random(seed)))


def sample_many(space: SearchSpace, n: int, seed: int = 0, unique: bool = True) -> list[Candidate]:
    """``n`` candidates from one seeded stream; distinct ones if ``unique`` (and possible)."""
    rng = random.Random(seed)
    out: list[Candidate] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n and attempts < 50 * n + 100:
        attempts += 1
        c = resolve(space, RandomChooser(rng))
        if unique and c.id in seen:
            continue
        seen.add(c.id)
        out.append(c)
    return out


def enumerate_candidates(space: SearchSpace, limit: int | None = None) -> Iterator[Candidate]:
    """Every candidate of ``space``, each once, depth first over its define-by-run choices.

    The same enumeration :meth:`SearchSpace.size` counts, so a whole small space yields
    exactly ``space.size()`` distinct candidates (check the size before enumerating a large
    one). ``limit``: stop after this many.
    """
    if limit is not None and limit < 0:
        raise ParameterError("limit", f"{limit}: bad value (allowed: None or an integer >= 0)")

    def distinct() -> Iterator[Candidate]:
        # two assignments can build one architecture (adjacent {choice: [transformer, skip]}
        # layers): each candidate is yielded once, as space.size() counts it
        seen: set[str] = set()
        for c in enumerate_assignments(lambda ch: resolve(space, ch)):
            if c.id not in seen:
                seen.add(c.id)
                yield c

    it = distinct()
    return it if limit is None else itertools.islice(it, limit)
