"""What ``generate`` checks and writes, without diffusers: a pipeline folder's JSON files, the
drawing settings, and files that never replace another.

* :func:`pipeline_info` reads a pipeline folder's JSON files (``model_index.json``, the UNet's,
  the scheduler's and the VAE's ``config.json``) without importing diffusers: a file that is
  missing or not JSON is one line naming it, and the settings :func:`check_generate` needs come
  from them (the scheduler's training timesteps, the VAE's scale factor, a video model's frame
  count, a few-step model's own default steps and guidance).
* :func:`check_generate`: every drawing setting, one line naming it and its allowed range,
  before anything loads.
* Nothing is overwritten: a picture is named ``<prompt slug>-<seed>.png`` (a clip ``.gif`` /
  ``.mp4``) and, when that name is taken, ``<prompt slug>-<seed>-2.png``, ``-3``, ... (the name
  is claimed with a hard link, so two ``generate`` calls into one folder never share one). The
  default folder is ``generated/`` beside the pipeline (the train output folder).

A leaf of :mod:`archsearch.distill` (it imports none of the pipeline or sampling modules).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archsearch.errors import ArchsearchError, ParameterError

__all__ = ["DEFAULT_GUIDANCE", "DEFAULT_STEPS", "IMAGE_FORMATS", "MAX_PICTURES", "MAX_SIDE", "VIDEO_FORMATS",
           "PipelineInfo", "check_generate", "default_out", "find_pipeline", "pipeline_defaults", "pipeline_info",
           "quiet_loading", "save_clip", "save_picture", "slug", "write_gif", "write_mp4"]

#: ``generate``'s bound on ``n`` (pictures or clips per call)
MAX_PICTURES = 1000
#: the largest picture side ``generate`` draws (pixels)
MAX_SIDE = 4096
IMAGE_FORMATS = ("png",)
VIDEO_FORMATS = ("gif", "mp4")
#: drawing defaults of a pipeline that does not carry its own
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5


@contextlib.contextmanager
def quiet_loading() -> Any:
    """diffusers' "Loading pipeline components" and transformers' "Loading weights" / "Writing
    model shards" bars off inside the block (each restored after)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    was = [lib for lib in (dlog, tlog) if lib.is_progress_bar_enabled()]
    for lib in was:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in was:
            lib.enable_progress_bar()


# --------------------------------------------------------------------------- the pipeline's files


@dataclass(frozen=True)
class PipelineInfo:
    """What :func:`pipeline_info` read from a pipeline folder."""

    root: Path
    class_name: str  # model_index.json's _class_name
    video: bool
    frames: int | None  # a video model's frame count (None: not known, or an image model)
    train_timesteps: int  # the scheduler's: the most sampling steps it takes
    pixel_multiple: int  # height and width are multiples of it
    default_steps: int
    default_guidance: float


def _json(path: Path, what: str) -> dict[str, Any]:
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ArchsearchError(f"{path}: missing ({what})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        msg = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise ArchsearchError(f"{path}: not readable JSON ({msg}; {what})") from None
    if not isinstance(d, dict):
        raise ArchsearchError(f"{path}: not a JSON object ({what})")
    return d


def find_pipeline(path: str | os.PathLike, param: str = "model") -> Path:
    """``path`` or ``path/pipeline`` -- whichever holds a ``model_index.json`` (else a one-line
    :class:`~archsearch.errors.ParameterError` naming ``param``)."""
    p = Path(path)
    for cand in (p, p / "pipeline"):
        if (cand / "model_index.json").is_file():
            return cand
    raise ParameterError(param, f": {p}: no diffusers pipeline here (expected model_index.json or "
                                "pipeline/model_index.json: an `archsearch train` output with a diffusers teacher, "
                                "or a diffusers checkpoint folder)")


def pipeline_defaults(root: Path) -> dict[str, Any]:
    """The drawing defaults a pipeline carries (``steps``, ``guidance``: a few-step distilled
    model's ``fewstep.json``); empty: :data:`DEFAULT_STEPS` / :data:`DEFAULT_GUIDANCE`. The one
    place where they are read."""
    if not (root / "fewstep.json").is_file():
        return {}
    from archsearch.distill._fewstep import fewstep_defaults

    return fewstep_defaults(root)


def pipeline_info(path: str | os.PathLike) -> PipelineInfo:
    """The JSON files of the pipeline at ``path`` (or ``path/pipeline``), each named in one line
    when missing or unreadable; diffusers is not imported."""
    root = find_pipeline(path)
    what = "the pipeline archsearch train wrote; train again to rewrite it"
    index = _json(root / "model_index.json", what)
    cls = index.get("_class_name")
    if not isinstance(cls, str) or not isinstance(index.get("unet"), list):
        raise ArchsearchError(f"{root / 'model_index.json'}: no _class_name and unet entries ({what})")
    unet = _json(root / "unet" / "config.json", what)
    candidate = unet.get("candidate") if isinstance(unet.get("candidate"), dict) else None
    video = "Video" in cls or (candidate or {}).get("kind") == "video"
    frames = None
    if candidate is not None and video:
        frames = int(candidate.get("frames") or 1)
    down = 2 ** max(0, len(candidate.get("stages") or [1]) - 1) if candidate is not None else 1
    sched_path = root / "scheduler" / "scheduler_config.json"
    sched = _json(sched_path, what) if sched_path.exists() else {}
    timesteps = sched.get("num_train_timesteps", 1000)
    if not isinstance(timesteps, int) or timesteps < 1:
        raise ArchsearchError(f"{sched_path}: num_train_timesteps is {timesteps!r} (allowed: an integer >= 1)")
    vae_path = root / "vae" / "config.json"
    vae = _json(vae_path, what) if vae_path.exists() else {}
    blocks = vae.get("block_out_channels") or [0, 0, 0, 0]
    vae_factor = 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else 8
    multiple = math.lcm(8, vae_factor * down)  # diffusers' pipelines want multiples of 8
    own = pipeline_defaults(root)
    return PipelineInfo(root, cls, video, frames, timesteps, multiple, int(own.get("steps", DEFAULT_STEPS)),
                        float(own.get("guidance", DEFAULT_GUIDANCE)))


def check_generate(info: PipelineInfo, *, steps: int | None, guidance: float | None, seed: int, n: int,
                   height: int | None, width: int | None, frames: int | None, format: str | None,  # noqa: A002
                   ) -> dict[str, Any]:
    """Every drawing setting checked (one line naming it and the allowed values); returns them
    resolved: ``steps``, ``guidance``, ``frames`` (video) and ``format``."""
    steps = info.default_steps if steps is None else steps
    guidance = info.default_guidance if guidance is None else guidance

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(steps) or not 1 <= steps <= info.train_timesteps:
        raise ParameterError("steps", f": bad value {steps!r} (allowed: an integer in [1, {info.train_timesteps}], "
                                      "the scheduler's training timesteps)")
    if not isinstance(guidance, (int, float)) or isinstance(guidance, bool) or not math.isfinite(guidance) \
            or guidance < 0:
        raise ParameterError("guidance", f": bad value {guidance!r} (allowed: a finite number >= 0; 1 or less "
                                         "draws without classifier-free guidance)")
    if not is_int(n) or not 1 <= n <= MAX_PICTURES:
        raise ParameterError("n", f": bad value {n!r} (allowed: an integer in [1, {MAX_PICTURES}])")
    if not is_int(seed) or not 0 <= seed <= 2**63 - n:
        raise ParameterError("seed", f": bad value {seed!r} (allowed: an integer in [0, 2^63 - n])")
    m = info.pixel_multiple
    for name, side in (("height", height), ("width", width)):
        if side is not None and (not is_int(side) or side < m or side > MAX_SIDE or side % m):
            raise ParameterError(name, f": bad value {side!r} (allowed: a multiple of {m} in [{m}, {MAX_SIDE}] "
                                       "pixels for this model)")
    if info.video:
        model_frames = info.frames
        if frames is not None and (not is_int(frames) or frames < 1
                                   or (model_frames is not None and frames != model_frames)):
            allowed = f"{model_frames}, the frame count this model was built for" if model_frames else "an integer >= 1"
            raise ParameterError("frames", f": bad value {frames!r} (allowed: {allowed})")
        frames = frames if frames is not None else model_frames
        fmt = format or VIDEO_FORMATS[0]
        if fmt not in VIDEO_FORMATS:
            raise ParameterError("format", f": bad value {fmt!r} (allowed: {', '.join(VIDEO_FORMATS)} for this "
                                           "video model)")
    else:
        if frames not in (None, 1):
            raise ParameterError("frames", f": bad value {frames!r} (allowed: only for a video model; this one draws "
                                           "pictures)")
        fmt = format or IMAGE_FORMATS[0]
        if fmt not in IMAGE_FORMATS:
            raise ParameterError("format", f": bad value {fmt!r} (allowed: {', '.join(IMAGE_FORMATS)} for this "
                                           f"image model; {', '.join(VIDEO_FORMATS)} are for video models)")
    return {"steps": steps, "guidance": float(guidance), "frames": frames, "format": fmt}


# --------------------------------------------------------------------------- writing, never over a file


def default_out(root: Path) -> Path:
    """``generated/`` in the train output folder (beside ``pipeline/``)."""
    return (root.parent if root.name == "pipeline" else root) / "generated"


def slug(prompt: str, limit: int = 48) -> str:
    """The prompt as a file-name part: lower-case letters and digits joined by ``-``."""
    s = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].rstrip("-")
    return s or "picture"


def _place(tmp: Path, folder: Path, stem: str, ext: str) -> Path:
    """Give the written ``tmp`` the first free name ``stem.ext``, ``stem-2.ext``, ... (claimed
    atomically: a hard link fails on an existing name) and remove ``tmp``."""
    try:
        for k in itertools.count(1):
            target = folder / (f"{stem}.{ext}" if k == 1 else f"{stem}-{k}.{ext}")
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                continue
            except OSError:  # a file system without hard links: claim the name, then move onto it
                try:
                    with open(target, "x"):
                        pass
                except FileExistsError:
                    continue
                os.replace(tmp, target)
                return target
        raise AssertionError("unreachable")
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _tmp(folder: Path, ext: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=".generate-", suffix=f".{ext}.tmp", dir=folder)
    os.close(fd)
    return Path(name)


def save_picture(image: Any, folder: Path, stem: str, meta: dict[str, Any]) -> Path:
    """A PNG named ``stem.png`` (or the next free ``stem-K.png``) with ``meta`` in its text chunks."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in meta.items():
        info.add_text(k, str(v))
    tmp = _tmp(folder, "png")
    image.save(tmp, format="PNG", pnginfo=info)
    return _place(tmp, folder, stem, "png")


def save_clip(frames: list[Any], folder: Path, stem: str, fmt: str, meta: dict[str, Any], fps: float = 8.0) -> Path:
    """A clip as an animated GIF or an H.264 MP4 (PyAV) named ``stem.<fmt>`` (or the next free name)."""
    tmp = _tmp(folder, fmt)
    try:
        if fmt == "gif":
            write_gif(frames, tmp, fps)
        else:
            write_mp4(frames, tmp, fps, comment=json.dumps(meta))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return _place(tmp, folder, stem, fmt)


def write_gif(frames: list[Any], path: str | os.PathLike, fps: float = 8.0) -> Path:
    """An animated GIF of PIL ``frames`` (looping), written as ``path``."""
    frames = [f.convert("RGB") for f in frames]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    return Path(path)


def write_mp4(frames: list[Any], path: str | os.PathLike, fps: float = 8.0, comment: str | None = None) -> Path:
    """PIL ``frames`` as an H.264 MP4 (yuv420p; odd sides are padded by one pixel)."""
    from fractions import Fraction

    import av
    import numpy as np

    w, h = frames[0].size
    w2, h2 = w + w % 2, h + h % 2
    with av.open(str(path), "w", format="mp4") as container:
        if comment:
            container.metadata["comment"] = comment
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
        for im in frames:
            a = np.zeros((h2, w2, 3), dtype=np.uint8)
            a[:h, :w] = np.asarray(im.convert("RGB"))
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)
