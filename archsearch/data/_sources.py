"""Readers of the data sets ``archsearch data prepare`` takes, one class per format.

Every reader lists its samples once, in a deterministic order, as light picklable
:class:`Item` s (a stable key, a locator, the caption when the listing already has it), and
loads one item at a time (:meth:`Source.load`) -- in a ``DataLoader`` worker -- into a
:class:`Loaded` picture or clip. A sample that cannot be used raises :class:`BadSample` with a
short reason; the pass counts it and goes on.

Formats (:func:`open_source` picks one from the path, or ``format=`` names it; a format is a
:class:`Source` subclass registered under its name with :func:`register_source`, and
:data:`SOURCES` maps every name to its class):

* ``imagefolder`` -- a folder of pictures (searched recursively) with captions in
  ``metadata.jsonl`` / ``metadata.csv`` (Hugging Face ``imagefolder``: ``file_name`` + a text
  column) or in sidecar ``.txt`` files (``cat.png`` + ``cat.txt``). Key: the relative path.
* ``webdataset`` -- local, uncompressed WebDataset tar shards (``data-{00000..00099}.tar``;
  brace expansion and key grouping as the ``webdataset`` library does them), jpg/png/webp +
  txt/json. Members are read by offset, so a resumed pass never reads finished samples.
  Key: ``__key__``.
* ``datasets`` -- a Hugging Face dataset saved with ``save_to_disk`` (``load_from_disk``).
* ``parquet`` -- Parquet files with an image column (bytes, or the ``{bytes, path}`` struct
  that ``datasets`` writes) and a text column.
* ``video`` -- a folder of mp4/webm/mkv/mov clips with captions as for ``imagefolder``,
  decoded with PyAV and sampled to ``frames`` frames at ``fps``.
* ``prompts`` -- a text file, one prompt a line (teacher-generated data). Key: a hash of the
  prompt (plus its occurrence number), so reordering the file keeps every key.

A new format: subclass :class:`Source` (``items`` and ``load``; ``open`` when it takes options
or a path that is not a file or folder), decorate it with ``@register_source("name")``; then
``prepare(path, ..., format="name")`` reads it, and ``prepare(MySource(...), ...)`` takes an
instance directly.
"""

from __future__ import annotations

import abc
import csv
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from archsearch._util import first_line
from archsearch.errors import ArchsearchError, ParameterError

__all__ = [
    "FORMATS",
    "SOURCES",
    "BadSample",
    "Item",
    "Loaded",
    "Source",
    "open_source",
    "register_source",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".mov", ".avi")
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
#: text columns tried in this order when ``caption_column`` is not given
TEXT_COLUMNS = ("text", "caption", "prompt", "captions", "txt")
KEY_COLUMNS = ("key", "__key__", "id", "file_name")
IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "img")
#: picture modes that convert to RGB without losing meaning; others (16-bit, float) are refused
_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La", "RGBa"}


class BadSample(Exception):
    """One sample cannot be used; ``str(exc)`` is the short reason that gets counted."""


@dataclass(frozen=True)
class Item:
    """One sample as listed: ``key`` (stable, unique), ``ref`` (where it is), ``caption``;
    ``skip``: the reason it is skipped without being loaded (a symlink out of the data set, a
    metadata row naming no file), counted like a :class:`BadSample`."""

    key: str
    ref: Any
    caption: Any = None
    skip: str | None = None


@dataclass
class Loaded:
    """A decoded sample: ``pixels`` is an RGB ``PIL.Image`` (pictures), a ``(T, H, W, 3)``
    uint8 array (clips) or ``None`` (prompts)."""

    key: str
    caption: str
    pixels: Any = None


def caption_text(value: Any, where: str = "caption") -> str:
    """A caption as text, or :class:`BadSample` naming what it was instead."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadSample(f"{where} is not UTF-8 text") from None
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        value = value[0]  # several captions: the first
    if not isinstance(value, str):
        raise BadSample(f"{where} is not text ({type(value).__name__})")
    value = value.strip()
    if not value:
        raise BadSample(f"{where} is empty")
    return value


def decode_image(data: bytes | str | os.PathLike, what: str = "image") -> Any:
    """Fully decode a picture (a truncated file fails here, not later) into RGB."""
    from PIL import Image, ImageFile, UnidentifiedImageError

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    if isinstance(data, (bytes, bytearray)) and not data:
        raise BadSample(f"{what} is empty (0 bytes)")
    if not isinstance(data, (bytes, bytearray)) and os.path.getsize(data) == 0:
        raise BadSample(f"{what} is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data) as img:
            img.load()
            if img.mode not in _MODES:
                raise BadSample(f"unsupported image mode {img.mode!r}")
            if img.width < 1 or img.height < 1:
                raise BadSample("image has no pixels")
            if "A" in img.mode or img.mode in ("P", "PA") and "transparency" in img.info:
                rgba = img.convert("RGBA")
                out = Image.new("RGB", rgba.size, (255, 255, 255))
                out.paste(rgba, mask=rgba.getchannel("A"))
                return out
            return img.convert("RGB")
    except BadSample:
        raise
    except UnidentifiedImageError:
        raise BadSample(f"{what} is not a picture PIL can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        msg = first_line(exc)
        raise BadSample(f"{what} does not decode ({msg})") from None


def decode_video(path: str | os.PathLike, frames: int, fps: float | None) -> np.ndarray:
    """``frames`` RGB frames ``(T, H, W, 3)`` uint8 from the start of a clip, ``1/fps`` s apart
    (consecutive frames when ``fps`` is None), with PyAV."""
    import av

    try:
        if os.path.getsize(path) == 0:
            raise BadSample("video is empty (0 bytes)")
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BadSample("no video stream")
            stream = container.streams.video[0]
            out: list[np.ndarray] = []
            t0: float | None = None
            for frame in container.decode(stream):
                if fps is None:
                    out.append(frame.to_ndarray(format="rgb24"))
                else:
                    t = float(frame.time) if frame.time is not None else len(out) / float(stream.average_rate or 1)
                    if t0 is None:
                        t0 = t
                    # a decoded frame covers its targets (t0 + i/fps) up to the next frame
                    while len(out) < frames and t0 + len(out) / fps <= t + 1e-6:
                        out.append(frame.to_ndarray(format="rgb24"))
                if len(out) >= frames:
                    break
    except BadSample:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
        msg = first_line(exc)
        raise BadSample(f"video does not decode ({msg})") from None
    if not out:
        raise BadSample("video has no decodable frames")
    if len(out) < frames:
        rate = f" at {fps:g} fps" if fps else ""
        raise BadSample(f"video too short: {len(out)} of {frames} frames{rate}")
    return np.stack(out[:frames])


class Source(abc.ABC):
    """A data set: lists its samples once (:meth:`items`) and loads one (:meth:`load`).

    ``format`` is the name it is registered under (:func:`register_source`); ``kind`` is
    ``image``, ``video`` or ``prompts``. A source travels to ``DataLoader`` workers by pickle.
    """

    format: str = ""
    kind: str = "image"  # image | video | prompts

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def open(cls, spec: str, **options: Any) -> "Source":
        """The source at ``spec`` (the user's path) with ``prepare``'s reading options
        (``frames``, ``fps``, ``image_column``, ``caption_column``, ``split``; take the ones that
        apply). By default: an existing file or folder, ``cls(path)``."""
        p = Path(spec).expanduser()
        if not p.exists():
            raise ParameterError("source", f": {spec}: no such file or folder")
        return cls(p)

    @abc.abstractmethod
    def items(self) -> list[Item]:
        """Every sample, in a deterministic order (the same order on every run)."""

    @abc.abstractmethod
    def load(self, item: Item) -> Loaded:
        """Decode one sample (in a worker process); raises :class:`BadSample`."""

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "path": str(self.path)}

    def __getstate__(self) -> dict[str, Any]:  # open handles (``_h*``) stay in their process
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_h")}


# --------------------------------------------------------------------------- folders


def _inside(path: Path, real_root: str) -> bool:
    """Whether ``path``, every symlink followed, is inside the folder ``real_root`` (resolved)."""
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _walk(root: Path) -> tuple[list[str], dict[str, str]]:
    """Every file under ``root`` (paths relative to it, sorted), and the symlinks -- files or
    folders -- that lead outside it (relative path -> where they lead). Symlinked folders are
    never entered (``os.walk`` without ``followlinks``)."""
    real_root = os.path.realpath(root)
    files: list[str] = []
    outside: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        for name in (*dirnames, *filenames):
            p = d / name
            if p.is_symlink() and not _inside(p, real_root):
                outside[p.relative_to(root).as_posix()] = os.path.realpath(p)
        files += [(d / name).relative_to(root).as_posix() for name in filenames]
    return sorted(files), outside


_ROW_INSIDE = "allowed: a path relative to the metadata file, inside the dataset folder"


def _read_metadata(root: Path, caption_column: str | None, files: list[str], outside: dict[str, str]
                   ) -> tuple[dict[str, Any], dict[str, str]]:
    """Captions from every ``metadata.jsonl`` / ``metadata.csv`` among ``files`` (not a
    symlink out of ``root``), by path relative to ``root``; and the rows whose ``file_name``
    is an absolute path or leaves the folder (``..``), with the reason they are skipped."""
    captions: dict[str, Any] = {}
    bad: dict[str, str] = {}
    metas = [root / f for f in files if Path(f).name in ("metadata.jsonl", "metadata.csv") and f not in outside]
    for meta in sorted(metas):
        base = meta.parent.relative_to(root)
        rows: list[dict[str, Any]] = []
        try:
            if meta.suffix == ".jsonl":
                for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except ValueError:
                            raise ArchsearchError(f"{meta}:{n}: not a JSON object (allowed: one JSON object a line)") from None
                        if not isinstance(row, dict):
                            raise ArchsearchError(f"{meta}:{n}: not a JSON object (allowed: one JSON object a line)")
                        rows.append(row)
            else:
                with meta.open(newline="", encoding="utf-8") as fh:
                    rows = list(csv.DictReader(fh))
        except (OSError, UnicodeDecodeError) as exc:
            raise ArchsearchError(f"{meta}: cannot read ({exc})") from None
        if not rows:
            continue
        if "file_name" not in rows[0]:
            raise ArchsearchError(f"{meta}: no file_name column (allowed: file_name + a text column, "
                                  "as for Hugging Face imagefolder)")
        col = caption_column or next((c for c in TEXT_COLUMNS if c in rows[0]), None)
        if col is None:
            others = [c for c in rows[0] if c != "file_name"]
            if len(others) != 1:
                raise ArchsearchError(f"{meta}: no text column (allowed: {', '.join(TEXT_COLUMNS)}, "
                                      "or caption_column naming one)")
            col = others[0]
        for row in rows:
            file_name = str(row.get("file_name", ""))
            name = (base / file_name).as_posix()
            if Path(file_name).is_absolute() or PureWindowsPath(file_name).is_absolute():
                bad[file_name] = f"metadata file_name is an absolute path ({_ROW_INSIDE})"
            elif ".." in Path(file_name).parts or ".." in PureWindowsPath(file_name).parts:
                bad[name] = f"metadata file_name leaves the dataset folder ({_ROW_INSIDE})"
            else:
                captions[name] = row.get(col)
    return captions, bad


class FolderSource(Source):
    """Pictures (``imagefolder``) or clips (``video``) in a folder, captions from metadata
    files or sidecar ``.txt`` files.

    Nothing outside the folder is read: a symlink (file or folder) that leads out of it is not
    followed, and a metadata row whose ``file_name`` is absolute or climbs out with ``..`` is
    not used; each is listed as a skipped sample with its reason, as is a row that names no
    picture of the folder."""

    def __init__(self, path: str | os.PathLike, kind: str = "image", frames: int = 1, fps: float | None = None,
                 caption_column: str | None = None) -> None:
        super().__init__(path)
        self.kind = kind
        self.format = "video" if kind == "video" else "imagefolder"
        self.frames, self.fps, self.caption_column = int(frames), fps, caption_column
        self.real_root = os.path.realpath(self.path)

    def items(self) -> list[Item]:
        exts = VIDEO_EXTS if self.kind == "video" else IMAGE_EXTS
        what = "clip" if self.kind == "video" else "picture"
        all_files, outside = _walk(self.path)
        captions, bad_rows = _read_metadata(self.path, self.caption_column, all_files, outside)
        skips: dict[str, str] = {}
        files = []
        for rel in all_files:
            p = Path(rel)
            if p.suffix.lower() not in exts or p.name.startswith("."):
                continue
            if rel in outside:
                skips[rel] = f"symlink points outside the dataset folder (to {outside[rel]}; not followed)"
            elif not (self.path / rel).is_file():
                skips[rel] = "not a readable file (a broken symlink?)"
            else:
                files.append(rel)
        for rel, target in outside.items():  # a symlinked folder out of the data set: not entered
            if rel not in skips and (self.path / rel).is_dir():
                skips[rel] = f"symlink points outside the dataset folder (to the folder {target}; not followed)"
        listed = set(files)
        for name in captions:
            if name not in listed and name not in skips:
                exists = (self.path / name).is_file()
                skips[name] = (f"metadata row names a file that is not a {what} ({Path(name).suffix or 'no extension'})"
                               if exists else "metadata row names no file (no such file in the dataset folder)")
        for name, why in bad_rows.items():
            skips.setdefault(name, why)
        out = []
        for rel in sorted(listed | set(skips)):
            if rel in skips:
                out.append(Item(rel, None, None, skip=skips[rel]))
            elif rel in captions:
                out.append(Item(rel, rel, ("value", captions[rel])))
            else:
                out.append(Item(rel, rel, ("sidecar", str(Path(rel).with_suffix(".txt")))))
        return out

    def _check_inside(self, path: Path, what: str) -> None:
        if not _inside(path, self.real_root):
            raise BadSample(f"{what} is a symlink outside the dataset folder (to {os.path.realpath(path)}; "
                            "not followed)")

    def _caption(self, item: Item) -> str:
        how, value = item.caption
        if how == "value":
            return caption_text(value)
        side = self.path / value
        if not side.is_file():
            raise BadSample("no caption (no metadata row, no sidecar .txt)")
        self._check_inside(side, "caption file")
        return caption_text(side.read_bytes(), "caption file")

    def load(self, item: Item) -> Loaded:
        if item.skip is not None:
            raise BadSample(item.skip)
        caption = self._caption(item)
        path = self.path / item.ref
        self._check_inside(path, "file")
        if self.kind == "video":
            return Loaded(item.key, caption, decode_video(path, self.frames, self.fps))
        return Loaded(item.key, caption, decode_image(path))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.kind == "video":
            d.update(frames=self.frames, fps=self.fps)
        return d


class ImageFolderSource(FolderSource):
    """``imagefolder``: pictures in a folder."""

    @classmethod
    def open(cls, spec: str, *, caption_column: str | None = None, **_: Any) -> Source:
        p = super().open(spec).path
        return cls(p, "image", caption_column=caption_column)


class VideoFolderSource(FolderSource):
    """``video``: clips in a folder, ``frames`` frames ``1/fps`` s apart."""

    @classmethod
    def open(cls, spec: str, *, frames: int = 1, fps: float | None = None, caption_column: str | None = None,
             **_: Any) -> Source:
        p = super().open(spec).path
        return cls(p, "video", frames=frames, fps=fps, caption_column=caption_column)


# --------------------------------------------------------------------------- webdataset


class WebDatasetSource(Source):
    """Local uncompressed WebDataset shards; samples grouped by key as ``webdataset`` does."""

    format = "webdataset"

    def __init__(self, path: str | os.PathLike, caption_column: str | None = None) -> None:
        from webdataset.shardlists import expand_urls

        self.spec = str(path)
        super().__init__(Path(self.spec))
        p = Path(self.spec)
        if p.is_dir():
            urls = [str(x) for x in sorted(p.glob("*.tar"))]
        else:
            urls = expand_urls(self.spec)
        self.urls = [str(Path(u).expanduser()) for u in urls]
        for u in self.urls:
            if not Path(u).is_file():
                raise ParameterError("source", f": {u}: no such shard (allowed: local .tar files, e.g. data-{{00000..00099}}.tar)")
            if not u.endswith(".tar"):
                raise ParameterError("source", f": {u}: not an uncompressed .tar shard (allowed: .tar)")
        if not self.urls:
            raise ParameterError("source", f": {self.spec}: no .tar shards")
        self.caption_column = caption_column

    @classmethod
    def open(cls, spec: str, *, caption_column: str | None = None, **_: Any) -> Source:
        """Shards named by a brace pattern (``data-{00000..00099}.tar``), a ``.tar`` or a folder of them."""
        return cls(spec if "{" in spec else str(Path(spec).expanduser()), caption_column)

    def items(self) -> list[Item]:
        from webdataset.tariterators import base_plus_ext

        out: list[Item] = []
        seen: dict[str, str] = {}
        for si, url in enumerate(self.urls):
            groups: dict[str, dict[str, tuple[int, int]]] = {}
            order: list[str] = []
            try:
                with tarfile.open(url, "r:") as tf:
                    for m in tf:
                        if not m.isfile():
                            continue
                        prefix, suffix = base_plus_ext(m.name)
                        if prefix is None or Path(m.name).name.startswith("."):
                            continue
                        if prefix not in groups:
                            groups[prefix] = {}
                            order.append(prefix)
                        groups[prefix][suffix.lower()] = (m.offset_data, m.size)
            except (tarfile.TarError, OSError) as exc:
                raise ParameterError("source", f": {url}: not a readable tar file ({exc})") from None
            for key in order:
                ref = (si, groups[key])
                if key in seen:  # counted as a bad sample when loaded
                    out.append(Item(f"{key}@{Path(url).name}", (si, {"__duplicate__": seen[key]})))
                    continue
                seen[key] = Path(url).name
                out.append(Item(key, ref))
        return out

    def _read(self, si: int, where: tuple[int, int]) -> bytes:
        handles = self.__dict__.setdefault("_hfiles", {})  # per process, not pickled
        fh = handles.get(si)
        if fh is None:
            fh = handles[si] = open(self.urls[si], "rb")  # noqa: SIM115 - kept open per worker
        fh.seek(where[0])
        return fh.read(where[1])

    def load(self, item: Item) -> Loaded:
        si, parts = item.ref
        if "__duplicate__" in parts:
            raise BadSample(f"duplicate key (also in {parts['__duplicate__']})")
        img_ext = next((e for e in WDS_IMAGE_EXTS if e in parts), None)
        if img_ext is None:
            raise BadSample(f"no image ({'/'.join(WDS_IMAGE_EXTS)}) in the sample")
        if self.caption_column and self.caption_column in parts:
            caption = caption_text(self._read(si, parts[self.caption_column]), self.caption_column)
        elif "txt" in parts:
            caption = caption_text(self._read(si, parts["txt"]), "txt")
        elif "json" in parts:
            try:
                meta = json.loads(self._read(si, parts["json"]))
            except ValueError:
                raise BadSample("json is not valid JSON") from None
            if not isinstance(meta, dict):
                raise BadSample("json is not an object")
            col = self.caption_column or next((c for c in TEXT_COLUMNS if c in meta), None)
            if col is None:
                raise BadSample(f"json has no caption (allowed keys: {', '.join(TEXT_COLUMNS)})")
            caption = caption_text(meta[col], f"json {col}")
        else:
            raise BadSample("no caption (txt/json) in the sample")
        return Loaded(item.key, caption, decode_image(self._read(si, parts[img_ext]), img_ext))

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "path": self.spec, "shards": len(self.urls)}


# --------------------------------------------------------------------------- tables


def _pick(columns: Sequence[str], wanted: str | None, defaults: Sequence[str], what: str, where: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ParameterError(what, f": {wanted!r} is not a column of {where} (allowed: {', '.join(columns)})")
        return wanted
    for c in defaults:
        if c in columns:
            return c
    raise ParameterError(what, f": {where} has none of the columns {', '.join(defaults)} "
                          f"(allowed: name one of {', '.join(columns)})")


def _image_value(value: Any) -> Any:
    """What an image cell holds: bytes, a ``{bytes, path}`` struct, a path, or a PIL image."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return value["path"]
        raise BadSample("image cell is empty")
    if value is None:
        raise BadSample("image cell is empty")
    return value


def _decode_cell(value: Any) -> Any:
    value = _image_value(value)
    if hasattr(value, "convert") and hasattr(value, "size"):  # already a PIL image
        return decode_image(_png_bytes(value))
    if isinstance(value, str) and not Path(value).is_file():
        raise BadSample(f"image file {value} does not exist")
    return decode_image(value)


def _png_bytes(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class HFDatasetSource(Source):
    """A ``datasets`` dataset saved on disk (``save_to_disk``), read with ``load_from_disk``."""

    format = "datasets"

    def __init__(self, path: str | os.PathLike, split: str | None = None, image_column: str | None = None,
                 caption_column: str | None = None) -> None:
        super().__init__(path)
        self.split = split
        ds = self._dataset()
        cols = list(ds.column_names)
        where = f"the dataset {self.path}"
        from datasets import Image as HFImage

        img_default = [c for c, f in ds.features.items() if isinstance(f, HFImage)] + list(IMAGE_COLUMNS)
        self.image_column = _pick(cols, image_column, img_default, "image_column", where)
        self.caption_column = _pick(cols, caption_column, TEXT_COLUMNS, "caption_column", where)
        self.key_column = next((c for c in KEY_COLUMNS if c in cols), None)
        self.__dict__.pop("_hds", None)  # reopened with the image column left undecoded

    @classmethod
    def open(cls, spec: str, *, split: str | None = None, image_column: str | None = None,
             caption_column: str | None = None, **_: Any) -> Source:
        return cls(super().open(spec).path, split, image_column, caption_column)

    def _dataset(self) -> Any:
        ds = self.__dict__.get("_hds")
        if ds is None:
            import datasets

            datasets.disable_progress_bars()
            try:
                ds = datasets.load_from_disk(str(self.path))
            except (FileNotFoundError, OSError, ValueError) as exc:
                raise ParameterError("source", f": {self.path}: not a dataset saved with save_to_disk ({exc})") from None
            if isinstance(ds, datasets.DatasetDict):
                names = list(ds)
                split = self.split or ("train" if "train" in ds else names[0])
                if split not in ds:
                    raise ParameterError("split", f": {split!r} is not a split of {self.path} (allowed: {', '.join(names)})")
                self.split = split
                ds = ds[split]
            feats = ds.features
            col = getattr(self, "image_column", None)
            if col is not None and hasattr(feats[col], "decode"):
                from datasets import Image as HFImage

                ds = ds.cast_column(col, HFImage(decode=False))
            self.__dict__["_hds"] = ds
        return ds

    def items(self) -> list[Item]:
        ds = self._dataset()
        captions = ds[self.caption_column]
        if self.key_column:
            keys = [str(k) for k in ds[self.key_column]]
        else:
            keys = [f"{i:09d}" for i in range(len(ds))]
        return _unique_items(keys, list(range(len(ds))), captions)

    def load(self, item: Item) -> Loaded:
        caption = caption_text(item.caption, self.caption_column)
        row = self._dataset()[int(item.ref)]
        return Loaded(item.key, caption, _decode_cell(row[self.image_column]))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "split": self.split, "image_column": self.image_column,
                "caption_column": self.caption_column}


def _unique_items(keys: list[str], refs: list[Any], captions: list[Any]) -> list[Item]:
    seen: dict[str, int] = {}
    out = []
    for k, r, c in zip(keys, refs, captions):
        if k in seen:  # a repeated key: its own key, refused when loaded
            seen[k] += 1
            out.append(Item(f"{k}#{seen[k]}", None, c))
        else:
            seen[k] = 0
            out.append(Item(k, r, c))
    return out


class ParquetSource(Source):
    """Parquet files with an image column and a text column (read with pyarrow, row group by row group)."""

    format = "parquet"

    def __init__(self, path: str | os.PathLike, image_column: str | None = None,
                 caption_column: str | None = None) -> None:
        import pyarrow.parquet as pq

        super().__init__(path)
        p = self.path
        self.files = [str(f) for f in (sorted(p.rglob("*.parquet")) if p.is_dir() else [p])]
        if not self.files:
            raise ParameterError("source", f": {p}: no .parquet files")
        try:
            cols = list(pq.read_schema(self.files[0]).names)
        except (OSError, ValueError) as exc:
            raise ParameterError("source", f": {self.files[0]}: not a Parquet file ({exc})") from None
        where = f"{self.files[0]}"
        self.image_column = _pick(cols, image_column, IMAGE_COLUMNS, "image_column", where)
        self.caption_column = _pick(cols, caption_column, TEXT_COLUMNS, "caption_column", where)
        self.key_column = next((c for c in KEY_COLUMNS if c in cols), None)

    @classmethod
    def open(cls, spec: str, *, image_column: str | None = None, caption_column: str | None = None,
             **_: Any) -> Source:
        return cls(super().open(spec).path, image_column, caption_column)

    def items(self) -> list[Item]:
        import pyarrow.parquet as pq

        keys, refs, caps = [], [], []
        for fi, f in enumerate(self.files):
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            for c in (self.image_column, self.caption_column):
                if c not in names:
                    raise ParameterError("source", f": {f}: no column {c!r} (allowed: files with the same columns)")
            cols = [self.caption_column] + ([self.key_column] if self.key_column in names else [])
            start = 0
            for rg in range(pf.num_row_groups):
                t = pf.read_row_group(rg, columns=cols)
                caps += t.column(self.caption_column).to_pylist()
                if self.key_column in names:
                    keys += [str(k) for k in t.column(self.key_column).to_pylist()]
                else:
                    keys += [f"{Path(f).stem}/{start + i:09d}" for i in range(t.num_rows)]
                refs += [(fi, rg, i) for i in range(t.num_rows)]
                start += t.num_rows
        return _unique_items(keys, refs, caps)

    def load(self, item: Item) -> Loaded:
        if item.ref is None:
            raise BadSample("duplicate key")
        caption = caption_text(item.caption, self.caption_column)
        fi, rg, row = item.ref
        cache = self.__dict__.get("_hrg")
        if cache is None or cache[0] != (fi, rg):  # one row group at a time per worker
            import pyarrow.parquet as pq

            col = pq.ParquetFile(self.files[fi]).read_row_group(rg, columns=[self.image_column]).column(0)
            cache = self.__dict__["_hrg"] = ((fi, rg), col)
        return Loaded(item.key, caption, _decode_cell(cache[1][row].as_py()))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "files": len(self.files), "image_column": self.image_column,
                "caption_column": self.caption_column}


# --------------------------------------------------------------------------- prompts


class PromptSource(Source):
    """A text file of prompts, one a line: the teacher generates the latents."""

    format = "prompts"
    kind = "prompts"

    def items(self) -> list[Item]:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise ParameterError("source", f": {self.path}: cannot read ({exc})") from None
        out, seen = [], {}
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            h = hashlib.sha256(line.strip()).hexdigest()[:16]
            seen[h] = seen.get(h, -1) + 1
            out.append(Item(h if not seen[h] else f"{h}-{seen[h]}", n, line))
        return out

    def load(self, item: Item) -> Loaded:
        return Loaded(item.key, caption_text(item.caption, f"line {item.ref}"))


# --------------------------------------------------------------------------- the registry

#: format name -> its :class:`Source` class, in registration order (the built-in ones first)
SOURCES: dict[str, type[Source]] = {}
_S = TypeVar("_S", bound=type[Source])


def register_source(name: str) -> Callable[[_S], _S]:
    """Class decorator: register a :class:`Source` subclass as the format ``name`` (what
    ``prepare(..., format=name)`` and ``archsearch data prepare --format`` select; it is
    opened with :meth:`Source.open`). A name registered again is replaced."""
    def deco(cls: _S) -> _S:
        if not (isinstance(cls, type) and issubclass(cls, Source)):
            raise TypeError(f"register_source({name!r}): {cls!r} is not a Source subclass")
        if not cls.__dict__.get("format"):
            cls.format = name
        SOURCES[name] = cls
        return cls

    return deco


for _name, _cls in (("imagefolder", ImageFolderSource), ("webdataset", WebDatasetSource),
                    ("datasets", HFDatasetSource), ("parquet", ParquetSource), ("video", VideoFolderSource),
                    ("prompts", PromptSource)):
    register_source(_name)(_cls)
#: the built-in formats, in the order the docs list them
FORMATS: tuple[str, ...] = tuple(SOURCES)


# --------------------------------------------------------------------------- detection


def _detect(p: Path, spec: str) -> str:
    if "{" in spec or spec.endswith(".tar"):
        return "webdataset"
    if p.is_file():
        if p.suffix == ".parquet":
            return "parquet"
        if p.suffix in (".txt", ".prompts"):
            return "prompts"
        raise ParameterError("source", f": {p}: cannot tell the format of this file "
                              "(allowed: a .txt prompts file, a .parquet file, .tar shards, or a folder)")
    if not p.is_dir():
        raise ParameterError("source", f": {spec}: no such file or folder")
    if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        return "datasets"
    names = [f for f in p.rglob("*") if f.is_file()]
    if any(f.suffix == ".tar" for f in names if f.parent == p):
        return "webdataset"
    if any(f.suffix == ".parquet" for f in names):
        return "parquet"
    videos = sum(f.suffix.lower() in VIDEO_EXTS for f in names)
    images = sum(f.suffix.lower() in IMAGE_EXTS for f in names)
    if videos and videos >= images:
        return "video"
    if images:
        return "imagefolder"
    raise ParameterError("source", f": {p}: no pictures, clips, shards, Parquet files or saved dataset found "
                          f"(allowed formats: {', '.join(FORMATS)})")


def open_source(
    source: str | os.PathLike | Source,
    format: str | None = None,  # noqa: A002 - the user's word for it
    frames: int = 1,
    fps: float | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    split: str | None = None,
) -> Source:
    """The reader of ``source``: a :class:`Source` is returned as it is; a path is opened as
    the format ``format`` names (one of :data:`SOURCES`), else as the format detected from it."""
    if isinstance(source, Source):
        return source
    spec = str(source)
    fmt = format or _detect(Path(spec).expanduser(), spec)
    if fmt not in SOURCES:
        raise ParameterError("format", f": bad value {fmt!r} (allowed: {', '.join(SOURCES)})")
    return SOURCES[fmt].open(spec, frames=frames, fps=fps, image_column=image_column, caption_column=caption_column,
                             split=split)
