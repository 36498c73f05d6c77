"""The search-space DSL: validation, dimensions, exact size, define-by-run resolution.

A value anywhere a stage key is allowed may be

* a fixed value: ``channels: 256``
* a choice: ``channels: {choice: [192, 256, 320]}``
* an integer range, both ends included: ``resnet_blocks: {range: [1, 3, 1]}``

Resolution is *define-by-run*: :meth:`SearchSpace.resolve_dict` asks a chooser for each
dimension only when it matters (the head size of a stage without attention is never asked),
so an Optuna trial, a seeded RNG and the exact space-size counter all walk the same code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, TypeVar

from archsearch._util import short_hash
from archsearch.errors import SpecError
from archsearch.spec._loader import LocatedDocument, load_yaml, load_yaml_text

__all__ = [
    "ADDED_CONDITIONING_TYPES",
    "LAYER_TOKENS",
    "LIMITS",
    "MAX_COUNT_STEPS",
    "MAX_LAYERS",
    "MAX_OPTIONS",
    "MAX_STAGES",
    "SCHEMA_VERSION",
    "SPATIAL_LAYER_TOKENS",
    "Chooser",
    "Dimension",
    "PathChooser",
    "SearchSpace",
    "enumerate_assignments",
    "load_space",
    "load_space_text",
]

SCHEMA_VERSION = 1

KINDS = ("image", "video")
RESNET_VARIANTS = ("plain", "separable")
ATTENTION_KINDS = ("none", "cross", "self", "self_cross")
ATTENTION_VARIANTS = ("mha", "mqa")
FFN_TYPES = ("geglu", "gelu")
#: SnapGen-V's six temporal layers: convolution over time (1D: 3x1x1) or space-time (3D:
#: 3x3x3); self-attention over the frames of each pixel (1D) or over all T*H*W tokens (3D);
#: the same with cross-attention to the text after it (cross1d, cross3d).
TEMPORAL_TYPES = ("none", "conv1d", "conv3d", "attn1d", "attn3d", "cross1d", "cross3d")
TEMPORAL_PLACEMENTS = ("after_resnet", "after_transformer")
#: what one position of a stage's ``layers:`` may hold (``skip``: nothing, only useful in a
#: choice); the temporal types are video-only positions
SPATIAL_LAYER_TOKENS = ("resnet", "transformer", "cross_ffn", "skip")
LAYER_TOKENS = SPATIAL_LAYER_TOKENS + TEMPORAL_TYPES[1:]
ADDED_CONDITIONING_TYPES = ("none", "text_time")

TOP_KEYS = {
    "schema_version", "name", "description", "kind", "latent_channels", "resolution", "frames",
    "context_dim", "context_length", "time_embed_dim", "norm_groups", "width_mult",
    "up_extra_resnets", "defaults", "stages", "mid", "up", "constraints", "search", "proxy",
    "added_conditioning",
}
STAGE_KEYS = {
    "channels", "resnet_blocks", "resnet_variant", "resnet_expansion", "transformer_depth",
    "attention", "attention_variant", "head_dim", "heads", "qk_norm", "ffn_ratio", "ffn_type",
    "temporal", "layers", "rope",
}
ADDED_CONDITIONING_KEYS = {"type", "pooled_dim", "time_ids", "time_id_dim"}
ADDED_CONDITIONING_DEFAULTS: dict[str, Any] = {"type": "none", "pooled_dim": 1280, "time_ids": 6, "time_id_dim": 256}
TEMPORAL_KEYS = {"type", "count", "placement"}
CONSTRAINT_KEYS = {"max_params", "max_latency_ms", "max_memory_mb", "latency_target"}

#: Upper bounds of every size a spec may hold (README, "Limits"). They are generous -- SDXL's
#: UNet (widths 320-1280, transformer depth 10, text 2048 x 77) and T5-sized text encoders
#: (4096 wide, 512 tokens) fit with room -- and they keep an absurd value (``channels: 100000``)
#: from reaching the builder. A value over its bound is refused with the bound in the error.
LIMITS: dict[str, int | float] = {
    # top level
    "latent_channels": 256,
    "resolution": 1024,         # latent side (8192 px through an /8 VAE)
    "frames": 512,
    "context_dim": 8192,
    "context_length": 4096,
    "time_embed_dim": 32768,
    "norm_groups": 1024,
    "up_extra_resnets": 16,
    "width_mult": 16.0,
    # a stage
    "channels": 8192,
    "resnet_blocks": 32,
    "resnet_expansion": 16.0,
    "transformer_depth": 64,
    "heads": 1024,
    "head_dim": 1024,
    "ffn_ratio": 16.0,
    "count": 32,                # temporal layers per stage
    # added_conditioning
    "pooled_dim": 8192,
    "time_ids": 64,
    "time_id_dim": 4096,
}
#: stages of the down path (a latent side halves at each)
MAX_STAGES = 8
#: positions of one stage's ``layers:``
MAX_LAYERS = 256
#: options of one ``{choice: [...]}`` or ``{range: [...]}``
MAX_OPTIONS = 1024
#: work the exact size count may do over the whole space: each define-by-run assignment it
#: enumerates costs :data:`ASSIGNMENT_STEPS` plus one per choice it makes (a step is about a
#: microsecond and a half: this bounds validation to a second or two, about 35,000 assignments
#: of a space like unet_mobile)
MAX_COUNT_STEPS = 1_000_000
ASSIGNMENT_STEPS = 20
#: a candidate file (``archsearch.candidate``, which this module must not import) says so here
CANDIDATE_FORMAT_PREFIX = "archsearch.candidate/"
#: the commands that take a candidate file (what a candidate given to a space command is told)
CANDIDATE_COMMANDS = ("build", "train", "export", "profile", "predict")

STAGE_DEFAULTS: dict[str, Any] = {
    "resnet_blocks": 2,
    "resnet_variant": "plain",
    "resnet_expansion": 2,
    "transformer_depth": 1,
    "attention": "none",
    "attention_variant": "mha",
    "qk_norm": False,
    "ffn_ratio": 4,
    "ffn_type": "geglu",
    "rope": False,
}
TEMPORAL_DEFAULTS: dict[str, Any] = {"type": "none", "count": 1, "placement": "after_resnet"}

Path_ = tuple[Any, ...]


class Chooser(Protocol):
    """What :meth:`SearchSpace.resolve_dict` asks for each dimension (define-by-run)."""

    def categorical(self, name: str, options: list[Any]) -> Any: ...

    def integer(self, name: str, low: int, high: int, step: int) -> int: ...


@dataclass(frozen=True)
class Dimension:
    """One searchable dimension as written in the spec."""

    name: str
    options: tuple[Any, ...]
    line: int | None = None

    def __len__(self) -> int:
        return len(self.options)


# --------------------------------------------------------------------------- value checks


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class _Rule:
    check: Callable[[Any], bool]
    allowed: str
    integer: bool = False  # the value must be an integer (a float is named as such)


def _int_in(key: str, lo: int) -> _Rule:
    """An integer from ``lo`` to the documented bound of ``key`` (:data:`LIMITS`)."""
    hi = LIMITS[key]
    return _Rule(lambda v: _is_int(v) and lo <= v <= hi, f"an integer from {lo} to {hi:,}", True)


def _num_in(key: str) -> _Rule:
    """A number > 0 up to the documented bound of ``key`` (:data:`LIMITS`)."""
    hi = LIMITS[key]
    return _Rule(lambda v: _is_num(v) and 0 < v <= hi, f"a number > 0 and <= {hi:g}", False)


def _one_of(options: tuple[str, ...]) -> _Rule:
    return _Rule(lambda v: isinstance(v, str) and v in options, ", ".join(options))


_BOOL = _Rule(lambda v: isinstance(v, bool), "true, false")

STAGE_RULES: dict[str, _Rule] = {
    "channels": _int_in("channels", 1),
    "resnet_blocks": _int_in("resnet_blocks", 1),
    "resnet_variant": _one_of(RESNET_VARIANTS),
    "resnet_expansion": _num_in("resnet_expansion"),
    "transformer_depth": _int_in("transformer_depth", 0),
    "attention": _one_of(ATTENTION_KINDS),
    "attention_variant": _one_of(ATTENTION_VARIANTS),
    "head_dim": _int_in("head_dim", 1),
    "heads": _int_in("heads", 1),
    "qk_norm": _BOOL,
    "ffn_ratio": _num_in("ffn_ratio"),
    "ffn_type": _one_of(FFN_TYPES),
    "rope": _BOOL,
}
TEMPORAL_RULES: dict[str, _Rule] = {
    "type": _one_of(TEMPORAL_TYPES),
    "count": _int_in("count", 0),
    "placement": _one_of(TEMPORAL_PLACEMENTS),
}
#: the top-level sizes: (default, lowest value)
TOP_SIZES: dict[str, tuple[int, int]] = {
    "latent_channels": (4, 1), "resolution": (64, 1), "context_dim": (768, 1), "context_length": (77, 1),
    "norm_groups": (32, 1), "frames": (8, 1), "up_extra_resnets": (1, 0),
}


def _bad_value(v: Any, rule: _Rule | None = None) -> str:
    """``bad value X``, with what YAML made of it when that is the likely surprise: ``1e9``
    is text to YAML 1.1 (a float needs a dot and a signed exponent: ``1.0e+9``), and a float
    where an integer is needed is named as one."""
    msg = f"bad value {_describe(v)}"
    if isinstance(v, str):
        try:
            x = float(v.replace("_", ""))
        except ValueError:
            return msg
        digits = f", write it in digits ({int(x)})" if math.isfinite(x) and x.is_integer() and abs(x) < 1e18 else ""
        return msg + f": YAML reads {_short(v)} as text, not a number{digits}"
    if isinstance(v, float) and rule is not None and rule.integer:
        return msg + ", a float"
    return msg


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _describe(v: Any) -> str:
    if isinstance(v, str):
        return repr(_short(v))
    if v is None:
        return "null"
    if isinstance(v, (dict, list, tuple, set)):
        return type(v).__name__
    return _short(repr(v))


# --------------------------------------------------------------------------- the space


class SearchSpace:
    """A validated search space. Build one with :func:`load_space`."""

    def __init__(self, doc: LocatedDocument) -> None:
        self._doc = doc
        self.data: dict[str, Any] = doc.data
        self.path: str = doc.source
        self._validate()

    # ----------------------------------------------------------------- public properties
    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", "image"))

    @property
    def n_stages(self) -> int:
        return len(self.data["stages"])

    @property
    def search(self) -> dict[str, Any]:
        return dict(self.data.get("search") or {})

    @property
    def proxy(self) -> dict[str, Any]:
        return dict(self.data.get("proxy") or {})

    @property
    def constraints(self) -> dict[str, Any]:
        c = self.data.get("constraints") or {}
        return {k: c.get(k) for k in sorted(CONSTRAINT_KEYS)}

    @property
    def hash(self) -> str:
        """Content hash of the architecture part of the spec (not search/proxy settings)."""
        arch = {k: v for k, v in self.data.items() if k not in ("search", "proxy", "description")}
        return short_hash(arch)

    def line_of(self, path: Path_) -> int | None:
        return self._doc.line_of(tuple(path))

    def fail(self, path: Path_, value: Any, allowed: str | None = None, message: str | None = None):
        """Raise the one-line :class:`SpecError` for ``path`` (used by later stages too)."""
        msg = message or f"bad value {_describe(value)}"
        raise self._doc.fail(tuple(path), msg, allowed)

    def __repr__(self) -> str:
        return f"SearchSpace(name={self.name!r}, kind={self.kind!r}, stages={self.n_stages})"

    # ----------------------------------------------------------------- validation
    def _err(self, path: Path_, msg: str, allowed: str | None = None) -> SpecError:
        return self._doc.fail(tuple(path), msg, allowed)

    def _options(self, path: Path_, value: Any, rule: _Rule | None = None) -> list[Any]:
        """The values a (possibly searchable) entry can take; validates the choice syntax.

        At most :data:`MAX_OPTIONS` options: a range's size is computed (and its ends checked
        against ``rule``) before any list is made, so ``{range: [1, 100000000]}`` costs nothing.
        """
        if isinstance(value, dict):
            keys = set(value)
            if keys == {"choice"}:
                opts = value["choice"]
                if not isinstance(opts, list) or not opts:
                    raise self._err(path + ("choice",), "must be a non-empty list", "a list of values")
                if len(opts) > MAX_OPTIONS:
                    raise self._err(path + ("choice",), f"{len(opts):,} options",
                                    f"at most {MAX_OPTIONS:,} options in one choice")
                for o in opts:
                    if isinstance(o, (dict, list)):
                        raise self._err(path + ("choice",), f"bad option {_describe(o)}",
                                        "plain values (numbers, names, true/false)")
                if len({repr(o) for o in opts}) != len(opts):
                    raise self._err(path + ("choice",), f"repeated options in {_short(repr(opts))}", "distinct values")
                return list(opts)
            if keys == {"range"}:
                r = value["range"]
                if not (isinstance(r, list) and len(r) in (2, 3) and all(_is_num(x) for x in r)):
                    raise self._err(path + ("range",), f"bad range {_describe(r)}", "[low, high] or [low, high, step]")
                lo, hi = r[0], r[1]
                step = r[2] if len(r) == 3 else 1
                if step <= 0 or hi < lo:
                    raise self._err(path + ("range",), f"empty range {r!r}", "low <= high and step > 0")
                if rule is not None:
                    for end in (lo, hi):
                        if not rule.check(end):
                            raise self._err(path + ("range",), _bad_value(end, rule), rule.allowed)
                exact = all(_is_int(x) for x in (lo, hi, step))
                n = (hi - lo) // step + 1 if exact else int(math.floor((hi - lo) / step + 1e-9)) + 1
                if n > MAX_OPTIONS:
                    raise self._err(path + ("range",), f"range {r!r} has {n:,} options",
                                    f"at most {MAX_OPTIONS:,} options in one range; a larger step")
                if exact:
                    return list(range(lo, hi + 1, step))
                return [round(lo + i * step, 10) for i in range(n)]
            raise self._err(path, f"unknown form with keys {sorted(map(str, keys))}",
                            "a value, {choice: [...]}, {range: [lo, hi, step]}")
        if isinstance(value, list):
            raise self._err(path, "a bare list is ambiguous", "a value, {choice: [...]}, {range: [lo, hi, step]}")
        return [value]

    def _check_value(self, path: Path_, value: Any, rule: _Rule) -> list[Any]:
        opts = self._options(path, value, rule)
        for o in opts:
            if not rule.check(o):
                raise self._err(path, _bad_value(o, rule), rule.allowed)
        return opts

    def _fixed(self, path: Path_, value: Any, rule: _Rule) -> Any:
        if isinstance(value, dict):
            raise self._err(path, "cannot be searched", f"a fixed value: {rule.allowed}")
        if not rule.check(value):
            raise self._err(path, _bad_value(value, rule), rule.allowed)
        return value

    def _refuse_candidate(self, d: dict[Any, Any]) -> None:
        """A candidate file (``pareto/<id>.yaml``, ``archsearch sample -o``) given where a space
        is expected: say what it is and which commands take it, not "format: unknown key"."""
        fmt = d.get("format")
        tagged = isinstance(fmt, str) and fmt.startswith(CANDIDATE_FORMAT_PREFIX)
        shaped = "schema_version" not in d and {"stages", "up", "mid", "time_embed_dim"} <= set(d)
        if not (tagged or shaped):
            return
        ident = f", id {_short(str(d['id']), 20)}" if isinstance(d.get("id"), str) else ""
        what = f"{fmt}{ident}" if tagged else f"a resolved architecture{ident}"
        commands = ", ".join(CANDIDATE_COMMANDS[:-1]) + f" or {CANDIDATE_COMMANDS[-1]}"
        raise SpecError(f"{self.path}: this is a candidate file ({what}), not a search space; this command takes a "
                        f"search space (allowed: a space YAML here; give the candidate to archsearch {commands}, "
                        f"e.g. `archsearch build {self.path}`)")

    def _validate(self) -> None:
        d = self.data
        if not isinstance(d, dict):
            raise self._err((), "the file must be a YAML mapping", "a mapping with schema_version, name, stages, ...")
        self._refuse_candidate(d)
        unknown = sorted((str(k) for k in set(d) - TOP_KEYS), key=str)
        if unknown:
            raise self._err((unknown[0],), "unknown key", ", ".join(sorted(TOP_KEYS)))
        if "schema_version" not in d:
            raise self._err((), "missing key schema_version", str(SCHEMA_VERSION))
        if not _is_int(d["schema_version"]) or d["schema_version"] != SCHEMA_VERSION:
            raise self._err(("schema_version",), f"unsupported version {_describe(d['schema_version'])}", str(SCHEMA_VERSION))
        if not isinstance(d.get("name"), str) or not d["name"].strip():
            raise self._err(("name",), f"bad value {_describe(d.get('name'))}", "a non-empty string")
        self._fixed(("kind",), d.get("kind", "image"), _one_of(KINDS))
        for key, (default, lo) in TOP_SIZES.items():
            self._fixed((key,), d.get(key, default), _int_in(key, lo))
        if d.get("time_embed_dim") is not None:
            self._fixed(("time_embed_dim",), d["time_embed_dim"], _int_in("time_embed_dim", 1))
        self._width_opts = self._check_value(("width_mult",), d.get("width_mult", 1.0), _num_in("width_mult"))
        self._check_added_conditioning(d.get("added_conditioning"))

        stages = d.get("stages")
        if not isinstance(stages, list) or not stages:
            raise self._err(("stages",), f"bad value {_describe(stages)}", "a non-empty list of stage mappings")
        if len(stages) > MAX_STAGES:
            raise self._err(("stages",), f"{len(stages)} stages", f"at most {MAX_STAGES} stages")
        res = d.get("resolution", 64)
        if res % (2 ** (len(stages) - 1)):
            raise self._err(("resolution",), f"{res} is not divisible by 2**(stages-1) = {2 ** (len(stages) - 1)}",
                            f"a multiple of {2 ** (len(stages) - 1)}")
        defaults = d.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise self._err(("defaults",), f"bad value {_describe(defaults)}", "a mapping of stage keys")
        if "channels" in defaults:
            raise self._err(("defaults", "channels"), "channels cannot have a default", "set channels per stage")
        if "layers" in defaults:
            raise self._err(("defaults", "layers"), "layers cannot have a default", "set layers per stage")
        self._check_stage(("defaults",), defaults, need_channels=False)
        for i, st in enumerate(stages):
            if not isinstance(st, dict):
                raise self._err(("stages", i), f"bad value {_describe(st)}", "a mapping of stage keys")
            if "channels" not in st:
                raise self._err(("stages", i), "missing key channels",
                                f"an integer from 1 to {LIMITS['channels']:,} or a choice")
            self._check_stage(("stages", i), st, need_channels=True)
        mid = d.get("mid", {})
        if mid is not None and mid != "none":
            if not isinstance(mid, dict):
                raise self._err(("mid",), f"bad value {_describe(mid)}", "a mapping of stage keys, or none")
            if "channels" in mid:
                raise self._err(("mid", "channels"), "the mid block takes the last stage's width", "no channels key")
            self._check_stage(("mid",), mid, need_channels=False)
        up = d.get("up", "mirror")
        if up != "mirror":
            if not isinstance(up, list) or len(up) != len(stages):
                raise self._err(("up",), f"bad value {_describe(up)}",
                                f"'mirror' or a list of {len(stages)} override mappings (low to high resolution)")
            for i, ov in enumerate(up):
                if ov is None:
                    continue
                if not isinstance(ov, dict):
                    raise self._err(("up", i), f"bad value {_describe(ov)}", "a mapping of stage keys (or null)")
                if "channels" in ov:
                    raise self._err(("up", i, "channels"), "up stages take the width of their down stage",
                                    "no channels key in up overrides")
                self._check_stage(("up", i), ov, need_channels=False)
                k = len(stages) - 1 - i
                if "layers" in stages[k] and "temporal" in ov and not {"layers", "resnet_blocks"} & set(ov):
                    raise self._err(("up", i, "temporal"), f"this up stage mirrors stages[{k}].layers, "
                                    "whose temporal layers are positions", "layers: [...] in this override")
        cons = d.get("constraints") or {}
        if not isinstance(cons, dict):
            raise self._err(("constraints",), f"bad value {_describe(cons)}", ", ".join(sorted(CONSTRAINT_KEYS)))
        for k, v in cons.items():
            if k not in CONSTRAINT_KEYS:
                raise self._err(("constraints", str(k)), "unknown key", ", ".join(sorted(CONSTRAINT_KEYS)))
            if k == "latency_target":
                if v is not None and not isinstance(v, str):
                    raise self._err(("constraints", k), f"bad value {_describe(v)}", "a target name such as cpu, cuda, ane")
            elif v is not None and not (_is_num(v) and v > 0):
                raise self._err(("constraints", k), f"bad value {_describe(v)}", "a number > 0 or null")
        for k in ("search", "proxy"):
            if d.get(k) is not None and not isinstance(d[k], dict):
                raise self._err((k,), f"bad value {_describe(d[k])}", "a mapping")
        self._check_widths()
        # Walk every assignment once (per independent group): any width/head mismatch that
        # only some combination of choices produces is reported now, with its line.
        self._size = self._count()

    def _check_stage(self, path: Path_, st: dict[str, Any], need_channels: bool) -> None:
        for key, value in st.items():
            if key not in STAGE_KEYS:
                raise self._err(path + (str(key),), "unknown key", ", ".join(sorted(STAGE_KEYS)))
            if key == "temporal":
                if self.kind != "video":
                    raise self._err(path + (key,), "temporal layers need kind: video", "kind: video")
                if not isinstance(value, dict):
                    raise self._err(path + (key,), f"bad value {_describe(value)}", "a mapping with type, count, placement")
                for tk, tv in value.items():
                    if tk not in TEMPORAL_KEYS:
                        raise self._err(path + (key, str(tk)), "unknown key", ", ".join(sorted(TEMPORAL_KEYS)))
                    self._check_value(path + (key, tk), tv, TEMPORAL_RULES[tk])
                continue
            if key == "layers":
                self._check_layers(path + (key,), value)
                continue
            self._check_value(path + (key,), value, STAGE_RULES[key])
        if "heads" in st and "head_dim" in st:
            raise self._err(path + ("heads",), "give heads or head_dim, not both", "one of heads, head_dim")
        if "layers" in st:
            for key in ("resnet_blocks", "temporal"):
                if key in st:
                    what = ("the number of layers comes from layers" if key == "resnet_blocks"
                            else "temporal layers go among the layers (conv1d, attn1d, ...)")
                    raise self._err(path + (key,), f"give layers or {key}, not both: {what}",
                                    "one of layers, " + key)

    def _layer_tokens(self) -> tuple[str, ...]:
        return LAYER_TOKENS if self.kind == "video" else SPATIAL_LAYER_TOKENS

    def _check_layers(self, path: Path_, value: Any) -> None:
        """``layers: [resnet, {choice: [transformer, skip]}, ...]``: one entry per position."""
        tokens = self._layer_tokens()
        if not isinstance(value, list) or not value:
            raise self._err(path, f"bad value {_describe(value)}",
                            "a non-empty list of " + ", ".join(tokens) + " (each may be a {choice: [...]})")
        if len(value) > MAX_LAYERS:
            raise self._err(path, f"{len(value):,} layers", f"at most {MAX_LAYERS} positions in one stage")
        for k, entry in enumerate(value):
            if isinstance(entry, dict) and "range" in entry:
                raise self._err(path + (k,), "a layer cannot be a range", "a layer name or {choice: [...]}")
            opts = self._options(path + (k,), entry)
            for o in opts:
                if o not in tokens:
                    extra = "" if self.kind == "video" or o not in LAYER_TOKENS else " (temporal layers need kind: video)"
                    raise self._err(path + (k,), f"bad value {_describe(o)}{extra}", ", ".join(tokens))
            if k == 0 and opts != ["resnet"]:
                bad = next(o for o in opts if o != "resnet")
                raise self._err(path + (0,), f"bad value {_describe(bad)}",
                                "resnet: a stage's first layer is a fixed resnet, it sets the stage's width")

    def _check_added_conditioning(self, ac: Any) -> None:
        """``added_conditioning: {type: text_time, pooled_dim, time_ids, time_id_dim}`` (SDXL)."""
        if ac is None or ac == "none":
            return
        path = ("added_conditioning",)
        if not isinstance(ac, dict):
            raise self._err(path, f"bad value {_describe(ac)}",
                            "none, or a mapping with " + ", ".join(sorted(ADDED_CONDITIONING_KEYS)))
        for k, v in ac.items():
            if k not in ADDED_CONDITIONING_KEYS:
                raise self._err(path + (str(k),), "unknown key", ", ".join(sorted(ADDED_CONDITIONING_KEYS)))
            rule = _one_of(ADDED_CONDITIONING_TYPES) if k == "type" else _int_in(k, 1)
            self._fixed(path + (k,), v, rule)

    def added_conditioning(self) -> dict[str, Any] | None:
        """The resolved ``added_conditioning`` section, or None when there is none."""
        ac = self.data.get("added_conditioning")
        if not isinstance(ac, dict):
            return None
        out = {**ADDED_CONDITIONING_DEFAULTS, **ac}
        if out["type"] == "none":
            return None
        return out

    def _merged(self, st: dict[str, Any] | None) -> dict[str, Any]:
        """Stage defaults, then the spec's ``defaults:``, then the stage's own keys."""
        out = dict(STAGE_DEFAULTS)
        defaults = self.data.get("defaults") or {}
        for src in (defaults, st or {}):
            for k, v in src.items():
                if k == "temporal":
                    out["temporal"] = {**out.get("temporal", {}), **v}
                elif k in ("heads", "head_dim"):
                    out.pop("heads", None)
                    out.pop("head_dim", None)
                    out[k] = v
                else:
                    out[k] = v
        if "heads" not in out and "head_dim" not in out:
            out["head_dim"] = 64
        out["temporal"] = {**TEMPORAL_DEFAULTS, **out.get("temporal", {})}
        if st and "layers" in st:  # a layout lists its layers: defaults' counts do not apply
            out["temporal"] = dict(TEMPORAL_DEFAULTS)
        return out

    def _check_widths(self) -> None:
        """Every width a stage can take must split into norm groups and attention heads."""
        groups = self.data.get("norm_groups", 32)
        for i, raw in enumerate(self.data["stages"]):
            st = self._merged(raw)
            ch_path = ("stages", i, "channels")
            for ch in self._options(ch_path, st["channels"]):
                if 1.0 in self._width_opts and ch % groups:
                    raise self._err(ch_path, f"{ch} is not divisible by norm_groups {groups}",
                                    f"a multiple of {groups}")
                attn = self._options(("stages", i, "attention"), st["attention"])
                if attn == ["none"] or 1.0 not in self._width_opts:
                    continue
                key = "heads" if "heads" in st else "head_dim"
                for h in self._options(("stages", i, key), st[key]):
                    if ch % h:
                        what = "head count" if key == "heads" else "head_dim"
                        raise self._err(ch_path, f"{ch} is not divisible by {what} {h}",
                                        f"a multiple of {h}, or another {key}")

    # ----------------------------------------------------------------- dimensions and size
    def dimensions(self) -> list[Dimension]:
        """Every searchable entry as written (choice or range), in resolution order."""
        dims: list[Dimension] = []

        def scan(name: str, path: Path_, value: Any) -> None:
            if isinstance(value, dict) and set(value) & {"choice", "range"}:
                dims.append(Dimension(name, tuple(self._options(path, value)), self.line_of(path)))

        scan("width_mult", ("width_mult",), self.data.get("width_mult", 1.0))
        sources: list[tuple[str, Path_, dict[str, Any]]] = [("defaults", ("defaults",), self.data.get("defaults") or {})]
        sources += [(f"down{i}", ("stages", i), st) for i, st in enumerate(self.data["stages"])]
        if isinstance(self.data.get("mid", {}), dict):
            sources.append(("mid", ("mid",), self.data.get("mid") or {}))
        if isinstance(self.data.get("up"), list):
            sources += [(f"up{i}", ("up", i), ov or {}) for i, ov in enumerate(self.data["up"])]
        for prefix, path, st in sources:
            for k, v in st.items():
                if k == "temporal":
                    for tk, tv in v.items():
                        scan(f"{prefix}.temporal.{tk}", path + (k, tk), tv)
                elif k == "layers":
                    for pos, entry in enumerate(v):
                        scan(f"{prefix}.layers.{pos}", path + (k, pos), entry)
                else:
                    scan(f"{prefix}.{k}", path + (k,), v)
        return dims

    def size(self) -> int:
        """The exact number of distinct candidates (see :meth:`_count`)."""
        return self._size

    def _count(self) -> int:
        """The exact number of distinct candidates.

        Dimensions that cannot change the architecture in a given assignment (e.g. the
        head size of a stage without attention) are not asked, hence not counted. Stages
        are independent except that an up stage follows its down stage, so the count is a
        product over (down stage + its up stage) groups, the mid block and the width
        multiplier; each group is enumerated exactly and its distinct outcomes counted, so
        two assignments that build the same stage (``[transformer, skip]`` and
        ``[skip, transformer]`` in adjacent ``layers`` positions) count once.
        """
        budget = _Budget(MAX_COUNT_STEPS)
        total = len(self._width_opts)
        n = self.n_stages
        for i in range(n):
            tick = budget.spend(lambda n, i=i: self._too_many(("stages", i), f"stages[{i}] and its up stage", n))
            total *= _count_distinct(lambda ch, i=i: self._resolve_pair(ch, i, 1.0), tick)
        if self._has_mid():
            # The count does not depend on the width, but validity does: try every width
            # the last stage can have (at width_mult 1; other multipliers round to fit).
            last = self._merged(self.data["stages"][-1])
            widths = self._options(("stages", self.n_stages - 1, "channels"), last["channels"])
            if 1.0 not in self._width_opts:
                widths = [math.lcm(*range(1, 257))]  # divisible by any head option
            tick = budget.spend(lambda n: self._too_many(("mid",), "the mid block", n))
            counts = {_count_distinct(lambda ch, w=w: self._resolve_mid(ch, w), tick) for w in widths}
            total *= counts.pop()
        return total

    def _too_many(self, path: Path_, what: str, done: int) -> SpecError:
        return self._err(path, f"too many combinations to count: the exact count ran out of its budget "
                         f"({MAX_COUNT_STEPS:,} steps, {done:,} assignments) at {what}",
                         f"a space of at most a few tens of thousands of assignments: fewer choices in {what}")

    # ----------------------------------------------------------------- resolution
    def _has_mid(self) -> bool:
        mid = self.data.get("mid", {})
        return mid is not None and mid != "none"

    def _pick(self, chooser: Chooser, name: str, path: Path_, value: Any) -> Any:
        if isinstance(value, dict) and "range" in value:
            r = value["range"]
            step = r[2] if len(r) == 3 else 1
            if all(_is_int(x) for x in (r[0], r[1], step)):
                return chooser.integer(name, r[0], r[1], step)
            return chooser.categorical(name, self._options(path, value))
        if isinstance(value, dict) and "choice" in value:
            opts = value["choice"]
            return opts[0] if len(opts) == 1 else chooser.categorical(name, list(opts))
        return value

    def _doc_path(self, name: str) -> Path_:
        """Stage name used in resolution (down1, mid, up0) -> its key path in the file."""
        if name.startswith("down"):
            return ("stages", int(name[4:]))
        if name.startswith("up"):
            j = int(name[2:])
            return ("up", j) if isinstance(self.data.get("up"), list) else ("stages", self.n_stages - 1 - j)
        return (name,)

    def _scale(self, channels: int, width_mult: float, quantum: int) -> int:
        if width_mult == 1.0:
            return channels
        return max(quantum, int(round(channels * width_mult / quantum)) * quantum)

    def _resolve_stage(
        self,
        chooser: Chooser,
        name: str,
        st: dict[str, Any],
        channels: int | None,
        width_mult: float = 1.0,
        fixed: dict[str, Any] | None = None,
        layout: bool = False,
    ) -> dict[str, Any]:
        """Resolve one stage; ``fixed`` holds values tied to another stage (the mirror).

        ``layout``: the stage lists its layers (``st["layers"]``, or ``fixed["layout"]``
        for an up stage mirroring a down stage's layout) instead of ``resnet_blocks``.
        """
        fixed = fixed or {}
        groups = self.data.get("norm_groups", 32)

        def get(key: str) -> Any:
            if key in fixed:
                return fixed[key]
            return self._pick(chooser, f"{name}.{key}", (name, key), st[key])

        out: dict[str, Any] = {}
        raw_ch = get("channels") if channels is None else channels
        tokens: list[str] = []
        if layout:
            if "layout" in fixed:
                tokens = list(fixed["layout"])
            else:
                for k, entry in enumerate(st["layers"]):
                    token = self._pick(chooser, f"{name}.layers.{k}", (name, "layers", k), entry)
                    if token != "skip":
                        tokens.append(token)
            out["resnet_blocks"] = tokens.count("resnet")
        else:
            out["resnet_blocks"] = get("resnet_blocks")
        out["resnet_variant"] = get("resnet_variant")
        out["resnet_expansion"] = float(get("resnet_expansion")) if out["resnet_variant"] == "separable" else 0.0
        if layout:
            has_heads = "transformer" in tokens or "cross_ffn" in tokens
            if "transformer" in tokens:
                attention = get("attention")
                if attention == "none":
                    raise self._err(self._doc_path(name) + ("layers",), "a transformer layer in a stage with attention: none",
                                    "attention: cross, self or self_cross in this stage, or no transformer layer")
                depth = get("transformer_depth")
                if depth < 1:
                    raise self._err(self._doc_path(name) + ("transformer_depth",), f"bad value {depth}",
                                    "an integer >= 1 in a stage whose layers hold a transformer")
            else:
                attention, depth = "none", 0
        else:
            attention = get("attention")
            depth = get("transformer_depth") if attention != "none" else 0
            if depth == 0:
                attention = "none"
            has_heads = bool(depth)
        out.update(attention=attention, transformer_depth=depth)
        if has_heads:
            out["attention_variant"] = get("attention_variant")
            head_key = "heads" if "heads" in st or "heads" in fixed else "head_dim"
            head_val = get(head_key)
            quantum = math.lcm(groups, head_val) if head_key == "head_dim" else math.lcm(groups, head_val)
            ch = raw_ch if channels is not None else self._scale(raw_ch, width_mult, quantum)
            if head_key == "head_dim":
                if ch % head_val:
                    raise self._err(self._doc_path(name) + ("head_dim",), f"width {ch} is not divisible by head_dim {head_val}",
                                    f"a head_dim that divides {ch}")
                out["head_dim"], out["heads"] = head_val, ch // head_val
            else:
                if ch % head_val:
                    raise self._err(self._doc_path(name) + ("heads",), f"width {ch} is not divisible by heads {head_val}",
                                    f"a head count that divides {ch}")
                out["heads"], out["head_dim"] = head_val, ch // head_val
            out["qk_norm"] = bool(get("qk_norm"))
            out["ffn_ratio"] = float(get("ffn_ratio"))
            out["ffn_type"] = get("ffn_type")
            # 2D RoPE rotates the queries and keys of spatial self-attention only
            out["rope"] = bool(get("rope")) if attention in ("self", "self_cross") else False
            out["_head_key"] = head_key
        else:
            ch = raw_ch if channels is not None else self._scale(raw_ch, width_mult, groups)
            out.update(attention_variant="mha", heads=0, head_dim=0, qk_norm=False, ffn_ratio=0.0, ffn_type="none",
                       rope=False)
        out["channels"] = ch
        if self.kind == "video":
            if layout:  # temporal layers are positions of the layout
                out["temporal"] = {"type": "none", "count": 0, "placement": "after_resnet"}
            else:
                t = st["temporal"]
                tfixed = fixed.get("temporal", {})

                def tget(key: str) -> Any:
                    if key in tfixed:
                        return tfixed[key]
                    return self._pick(chooser, f"{name}.temporal.{key}", (name, "temporal", key), t[key])

                ttype = tget("type")
                count = tget("count") if ttype != "none" else 0
                if count == 0:
                    ttype = "none"
                placement = tget("placement") if (count and depth) else "after_resnet"
                out["temporal"] = {"type": ttype, "count": count, "placement": placement}
        if layout:
            out["layout"] = tokens
        out["_heads"] = has_heads
        return out

    def _resolve_mid(self, chooser: Chooser, channels: int) -> dict[str, Any]:
        mid = self.data.get("mid") or {}
        return self._resolve_stage(chooser, "mid", self._merged(mid), channels, layout="layers" in mid)

    def _resolve_pair(self, chooser: Chooser, i: int, width_mult: float) -> tuple[dict, dict]:
        """Down stage ``i`` and the up stage that mirrors it."""
        raw = self.data["stages"][i]
        down_layout = "layers" in raw
        down = self._resolve_stage(chooser, f"down{i}", self._merged(raw), None, width_mult, layout=down_layout)
        n = self.n_stages
        j = n - 1 - i  # index of the mirroring up stage (up runs low -> high resolution)
        up_cfg = self.data.get("up", "mirror")
        override = (up_cfg[j] or {}) if isinstance(up_cfg, list) else {}
        extra = self.data.get("up_extra_resnets", 1)
        # the up stage lists its own layers, mirrors the down stage's, or counts ResNets
        up_layout = "layers" in override or (down_layout and "resnet_blocks" not in override)
        fixed = {k: v for k, v in down.items() if not k.startswith("_") and k not in override}
        fixed.pop("layout", None)
        if "temporal" in fixed and "temporal" in override:
            fixed.pop("temporal")
        if not down["_heads"]:
            for k in ("transformer_depth", "attention_variant", "qk_norm", "ffn_ratio", "ffn_type", "rope"):
                fixed.pop(k, None)
        if down_layout and not down["transformer_depth"]:
            # no transformer in the down layout: its attention was never asked
            fixed.pop("attention", None)
            fixed.pop("transformer_depth", None)
        if down["resnet_variant"] != "separable":
            fixed.pop("resnet_expansion", None)
        if up_layout:
            fixed.pop("resnet_blocks", None)
            if "layers" not in override:
                fixed["layout"] = _mirror_layout(down["layout"], extra)
        elif "resnet_blocks" not in override:
            fixed["resnet_blocks"] = down["resnet_blocks"] + extra
        if {"heads", "head_dim"} & set(override):
            fixed.pop("heads", None)
            fixed.pop("head_dim", None)
        elif down["_heads"]:
            key = down["_head_key"]
            other = "heads" if key == "head_dim" else "head_dim"
            fixed.pop(other, None)
        else:
            fixed.pop("heads", None)
            fixed.pop("head_dim", None)
        # Keys the down stage never resolved (e.g. head size with no attention) come from
        # the down stage's raw entry if an override turns attention on.
        merged = self._merged(raw)
        merged.update({k: v for k, v in override.items() if k != "temporal"})
        if "temporal" in override:
            merged["temporal"] = {**merged["temporal"], **override["temporal"]}
        if {"heads", "head_dim"} & set(override):
            for k in ("heads", "head_dim"):
                if k not in override:
                    merged.pop(k, None)
        up = self._resolve_stage(chooser, f"up{j}", merged, down["channels"], 1.0, fixed, layout=up_layout)
        return down, up

    def resolve_dict(self, chooser: Chooser) -> dict[str, Any]:
        """Resolve every dimension with ``chooser``; returns the candidate as plain data."""
        d = self.data
        wm = self._pick(chooser, "width_mult", ("width_mult",), d.get("width_mult", 1.0))
        n = self.n_stages
        downs: list[dict] = []
        ups: list[dict | None] = [None] * n
        for i in range(n):
            down, up = self._resolve_pair(chooser, i, float(wm))
            downs.append(down)
            ups[n - 1 - i] = up
        mid = None
        if self._has_mid():
            mid = self._resolve_mid(chooser, downs[-1]["channels"])
        strip = lambda s: {k: v for k, v in s.items() if not k.startswith("_")}  # noqa: E731
        c0 = downs[0]["channels"]
        out = {
            "kind": self.kind,
            "latent_channels": d.get("latent_channels", 4),
            "resolution": d.get("resolution", 64),
            "frames": d.get("frames", 8) if self.kind == "video" else 1,
            "context_dim": d.get("context_dim", 768),
            "context_length": d.get("context_length", 77),
            "time_embed_dim": d.get("time_embed_dim") or 4 * c0,
            "norm_groups": d.get("norm_groups", 32),
            "stages": [strip(s) for s in downs],
            "mid": strip(mid) if mid is not None else None,
            "up": [strip(s) for s in ups],  # type: ignore[arg-type]
        }
        added = self.added_conditioning()
        if added is not None:
            out["added_cond"] = added
        return out

    def __getattr__(self, item: str) -> Any:
        if item in ("sample", "sample_many", "resolve"):
            raise AttributeError(
                f"SearchSpace.{item} does not exist: use archsearch.candidate.{item}(space, ...)"
            )
        raise AttributeError(item)


# --------------------------------------------------------------------------- exact counting


class PathChooser:
    """A chooser that replays one path of the define-by-run decision tree.

    It takes option ``prefix[i]`` at the i-th choice point it is asked (option 0 past the
    prefix) and records how many options every choice point had (``arity``), which is
    what :func:`enumerate_assignments` needs to branch on the siblings.
    """

    def __init__(self, prefix: list[int] | tuple[int, ...] = ()) -> None:
        self.prefix = list(prefix)
        self.pos = 0
        self.arity: list[int] = []

    def _take(self, options: list[Any]) -> Any:
        idx = self.prefix[self.pos] if self.pos < len(self.prefix) else 0
        self.arity.append(len(options))
        self.pos += 1
        return options[idx]

    def categorical(self, name: str, options: list[Any]) -> Any:
        return self._take(list(options))

    def integer(self, name: str, low: int, high: int, step: int) -> int:
        n = (high - low) // step + 1  # the options are never listed (a range may be long)
        idx = self.prefix[self.pos] if self.pos < len(self.prefix) else 0
        self.arity.append(n)
        self.pos += 1
        return low + idx * step


T = TypeVar("T")


def enumerate_assignments(fn: Callable[[Chooser], T]) -> Iterator[T]:
    """``fn(chooser)`` for every distinct define-by-run assignment, depth first.

    ``fn`` asks a :class:`PathChooser` its choices (e.g. ``space.resolve_dict``); every leaf
    of the decision tree is visited exactly once, so a dimension that is not asked on a
    path (the head size of a stage without attention) does not multiply the count. This is
    the enumeration behind :meth:`SearchSpace.size`; ``archsearch.candidate.
    enumerate_candidates`` builds on it.
    """
    for out, _ in _assignments(fn):
        yield out


def _assignments(fn: Callable[[Chooser], T]) -> Iterator[tuple[T, PathChooser]]:
    """:func:`enumerate_assignments` with each leaf's chooser (its choice points, ``arity``)."""
    stack: list[list[int]] = [[]]
    while stack:
        prefix = stack.pop()
        ch = PathChooser(prefix)
        yield fn(ch), ch
        # Branch on every choice point past the prefix: siblings 1..arity-1.
        for depth in range(len(prefix), len(ch.arity)):
            for k in range(1, ch.arity[depth]):
                stack.append([*prefix, *([0] * (depth - len(prefix))), k])


class _Budget:
    """The work the size count may still do (one budget for the whole space, so no number of
    stages multiplies the time): :data:`ASSIGNMENT_STEPS` per assignment plus its choices."""

    def __init__(self, steps: int) -> None:
        self.left = steps
        self.assignments = 0

    def spend(self, error: Callable[[int], SpecError]) -> Callable[[PathChooser], None]:
        """A per-assignment callback that raises ``error(assignments so far)`` when spent."""

        def tick(ch: PathChooser) -> None:
            self.assignments += 1
            self.left -= ASSIGNMENT_STEPS + len(ch.arity)
            if self.left < 0:
                raise error(self.assignments)

        return tick


def _public(obj: Any) -> Any:
    """``obj`` without the resolver's private ``_keys`` (what a candidate is made of)."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_public(v) for v in obj]
    return obj


def _stage_key(st: dict[str, Any]) -> str:
    """A resolved stage (its private ``_keys`` left out) as canonical text; its values are
    flat apart from ``temporal`` (a flat dict) and ``layout`` (a list of names)."""
    return json.dumps({k: v for k, v in st.items() if k[0] != "_"}, sort_keys=True)


def _count_distinct(fn: Callable[[Chooser], Any], tick: Callable[[PathChooser], None] | None = None) -> int:
    """The number of distinct outcomes of a define-by-run decision tree (every leaf visited).

    ``tick`` is called with each leaf's chooser (a :class:`_Budget`'s, which raises when the
    budget is spent); without one, the budget is :data:`MAX_COUNT_STEPS`.
    """
    if tick is None:
        tick = _Budget(MAX_COUNT_STEPS).spend(
            lambda n: SpecError(f"search space group too large to enumerate (> {n:,} assignments)"))
    seen: set[str] = set()
    for out, ch in _assignments(fn):
        tick(ch)
        if isinstance(out, tuple):
            seen.add("|".join(_stage_key(st) for st in out))
        elif isinstance(out, dict) and all(not isinstance(v, dict) or k == "temporal" for k, v in out.items()):
            seen.add(_stage_key(out))
        else:
            seen.add(json.dumps(_public(out), sort_keys=True))
    return len(seen)


def _mirror_layout(tokens: list[str], extra: int) -> list[str]:
    """An up stage mirroring a down layout: the same layers, then ``extra`` more copies of
    its last group (a ResNet and what follows it), as SD's up stages have one layer more."""
    last = max(i for i, t in enumerate(tokens) if t == "resnet")
    return list(tokens) + list(tokens[last:]) * extra


def load_space(path: str | Path) -> SearchSpace:
    """Load and validate a search-space YAML file."""
    return SearchSpace(load_yaml(path))


def load_space_text(text: str, source: str = "<string>") -> SearchSpace:
    """Load and validate a search space from YAML text (tests, notebooks)."""
    return SearchSpace(load_yaml_text(text, source))
