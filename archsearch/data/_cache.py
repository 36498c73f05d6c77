"""The on-disk latent cache that ``archsearch data prepare`` writes, and its reader.

Layout of a cache folder::

    DIR/index.json                    what the cache is (written last, atomically)
    DIR/prepare.json                  the settings and the runs of the pass (resume state)
    DIR/shards/shard-000000.safetensors
    DIR/shards/shard-000001.safetensors ...

Shard ``i`` holds the samples ``i * shard_size ... (i + 1) * shard_size - 1`` of the source's
listing that decoded (the bad ones are named, with their reason, in its metadata). Each shard
is written to a temp file and renamed, so a shard on disk is always complete. Tensors are
stacked per *group* -- samples whose latents have the same shape (one group unless aspect
ratio buckets are on) -- and named ``FIELD/GROUP``:

* ``latents`` ``(N, C, h, w)`` or, for clips, ``(N, C, T, h, w)``: the VAE's mean times its
  scaling factor (minus its shift factor first, where it has one), or teacher-generated latents;
* ``text_states`` ``(N, L, D)``: what the teacher's UNet takes as ``encoder_hidden_states``;
* ``pooled`` ``(N, P)`` and ``add_time_ids`` ``(N, 6)``: SDXL's pooled text embedding and
  ``(original h, w, crop top, left, target h, w)``, when the teacher has them;
* ``t5_states`` ``(N, L3, D3)``: a third (T5) encoder's states, when the checkpoint has one.

The safetensors metadata ``archsearch`` (JSON) of a shard names its samples per group, the
run that wrote it, the items it covers and ``sha256``: the checksum of its data (the bytes after
the safetensors header, :func:`shard_checksum`). ``index.json`` lists every shard with that
checksum and the file's size. :class:`LatentCache` reads a finished cache:
``LatentCache.open(DIR).split("train").batches(16, seed=0, start=0)``; it checks each shard's
size when it opens the cache and each shard's checksum the first time a process reads it, and
refuses a bad shard with one line that names it and the command that re-encodes it
(``prepare`` checks the shards on disk the same way and encodes only the bad or missing ones).

The holdout split is fixed by a hash of each sample's key (:func:`is_holdout`), so it does not
move when a data set is re-cut into other shards; within a split samples are ordered by key.

:func:`teacher_hash` identifies a checkpoint cheaply and stably (see there).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from archsearch._util import atomic_write_bytes, first_line
from archsearch.errors import ArchsearchError, ParameterError

__all__ = [
    "CACHE_VERSION",
    "CacheIndex",
    "CacheSplit",
    "LatentCache",
    "is_holdout",
    "shard_checksum",
    "teacher_hash",
]

#: bump when the layout changes; a reader refuses other versions
CACHE_VERSION = 1
INDEX_FILE = "index.json"
STATE_FILE = "prepare.json"
SHARD_DIR = "shards"
FIELDS = ("latents", "text_states", "pooled", "add_time_ids", "t5_states")


# --------------------------------------------------------------------------- identity

_VOLATILE = {"_name_or_path", "transformers_version", "_diffusers_version", "_commit_hash", "dtype", "torch_dtype"}
_BLOCKS, _BLOCK = 16, 64 * 1024


def _config_text(path: Path) -> Any:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return path.read_bytes().hex() if path.is_file() else None
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in _VOLATILE}
    return data


def _weights_stamp(path: Path) -> list[Any]:
    """Size, the safetensors header and 16 sampled 64 KiB blocks of a weight file."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as fh:
        start = 0
        if path.suffix == ".safetensors" and size >= 8:
            n = int.from_bytes(fh.read(8), "little")
            if 0 < n <= size - 8:
                h.update(fh.read(n))
                start = 8 + n
        span = max(size - start, 0)
        for i in range(_BLOCKS):
            fh.seek(start + (span - _BLOCK) * i // (_BLOCKS - 1) if span > _BLOCK else start)
            h.update(fh.read(_BLOCK))
            if span <= _BLOCK:
                break
    return [path.name, size, h.hexdigest()[:32]]


def teacher_components(path: str | os.PathLike) -> dict[str, str]:
    """A hash per component folder of a diffusers checkpoint (``unet``, ``vae``,
    ``text_encoder``, ``tokenizer``, ``scheduler``, ...) and ``model_index`` for the root file."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ParameterError("teacher", f": {root}: no such folder (allowed: a local diffusers checkpoint folder)")
    out: dict[str, str] = {}
    if (root / "model_index.json").is_file():
        out["model_index"] = _digest(_config_text(root / "model_index.json"))
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in sub.iterdir() if f.is_file() and not f.name.startswith("."))
        parts: list[Any] = []
        for f in files:
            if f.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".onnx", ".gguf"):
                parts.append(["weights", *_weights_stamp(f)])
            elif f.suffix in (".json", ".txt", ".model", ".tiktoken"):
                parts.append([f.name, _config_text(f)])
        if parts:
            out[sub.name] = _digest(parts)
    if not out:
        raise ParameterError("teacher", f": {root}: not a diffusers checkpoint (no component folders with configs)")
    return out


def teacher_hash(path: str | os.PathLike) -> str:
    """A stable, cheap identity of a local diffusers checkpoint (16 hex digits).

    It hashes every component folder's config and tokenizer files (JSON parsed, with the
    library-version and ``_name_or_path`` fields left out) and, for each weight file, its size,
    its safetensors header (names, dtypes, shapes, offsets) and 16 evenly spaced 64 KiB blocks of
    its data -- about 1 MiB read per file, so a 7 GB SDXL checkpoint hashes in well under a
    second. A moved or copied checkpoint keeps its hash (paths and mtimes are not in it); a
    fine-tune changes the sampled blocks. It is not a full-content checksum: two files that
    differ only outside the sampled blocks hash the same.
    """
    return _digest(teacher_components(path))[:16]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def is_holdout(key: str, fraction: float) -> bool:
    """Whether sample ``key`` is in the holdout split: the first 8 bytes of
    ``sha256("archsearch-holdout:" + key)`` as a fraction of 2**64, below ``fraction``."""
    if fraction <= 0:
        return False
    h = hashlib.sha256(("archsearch-holdout:" + key).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64 < fraction


# --------------------------------------------------------------------------- shards


def shard_path(root: Path, i: int) -> Path:
    return Path(root) / SHARD_DIR / f"shard-{i:06d}.safetensors"


def group_name(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def write_shard(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Write one shard atomically and return its metadata (with ``sha256``, the checksum of its
    data, and ``bytes``, the file's size). ``rows``: ``{"key", "latents", "text_states", ...}``
    with tensors of one sample each; ``meta``: the rest of the metadata."""
    from safetensors.torch import save

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(group_name(r["latents"].shape), []).append(r)
    tensors: dict[str, torch.Tensor] = {}
    for g, rs in groups.items():
        for f in FIELDS:
            if f in rs[0]:
                t = torch.stack([r[f] for r in rs])
                if t.is_floating_point() and f != "add_time_ids":
                    t = t.to(dtype)
                tensors[f"{f}/{g}"] = t.contiguous().cpu()
    info = {**meta, "version": CACHE_VERSION, "groups": {g: [r["key"] for r in rs] for g, rs in groups.items()}}
    # the data section does not depend on the header: serialise, hash it, serialise with the hash
    info["sha256"] = _data_digest(save(tensors, metadata={"archsearch": json.dumps(info)}))
    blob = save(tensors, metadata={"archsearch": json.dumps(info)})
    atomic_write_bytes(path, blob)
    return {**info, "bytes": len(blob)}


def _data_digest(blob: bytes) -> str:
    """sha256 of a serialised safetensors file's data section (after the 8-byte length and header)."""
    n = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(memoryview(blob)[8 + n :]).hexdigest()


class BadShard(Exception):
    """A shard file that cannot be trusted; ``str(exc)`` says why (no path)."""


def _data_start(fh: Any) -> int:
    """Where the data section of an open safetensors file starts; :class:`BadShard` when the
    file is shorter than its header says."""
    size = os.fstat(fh.fileno()).st_size
    head = fh.read(8)
    if len(head) < 8:
        raise BadShard(f"{size} bytes: shorter than a safetensors header")
    n = int.from_bytes(head, "little")
    if n > size - 8:
        raise BadShard(f"its header length {n} is larger than the file ({size} bytes)")
    return 8 + n


def shard_checksum(path: str | os.PathLike) -> str:
    """The sha256 of a shard's data section: every byte after the safetensors header, read in
    1 MiB blocks (what :func:`write_shard` records as ``sha256``). Raises :class:`BadShard`
    when the file is shorter than its header says."""
    with open(path, "rb") as fh:
        fh.seek(_data_start(fh))
        h = hashlib.sha256()
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while k := fh.readinto(buf):
            h.update(view[:k])
    return h.hexdigest()


def check_shard(path: Path, sha256: str | None, size: int | None = None) -> str | None:
    """Why the shard at ``path`` is bad (missing, another size than ``size``, a header longer
    than the file, data that does not match ``sha256``), or ``None`` when it is good. With
    ``sha256`` None (a cache written before shards had checksums) only the size and the header
    length are checked."""
    try:
        actual = path.stat().st_size
    except OSError:
        return "missing"
    if size is not None and actual != size:
        return f"{actual} bytes where the index says {size} (truncated or overwritten)"
    try:
        if sha256 is None:
            with open(path, "rb") as fh:
                _data_start(fh)
            return None
        got = shard_checksum(path)
    except BadShard as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read it ({first_line(exc)})"
    if got != sha256:
        return "its data does not match the checksum written with it (the file changed after prepare wrote it)"
    return None


def read_shard_meta(path: Path) -> dict[str, Any] | None:
    """A shard's ``archsearch`` metadata, or None when the file is not a readable shard."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = (fh.metadata() or {}).get("archsearch")
            info = json.loads(meta) if meta else None
            return info if isinstance(info, dict) else None
    except Exception:  # noqa: BLE001 - any unreadable file is "not a shard"
        return None


def repair_hint(root: Path) -> str:
    """How to re-encode a cache's bad shards: the prepare command that made it (``command`` in
    its ``prepare.json``, with ``--out`` where the cache is now), which checks every shard and
    encodes only the bad or missing ones."""
    try:
        words = json.loads((Path(root) / STATE_FILE).read_text(encoding="utf-8")).get("command")
    except (OSError, ValueError, AttributeError):
        words = None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words) or not words:
        return ("to repair, run the archsearch data prepare that made it again (same source, teacher, --out and "
                "settings): it re-encodes only the bad shards")
    cmd = " ".join(shlex.quote(w) for w in [*words, "--out", str(root)])
    return f"to repair, run {cmd} (it re-encodes only the bad shards)"


# --------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class CacheIndex:
    """What a cache holds (``index.json``): the teacher, the shapes, the source, the splits."""

    teacher_hash: str
    teacher: str
    kind: str  # image | video
    resolution: tuple[int, int] | None  # pixels (h, w); None with aspect-ratio buckets
    frames: int
    fps: float | None
    latent_channels: int
    latent_shape: tuple[int, ...] | None  # (C, h, w) or (C, T, h, w); None with buckets
    vae_scale_factor: int
    scaling_factor: float
    shift_factor: float | None
    context_length: int
    context_dim: int
    pooled_dim: int  # 0: no pooled text embedding
    has_add_time_ids: bool
    t5_shape: tuple[int, int] | None
    generated: bool  # teacher-generated from prompts
    source: dict[str, Any]
    holdout: float
    n_samples: int
    n_holdout: int
    skipped: dict[str, Any]
    dtype: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def has_pooled(self) -> bool:
        return self.pooled_dim > 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CacheIndex":
        res = d.get("resolution")
        shape = d.get("latent_shape")
        t5 = d.get("t5_shape")
        return cls(
            teacher_hash=d["teacher_hash"], teacher=d.get("teacher", ""), kind=d["kind"],
            resolution=tuple(res) if res else None, frames=int(d["frames"]), fps=d.get("fps"),
            latent_channels=int(d["latent_channels"]), latent_shape=tuple(shape) if shape else None,
            vae_scale_factor=int(d["vae_scale_factor"]), scaling_factor=float(d["scaling_factor"]),
            shift_factor=d.get("shift_factor"), context_length=int(d["context_length"]),
            context_dim=int(d["context_dim"]), pooled_dim=int(d.get("pooled_dim", 0)),
            has_add_time_ids=bool(d.get("has_add_time_ids")), t5_shape=tuple(t5) if t5 else None,
            generated=bool(d.get("generated")), source=dict(d.get("source", {})), holdout=float(d["holdout"]),
            n_samples=int(d["n_samples"]), n_holdout=int(d["n_holdout"]), skipped=dict(d.get("skipped", {})),
            dtype=d.get("dtype", "float16"), runs=list(d.get("runs", [])), raw=d,
        )


#: shards whose checksum this process has checked: (path, size, mtime_ns, sha256)
_VERIFIED: set[tuple[str, int, int, str]] = set()


class LatentCache:
    """A finished latent cache. ``LatentCache.open(dir)``; :attr:`index`; :meth:`split`.

    Every shard is checked before it is read: its size when the cache is opened, its checksum
    (``sha256`` in the index) the first time this process reads from it (once per shard per
    process; a shard changed on disk since is checked again). A bad shard raises one
    :class:`~archsearch.errors.ArchsearchError` naming it and the prepare command that
    re-encodes it. ``verify=False`` skips the checksums (the size and header checks stay);
    :meth:`verify` checks every shard at once.
    """

    def __init__(self, root: Path, index: CacheIndex, samples: list[tuple[str, int, str, int]],
                 shards: dict[int, dict[str, Any]] | None = None, verify: bool = True) -> None:
        self.root = root
        self.index = index
        self._samples = samples  # (key, shard, group, row), in key order
        self._shards = shards or {}  # shard -> its index entry (file, sha256, bytes)
        self.checksums = bool(verify)  # check each shard's checksum on its first read
        self._handles: OrderedDict[int, Any] = OrderedDict()

    @classmethod
    def open(cls, root: str | os.PathLike, verify: bool = True) -> "LatentCache":
        """Open the cache in ``root``; a one-line error when it is missing, unfinished, or a
        shard is missing or has another size than the index says (see the class docs)."""
        root = Path(root).expanduser()
        path = root / INDEX_FILE
        if not path.is_file():
            hint = (" (the pass has not finished: run the same prepare again to complete it)"
                    if (root / STATE_FILE).exists() else " (not a latent cache)")
            raise ArchsearchError(f"{root}: no {INDEX_FILE}{hint}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArchsearchError(f"{path}: cannot read the cache index ({first_line(exc)})") from None
        if not isinstance(d, dict) or d.get("version") != CACHE_VERSION:
            version = d.get("version") if isinstance(d, dict) else None
            raise ArchsearchError(f"{path}: version: {version!r} is not supported (allowed: {CACHE_VERSION}; "
                                  "prepare the data again)")
        try:
            samples = []
            shards: dict[int, dict[str, Any]] = {}
            for s in d["shards"]:
                shards[int(s["shard"])] = s
                for g, keys in s["groups"].items():
                    samples += [(str(k), int(s["shard"]), str(g), r) for r, k in enumerate(keys)]
            samples.sort(key=lambda x: x[0])
            index = CacheIndex.from_dict(d)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArchsearchError(f"{path}: not a valid cache index ({type(exc).__name__}: {first_line(exc)}; "
                                  "prepare the data again)") from None
        for i, s in shards.items():
            file = shard_path(root, i)
            if not file.is_file():
                raise ArchsearchError(f"{file}: missing shard of the cache {root}; {repair_hint(root)}")
            size = s.get("bytes")
            if size is not None and file.stat().st_size != size:
                raise _bad_shard(root, file, f"{file.stat().st_size} bytes where the index says {size} "
                                 "(truncated or overwritten)")
        return cls(root, index, samples, shards, verify)

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def keys(self) -> list[str]:
        return [s[0] for s in self._samples]

    def check_matches(
        self,
        teacher_hash: str | None = None,
        latent_channels: int | None = None,
        frames: int | None = None,
        resolution: int | tuple[int, int] | None = None,
        context_dim: int | None = None,
        context_length: int | None = None,
    ) -> None:
        """Raise one :class:`~archsearch.errors.ArchsearchError` naming every field that differs
        from what the caller needs (arguments left at None are not checked)."""
        ix = self.index
        res = (resolution, resolution) if isinstance(resolution, int) else resolution
        checks = [("teacher_hash", teacher_hash, ix.teacher_hash), ("latent_channels", latent_channels, ix.latent_channels),
                  ("frames", frames, ix.frames), ("resolution", tuple(res) if res else None, ix.resolution),
                  ("context_dim", context_dim, ix.context_dim), ("context_length", context_length, ix.context_length)]
        bad = [f"{name} {have} (needed: {want})" for name, want, have in checks if want is not None and want != have]
        if bad:
            raise ArchsearchError(f"{self.root}: the latent cache does not match: it has " + ", ".join(bad)
                                  + " (prepare the data again for this teacher and shape)")

    def split(self, name: str) -> "CacheSplit":
        """``"train"``, ``"holdout"`` (fixed by key hash, see :func:`is_holdout`) or ``"all"``."""
        if name not in ("train", "holdout", "all"):
            raise ParameterError("split", f": bad value {name!r} (allowed: train, holdout, all)")
        frac = self.index.holdout
        rows = [s for s in self._samples if name == "all" or (is_holdout(s[0], frac) == (name == "holdout"))]
        return CacheSplit(self, name, rows)

    # -- reading --------------------------------------------------------------------------
    def _handle(self, shard: int) -> Any:
        from safetensors import safe_open

        fh = self._handles.get(shard)
        if fh is None:
            path = shard_path(self.root, shard)
            self._check(shard, path)
            try:
                fh = safe_open(str(path), framework="pt")
            except Exception as exc:  # noqa: BLE001 - safetensors' own errors: name the shard, one line
                raise _bad_shard(self.root, path, f"not a readable safetensors file ({first_line(exc)})") from None
            self._handles[shard] = fh
            if len(self._handles) > 64:
                self._handles.popitem(last=False)
        else:
            self._handles.move_to_end(shard)
        return fh

    def verify(self) -> None:
        """Check every shard now (size, header, checksum; e.g. after copying a cache to another
        machine) instead of on its first read; the one-line error of the first bad one."""
        for shard in sorted(self._shards):
            self._check(shard, shard_path(self.root, shard), force=True)

    def _check(self, shard: int, path: Path, force: bool = False) -> None:
        """The shard's size, header and (with :attr:`checksums`) checksum, once per process."""
        entry = self._shards.get(shard, {})
        want = entry.get("sha256") if self.checksums or force else None
        try:
            st = path.stat()
        except OSError:
            raise ArchsearchError(f"{path}: missing shard of the cache {self.root}; {repair_hint(self.root)}") from None
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, str(want))
        if key in _VERIFIED:
            return
        why = check_shard(path, want, entry.get("bytes"))
        if why is not None:
            raise _bad_shard(self.root, path, why)
        _VERIFIED.add(key)

    def _read(self, rows: Sequence[tuple[str, int, str, int]]) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {}
        for key, shard, g, r in rows:
            fh = self._handle(shard)
            names = fh.keys()
            if f"latents/{g}" not in names:
                raise _bad_shard(self.root, shard_path(self.root, shard), f"no tensor latents/{g} (the index lists "
                                 f"{key} in it)")
            for f in FIELDS:
                name = f"{f}/{g}"
                if name in names:
                    try:
                        out.setdefault(f, []).append(fh.get_slice(name)[r : r + 1])
                    except Exception as exc:  # noqa: BLE001 - safetensors' own errors: name the shard, one line
                        raise _bad_shard(self.root, shard_path(self.root, shard),
                                         f"cannot read {name} ({first_line(exc)})") from None
        return {f: torch.cat(ts) for f, ts in out.items()}

    def __getstate__(self) -> dict[str, Any]:  # open handles stay in their process
        return {**self.__dict__, "_handles": OrderedDict()}


def _bad_shard(root: Path, path: Path, why: str) -> ArchsearchError:
    return ArchsearchError(f"{path}: bad shard of the cache {root}: {why}; {repair_hint(root)}")


class CacheSplit:
    """One split of a :class:`LatentCache`, ordered by key."""

    def __init__(self, cache: LatentCache, name: str, rows: list[tuple[str, int, str, int]]) -> None:
        self.cache, self.name, self._rows = cache, name, rows
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row[2], []).append(i)
        self._groups = {g: np.asarray(ix, dtype=np.int64) for g, ix in sorted(groups.items())}

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def keys(self) -> list[str]:
        return [r[0] for r in self._rows]

    def batch(self, positions: Sequence[int], dtype: torch.dtype | None = torch.float32,
              device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
        """The samples at ``positions`` (of this split) as one batch: ``latents``,
        ``text_states`` (+ ``pooled``, ``add_time_ids``, ``t5_states`` when cached) and
        ``index`` (the positions). All positions must share a latent shape."""
        rows = [self._rows[int(p)] for p in positions]
        if len({r[2] for r in rows}) > 1:
            raise ParameterError("positions", f": samples of different latent shapes ({sorted({r[2] for r in rows})}) "
                                  "cannot share a batch")
        out = self.cache._read(rows)
        if dtype is not None:
            out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}
        out["index"] = torch.as_tensor(list(positions), dtype=torch.long)
        if device is not None:
            out = {k: v.to(device) for k, v in out.items()}
        return out

    def head(self, n: int, **kw: Any) -> dict[str, torch.Tensor]:
        """The first ``n`` samples (by key) of the largest latent-shape group: a fixed batch,
        e.g. for a deterministic quality score on the holdout split."""
        if not self._groups:
            raise ParameterError("split", f": the {self.name} split of {self.cache.root} is empty")
        g = max(self._groups, key=lambda k: len(self._groups[k]))
        return self.batch(self._groups[g][:n].tolist(), **kw)

    def epoch(self, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
              drop_last: bool = True) -> list[list[int]]:
        """The batches (positions) of one epoch: each from one latent-shape group, shuffled
        from ``(seed, epoch)``; the same arguments give the same list."""
        if batch_size < 1:
            raise ParameterError("batch_size", f": bad value {batch_size} (allowed: an integer >= 1)")
        out: list[list[int]] = []
        for gi, idx in enumerate(self._groups.values()):
            if shuffle:
                idx = np.random.default_rng([seed, epoch, gi]).permutation(idx)
            for i in range(0, len(idx), batch_size):
                chunk = idx[i : i + batch_size]
                if len(chunk) == batch_size or not drop_last:
                    out.append(chunk.tolist())
        if shuffle:
            order = np.random.default_rng([seed, epoch, len(self._groups)]).permutation(len(out))
            out = [out[i] for i in order]
        return out

    def batches_per_epoch(self, batch_size: int, drop_last: bool = True) -> int:
        if drop_last:
            return sum(len(ix) // batch_size for ix in self._groups.values())
        return sum(-(-len(ix) // batch_size) for ix in self._groups.values())

    def batches(
        self,
        batch_size: int,
        seed: int = 0,
        start: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        epochs: int | None = None,
        dtype: torch.dtype | None = torch.float32,
        device: str | torch.device | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of ``batch_size`` (dicts, see :meth:`batch`), epoch after epoch (forever when
        ``epochs`` is None), each epoch shuffled from ``(seed, epoch)``.

        ``start`` is the position in that stream of the first batch to yield (batch ``start``
        counts across epochs), so a training run that stopped after ``k`` batches resumes with
        ``start=k`` and sees exactly what an uninterrupted run would have.
        """
        per = self.batches_per_epoch(batch_size, drop_last)
        if per == 0:
            raise ParameterError("batch_size", f": {batch_size} is larger than every latent-shape group of the "
                                  f"{self.name} split ({len(self)} samples in {self.cache.root})")
        if start < 0:
            raise ParameterError("start", f": bad value {start} (allowed: an integer >= 0)")
        e, skip = divmod(start, per)
        while epochs is None or e < epochs:
            for positions in self.epoch(batch_size, seed, e, shuffle, drop_last)[skip:]:
                yield self.batch(positions, dtype=dtype, device=device)
            skip = 0
            e += 1
