"""``archsearch data prepare``: encode a data set once with the teacher's VAE and text encoders.

:func:`prepare` reads a source (:func:`~archsearch.data.open_source`: a path, or a
:class:`~archsearch.data.Source`), decodes it in
``DataLoader`` workers, resizes and crops each picture (or every frame of a clip), encodes
batches with the teacher's VAE (``AutoencoderKL``: the latent mean, minus ``shift_factor``,
times ``scaling_factor``) and its text encoder(s) as the checkpoint has them, and writes a
sharded cache (:class:`~archsearch.data.LatentCache`). With a prompts file the teacher's UNet
samples the latents with its own scheduler and classifier-free guidance instead.

It is meant to run for a day: shard ``i`` always holds the items ``i * shard_size ...`` of the
source's listing, every shard is written to a temp file and renamed, and a rerun of the same
command skips every shard on disk without decoding it -- so ``kill -9`` loses at most the shard
in progress and nothing is encoded twice. A rerun checks each shard on disk against the checksum
written with it and encodes a bad one again (the repair of a damaged cache). A sample that fails
to decode is skipped and counted with its reason. Batches never straddle a shard, so an
interrupted-and-resumed pass gives the same tensors as an uninterrupted one.

**Several processes** (``torchrun --nproc-per-node N`` or ``accelerate launch``, on one node or
many sharing the ``out`` folder): process ``r`` of ``N`` encodes the shards ``i`` with
``i % N == r`` (each on its own GPU, ``cuda:LOCAL_RANK``); process 0 holds the folder's lock,
starts the run in ``prepare.json`` and, once every process has written its shards, the index.
The shards are the ones one process writes, byte for byte, and a rerun with any number of
processes resumes shard by shard. The processes agree through a gloo group (started here from
the launcher's environment when the caller has none).

Progress goes to ``progress(phase, description, done, total)`` (phases ``scan``, ``verify``,
``encode``; from process 0 only, about its own shards); nothing is printed. Errors name the
parameter (``source``, ``teacher``, ``resolution``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from archsearch._util import atomic_write_text, file_lock, first_line
from archsearch.data._cache import (
    CACHE_VERSION,
    INDEX_FILE,
    SHARD_DIR,
    STATE_FILE,
    check_shard,
    is_holdout,
    read_shard_meta,
    repair_hint,
    shard_checksum,
    shard_path,
    teacher_components,
    teacher_hash,
    write_shard,
)
from archsearch.data._checkpoint import DiffusersFolder
from archsearch.data._device import resolve_device
from archsearch.data._sources import BadSample, Item, Loaded, Source, open_source
from archsearch.data._text import TextEncoder, offline, sdxl_states
from archsearch.errors import ArchsearchError, ParameterError

__all__ = ["CROPS", "DTYPES", "DecodeDataset", "PrepareResult", "TeacherEncoders", "bucket_sizes", "prepare",
           "resize_crop", "to_tensor"]

Progress = Callable[[str, str, int, int], None]
CROPS = ("center", "random")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
#: aspect-ratio buckets: (h, w) multiples of 64 whose area is about resolution**2
_BUCKET_RATIOS = (1 / 2, 9 / 16, 2 / 3, 3 / 4, 1.0, 4 / 3, 3 / 2, 16 / 9, 2.0)
_MAX_REASONS = 20


def _length(tok: Any) -> int:
    """A tokenizer's padded length, as the pipelines use it (77 when it names none)."""
    n = getattr(tok, "model_max_length", None)
    return int(n) if isinstance(n, int) and 0 < n <= 256 else 77


# --------------------------------------------------------------------------- the teacher's encoders


class TeacherEncoders:
    """A diffusers checkpoint's VAE, text encoder(s) and tokenizer(s) -- and, for prompts, its
    UNet and scheduler -- loaded from the local folder (never downloads), read through the one
    :class:`~archsearch.data.DiffusersFolder`.

    Text conditioning follows the diffusers pipelines: one CLIP (SD-1.x/2.x) gives
    ``last_hidden_state``; SDXL's two encoders give their penultimate hidden states
    concatenated, the second's ``text_embeds`` as the pooled embedding
    (:func:`~archsearch.data.sdxl_states`, as the teacher's :class:`DualTextEncoder`), and the
    ``add_time_ids`` conditioning; a T5 ``text_encoder`` gives ``last_hidden_state``, and a T5
    ``text_encoder_3`` (SD3-style) its states as ``t5_states``. The encoders are fed as the
    pipelines feed them (``TextEncoder.pipeline_tokens``).
    """

    def __init__(self, root: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        offline()
        self.folder = DiffusersFolder(root, param="teacher")
        self.root = self.folder.root
        self.device = torch.device(device)
        for sub in ("vae", "text_encoder"):
            if not self.folder.has(sub):
                raise self.folder.error(f"{self.root}: no {sub}/config.json (allowed: a diffusers checkpoint "
                                        "folder with vae/, text_encoder/ and tokenizer/)")
        self.vae_config = self.folder.vae_config
        self.unet_config = self.folder.unet_config
        cfg = self.vae_config
        self.latent_channels = int(cfg.get("latent_channels", 4))
        self.vae_scale_factor = self.folder.vae_scale_factor
        self.scaling_factor = float(cfg.get("scaling_factor") or 1.0)
        self.shift_factor = cfg.get("shift_factor")
        self.latents_mean = cfg.get("latents_mean")
        self.latents_std = cfg.get("latents_std")
        self.sdxl = self.folder.text_time or "_2" in self.folder.text_encoders
        self._vae: Any = None
        self._text: list[tuple[TextEncoder, str]] | None = None
        self._unet: Any = None
        self._sched: Any = None

    # -- loading --------------------------------------------------------------------------
    @property
    def vae(self) -> Any:
        if self._vae is None:
            self._vae = self.folder.load_vae(self.device)
        return self._vae

    def _load_text(self, n: str) -> tuple[TextEncoder, str]:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        dim = self.folder.text_dim(n)
        te_dir, tok_dir = self.folder.path(f"text_encoder{n}"), self.folder.path(f"tokenizer{n}")
        enc = TextEncoder(te_dir, tok_dir, 0, dim, name=f"folder:{te_dir}", device=self.device, pipeline_tokens=True)
        try:
            enc.context_length = _length(enc.tokenizer)
            enc.model  # noqa: B018 - loaded now: a broken folder fails before any work
        except ArchsearchError as exc:
            raise self.folder.error(f"cannot load {te_dir.name}/ or {tok_dir.name}/ from {self.root} "
                                    f"({first_line(exc.__cause__ or exc)})") from None
        arch = (self.folder.text_config(n).get("architectures") or ["AutoModel"])[0]
        return enc, "t5" if "T5" in arch else "clip"

    @property
    def text(self) -> list[TextEncoder]:
        """The checkpoint's text encoders (``text_encoder``, ``_2``, ``_3`` as present), loaded."""
        if self._text is None:
            self._text = [self._load_text(n) for n in self.folder.text_encoders]
        return [enc for enc, _role in self._text]

    @property
    def roles(self) -> list[str]:
        """``clip`` or ``t5`` for each of :attr:`text`."""
        self.text  # noqa: B018
        return [role for _enc, role in self._text or []]

    @property
    def unet(self) -> Any:
        if self._unet is None:
            if not self.unet_config:
                raise self.folder.error(f"{self.root}: no unet/config.json (a prompts source needs the "
                                        "teacher's UNet to generate the latents)")
            self._unet = self.folder.load_unet(self.device)
        return self._unet

    @property
    def scheduler(self) -> Any:
        if self._sched is None:
            if not self.folder.has("scheduler", "scheduler_config.json"):
                raise self.folder.error(f"{self.root}: no scheduler/scheduler_config.json (a prompts "
                                        "source samples with the teacher's scheduler)")
            self._sched = self.folder.load_scheduler()
        return self._sched

    # -- shapes -----------------------------------------------------------------------------
    def text_shapes(self) -> dict[str, Any]:
        """``context_length``, ``context_dim``, ``pooled_dim``, ``t5_shape`` from the configs."""
        dim = self.folder.text_dim
        tok_len = [enc.context_length for enc in self.text]
        roles = self.roles
        if self.sdxl:
            out = {"context_length": tok_len[0], "context_dim": dim("") + dim("_2"),
                   "pooled_dim": self.folder.pooled_dim}
        else:
            out = {"context_length": tok_len[0], "context_dim": dim(""), "pooled_dim": 0}
        out["t5_shape"] = [tok_len[-1], dim("_3")] if len(roles) == 3 and roles[2] == "t5" else None
        return out

    # -- encoding ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """``text_states`` (+ ``pooled``, ``t5_states``) for ``captions``, float32 on CPU."""
        encs = self.text
        out: dict[str, torch.Tensor] = {}
        if self.sdxl:
            out["text_states"], out["pooled"] = sdxl_states(encs[0], encs[1], captions)
        else:
            out["text_states"] = encs[0]._encode_chunk(list(captions))
        if len(encs) == 3 and self.roles[2] == "t5":
            out["t5_states"] = encs[2]._encode_chunk(list(captions))
        return {k: v.float().cpu() for k, v in out.items()}

    def _scale(self, z: torch.Tensor) -> torch.Tensor:
        if self.latents_mean is not None and self.latents_std is not None:
            shape = (1, -1) + (1,) * (z.ndim - 2)
            mean = torch.tensor(self.latents_mean, dtype=z.dtype, device=z.device).view(shape)
            std = torch.tensor(self.latents_std, dtype=z.dtype, device=z.device).view(shape)
            return (z - mean) * self.scaling_factor / std
        if self.shift_factor is not None:
            z = z - float(self.shift_factor)
        return z * self.scaling_factor

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Latents of ``pixels`` in [-1, 1]: ``(B, 3, H, W)`` -> ``(B, C, h, w)``, or clips
        ``(B, T, 3, H, W)`` -> ``(B, C, T, h, w)`` (frame by frame with a 2-D VAE)."""
        vae = self.vae
        x = pixels.to(self.device, torch.float32)
        video = x.ndim == 5
        temporal = video and bool(self.vae_config.get("temporal_compression_ratio"))
        if video and not temporal:
            b, t = x.shape[:2]
            x = x.flatten(0, 1)
        elif temporal:
            x = x.permute(0, 2, 1, 3, 4)
        dist = vae.encode(x).latent_dist
        z = self._scale(dist.mode() if hasattr(dist, "mode") else dist.mean)
        if video and not temporal:
            z = z.unflatten(0, (b, t)).permute(0, 2, 1, 3, 4)
        return z.float().cpu()

    @torch.no_grad()
    def generate(self, captions: Sequence[str], seeds: Sequence[int], size: tuple[int, int], frames: int,
                 steps: int, guidance: float) -> dict[str, torch.Tensor]:
        """Teacher-generated latents for ``captions`` (one seed each), as diffusers' text-to-image
        pipelines sample them: the scheduler's own timesteps, classifier-free guidance
        ``uncond + guidance * (cond - uncond)`` (an empty prompt as the negative; zeros for SDXL,
        as its ``force_zeros_for_empty_prompt``). Also returns the text conditioning."""
        unet, sched = self.unet, self.scheduler
        cond = self.encode_text(captions)
        b = len(captions)
        h, w = size[0] // self.vae_scale_factor, size[1] // self.vae_scale_factor
        c = int(self.unet_config.get("in_channels", self.latent_channels))
        shape = (1, c, frames, h, w) if "3D" in str(self.unet_config.get("_class_name", "")) else (1, c, h, w)
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        latents = torch.cat([torch.randn(shape, generator=g) for g in gens]).to(self.device)
        if self.sdxl:
            uncond = {k: torch.zeros_like(v) for k, v in cond.items()}
        else:
            uncond = self.encode_text([""] * b)
        ctx = torch.cat([uncond["text_states"], cond["text_states"]]).to(self.device, unet.dtype)
        added = None
        time_ids = torch.tensor([[size[0], size[1], 0, 0, size[0], size[1]]] * b, dtype=torch.float32)
        if self.sdxl:
            added = {"text_embeds": torch.cat([uncond["pooled"], cond["pooled"]]).to(self.device, unet.dtype),
                     "time_ids": torch.cat([time_ids, time_ids]).to(self.device, unet.dtype)}
        sched.set_timesteps(steps, device=self.device)
        latents = latents * sched.init_noise_sigma
        import inspect

        step_kw = {"generator": gens} if "generator" in inspect.signature(sched.step).parameters else {}
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([latents, latents]), t)
            kw = {"added_cond_kwargs": added} if added is not None else {}
            noise = unet(inp, t, encoder_hidden_states=ctx, return_dict=False, **kw)[0]
            u, c_ = noise.chunk(2)
            noise = u + guidance * (c_ - u)
            latents = sched.step(noise, t, latents, return_dict=False, **step_kw)[0]
        out = {**cond, "latents": latents.float().cpu()}
        if self.sdxl:
            out["add_time_ids"] = time_ids
        return out


# --------------------------------------------------------------------------- resize and crop


def bucket_sizes(resolution: int, step: int = 64) -> list[tuple[int, int]]:
    """``(h, w)`` sizes, multiples of ``step``, with an area close to ``resolution**2``."""
    out = set()
    for r in _BUCKET_RATIOS:  # r = w / h
        h = max(step, round(resolution / r**0.5 / step) * step)
        w = max(step, round(resolution * r**0.5 / step) * step)
        out.add((h, w))
    return sorted(out)


def _target(size_hw: tuple[int, int], resolution: int, buckets: list[tuple[int, int]] | None) -> tuple[int, int]:
    if not buckets:
        return resolution, resolution
    h, w = size_hw
    ratio = w / h
    return min(buckets, key=lambda b: (abs(np.log(b[1] / b[0]) - np.log(ratio)), b))


def resize_crop(img: Any, target: tuple[int, int], crop: str, rng: random.Random) -> tuple[Any, tuple[int, int]]:
    """Resize ``img`` (PIL) so that it covers ``target`` (h, w) -- bicubic, aspect kept -- then
    crop it to ``target`` at the centre or at a random offset. Returns the crop and its
    top-left corner in the resized picture (SDXL's ``crops_coords_top_left``)."""
    from PIL import Image

    th, tw = target
    w, h = img.size
    s = max(th / h, tw / w)
    nh, nw = max(th, round(h * s)), max(tw, round(w * s))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    if crop == "random":
        top, left = rng.randint(0, nh - th), rng.randint(0, nw - tw)
    else:
        top, left = (nh - th) // 2, (nw - tw) // 2
    return img.crop((left, top, left + tw, top + th)), (top, left)


def to_tensor(img: Any) -> torch.Tensor:
    """A PIL RGB picture as ``(3, H, W)`` float32 in [-1, 1]."""
    a = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class DecodeDataset(torch.utils.data.Dataset):
    """Item index -> a decoded, resized and cropped sample (or the reason it was skipped): what
    ``prepare``'s ``DataLoader`` workers compute."""

    def __init__(self, source: Source, items: list[Item], resolution: int, crop: str,
                 buckets: list[tuple[int, int]] | None, seed: int) -> None:
        self.source, self.items = source, items
        self.resolution, self.crop, self.buckets, self.seed = resolution, crop, buckets, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        if item.skip is not None:  # listed as skipped (outside the data set): never opened
            return {"i": i, "key": item.key, "error": item.skip}
        try:
            loaded = self.source.load(item)
            return {"i": i, "key": item.key, **self._pixels(loaded)}
        except BadSample as exc:
            return {"i": i, "key": item.key, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bad file must never abort the pass
            return {"i": i, "key": item.key, "error": f"{type(exc).__name__}: {first_line(exc)}"}

    def _pixels(self, s: Loaded) -> dict[str, Any]:
        out: dict[str, Any] = {"caption": s.caption}
        if s.pixels is None:  # prompts
            return out
        rng = random.Random(f"{self.seed}:{s.key}")
        if isinstance(s.pixels, np.ndarray):  # a clip (T, H, W, 3)
            from PIL import Image

            frames = [Image.fromarray(f) for f in s.pixels]
            h, w = frames[0].height, frames[0].width
            target = _target((h, w), self.resolution, self.buckets)
            state = rng.getstate()
            crops = []
            for f in frames:  # the same crop for every frame
                rng.setstate(state)
                c, tl = resize_crop(f, target, self.crop, rng)
                crops.append(to_tensor(c))
            out["pixels"] = torch.stack(crops)
        else:
            h, w = s.pixels.height, s.pixels.width
            target = _target((h, w), self.resolution, self.buckets)
            c, tl = resize_crop(s.pixels, target, self.crop, rng)
            out["pixels"] = to_tensor(c)
        out["time_ids"] = torch.tensor([h, w, tl[0], tl[1], target[0], target[1]], dtype=torch.float32)
        return out


# --------------------------------------------------------------------------- the pass


@dataclass
class PrepareResult:
    """What one :func:`prepare` call did (``index`` is the cache's ``index.json``)."""

    out: Path
    n_samples: int
    n_skipped: int
    encoded: int  # samples encoded by this call (0 when the cache was already complete)
    skipped_reasons: dict[str, int]
    shards: int
    shards_written: int
    wall_time_s: float  # the whole call: loading the teacher, listing, checking, encoding, the index
    index: dict[str, Any] = field(default_factory=dict, repr=False)
    encode_time_s: float = 0.0  # from the first batch decoded to the last shard written (the slowest process)
    shards_bad: int = 0  # shards on disk that failed their check and were encoded again
    rank: int = 0  # this process, of ``world`` (torchrun / accelerate launch)
    world: int = 1

    @property
    def samples_per_s(self) -> float:
        """Samples encoded per second of encoding (``encoded / encode_time_s``): the one rate reported."""
        return self.encoded / self.encode_time_s if self.encode_time_s > 0 else 0.0


def _lock(out: Path) -> Any:
    return file_lock(out / ".lock", busy=lambda: ParameterError(
        "out", f": {out} is being written by another prepare (allowed: one at a time)"))


def _reason(msg: str) -> str:
    """The category a skip reason is counted under (the text before any parenthesis)."""
    return msg.split(" (")[0]


def prepare(
    source: str | os.PathLike | Source,
    teacher: str | os.PathLike,
    out: str | os.PathLike,
    *,
    resolution: int | None = None,
    frames: int = 1,
    fps: float | None = None,
    crop: str = "center",
    buckets: bool = False,
    workers: int = 2,
    batch: int = 16,
    shard_size: int = 1024,
    holdout: float = 0.01,
    seed: int = 0,
    dtype: str = "float16",
    device: str | torch.device | None = "auto",
    format: str | None = None,  # noqa: A002
    image_column: str | None = None,
    caption_column: str | None = None,
    split: str | None = None,
    steps: int = 25,
    guidance: float = 7.5,
    progress: Progress | None = None,
    distributed: bool | None = None,
) -> PrepareResult:
    """Encode ``source`` with the ``teacher`` checkpoint's VAE and text encoders into the cache
    folder ``out`` (see :class:`~archsearch.data.LatentCache`); resumable, see the module docs.

    ``source``: a path (its format detected, or named by ``format``: a name in
    :data:`~archsearch.data.SOURCES`) or a :class:`~archsearch.data.Source` (as optuna's
    ``get_storage`` takes a URL or a storage); ``format``, ``frames``, ``fps``,
    ``image_column``, ``caption_column`` and ``split`` are how a path is opened.

    ``resolution`` (pixels; default the UNet's ``sample_size`` times the VAE factor) is the
    side of the square crop, or the area of the aspect-ratio ``buckets``; ``crop`` is
    ``center`` or ``random`` (seeded per key from ``seed``, so reruns crop the same). Clips:
    ``frames`` frames ``1/fps`` s apart. ``holdout``: the fraction of keys (by hash) in the
    holdout split. ``dtype``: how tensors are stored. Prompts: ``steps`` and ``guidance`` of the
    teacher's sampler, one seed per prompt from ``seed`` and its key.

    ``distributed``: share the shards among the processes of a ``torchrun`` / ``accelerate
    launch`` job (see the module docs); ``None`` (the default) does when the launcher's
    environment says ``WORLD_SIZE`` > 1 or a process group of several processes is started --
    then every process must call ``prepare`` with the same arguments, as for any collective;
    ``False`` runs in this process alone (e.g. from the main process of a training script).
    """
    t_start = time.perf_counter()
    out = Path(out).expanduser()
    if crop not in CROPS:
        raise ParameterError("crop", f": bad value {crop!r} (allowed: {', '.join(CROPS)})")
    if dtype not in DTYPES:
        raise ParameterError("dtype", f": bad value {dtype!r} (allowed: {', '.join(DTYPES)})")
    for name, v, lo in (("workers", workers, 0), ("batch", batch, 1), ("shard_size", shard_size, 1),
                        ("frames", frames, 1), ("steps", steps, 1)):
        if not isinstance(v, int) or v < lo:
            raise ParameterError(name, f": bad value {v!r} (allowed: an integer >= {lo})")
    if not 0.0 <= holdout < 1.0:
        raise ParameterError("holdout", f": bad value {holdout!r} (allowed: a fraction in [0, 1))")
    if fps is not None and fps <= 0:
        raise ParameterError("fps", f": bad value {fps!r} (allowed: a number > 0)")
    shard_size = -(-shard_size // batch) * batch  # batches never straddle a shard
    dev = resolve_device(device)
    ranks = _Ranks.detect() if distributed is not False else _Ranks()
    if distributed and ranks.world == 1:
        raise ParameterError("distributed", ": true, but this process was not started by torchrun or accelerate launch "
                             "(no WORLD_SIZE > 1 in its environment; allowed: None or False)")
    try:
        if ranks.world > 1 and dev.type == "cuda" and dev.index is None:  # one GPU per process
            dev = torch.device("cuda", ranks.local_rank % max(torch.cuda.device_count(), 1))
        return _prepare(source, teacher, out, ranks, t_start, dev, resolution=resolution, frames=frames, fps=fps,
                        crop=crop, buckets=buckets, workers=workers, batch=batch, shard_size=shard_size,
                        holdout=holdout, seed=seed, dtype=dtype, format=format, image_column=image_column,
                        caption_column=caption_column, split=split, steps=steps, guidance=guidance, progress=progress)
    finally:
        ranks.close()


def _prepare(source: Any, teacher: Any, out: Path, ranks: "_Ranks", t_start: float, dev: torch.device, *,
             resolution: int | None, frames: int, fps: float | None, crop: str, buckets: bool, workers: int,
             batch: int, shard_size: int, holdout: float, seed: int, dtype: str, format: str | None,  # noqa: A002
             image_column: str | None, caption_column: str | None, split: str | None, steps: int,
             guidance: float, progress: Progress | None) -> PrepareResult:
    """The pass of :func:`prepare` in one of ``ranks.world`` processes (see the module docs)."""
    enc = TeacherEncoders(teacher, dev)
    factor = enc.vae_scale_factor
    if resolution is None:
        size = enc.unet_config.get("sample_size")
        size = size[0] if isinstance(size, (list, tuple)) else size
        if not isinstance(size, int):
            raise ParameterError("resolution", f": not given and {Path(teacher) / 'unet'} has no sample_size "
                                 "(allowed: a number of pixels)")
        resolution = size * factor
    if not isinstance(resolution, int) or resolution < factor or resolution % factor:
        raise ParameterError("resolution", f": bad value {resolution!r} (allowed: a multiple of the VAE's "
                             f"downsampling factor {factor})")
    step = 64 if resolution >= 512 else max(factor, resolution // 8 // factor * factor)
    bucket_list = bucket_sizes(resolution, step) if buckets else None

    src = open_source(source, format, frames=frames, fps=fps, image_column=image_column,
                      caption_column=caption_column, split=split)
    if isinstance(source, Source):
        source = src.describe().get("path", str(src.path))
    if src.kind == "image" and frames != 1:
        raise ParameterError("frames", f": {frames} frames from a {src.format} source of pictures (allowed: 1, "
                             "or a folder of clips)")
    kind = "video" if src.kind == "video" or (src.kind == "prompts" and frames > 1) else "image"
    if src.kind == "prompts" and buckets:
        raise ParameterError("buckets", ": teacher-generated data has one size (allowed: false with a prompts source)")

    if ranks.rank != 0:
        progress = None  # one process reports (its own share of the shards)
    if progress:
        progress("scan", f"listing {src.format} {src.path}", 0, 1)
    items = src.items()
    if not items:
        raise ParameterError("source", f": {source}: no samples found")
    if progress:
        progress("scan", f"{len(items)} samples in {src.format} {src.path}", 1, 1)

    thash = teacher_hash(teacher)
    shapes = enc.text_shapes()
    settings = {
        "version": CACHE_VERSION, "teacher_hash": thash, "resolution": resolution, "frames": frames, "fps": fps,
        "crop": crop, "buckets": bool(buckets), "shard_size": shard_size, "batch": batch, "seed": seed,
        "dtype": dtype, "holdout": holdout, "format": src.format,
        "steps": steps if src.kind == "prompts" else None, "guidance": guidance if src.kind == "prompts" else None,
        "n_items": len(items), "items_hash": _items_hash(items),
    }
    sid = _settings_id(settings)
    n_shards = -(-len(items) // shard_size)
    mine = [i for i in range(n_shards) if i % ranks.world == ranks.rank]  # shard i to rank i mod world
    span = lambda s: min((s + 1) * shard_size, len(items)) - s * shard_size  # noqa: E731 - items of shard s
    with contextlib.ExitStack() as held:
        busy = None
        if ranks.rank == 0:  # the folder's lock: one prepare (of one or many processes) at a time
            try:
                held.enter_context(_lock(out))
            except ArchsearchError as exc:
                if ranks.world == 1:
                    raise
                busy = exc  # every process raises it (_begin)
        command = _command(settings, source, teacher, src.describe())
        state, run = _begin(out, settings, sid, source, teacher, ranks, command, busy)
        metas, n_bad = _shards_on_disk(out, mine, sid, progress)
        todo = [i for i in mine if i not in metas]
        total = sum(span(i) for i in mine)
        done_items = sum(m["items"] for m in metas.values())
        skipped = [s for m in metas.values() for s in m["skipped"]]
        encoded = 0
        who = f"rank {ranks.rank} of {ranks.world}: " if ranks.world > 1 else ""
        rate_t0 = time.perf_counter()  # the result's one rate: samples encoded per second from here
        desc = lambda: f"{who}{len(skipped)} skipped"  # noqa: E731 - no rate here: the progress display has its own
        if progress:
            progress("encode", desc(), done_items, total)
        if todo:
            ds = DecodeDataset(src, items, resolution, crop, bucket_list, seed)
            sampler = [list(range(s * shard_size, min((s + 1) * shard_size, len(items))))[j : j + batch]
                       for s in todo for j in range(0, shard_size, batch)]
            sampler = [b for b in sampler if b]
            loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=list,
                                                 persistent_workers=False, prefetch_factor=4 if workers else None)
            buf: dict[int, dict[str, Any]] = {}
            for samples in loader:
                s = samples[0]["i"] // shard_size
                shard = buf.setdefault(s, {"rows": [], "skipped": [], "seen": 0})
                good = [x for x in samples if "error" not in x]
                for x in samples:
                    if "error" in x:
                        shard["skipped"].append([x["key"], x["error"]])
                        skipped.append([x["key"], x["error"]])
                if good:
                    shard["rows"] += _encode(enc, good, src.kind, resolution, frames, steps, guidance, seed)
                    encoded += len(good)
                shard["seen"] += len(samples)
                want = span(s)
                if shard["seen"] == want:
                    meta = {"shard": s, "run": run, "items": want, "encoded": len(shard["rows"]),
                            "skipped": shard["skipped"], "settings": sid}
                    metas[s] = write_shard(shard_path(out, s), shard.pop("rows"), meta, DTYPES[dtype])
                    del buf[s]
                    if ranks.rank == 0:
                        state["runs"][-1].update(encoded=encoded, shards=state["runs"][-1]["shards"] + 1)
                        atomic_write_text(out / STATE_FILE, json.dumps(state, indent=1))
                done_items += len(samples)
                if progress:
                    progress("encode", desc(), done_items, total)
        encode_s = time.perf_counter() - rate_t0
        # every process is done with its shards: the first writes the index of all of them
        mine_done = {"encoded": encoded, "written": len(todo), "bad": n_bad, "encode_s": encode_s,
                     "sums": {i: [m["sha256"], m["bytes"]] for i, m in metas.items()}}
        parts = ranks.gather(mine_done)
        encoded_all = sum(p["encoded"] for p in parts)
        index: dict[str, Any] | None = None
        if ranks.rank == 0:
            state["runs"][-1].update(encoded=encoded_all, finished=True)
            if ranks.world > 1:
                state["runs"][-1]["shards"] = sum(p["written"] for p in parts)
            atomic_write_text(out / STATE_FILE, json.dumps(state, indent=1))
            for p in parts[1:]:
                for i, (sha, size) in p["sums"].items():
                    metas[int(i)] = _written_meta(out, int(i), sid, sha, size)
            index = _write_index(out, state, settings, metas, n_shards, src, enc, teacher, shapes, kind)
        ranks.gather(None)  # the index is on disk
    if index is None:
        index = json.loads((out / INDEX_FILE).read_text(encoding="utf-8"))
    if ranks.world > 1:
        reasons = dict(index["skipped"]["by_reason"])
        encode_s = max(p["encode_s"] for p in parts)
    else:
        reasons = {}
        for _k, r in skipped:
            reasons[_reason(r)] = reasons.get(_reason(r), 0) + 1
    return PrepareResult(out=out, n_samples=index["n_samples"], n_skipped=index["skipped"]["count"],
                         encoded=encoded_all, skipped_reasons=reasons, shards=n_shards,
                         shards_written=sum(p["written"] for p in parts), wall_time_s=time.perf_counter() - t_start,
                         index=index, encode_time_s=encode_s, shards_bad=sum(p["bad"] for p in parts),
                         rank=ranks.rank, world=ranks.world)


def _begin(out: Path, settings: dict[str, Any], sid: str, source: Any, teacher: Any, ranks: "_Ranks",
           command: list[str], failed: ArchsearchError | None = None) -> tuple[dict[str, Any], int]:
    """Start (or resume) the pass: the first process checks ``out`` against the settings, adds
    this run to ``prepare.json`` and clears temp files a killed run left; the others wait for
    it, then check that they list the same samples and see the same folder. ``failed``: the
    first process could not start (the folder is busy); every process raises it."""
    state: dict[str, Any] = {}
    run = 0
    if ranks.rank == 0 and failed is None:
        try:
            state = _start_state(out, settings, source, teacher)
            state["command"] = command  # what a reader tells the user to run to re-encode a bad shard
            run = len(state["runs"]) + 1
            entry = {"run": run, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "encoded": 0, "shards": 0,
                     "finished": False}
            if ranks.world > 1:
                entry["processes"] = ranks.world
            state["runs"].append(entry)
            atomic_write_text(out / STATE_FILE, json.dumps(state, indent=1))
            (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
            for tmp in (out / SHARD_DIR).glob(".*.tmp"):  # left by a killed run
                tmp.unlink(missing_ok=True)
        except ArchsearchError as exc:
            if ranks.world == 1:
                raise
            failed = exc
    if ranks.world == 1:
        return state, run
    first = ranks.gather((settings["items_hash"], run, _payload(failed)))[0]
    ranks.raise_any([first[2]])
    problem = None
    if ranks.rank != 0:
        run = first[1]
        if first[0] != settings["items_hash"]:
            problem = ("source", f": process {ranks.rank} lists other samples than process 0 (every process must "
                       "read the same source)")
        elif not (out / STATE_FILE).is_file():
            problem = ("out", f": {out} is not shared between the processes (process {ranks.rank} does not see its "
                       f"{STATE_FILE}; allowed: a folder every node mounts)")
    ranks.raise_any(ranks.gather(problem))
    return state, run


def _shards_on_disk(out: Path, shards: list[int], sid: str, progress: Progress | None
                    ) -> tuple[dict[int, dict[str, Any]], int]:
    """The finished shards among ``shards`` -- written with these settings, their data matching
    their checksum -- and how many files were there but bad (they are encoded again)."""
    present = [i for i in shards if shard_path(out, i).is_file()]
    metas: dict[int, dict[str, Any]] = {}
    bad = 0
    for n, i in enumerate(present):
        if progress:
            progress("verify", f"checking the {len(present)} shards on disk ({bad} bad)", n, len(present))
        p = shard_path(out, i)
        m = read_shard_meta(p)
        if m is None or m.get("settings") != sid or m.get("shard") != i:
            bad += 1
            continue
        if check_shard(p, m.get("sha256")) is not None:
            bad += 1
            continue
        if m.get("sha256") is None:  # written before shards had checksums: recorded from now on
            m["sha256"] = shard_checksum(p)
        metas[i] = {**m, "bytes": p.stat().st_size}
    if progress and present:
        progress("verify", f"checked the {len(present)} shards on disk: {bad} bad, encoded again", len(present),
                 len(present))
    return metas, bad


def _written_meta(out: Path, i: int, sid: str, sha: str, size: int) -> dict[str, Any]:
    """The metadata of shard ``i`` that another process wrote or checked (its header)."""
    p = shard_path(out, i)
    m = read_shard_meta(p)
    if m is None or m.get("settings") != sid or m.get("shard") != i:
        raise ArchsearchError(f"{p}: another process wrote this shard but it is not readable now; "
                              f"{repair_hint(out)}")
    return {**m, "sha256": sha, "bytes": size}


def _payload(exc: ArchsearchError | None) -> tuple[str | None, str] | None:
    """An error as it travels to the other processes: (parameter, detail) or (None, message)."""
    if exc is None:
        return None
    if isinstance(exc, ParameterError):
        return exc.param, exc.detail
    return None, str(exc)


class _Ranks:
    """The processes of one :func:`prepare`: under ``torchrun`` / ``accelerate launch`` (the
    ``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR`` environment), or inside a process group the caller
    already started. They agree through a gloo group (created here when none exists, closed
    after): the start of the run, then that every shard is written. One process: no group."""

    #: how long the processes wait for each other at the end (one may have a slower device)
    TIMEOUT_S = 7 * 24 * 3600

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, group: Any = None,
                 created: bool = False) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.group, self.created = group, created

    @classmethod
    def detect(cls) -> "_Ranks":
        import datetime

        import torch.distributed as td

        if not td.is_available():
            return cls()
        timeout = datetime.timedelta(seconds=cls.TIMEOUT_S)
        if td.is_initialized():  # the caller's group (e.g. accelerate's): a gloo group of the same processes
            world = td.get_world_size()
            if world == 1:
                return cls()
            group = None if td.get_backend() == "gloo" else td.new_group(backend="gloo", timeout=timeout)
            return cls(td.get_rank(), world, int(os.environ.get("LOCAL_RANK", td.get_rank())), group)
        try:
            world = int(os.environ.get("WORLD_SIZE") or 1)
        except ValueError:
            world = 1
        if world <= 1:
            return cls()
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise ArchsearchError(f"WORLD_SIZE is {world} but {', '.join(missing)} is not set (allowed: launch with "
                                  "torchrun or accelerate launch, or unset WORLD_SIZE for one process)")
        rank = int(os.environ["RANK"])
        td.init_process_group("gloo", init_method="env://", rank=rank, world_size=world, timeout=timeout)
        return cls(rank, world, int(os.environ.get("LOCAL_RANK", rank)), None, created=True)

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order (a barrier too)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world
        td.all_gather_object(out, obj, group=self.group)
        return out

    @staticmethod
    def raise_any(payloads: list[Any]) -> None:
        """Raise the first error any process met (every process raises it)."""
        for p in payloads:
            if p is not None:
                param, detail = p
                raise ParameterError(param, detail) if param else ArchsearchError(detail)

    def close(self) -> None:
        if self.world == 1:
            return
        import torch.distributed as td

        if self.created and td.is_initialized():
            td.destroy_process_group()
        elif self.group is not None:
            td.destroy_process_group(self.group)


def _encode(enc: TeacherEncoders, good: list[dict[str, Any]], kind: str, resolution: int, frames: int,
            steps: int, guidance: float, seed: int) -> list[dict[str, Any]]:
    captions = [x["caption"] for x in good]
    if kind == "prompts":
        seeds = [int.from_bytes(_sha(f"{seed}:{x['key']}")[:8], "big") >> 1 for x in good]
        out = enc.generate(captions, seeds, (resolution, resolution), frames, steps, guidance)
    else:
        out = enc.encode_text(captions)
        # one VAE batch per latent shape (buckets); a 1-shape batch is one call
        lat: list[torch.Tensor | None] = [None] * len(good)
        by_shape: dict[tuple, list[int]] = {}
        for j, x in enumerate(good):
            by_shape.setdefault(tuple(x["pixels"].shape), []).append(j)
        for js in by_shape.values():
            z = enc.encode_images(torch.stack([good[j]["pixels"] for j in js]))
            for j, zz in zip(js, z):
                lat[j] = zz
        out["latents"] = lat  # type: ignore[assignment]
        if enc.sdxl:
            out["add_time_ids"] = torch.stack([x["time_ids"] for x in good])
    rows = []
    for j, x in enumerate(good):
        rows.append({"key": x["key"], **{k: v[j] for k, v in out.items()}})
    return rows


def _sha(s: str) -> bytes:
    import hashlib

    return hashlib.sha256(s.encode("utf-8")).digest()


def _items_hash(items: list[Item]) -> str:
    import hashlib

    h = hashlib.sha256()
    for it in items:
        h.update(it.key.encode("utf-8") + b"\0")
    return h.hexdigest()[:32]


def _settings_id(settings: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: settings -> the parameter a mismatch is reported under
_PARAM_OF = {"teacher_hash": "teacher", "n_items": "source", "items_hash": "source", "format": "source",
             "version": "out"}


#: the settings the command in ``prepare.json`` names, in its flags' order (buckets is a switch)
_COMMAND_FLAGS = ("resolution", "frames", "fps", "crop", "batch", "shard_size", "holdout", "seed", "dtype", "format",
                  "steps", "guidance")


def _command(settings: dict[str, Any], source: Any, teacher: Any, described: dict[str, Any]) -> list[str]:
    """The words of this pass's ``archsearch data prepare`` command but ``--out`` (the settings
    that differ from the defaults; the columns and split of a table source), kept in
    ``prepare.json``: what a reader of the cache tells the user to run to re-encode a bad shard."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(prepare).parameters.items()
                if p.default is not inspect.Parameter.empty}
    words = ["archsearch", "data", "prepare", str(source), "--teacher", str(Path(teacher).expanduser().resolve())]
    for key in _COMMAND_FLAGS:
        v = settings.get(key)
        if v is not None and (key == "resolution" or v != defaults.get(key)):
            words += [f"--{key.replace('_', '-')}", str(v)]
    if settings.get("buckets"):
        words.append("--buckets")
    for key in ("image_column", "caption_column", "split"):
        if described.get(key):
            words += [f"--{key.replace('_', '-')}", str(described[key])]
    return words


def _start_state(out: Path, settings: dict[str, Any], source: Any, teacher: Any) -> dict[str, Any]:
    path = out / STATE_FILE
    if path.is_file():
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ParameterError("out", f": {path}: cannot read ({exc})") from None
        old = state.get("settings", {})
        for k, v in settings.items():
            if old.get(k) != v:
                param = _PARAM_OF.get(k, k)
                what = {"items_hash": "the list of samples", "n_items": "the number of samples"}.get(k, k)
                raise ParameterError(param, f": {out} was prepared with {what} {old.get(k)!r}, now {v!r} "
                                     "(allowed: the same settings to resume, or a new out)")
        return state
    if out.is_dir() and any(p for p in out.iterdir() if p.name not in (".lock",)):
        raise ParameterError("out", f": {out} is not empty and holds no {STATE_FILE} (allowed: a new or empty folder, "
                             "or a cache folder to resume)")
    return {"settings": settings, "source": str(source), "teacher": str(Path(teacher).expanduser().resolve()),
            "runs": []}


def _write_index(out: Path, state: dict[str, Any], settings: dict[str, Any], metas: dict[int, dict[str, Any]],
                 n_shards: int, src: Source, enc: TeacherEncoders, teacher: Any, shapes: dict[str, Any],
                 kind: str) -> dict[str, Any]:
    shards, keys, skipped = [], [], []
    latent_shapes = set()
    for i in range(n_shards):
        m = metas[i]
        shards.append({"shard": i, "file": shard_path(out, i).relative_to(out).as_posix(), "run": m["run"],
                       "items": m["items"], "groups": m["groups"], "sha256": m["sha256"], "bytes": m["bytes"]})
        for g, ks in m["groups"].items():
            latent_shapes.add(g)
            keys += ks
        skipped += m["skipped"]
    reasons: dict[str, int] = {}
    for _k, r in skipped:
        reasons[_reason(r)] = reasons.get(_reason(r), 0) + 1
    res, frames = settings["resolution"], settings["frames"]
    f = enc.vae_scale_factor
    if settings["buckets"]:
        latent_shape = None
        resolution = None
    else:
        latent_shape = [enc.latent_channels, *([frames] if kind == "video" else []), res // f, res // f]
        if len(latent_shapes) == 1:
            latent_shape = [int(v) for v in next(iter(latent_shapes)).split("x")]
        resolution = [res, res]
    holdout = settings["holdout"]
    runs = []
    written = {}
    for s in shards:
        written[s["run"]] = written.get(s["run"], 0) + 1
    for r in state["runs"]:
        runs.append({**r, "shards_in_cache": written.get(r["run"], 0)})
    index = {
        "version": CACHE_VERSION,
        "teacher_hash": settings["teacher_hash"],
        "teacher": state["teacher"],
        "teacher_components": teacher_components(teacher),
        "kind": kind,
        "resolution": resolution,
        "bucket_area": res if settings["buckets"] else None,
        "frames": frames,
        "fps": settings["fps"],
        "crop": settings["crop"],
        "buckets": settings["buckets"],
        "latent_channels": enc.latent_channels,
        "latent_shape": latent_shape,
        "vae_scale_factor": f,
        "scaling_factor": enc.scaling_factor,
        "shift_factor": enc.shift_factor,
        "context_length": shapes["context_length"],
        "context_dim": shapes["context_dim"],
        "pooled_dim": shapes["pooled_dim"],
        "has_add_time_ids": bool(enc.sdxl),
        "t5_shape": shapes["t5_shape"],
        "generated": src.kind == "prompts",
        "generation": {"steps": settings["steps"], "guidance": settings["guidance"]} if src.kind == "prompts" else None,
        "source": {**src.describe(), "items": len(keys) + len(skipped)},
        "dtype": settings["dtype"],
        "seed": settings["seed"],
        "shard_size": settings["shard_size"],
        "holdout": holdout,
        "n_samples": len(keys),
        "n_holdout": sum(is_holdout(k, holdout) for k in keys),
        "skipped": {"count": len(skipped), "by_reason": reasons, "first": skipped[:_MAX_REASONS]},
        "runs": runs,
        "shards": shards,
    }
    atomic_write_text(out / INDEX_FILE, json.dumps(index, indent=1))
    return index
