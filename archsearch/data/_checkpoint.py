"""The one reader of a local diffusers checkpoint folder.

A diffusers checkpoint is a folder of components, each in its own subfolder with its config:
``model_index.json`` (the pipeline class), ``unet/``, ``vae/``, ``scheduler/``,
``text_encoder/`` + ``tokenizer/`` (and ``_2`` / ``_3`` for SDXL's second and SD3's T5
encoder). :class:`DiffusersFolder` reads it once for everything that needs it: the teacher of
the proxy runs (``proxy.teacher: {diffusers: PATH}``), ``archsearch data prepare`` (the VAE and
the text encoders that make the latent cache), the pipeline export and the sample grids -- so
they cannot disagree about what a folder holds (the VAE's downsampling factor, SDXL's pooled
width, which text encoders there are). Configs are read once and kept; components load from
the folder only (``local_files_only``: never a download).

Errors: with ``param`` (``prepare``'s ``teacher``), a :class:`~archsearch.errors.ParameterError`
naming it; without, a message that starts with the file (the teacher, whose errors name the spec).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from archsearch._util import first_line
from archsearch.data._text import TextEncoder
from archsearch.errors import ArchsearchError, ParameterError

__all__ = ["TEXT_ENCODERS", "DiffusersFolder"]

#: the suffixes of the text encoder / tokenizer subfolders, in pipeline order
TEXT_ENCODERS = ("", "_2", "_3")


class DiffusersFolder:
    """A local diffusers checkpoint folder (see the module docstring).

    Args:
        root: the folder.
        unet: the UNet's subfolder (``""``: the root itself).
        scheduler: the scheduler's subfolder.
        param: the parameter that named the folder, for errors (``None``: errors start with the
            file).
    """

    def __init__(self, root: str | os.PathLike, *, unet: str = "unet", scheduler: str = "scheduler",
                 param: str | None = None) -> None:
        self.root = Path(root).expanduser()
        self.unet_sub = str(unet or "")
        self.scheduler_sub = str(scheduler or "scheduler")
        self.param = param
        self._configs: dict[tuple[str, str], dict[str, Any]] = {}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], source: str) -> "DiffusersFolder":
        """The folder of a spec's ``proxy.teacher: {diffusers: PATH, subfolder, scheduler}``: a
        relative ``PATH`` is read from the spec file's folder."""
        root = Path(str(spec["diffusers"])).expanduser()
        if not root.is_absolute() and source and Path(source).exists():
            root = (Path(source).parent / root).resolve()
        return cls(root, unet=spec.get("subfolder", "unet"), scheduler=str(spec.get("scheduler", "scheduler")))

    # -- errors -------------------------------------------------------------------------------
    def error(self, message: str) -> ArchsearchError:
        """``message`` as this reader's error (see the class docstring)."""
        return ParameterError(self.param, f": {message}") if self.param else ArchsearchError(message)

    # -- files --------------------------------------------------------------------------------
    def path(self, sub: str, file: str = "") -> Path:
        p = self.root / sub if sub else self.root
        return p / file if file else p

    @property
    def unet_dir(self) -> Path:
        return self.path(self.unet_sub)

    @property
    def scheduler_dir(self) -> Path:
        return self.path(self.scheduler_sub)

    def has(self, sub: str, file: str = "config.json") -> bool:
        """Whether the component ``sub`` has ``file``."""
        return self.path(sub, file).is_file()

    def config(self, sub: str, file: str = "config.json", *, what: str = "", optional: bool = False) -> dict[str, Any]:
        """The JSON ``sub/file`` (read once); ``{}`` when it is missing and ``optional``.
        ``what`` names it in the error (``"the UNet config"``)."""
        key = (sub, file)
        if key not in self._configs:
            path = self.path(sub, file)
            if optional and not path.is_file():
                return {}
            try:
                self._configs[key] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise self.error(f"{path}: cannot read{' ' + what if what else ''} ({exc})") from None
        return self._configs[key]

    @property
    def model_index(self) -> dict[str, Any]:
        """``model_index.json`` (``{}`` when the folder has none)."""
        return self.config("", "model_index.json", optional=True)

    @property
    def unet_config(self) -> dict[str, Any]:
        """The UNet's config (``{}`` when the folder has no UNet)."""
        return self.config(self.unet_sub, optional=True)

    @property
    def vae_config(self) -> dict[str, Any]:
        """The VAE's config (``{}`` when the folder has no VAE)."""
        return self.config("vae", optional=True)

    def scheduler_config(self, what: str = "") -> dict[str, Any]:
        """The scheduler's config (``{}`` when the folder has none)."""
        return self.config(self.scheduler_sub, "scheduler_config.json", what=what, optional=True)

    # -- facts --------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        """The VAE's downsampling factor, ``2 ** (len(block_out_channels) - 1)`` (8 without a
        readable VAE config, as diffusers' pipelines assume)."""
        try:
            cfg = self.vae_config
        except ArchsearchError:
            cfg = {}
        return 2 ** (len(cfg.get("block_out_channels", [0] * 4)) - 1)

    @property
    def text_time(self) -> bool:
        """SDXL-style conditioning: the UNet's ``addition_embed_type`` is ``text_time``."""
        return self.unet_config.get("addition_embed_type") == "text_time"

    @property
    def text_encoders(self) -> list[str]:
        """The suffixes (:data:`TEXT_ENCODERS`) of the text encoders the folder has: the first
        always, then ``_2`` and ``_3`` where their config is present."""
        return [""] + [n for n in TEXT_ENCODERS[1:] if self.has(f"text_encoder{n}")]

    def text_config(self, n: str = "") -> dict[str, Any]:
        return self.config(f"text_encoder{n}")

    def text_dim(self, n: str = "") -> int:
        """The width of text encoder ``n``'s states (``hidden_size``, or T5's ``d_model``)."""
        cfg = self.text_config(n)
        return int(cfg.get("hidden_size") or cfg.get("d_model"))

    @property
    def pooled_dim(self) -> int:
        """The width of SDXL's pooled text embedding: the second text encoder's
        ``projection_dim`` (else its width); 0 when the folder has no second text encoder."""
        if not self.has("text_encoder_2"):
            return 0
        return int(self.text_config("_2").get("projection_dim") or self.text_dim("_2"))

    def weight_files(self, sub: str) -> list[Path]:
        d = self.path(sub)
        return sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin"))

    # -- components ---------------------------------------------------------------------------
    def pipeline_class(self) -> type:
        """The diffusers pipeline class named by ``model_index.json``."""
        import diffusers

        ix = self.path("", "model_index.json")
        if not ix.is_file():
            raise ParameterError("teacher", f": {self.root}: no model_index.json (a pipeline export needs a full "
                                 "diffusers checkpoint: vae/, text_encoder/, tokenizer/, scheduler/)")
        name = self.model_index.get("_class_name", "StableDiffusionPipeline")
        cls = getattr(diffusers, name, None)
        if cls is None:
            raise ArchsearchError(f"{ix}: _class_name {name!r} is not a diffusers pipeline")
        return cls

    def load_unet(self, device: Any = None) -> Any:
        """The UNet (its config's ``_class_name``), frozen, in eval mode. Loading errors are
        the library's (the caller words them)."""
        import diffusers
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        cls = getattr(diffusers, str(self.unet_config.get("_class_name", "UNet2DConditionModel")))
        unet = cls.from_pretrained(str(self.unet_dir), local_files_only=True).eval().requires_grad_(False)
        return unet.to(device) if device is not None else unet

    def load_vae(self, device: Any = None) -> Any:
        """The VAE (its config's ``_class_name``, else ``AutoencoderKL``), frozen, in eval mode."""
        import diffusers
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        cls = getattr(diffusers, str(self.vae_config.get("_class_name", "AutoencoderKL")), diffusers.AutoencoderKL)
        try:
            vae = cls.from_pretrained(str(self.path("vae")), local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise self.error(f"cannot load the VAE from {self.path('vae')} ({first_line(exc)})") from None
        vae = vae.eval().requires_grad_(False)
        return vae.to(device) if device is not None else vae

    def load_scheduler(self) -> Any:
        """The scheduler, from its config's ``_class_name``."""
        import diffusers

        path = self.scheduler_dir / "scheduler_config.json"
        cfg = self.scheduler_config()
        cls = getattr(diffusers, str(cfg.get("_class_name", "DDIMScheduler")), None)
        if cls is None:
            raise self.error(f"{path}: _class_name {cfg.get('_class_name')!r} is not a diffusers scheduler")
        return cls.from_pretrained(str(self.scheduler_dir), local_files_only=True)

    def text_encoder(self, n: str = "", context_length: int | None = None, device: Any = "cpu",
                     pipeline_tokens: bool = False) -> TextEncoder:
        """Text encoder ``n`` (``text_encoder{n}/`` + ``tokenizer{n}/``) as a lazily loaded
        :class:`~archsearch.data.TextEncoder` (``context_length``: default the tokenizer's)."""
        enc = TextEncoder.from_folders(self.path(f"text_encoder{n}"), self.path(f"tokenizer{n}"), context_length,
                                       device=device)
        enc.pipeline_tokens = bool(pipeline_tokens)
        return enc

    def __repr__(self) -> str:
        return f"DiffusersFolder({str(self.root)!r})"
