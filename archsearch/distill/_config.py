"""The ``proxy:`` section of a spec: the settings of a distillation run and of its teacher."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from archsearch.distill._noise import PREDICTIONS
from archsearch.errors import ParameterError, SpecError

__all__ = ["PROXY_KINDS", "ProxyConfig"]

#: How a search scores a candidate: ``per_trial`` (a fresh distillation run per trial) or
#: ``supernet`` (its sub-network of the space's trained supernet, :mod:`archsearch.distill._supernet`).
PROXY_KINDS = ("per_trial", "supernet")

_TEACHER_BUILTIN_KEYS = ("builtin", "train_steps", "width", "batch", "lr", "seed", "latent_channels", "data_size")
_TEACHER_DIFFUSERS_KEYS = ("diffusers", "subfolder", "scheduler", "data_size")


@dataclass
class ProxyConfig:
    """The ``proxy:`` section of a spec (defaults below are used for absent keys).

    Attributes:
        width_mult: channel multiplier of the proxy-scale student (``0 < w <= 4``).
        resolution: latent side (H = W) of the proxy run.
        frames: frames of the proxy run (video spaces).
        steps: training steps K per trial.
        batch: batch size (default 8 for image, 2 clips for video).
        lr, weight_decay: AdamW settings.
        seed: seed of the student's initialisation and of the training batches.
        holdout: size of the fixed held-out batch that gives the quality score.
        kd_output, kd_feature: weights of the rescaled KD terms (0 turns one off).
        prediction: ``epsilon | v_prediction | flow``; ``None`` = the teacher's (built-in: epsilon).
        teacher: ``{builtin: image|video, train_steps, width, batch, lr, seed}`` or
            ``{diffusers: PATH, subfolder: unet}``.
        data: a latent cache folder written by ``archsearch data prepare`` (relative paths
            are read from the spec's folder); ``None``: the built-in synthetic data.
        kind: ``per_trial`` (default) or ``supernet`` (:data:`PROXY_KINDS`).
        supernet_steps: training steps of the supernet (``kind: supernet`` and
            ``search.method: evolve``); ``None``: ``10 * steps``.
        source: the spec file (error messages).
    """

    width_mult: float = 0.5
    resolution: int = 16
    frames: int = 4
    steps: int = 40
    batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.01
    seed: int = 0
    holdout: int = 32
    kd_output: float = 1.0
    kd_feature: float = 1.0
    prediction: str | None = None
    teacher: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    kind: str = "per_trial"
    supernet_steps: int | None = None
    source: str = "<proxy>"

    @classmethod
    def from_space(cls, space: Any, **overrides: Any) -> "ProxyConfig":
        """Read and validate ``space.proxy``; bad values raise the spec's one-line SpecError.

        ``overrides`` (``steps=2000``, ``width_mult=1.0``, ...; ``None`` values are ignored)
        replace the spec's settings and are validated the same way; a bad one raises an
        :class:`~archsearch.errors.ParameterError` naming the setting (``proxy.steps: ...``),
        with no file position, since it does not come from the file.
        """
        n_stages = getattr(space, "n_stages", None)
        given = {k: v for k, v in overrides.items() if v is not None}
        for key in given:
            if key not in cls._keys():
                raise TypeError(f"ProxyConfig.from_space() got an unexpected setting {key!r}")
        if not given:
            return cls._parse(space.proxy, space.kind, str(space.path), space.fail, n_stages)

        def fail(path: tuple, value: Any, allowed: str | None = None, message: str | None = None):
            if len(path) >= 2 and path[0] == "proxy" and path[1] in given:
                key, _, rest = _message(path, value, allowed, message).partition(":")
                raise ParameterError(key, ":" + rest)
            space.fail(path, value, allowed, message)

        data = space.proxy if isinstance(space.proxy, dict) else {}
        return cls._parse({**data, **given}, space.kind, str(space.path), fail, n_stages)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, kind: str = "image", source: str = "<proxy>") -> "ProxyConfig":
        """Validate a plain ``proxy:`` mapping (tests, notebooks)."""

        def fail(path: tuple, value: Any, allowed: str | None = None, message: str | None = None):
            raise SpecError(f"{source}: {_message(path, value, allowed, message)}")

        return cls._parse(d or {}, kind, source, fail, None)

    @classmethod
    def _keys(cls) -> list[str]:
        return [f for f in cls.__dataclass_fields__ if f != "source"]

    @classmethod
    def _parse(cls, d: dict[str, Any], kind: str, source: str, fail: Callable, n_stages: int | None) -> "ProxyConfig":
        if not isinstance(d, dict):
            fail(("proxy",), d, "a mapping")
        known = cls._keys()
        for key in d:
            if key not in known:
                fail(("proxy", key), key, ", ".join(known), message="unknown key")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        out: dict[str, Any] = {"source": source}
        ints = {"resolution": 4, "frames": 1, "steps": 1, "batch": 1, "holdout": 1, "seed": 0, "supernet_steps": 1}
        for key, lo in ints.items():
            if key in d:
                if not (is_int(d[key]) and d[key] >= lo):
                    fail(("proxy", key), d[key], f"an integer >= {lo}")
                out[key] = int(d[key])
        if "width_mult" in d:
            v = d["width_mult"]
            if not (is_num(v) and 0 < v <= 4):
                fail(("proxy", "width_mult"), v, "a number in (0, 4]")
            out["width_mult"] = float(v)
        for key in ("lr",):
            if key in d:
                if not (is_num(d[key]) and d[key] > 0):
                    fail(("proxy", key), d[key], "a number > 0")
                out[key] = float(d[key])
        for key in ("weight_decay", "kd_output", "kd_feature"):
            if key in d:
                if not (is_num(d[key]) and d[key] >= 0):
                    fail(("proxy", key), d[key], "a number >= 0")
                out[key] = float(d[key])
        if "kind" in d:
            if d["kind"] not in PROXY_KINDS:
                fail(("proxy", "kind"), d["kind"], ", ".join(PROXY_KINDS))
            out["kind"] = d["kind"]
        if d.get("prediction") is not None:
            if d["prediction"] not in PREDICTIONS:
                fail(("proxy", "prediction"), d["prediction"], ", ".join(PREDICTIONS))
            out["prediction"] = d["prediction"]
        res = out.get("resolution", cls.resolution)
        if n_stages:
            q = 2 ** (n_stages - 1)
            if res % q:
                fail(("proxy", "resolution"), res, f"a multiple of {q} (the space has {n_stages} stages)")
        if kind == "video" and "batch" not in out:
            out["batch"] = 2
        out["teacher"] = cls._parse_teacher(d.get("teacher"), kind, fail)
        if d.get("data") is not None:
            if not (isinstance(d["data"], str) and d["data"]):
                fail(("proxy", "data"), d["data"], "a latent cache folder (string) written by archsearch data prepare")
            out["data"] = str(d["data"])
        return cls(**out)

    @staticmethod
    def _parse_teacher(t: Any, kind: str, fail: Callable) -> dict[str, Any]:
        path = ("proxy", "teacher")
        if t is None:
            return {"builtin": kind}
        if isinstance(t, str):  # shorthand: teacher: builtin
            if t != "builtin":
                fail(path, t, "builtin, or a mapping {builtin: image|video} / {diffusers: PATH, subfolder: unet}")
            return {"builtin": kind}
        if not isinstance(t, dict):
            fail(path, t, "a mapping {builtin: image|video} or {diffusers: PATH, subfolder: unet}")
        if "builtin" in t and "diffusers" in t:
            fail(path + ("diffusers",), t["diffusers"], "either builtin or diffusers, not both")
        if "diffusers" in t:
            for key in t:
                if key not in _TEACHER_DIFFUSERS_KEYS:
                    fail(path + (key,), key, ", ".join(_TEACHER_DIFFUSERS_KEYS), message="unknown key")
            for key in ("diffusers", "subfolder", "scheduler"):
                if key in t and not (isinstance(t[key], str) and (t[key] or key == "subfolder")):
                    fail(path + (key,), t[key], "a folder path (string)")
            if "data_size" in t and not (isinstance(t["data_size"], int) and not isinstance(t["data_size"], bool)
                                         and t["data_size"] >= 1):
                fail(path + ("data_size",), t["data_size"], "an integer >= 1")
            return {"subfolder": "unet", **t}
        for key in t:
            if key not in _TEACHER_BUILTIN_KEYS:
                fail(path + (key,), key, ", ".join(_TEACHER_BUILTIN_KEYS + ("diffusers",)), message="unknown key")
        out = dict(t)
        b = out.setdefault("builtin", kind)
        if b != kind:
            fail(path + ("builtin",), b, f"{kind} (the space's kind)")
        mins = {"train_steps": 1, "width": 8, "batch": 1, "seed": 0, "latent_channels": 1, "data_size": 1}
        for key, lo in mins.items():
            if key in out:
                v = out[key]
                if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
                    fail(path + (key,), v, f"an integer >= {lo}")
        if "width" in out and out["width"] % 32:
            fail(path + ("width",), out["width"], "a multiple of 32 (attention head size)")
        if "lr" in out:
            v = out["lr"]
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
                fail(path + ("lr",), v, "a number > 0")
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data (recorded with the study); ``data`` only when a cache is used, and
        ``kind`` / ``supernet_steps`` only when not at their defaults, so the records of
        earlier studies read as before."""
        d = asdict(self)
        d.pop("source")
        if d.get("data") is None:
            d.pop("data", None)
        if d.get("kind") == "per_trial":
            d.pop("kind")
        if d.get("supernet_steps") is None:
            d.pop("supernet_steps")
        return d

    @property
    def supernet_training_steps(self) -> int:
        """Steps of the supernet's training: ``supernet_steps``, else ``10 * steps``."""
        return int(self.supernet_steps) if self.supernet_steps is not None else 10 * int(self.steps)

    def data_path(self) -> Path | None:
        """``data`` as a folder: absolute, or relative to the spec file's folder (else the
        working directory); ``None`` for the synthetic data."""
        if self.data is None:
            return None
        p = Path(self.data).expanduser()
        if not p.is_absolute() and self.source and Path(self.source).is_file():
            cand = Path(self.source).parent / p
            if cand.exists() or not p.exists():
                return cand.resolve()
        return p


def _message(path: tuple, value: Any, allowed: str | None, message: str | None) -> str:
    """``proxy.key: bad value V (allowed: ...)`` -- one line, naming the setting."""
    key = ".".join(str(p) for p in path)
    msg = message or f"bad value {value!r}"
    return f"{key}: {msg}" + (f" (allowed: {allowed})" if allowed else "")
