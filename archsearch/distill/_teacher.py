"""The teacher of the distillation runs.

Two sources (the ``proxy.teacher`` entry of a spec):

* ``{builtin: image|video, train_steps: N, width: W, ...}`` -- an archsearch UNet
  (:data:`TEACHER_IMAGE` / :data:`TEACHER_VIDEO`, built with :func:`archsearch.model.build_model`)
  trained on the built-in synthetic data (:func:`archsearch.data.synthetic_dataset`) with the built-in MiniLM
  text encoder the first time it is needed -- through the distillation runs' own loop
  (:func:`~archsearch.distill.train_loop`) with the KD weights at 0 -- then cached
  (``ArchUNet.save_pretrained``: ``config.json`` + ``model.safetensors``; plus ``candidate.yaml``
  and ``teacher.json``) under ``<cache>/teachers/<hash>/`` where ``<cache>`` is ``cache_dir``,
  ``$ARCHSEARCH_CACHE_DIR`` or ``~/.cache/archsearch``. The hash covers everything that defines
  the teacher (architecture, data, text encoder, noise process, training settings, code version).
* ``{diffusers: PATH, subfolder: unet}`` -- a local diffusers checkpoint folder (read through
  :class:`archsearch.data.DiffusersFolder`, as ``archsearch data prepare`` reads it): its
  ``UNet2DConditionModel`` (image) or ``UNet3DConditionModel`` (video), its scheduler, and its
  ``text_encoder/`` + ``tokenizer/`` when present (else the built-in MiniLM); for an SDXL-style
  UNet (``addition_embed_type: text_time``) both encoders (:class:`DualTextEncoder`). The
  synthetic latents are fed to it as they are (no VAE). Never downloads.

Its :class:`~archsearch.distill.NoiseProcess` (noise, v or flow) is the one the runs use.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from archsearch._util import atomic_write_text, cache_root, canonical_json, file_lock, first_line, short_hash
from archsearch.data import (
    BUILTIN_CONTEXT_LENGTH,
    DiffusersFolder,
    DualTextEncoder,
    StepBatches,
    TextEncoder,
    resolve_device,
    seeded,
    synthetic_dataset,
    torch_threads,
)
from archsearch.distill._config import ProxyConfig
from archsearch.distill._loop import LoopOptions, Progress, TrialFailed, train_loop
from archsearch.distill._noise import NoiseProcess, check_prediction
from archsearch.errors import ArchsearchError

__all__ = [
    "TEACHER_IMAGE",
    "TEACHER_VIDEO",
    "BuiltinTeacherConfig",
    "Teacher",
    "builtin_teacher_candidate",
    "check_teacher",
    "load_teacher",
]

#: bump when the training recipe changes: invalidates cached teachers (2: trained through
#: the shared loop, batches drawn per step from (seed, step))
_TEACHER_VERSION = 2

#: The built-in image teacher (``W`` = the ``width`` setting, default 32): two stages
#: (W, 2W), a self+cross-attention transformer at the low-resolution stage and in the mid
#: block (0.9M parameters at W = 32, 3.2M at W = 64).
TEACHER_IMAGE: dict[str, Any] = {
    "kind": "image",
    "time_embed_dim": "4W",
    "norm_groups": 8,
    "stages": [
        {"channels": "W", "resnet_blocks": 1},
        {"channels": "2W", "resnet_blocks": 1, "transformer_depth": 1, "attention": "self_cross",
         "head_dim": 32, "ffn_ratio": 2.0, "ffn_type": "geglu"},
    ],
    "mid": {"channels": "2W", "resnet_blocks": 1, "transformer_depth": 1, "attention": "self_cross",
            "head_dim": 32, "ffn_ratio": 2.0, "ffn_type": "geglu"},
    "up": [
        {"channels": "2W", "resnet_blocks": 2, "transformer_depth": 1, "attention": "self_cross",
         "head_dim": 32, "ffn_ratio": 2.0, "ffn_type": "geglu"},
        {"channels": "W", "resnet_blocks": 2},
    ],
}
#: The built-in video teacher: the image teacher plus temporal layers (1-D conv at the high
#: resolution, 1-D temporal attention at the low resolution and in the mid block).
TEACHER_VIDEO: dict[str, Any] = {
    **TEACHER_IMAGE,
    "kind": "video",
    "stages": [
        {**TEACHER_IMAGE["stages"][0], "temporal": {"type": "conv1d", "count": 1, "placement": "after_resnet"}},
        {**TEACHER_IMAGE["stages"][1], "temporal": {"type": "attn1d", "count": 1, "placement": "after_transformer"}},
    ],
    "mid": {**TEACHER_IMAGE["mid"], "temporal": {"type": "attn1d", "count": 1, "placement": "after_transformer"}},
    "up": [
        {**TEACHER_IMAGE["up"][0], "temporal": {"type": "attn1d", "count": 1, "placement": "after_transformer"}},
        {**TEACHER_IMAGE["up"][1], "temporal": {"type": "conv1d", "count": 1, "placement": "after_resnet"}},
    ],
}


# --------------------------------------------------------------------------- the teacher


@dataclass
class Teacher:
    """A frozen denoiser with feature taps, its noise process and its text encoder.

    ``forward_features(sample, timestep, context)`` returns ``(prediction, {tap: tensor})``
    with taps named ``'down.i'``, ``'mid'``, ``'up.i'`` in network order.
    """

    module: nn.Module
    process: NoiseProcess
    text: TextEncoder
    kind: str
    latent_channels: int
    context_dim: int
    context_length: int
    source: str  # 'builtin' | 'diffusers'
    fingerprint: str
    resolution: int | None = None  # the resolution it was trained at (builtin)
    frames: int = 1
    data_size: int = 2048
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def prediction(self) -> str:
        return self.process.prediction

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device: torch.device | str) -> "Teacher":
        self.module.to(device)
        return self

    @torch.no_grad()
    def forward_features(
        self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.module.forward_features(sample, timestep, context)

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.module(sample, timestep, context)

    def dataset(self, resolution: int, frames: int = 1, split: str = "train", size: int | None = None):
        """The built-in synthetic data at ``resolution`` with this teacher's latent channels."""
        return synthetic_dataset(
            self.kind, resolution, self.latent_channels, frames=frames,
            size=size if size is not None else self.data_size, seed=0, split=split,
        )

    def __repr__(self) -> str:
        return (f"Teacher(source={self.source!r}, kind={self.kind!r}, prediction={self.prediction!r}, "
                f"latent_channels={self.latent_channels}, context={self.context_length}x{self.context_dim}, "
                f"fingerprint={self.fingerprint!r})")


# --------------------------------------------------------------------------- diffusers


class _DiffusersUNet(nn.Module):
    """A diffusers UNet behind the archsearch model interface, with forward hooks as taps."""

    def __init__(self, unet: nn.Module, pooled_dim: int = 0, vae_scale: int = 8) -> None:
        super().__init__()
        self.unet = unet
        self.pooled_dim = pooled_dim  # > 0: SDXL-style text_time conditioning
        self.vae_scale = vae_scale
        self._feats: dict[str, torch.Tensor] | None = None
        for i, block in enumerate(unet.down_blocks):
            block.register_forward_hook(self._hook(f"down.{i}"))
        if getattr(unet, "mid_block", None) is not None:
            unet.mid_block.register_forward_hook(self._hook("mid"))
        for i, block in enumerate(unet.up_blocks):
            block.register_forward_hook(self._hook(f"up.{i}"))

    def _hook(self, name: str) -> Callable:
        return _Tap(self, name)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if not self.pooled_dim:
            return self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]
        # SDXL: the last context token carries the pooled text embedding (DualTextEncoder);
        # time_ids = (original size, crop top-left, target size) of the picture, uncropped
        h, w = (int(v) * self.vae_scale for v in sample.shape[-2:])
        time_ids = torch.tensor([h, w, 0, 0, h, w], device=sample.device, dtype=context.dtype)
        added = {"text_embeds": context[:, -1, : self.pooled_dim],
                 "time_ids": time_ids.expand(sample.shape[0], 6)}
        return self.unet(sample, timestep, encoder_hidden_states=context[:, :-1],
                         added_cond_kwargs=added, return_dict=False)[0]

    def forward_features(
        self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._feats = {}
        try:
            pred = self.forward(sample, timestep, context)
            feats = self._feats
        finally:
            self._feats = None
        return pred, feats


class _Tap:
    """A forward hook that records one block's output (a class, so the teacher pickles)."""

    def __init__(self, owner: _DiffusersUNet, name: str) -> None:
        self.owner = owner
        self.name = name

    def __call__(self, _module: nn.Module, _args: Any, output: Any) -> None:
        feats = self.owner._feats
        if feats is not None:
            feats[self.name] = output[0] if isinstance(output, (tuple, list)) else output


_UNET_CLASSES = {"UNet2DConditionModel": "image", "UNet3DConditionModel": "video"}


def _check_diffusers(spec: dict[str, Any], kind: str, source: str) -> tuple[DiffusersFolder, dict[str, Any], str]:
    """What can be checked of a diffusers teacher without loading weights: the folder, the
    UNet config, its class and conditioning, the text encoders it needs.

    Returns ``(folder, unet_config, where)``."""
    folder = DiffusersFolder.from_spec(spec, source)
    root, unet_dir = folder.root, folder.unet_dir
    where = f"{source}: proxy.teacher.diffusers"
    cfg_path = unet_dir / "config.json"
    if not folder.has(folder.unet_sub):
        raise ArchsearchError(f"{where}: no diffusers UNet at {unet_dir} (expected {cfg_path})")
    cfg = folder.config(folder.unet_sub, what="the UNet config")
    cls_name = cfg.get("_class_name", "UNet2DConditionModel")
    if cls_name not in _UNET_CLASSES:
        raise ArchsearchError(f"{cfg_path}: _class_name: {cls_name!r} is not supported "
                              f"(allowed: {', '.join(_UNET_CLASSES)})")
    if _UNET_CLASSES[cls_name] != kind:
        raise ArchsearchError(f"{where}: a {cls_name} is a {_UNET_CLASSES[cls_name]} teacher but the space "
                              f"is kind: {kind} (allowed: a {'UNet3DConditionModel' if kind == 'video' else 'UNet2DConditionModel'})")
    added = cfg.get("addition_embed_type")
    if added not in (None, "text_time") or cfg.get("class_embed_type") or cfg.get("encoder_hid_dim_type"):
        raise ArchsearchError(f"{cfg_path}: extra conditioning (addition_embed_type {added!r} / class_embed_type / "
                              "encoder_hid_dim_type) is not supported (allowed: a text-only UNet such as SD-1.5/2.x, "
                              "or SDXL's addition_embed_type: text_time)")

    if added == "text_time":
        for d in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
            if not (root / d).exists():
                raise ArchsearchError(f"{where}: an SDXL-style UNet (addition_embed_type: text_time) needs "
                                      f"{d}/ in {root} (allowed: text_encoder, tokenizer, text_encoder_2, tokenizer_2)")
    return folder, cfg, where


def _load_diffusers(spec: dict[str, Any], kind: str, source: str, device: torch.device) -> Teacher:
    folder, cfg, where = _check_diffusers(spec, kind, source)
    root, unet_dir = folder.root, folder.unet_dir
    cfg_path = unet_dir / "config.json"
    cls_name = cfg.get("_class_name", "UNet2DConditionModel")
    added = cfg.get("addition_embed_type")

    try:
        unet = folder.load_unet()
    except (OSError, ValueError, TypeError) as exc:
        msg = first_line(exc)
        raise ArchsearchError(f"{where}: cannot load the UNet from {unet_dir} ({msg})") from None

    # scheduler: the checkpoint's, else diffusers' DDPM defaults (epsilon)
    sched_file = folder.scheduler_dir / "scheduler_config.json"
    sched_cfg = folder.scheduler_config(what="the scheduler config")
    if "FlowMatch" in str(sched_cfg.get("_class_name", "")):
        prediction = "flow"
    else:
        prediction = str(sched_cfg.get("prediction_type", "epsilon"))
        if prediction not in ("epsilon", "v_prediction"):
            raise ArchsearchError(f"{sched_file}: prediction_type: {prediction!r} is not supported "
                                  "(allowed: epsilon, v_prediction, or a FlowMatch scheduler)")
    process = NoiseProcess(prediction, sched_cfg)

    # text encoder: the checkpoint's (SDXL: both), else the built-in MiniLM
    pooled_dim = 0
    if added == "text_time":
        first = folder.text_encoder("")
        first.context_length = min(first.context_length, 77)
        second = folder.text_encoder("_2", first.context_length)
        pooled_dim = folder.pooled_dim
        want = cfg.get("projection_class_embeddings_input_dim")
        per_time = cfg.get("addition_time_embed_dim") or 0
        if want is not None and want != pooled_dim + 6 * per_time:
            raise ArchsearchError(f"{cfg_path}: projection_class_embeddings_input_dim is {want} but the pooled text "
                                  f"embedding ({pooled_dim}) + 6 time ids x {per_time} give {pooled_dim + 6 * per_time}")
        text = DualTextEncoder(first, second, pooled_dim)
    elif folder.has("text_encoder") and folder.path("tokenizer").exists():
        text = folder.text_encoder("")
        text.context_length = min(text.context_length, 77)  # SD's CLIP length; BERT-style say 512
    else:
        text = TextEncoder.builtin()
    vae_scale = folder.vae_scale_factor
    cross = cfg.get("cross_attention_dim")
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    if cross is not None and int(cross) != text.context_dim:
        raise ArchsearchError(
            f"{where}: the UNet's cross_attention_dim is {cross} but the text encoder gives {text.context_dim} "
            f"(allowed: add text_encoder/ and tokenizer/ to {root}, or a UNet with cross_attention_dim "
            f"{text.context_dim} for the built-in MiniLM)"
        )
    weights = folder.weight_files(folder.unet_sub)
    fp = short_hash({
        "source": "diffusers",
        "unet_config": {k: v for k, v in cfg.items() if not k.startswith("_")},
        "weights": [(p.name, p.stat().st_size) for p in weights],
        "process": process.config,
        "text": text.fingerprint,
    }, 16)
    return Teacher(
        module=_DiffusersUNet(unet, pooled_dim, vae_scale).to(device),
        process=process,
        text=text,
        kind=kind,
        latent_channels=int(cfg.get("in_channels", 4)),
        context_dim=text.context_dim,
        context_length=text.context_length,
        source="diffusers",
        fingerprint=fp,
        data_size=int(spec.get("data_size", 2048)),
        info={"path": str(root), "class": cls_name},
    )


# --------------------------------------------------------------------------- builtin


def builtin_teacher_candidate(
    kind: str,
    width: int = 64,
    resolution: int = 16,
    frames: int = 4,
    latent_channels: int = 4,
    context_dim: int = 384,
    context_length: int = BUILTIN_CONTEXT_LENGTH,
):
    """The built-in teacher's :class:`~archsearch.candidate.Candidate` (``W`` = ``width``)."""
    from archsearch.candidate import Candidate

    template = TEACHER_VIDEO if kind == "video" else TEACHER_IMAGE

    def sub(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: sub(x) for k, x in v.items()}
        if isinstance(v, list):
            return [sub(x) for x in v]
        if isinstance(v, str) and v.endswith("W"):
            return int(v[:-1] or 1) * width
        return v

    d = sub(template)
    for st in [*d["stages"], d["mid"], *d["up"]]:
        if st.get("transformer_depth"):
            st["heads"] = st["channels"] // st["head_dim"]
    d.update(
        latent_channels=latent_channels,
        resolution=resolution,
        frames=frames if kind == "video" else 1,
        context_dim=context_dim,
        context_length=context_length,
    )
    return Candidate.from_dict(d, source=f"builtin {kind} teacher")


@dataclass(frozen=True)
class BuiltinTeacherConfig:
    """Settings of the built-in teacher (``proxy.teacher`` with ``builtin:``)."""

    kind: str = "image"
    train_steps: int = 1000
    width: int = 32
    batch: int = 16  # video: 4 clips (the same number of frames at 4 frames)
    lr: float = 2e-3
    seed: int = 0
    latent_channels: int = 4
    data_size: int = 2048


def _builtin_key(cfg: BuiltinTeacherConfig, cand: Any, process: NoiseProcess, text: TextEncoder, data_fp: dict) -> dict:
    return {
        "version": _TEACHER_VERSION,
        "config": cfg.__dict__,
        "candidate": cand.id,
        "process": process.config,
        "text": text.fingerprint,
        "data": data_fp,
    }


def _train_builtin(
    model: nn.Module,
    cfg: BuiltinTeacherConfig,
    process: NoiseProcess,
    data: Any,
    emb: torch.Tensor,
    device: torch.device,
    progress: Progress | None,
) -> dict[str, Any]:
    """Train the built-in teacher on the synthetic data; returns a log.

    The distillation runs' loop with the KD weights at 0 (the task loss alone), AdamW with a
    linear warm-up and cosine decay to 10 %, step ``k``'s batch drawn from ``(seed, k)``.
    """
    config = ProxyConfig(steps=cfg.train_steps, batch=cfg.batch, lr=cfg.lr, weight_decay=0.01, seed=cfg.seed,
                         kd_output=0.0, kd_feature=0.0)
    batches = StepBatches.synthetic(data, emb, process, cfg.batch, cfg.seed, device)
    try:
        log = train_loop(model, batches, config, device=device, options=LoopOptions(schedule="cosine"),
                         progress=progress, phase="teacher", label=f"built-in {cfg.kind} teacher (first run only) ")
    except TrialFailed as exc:
        raise ArchsearchError(f"the built-in teacher's training diverged ({exc.reason}); "
                              "lower proxy.teacher.lr") from None
    return {"loss_curve": log.loss_curve, "train_s": log.train_s, "device": str(device)}


def _load_builtin(spec: dict[str, Any], proxy: ProxyConfig, kind: str, cache_dir: Path | None,
                  device: torch.device, progress: Progress | None) -> Teacher:
    from archsearch.model import build_model

    cfg = BuiltinTeacherConfig(
        kind=kind,
        train_steps=int(spec.get("train_steps", BuiltinTeacherConfig.train_steps)),
        width=int(spec.get("width", BuiltinTeacherConfig.width)),
        batch=int(spec.get("batch", BuiltinTeacherConfig.batch if kind == "image" else 4)),
        lr=float(spec.get("lr", BuiltinTeacherConfig.lr)),
        seed=int(spec.get("seed", BuiltinTeacherConfig.seed)),
        latent_channels=int(spec.get("latent_channels", BuiltinTeacherConfig.latent_channels)),
        data_size=int(spec.get("data_size", BuiltinTeacherConfig.data_size)),
    )
    frames = proxy.frames if kind == "video" else 1
    text = TextEncoder.builtin()
    process = NoiseProcess(proxy.prediction or "epsilon")
    cand = builtin_teacher_candidate(kind, cfg.width, proxy.resolution, frames, cfg.latent_channels,
                                     text.context_dim, text.context_length)
    data = synthetic_dataset(kind, proxy.resolution, cfg.latent_channels, frames=frames, size=cfg.data_size,
                             seed=0, split="train")
    key = _builtin_key(cfg, cand, process, text, data.fingerprint)
    fp = short_hash(key, 16)
    root = (cache_dir or cache_root()) / "teachers"
    folder = root / fp

    def make(model: nn.Module | None = None) -> Teacher:
        if model is None:
            with seeded(cfg.seed):  # seeded init, the caller's RNG untouched
                model = build_model(cand)
        return Teacher(
            module=model, process=process, text=text, kind=kind, latent_channels=cfg.latent_channels,
            context_dim=text.context_dim, context_length=text.context_length, source="builtin",
            fingerprint=fp, resolution=proxy.resolution, frames=frames, data_size=cfg.data_size,
            info={"path": str(folder), "candidate": cand.id, "config": cfg.__dict__,
                  "cache_root": str(cache_dir or cache_root())},
        )

    def load() -> Teacher | None:
        if not (folder / "teacher.json").exists():
            return None
        from archsearch.model import ArchUNet

        try:
            log = json.loads((folder / "teacher.json").read_text())
            if log.get("candidate") != cand.id:
                return None
            loaded = ArchUNet.from_pretrained(folder)
            if loaded.candidate.id != cand.id:
                return None
        except Exception:  # a damaged or foreign cache entry: retrain it
            return None
        teacher = make(loaded)
        teacher.info.update(train_s=log.get("train_s"), final_loss=log.get("final_loss"))
        teacher.module.eval().requires_grad_(False)
        return teacher.to(device)

    found = load()
    if found is not None:
        return found
    with file_lock(root / f".{fp}.lock"):  # another worker may be training it right now
        found = load()
        if found is not None:
            return found
        emb = text.encode_dataset(data.captions(), cache_dir=(cache_dir or cache_root()) / "text", progress=progress)
        teacher = make()
        teacher.module.to(device)
        with seeded(cfg.seed + 2, device):
            log = _train_builtin(teacher.module, cfg, process, data, emb, device, progress)
        teacher.module.eval().requires_grad_(False)
        _save_builtin(folder, teacher, key, log, cand)
        teacher.info.update(train_s=log["train_s"], final_loss=_tail_mean(log["loss_curve"]))
        return teacher


def _tail_mean(curve: list[float], n: int = 50) -> float:
    tail = curve[-n:]
    return float(sum(tail) / len(tail)) if tail else float("nan")


def _save_builtin(folder: Path, teacher: Teacher, key: dict, log: dict, teacher_candidate: Any) -> None:
    """Write the cache entry to a temp folder, then rename it into place (atomic)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        teacher.module.save_pretrained(tmp)  # config.json (the candidate) + model.safetensors
        atomic_write_text(tmp / "candidate.yaml", teacher_candidate.to_yaml())
        meta = {
            "candidate": teacher_candidate.id,
            "fingerprint": teacher.fingerprint,
            "key": json.loads(canonical_json(key)),
            "train_s": log["train_s"],
            "final_loss": _tail_mean(log["loss_curve"]),
            "loss_curve": log["loss_curve"][:: max(1, len(log["loss_curve"]) // 200)],
            "device": log["device"],
        }
        atomic_write_text(tmp / "teacher.json", json.dumps(meta, indent=1))
        if folder.exists():  # left by a crash before teacher.json: replace it
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- entry point


def check_teacher(config: ProxyConfig, kind: str = "image") -> None:
    """Check the spec's teacher without loading or training it (what ``archsearch validate``
    runs): a diffusers folder must hold a supported UNet config (and the text encoders it
    needs); a built-in teacher must match the space's kind. Raises a one-line
    :class:`~archsearch.errors.ArchsearchError` naming the spec and key."""
    spec = dict(config.teacher or {})
    if "diffusers" in spec:
        _check_diffusers(spec, kind, config.source)
    else:
        b = spec.get("builtin", kind)
        if b != kind:
            raise ArchsearchError(f"{config.source}: proxy.teacher.builtin: {b!r} does not match the space's kind "
                                  f"(allowed: {kind})")


def load_teacher(
    config: ProxyConfig,
    kind: str = "image",
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    device: str | torch.device | None = "cpu",
    threads: int | None = None,
) -> Teacher:
    """The teacher named by ``config.teacher``, ready on ``device`` (frozen, eval mode).

    Built-in: trained on first use and cached under
    ``<cache_dir or $ARCHSEARCH_CACHE_DIR or ~/.cache/archsearch>/teachers/<fingerprint>/``;
    ``progress(phase, description, done, total)`` follows it (phases ``captions``,
    ``teacher``). Diffusers: loaded from the local folder; never downloads. Raises
    :class:`~archsearch.errors.ArchsearchError` (naming the spec and key) when the teacher's
    prediction type differs from ``config.prediction``. ``threads`` sets torch's intra-op threads
    while the built-in teacher trains (restored afterwards; ``None`` leaves them as they are).
    """
    dev = resolve_device(device)
    spec = dict(config.teacher or {})
    root = Path(cache_dir).expanduser() if cache_dir is not None else None
    source = config.source
    check_teacher(config, kind)
    if "diffusers" in spec:
        teacher = _load_diffusers(spec, kind, source, dev)
    else:
        with torch_threads(threads):
            teacher = _load_builtin(spec, config, kind, root, dev, progress)
    check_prediction(config.prediction, teacher.prediction, source)
    return teacher
