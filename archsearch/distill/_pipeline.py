"""A trained ``ArchUNet`` as a diffusers UNet, and the pipeline that draws with it.

:class:`ArchUNetDiffusers` wraps an ``ArchUNet`` in diffusers' ``ModelMixin`` / ``ConfigMixin``
so that ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` (or the video equivalent)
can use it as their ``unet``: ``config`` (``in_channels``, ``sample_size``, ...), ``dtype``,
``device``, ``unet(sample, t, encoder_hidden_states, added_cond_kwargs=..., return_dict=...)``
returning an output with ``.sample``. Its folder is the ``ArchUNet``'s own
(``config.json`` + ``model.safetensors``, ``ArchUNet.from_pretrained`` reads it); the
pipeline's ``model_index.json`` names this class (``archsearch.distill._pipeline``), so
``StableDiffusionPipeline.from_pretrained(out)`` loads it once this module is imported
(diffusers refuses to import a module that a folder names; :func:`load_pipeline` does it).

SDXL-style conditioning: a candidate with ``added_cond`` gets ``added_cond_kwargs`` as they are
(ArchUNet's ``text_time`` embedding). Otherwise the student was trained with the pooled text
embedding as one extra context token (the :class:`~archsearch.distill.DualTextEncoder`
convention, which is how distillation feeds it today), so the adapter appends
``added_cond_kwargs["text_embeds"]`` as that token and ``time_ids`` are not used.

:func:`export_pipeline` writes the teacher's VAE, text encoder(s), tokenizer(s) and scheduler
with the trained UNet; :func:`load_pipeline` and :func:`generate` read it back and draw.

A few-step distilled model (``archsearch fewstep``: ``fewstep.json`` beside it) ships its
scheduler (DDIM ``trailing`` / ``LCMScheduler`` / flow Euler) and ``fewstep.json`` (default
steps and guidance) in the pipeline folder; one distilled with a guidance-scale embedding gets
diffusers' ``time_cond_proj_dim`` in its config and reads the pipeline's ``timestep_cond``
(:class:`~archsearch.distill._fewstep.GuidanceEmbedding`): the pipeline then runs one UNet call
per step at any ``guidance_scale`` (no classifier-free batch), as diffusers' LCM pipelines do.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin  # ModelMixin must be importable from here (pipeline loading)
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from archsearch._util import replace_dir
from archsearch.errors import ParameterError

__all__ = ["ArchUNetDiffusers", "ConfigMixin", "ModelMixin", "export_pipeline", "generate", "load_pipeline",
           "pipeline_class"]

_PIPELINES = {"image": "StableDiffusionPipeline", "image_sdxl": "StableDiffusionXLPipeline",
              "video": "TextToVideoSDPipeline"}


class _AddEmbedding(torch.nn.Module):
    """What SDXL's pipeline reads of a UNet's ``add_embedding`` (``linear_1.in_features``)."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear_1 = torch.nn.Identity()
        self.linear_1.in_features = in_features  # type: ignore[attr-defined]


class ArchUNetDiffusers(ModelMixin, ConfigMixin):
    """An ``ArchUNet`` behind diffusers' UNet interface (see the module docstring)."""

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, candidate: dict | None = None, in_channels: int = 4, out_channels: int = 4,
                 sample_size: int = 64, cross_attention_dim: int = 768, pooled_dim: int = 0,
                 addition_time_embed_dim: int | None = None, time_cond_proj_dim: int | None = None,
                 num_frames: int = 1, guidance_reference: float | None = None) -> None:
        super().__init__()
        from archsearch.candidate import Candidate
        from archsearch.model import build_model

        if candidate is None:
            raise ParameterError("candidate", ": an ArchUNetDiffusers needs the candidate it was built from")
        self.model = build_model(Candidate.from_dict(candidate, "ArchUNetDiffusers"))
        if pooled_dim:
            self.add_embedding = _AddEmbedding(pooled_dim + 6 * int(addition_time_embed_dim or 0))
        self.guidance: Any = None
        self._guidance_hook: Any = None
        if time_cond_proj_dim:
            from archsearch.distill._fewstep import GuidanceEmbedding, _time_embed

            self.guidance = GuidanceEmbedding(int(time_cond_proj_dim), _time_embed(self.model).proj.num_channels,
                                              reference=guidance_reference)
            self._guidance_hook = self.guidance.attach(self.model)

    @classmethod
    def from_archunet(cls, model: Any, pooled_dim: int = 0, addition_time_embed_dim: int | None = None,
                      sample_size: int | None = None, guidance: Any = None) -> "ArchUNetDiffusers":
        """Wrap a built ``ArchUNet`` (its weights are shared, not copied); ``guidance``: its
        :class:`~archsearch.distill._fewstep.GuidanceEmbedding` (the pipeline's ``timestep_cond``)."""
        c = model.candidate
        out = cls(candidate=c.to_dict(), in_channels=c.latent_channels, out_channels=c.latent_channels,
                  sample_size=int(sample_size or c.resolution), cross_attention_dim=c.context_dim,
                  pooled_dim=int(pooled_dim), addition_time_embed_dim=addition_time_embed_dim,
                  num_frames=c.frames if c.kind == "video" else 1,
                  time_cond_proj_dim=guidance.dim if guidance is not None else None,
                  guidance_reference=guidance.reference if guidance is not None else None)
        out.model = model
        if guidance is not None:
            out._guidance_hook.remove()
            out.guidance = guidance
            out._guidance_hook = guidance.attach(model)
        return out

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor, class_labels: Any = None, timestep_cond: Any = None,
                attention_mask: Any = None, cross_attention_kwargs: Any = None,
                added_cond_kwargs: dict[str, torch.Tensor] | None = None, return_dict: bool = True,
                **_: Any) -> Any:
        if self.guidance is not None:  # the pipeline's guidance-scale embedding (None: the folded default)
            self.guidance.set_embedding(timestep_cond)
            try:
                return self._forward(sample, timestep, encoder_hidden_states, added_cond_kwargs, return_dict)
            finally:
                self.guidance.set_embedding(None)
        return self._forward(sample, timestep, encoder_hidden_states, added_cond_kwargs, return_dict)

    def _forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int, encoder_hidden_states: torch.Tensor,
                 added_cond_kwargs: dict[str, torch.Tensor] | None, return_dict: bool) -> Any:
        ctx = encoder_hidden_states
        if torch.is_tensor(timestep) and timestep.dim() == 0:
            timestep = timestep[None]
        if getattr(self.model.candidate, "added_cond", None) is not None:  # ArchUNet's own text_time embedding
            out = self.model(sample, timestep, ctx, added_cond_kwargs=added_cond_kwargs)
            return UNet2DConditionOutput(sample=out) if return_dict else (out,)
        if self.config.pooled_dim:
            pooled = (added_cond_kwargs or {}).get("text_embeds")
            if pooled is None:
                raise ParameterError("added_cond_kwargs", ": this UNet needs text_embeds (the pooled text embedding)")
            tok = torch.zeros(ctx.shape[0], 1, ctx.shape[-1], dtype=ctx.dtype, device=ctx.device)
            tok[:, 0, : pooled.shape[-1]] = pooled.to(ctx.dtype)
            ctx = torch.cat([ctx, tok], dim=1)
        out = self.model(sample, timestep, ctx)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    # -- the ArchUNet's own folder format -----------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **_: Any) -> None:
        d = Path(save_directory)
        self.model.save_pretrained(d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["diffusers_adapter"] = {k: v for k, v in self.config.items() if k != "candidate" and not k.startswith("_")}
        from archsearch._util import atomic_write_text

        atomic_write_text(d / "config.json", json.dumps(cfg, indent=2))
        if self.guidance is not None:
            from archsearch.distill._fewstep import GUIDANCE_FILE

            self.guidance.save(d / GUIDANCE_FILE)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "ArchUNetDiffusers":
        from archsearch.model import ArchUNet

        d = Path(pretrained_model_name_or_path)
        if kwargs.get("subfolder"):
            d = d / kwargs["subfolder"]
        model = ArchUNet.from_pretrained(d)
        extra = json.loads((d / "config.json").read_text()).get("diffusers_adapter", {})
        guidance = None
        if extra.get("time_cond_proj_dim"):
            from archsearch.distill._fewstep import GUIDANCE_FILE, GuidanceEmbedding

            guidance = GuidanceEmbedding.load(d / GUIDANCE_FILE)
        out = cls.from_archunet(model, pooled_dim=extra.get("pooled_dim", 0),
                                addition_time_embed_dim=extra.get("addition_time_embed_dim"),
                                sample_size=extra.get("sample_size"), guidance=guidance)
        dtype = kwargs.get("torch_dtype")
        if isinstance(dtype, torch.dtype):
            out = out.to(dtype)
        return out.eval()


def pipeline_class(teacher_root: Path) -> type:
    """The diffusers pipeline class of a teacher checkpoint (its ``model_index.json``)."""
    from archsearch.data import DiffusersFolder

    return DiffusersFolder(teacher_root).pipeline_class()


def export_pipeline(model: Any, teacher_root: str | os.PathLike, out: str | os.PathLike,
                    model_dir: str | os.PathLike | None = None) -> Path:
    """Write a diffusers pipeline to ``out``: the teacher's components with ``model`` (an
    ``ArchUNet``) as its UNet. Written to a temp folder beside ``out``, then renamed.

    ``model_dir``: the folder ``model`` was saved to; when it holds a few-step record
    (``fewstep.json``), the pipeline gets its scheduler, its guidance embedding and the record
    (default steps and guidance; guidance 1 for a pipeline that does not pass ``timestep_cond``)."""
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    from archsearch.data import DiffusersFolder

    root = Path(teacher_root)
    folder = DiffusersFolder(root)
    cls = folder.pipeline_class()
    unet_cfg = folder.config("unet")
    pooled = folder.pooled_dim if folder.text_time else 0
    record, guidance, scheduler = _fewstep_parts(model_dir)
    unet = ArchUNetDiffusers.from_archunet(model, pooled_dim=pooled,
                                           addition_time_embed_dim=unet_cfg.get("addition_time_embed_dim"),
                                           sample_size=model.candidate.resolution, guidance=guidance)
    kw: dict[str, Any] = {"unet": unet}
    if scheduler is not None:
        kw["scheduler"] = scheduler
    if cls.__name__ == "StableDiffusionPipeline":
        kw.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(str(root), local_files_only=True, **kw)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        ix = json.loads((tmp / "model_index.json").read_text())
        ix["unet"] = ["archsearch.distill._pipeline", "ArchUNetDiffusers"]
        (tmp / "model_index.json").write_text(json.dumps(ix, indent=2))
        if record is not None:
            from archsearch.distill._fewstep import FEWSTEP_FILE

            if guidance is not None and cls.__name__ not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
                record = {**record, "guidance": 1.0}  # no timestep_cond there: the folded guidance, one call
            (tmp / FEWSTEP_FILE).write_text(json.dumps(record, indent=2))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _fewstep_parts(model_dir: str | os.PathLike | None) -> tuple[Any, Any, Any]:
    """A few-step model's record, guidance embedding and scheduler (``None`` each: not one)."""
    if model_dir is None:
        return None, None, None
    from archsearch.distill._fewstep import FEWSTEP_FILE, GuidanceEmbedding, _read_record, _scheduler_from

    path = Path(model_dir) / FEWSTEP_FILE
    if not path.is_file():
        return None, None, None
    record = _read_record(path)
    emb = record.get("guidance_embedding")
    guidance = GuidanceEmbedding.load(Path(model_dir) / emb["file"]) if emb else None
    return record, guidance, _scheduler_from(record["scheduler"])


def load_pipeline(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Any:
    """The pipeline :func:`export_pipeline` (or ``archsearch train``) wrote, on ``device``; a
    folder that does not load is one line naming it (its JSON files are checked first,
    :func:`~archsearch.distill._drawing.pipeline_info`)."""
    import diffusers
    from diffusers.utils import logging as dlog

    from archsearch._util import first_line
    from archsearch.distill._drawing import pipeline_info, quiet_loading
    from archsearch.errors import ArchsearchError

    dlog.set_verbosity_error()  # (this module is imported: diffusers can resolve the unet entry)
    root = pipeline_info(path).root
    try:
        with quiet_loading():
            pipe = diffusers.DiffusionPipeline.from_pretrained(str(root), local_files_only=True,
                                                               **({"torch_dtype": dtype} if dtype else {}))
    except ArchsearchError:
        raise
    except Exception as exc:  # a damaged or foreign folder: name it, one line
        raise ArchsearchError(f"{root}: cannot load the pipeline ({type(exc).__name__}: {first_line(exc)}); "
                              "train again to rewrite it") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate(model: str | os.PathLike, prompt: str, out: str | os.PathLike | None = None, *,
             steps: int | None = None, guidance: float | None = None, seed: int = 0, n: int = 1,
             height: int | None = None, width: int | None = None, frames: int | None = None,
             format: str | None = None, device: str | torch.device | None = "auto",  # noqa: A002
             pipe: Any = None) -> list[Path]:
    """Draw ``n`` pictures (or clips) of ``prompt`` with the trained pipeline into ``out``
    (default: ``generated/`` in the train output folder). Picture ``i`` uses
    ``torch.Generator().manual_seed(seed + i)`` and is named ``<prompt slug>-<seed + i>.png``, or
    the next free ``...-2.png``: an existing file is never overwritten. A video model draws
    clips of its own frame count (``frames`` may only repeat it) as ``gif`` or ``mp4``
    (``format``). ``steps`` / ``guidance``: ``None`` takes the pipeline's defaults
    (:func:`~archsearch.distill._drawing.pipeline_defaults`; 25 and 7.5). Every setting is
    checked before the pipeline loads (:func:`~archsearch.distill._drawing.check_generate`)."""
    from archsearch.data import resolve_device
    from archsearch.distill._drawing import check_generate, default_out, pipeline_info, save_clip, save_picture, slug

    info = pipeline_info(model)
    s = check_generate(info, steps=steps, guidance=guidance, seed=seed, n=n, height=height, width=width,
                       frames=frames, format=format)
    dev = resolve_device(device)
    pipe = pipe or load_pipeline(info.root, dev)
    out = Path(out) if out is not None else default_out(info.root)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(n):
        g = torch.Generator("cpu").manual_seed(seed + i)
        kw: dict[str, Any] = {"num_inference_steps": s["steps"], "guidance_scale": s["guidance"], "generator": g}
        if height:
            kw["height"] = height
        if width:
            kw["width"] = width
        if info.video and s["frames"]:
            kw["num_frames"] = s["frames"]  # the model's, not the pipeline's default of 16
        res = pipe(prompt, **kw)
        meta = {"prompt": prompt, "seed": seed + i, "steps": s["steps"], "guidance": s["guidance"],
                "model": str(info.root)}
        stem = f"{slug(prompt)}-{seed + i}"
        if info.video:
            written.append(save_clip([_to_pil(f) for f in res.frames[0]], out, stem, s["format"], meta))
        else:
            written.append(save_picture(res.images[0], out, stem, meta))
    return written


def _to_pil(frame: Any) -> Any:
    from PIL import Image

    if isinstance(frame, Image.Image):
        return frame
    import numpy as np

    a = np.asarray(frame)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(a)
