"""Candidate → ``torch.nn.Module``, assembled block by block from :func:`walk`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from archsearch import __version__
from archsearch._util import atomic_write_text
from archsearch.candidate import Candidate
from archsearch.errors import ArchsearchError
from archsearch.model._blocks import create_block
from archsearch.model._memory import check_memory
from archsearch.model._walker import BlockSpec, walk

__all__ = ["ArchUNet", "build_block", "build_model"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def build_block(spec: BlockSpec, device: Any = None, dtype: torch.dtype | None = None) -> nn.Module:
    """Build one block alone, exactly as the full model builds it."""
    with torch.device(device) if device is not None else _nullcontext():
        block = create_block(spec.type, spec.hparams)
    if dtype is not None:
        block = block.to(dtype)
    return block


def _on_meta(device: Any) -> bool:
    """Whether a module built with ``device`` lands on ``meta`` (free: nothing to check)."""
    if device is None:
        get_default = getattr(torch, "get_default_device", None)
        return get_default is not None and get_default().type == "meta"
    try:
        return torch.device(device).type == "meta"
    except (RuntimeError, TypeError):  # not a device torch knows: building will say so
        return False


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class ArchUNet(nn.Module):
    """A UNet (image) or video UNet assembled from a :class:`Candidate`.

    Call it like a diffusers UNet: ``model(sample, timestep, encoder_hidden_states)``
    returns a prediction shaped like ``sample`` — ``(B, C, H, W)`` for images,
    ``(B, C, T, H, W)`` for video.
    """

    def __init__(self, candidate: Candidate, device: Any = None, dtype: torch.dtype | None = None,
                 blocks: Iterable[nn.Module] | None = None) -> None:
        super().__init__()
        if blocks is None and not _on_meta(device):  # estimated on meta first: a model that cannot fit is refused
            check_memory(candidate, dtype, device)
        self.candidate = candidate
        self.block_specs: list[BlockSpec] = walk(candidate)
        if blocks is None:
            blocks = (build_block(s, device, dtype) for s in self.block_specs)
        self.blocks = nn.ModuleList(blocks)
        self.feature_channels: dict[str, int] = {}
        for s in self.block_specs:
            if s.tap:
                hp = s.hparams
                self.feature_channels[s.tap] = hp.get("channels") or hp.get("out_channels")

    @classmethod
    def from_blocks(cls, candidate: Candidate, blocks: Iterable[nn.Module]) -> "ArchUNet":
        """``candidate``'s model made of existing block modules, one per block of
        :func:`walk` in its order (nothing is built or checked; blocks may be on ``meta`` and
        shared between models run with :func:`torch.func.functional_call`)."""
        return cls(candidate, blocks=blocks)

    @property
    def is_video(self) -> bool:
        return self.candidate.kind == "video"

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor,
                added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.forward_features(sample, timestep, encoder_hidden_states, taps=False,
                                     added_cond_kwargs=added_cond_kwargs)[0]

    def forward_features(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                         encoder_hidden_states: torch.Tensor, taps: bool = True,
                         added_cond_kwargs: dict[str, torch.Tensor] | None = None,
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Prediction and the stage-output features (``down.i``, ``mid``, ``up.i``).

        ``added_cond_kwargs`` (a candidate with ``added_cond``, as diffusers' SDXL UNet):
        ``text_embeds`` ``(B, pooled_dim)`` and ``time_ids`` ``(B, time_ids)``; left out,
        both are zeros (an unconditioned call: training loops and timing pass none).
        """
        c = self.candidate
        expected_dims = 5 if self.is_video else 4
        if sample.dim() != expected_dims:
            raise ValueError(f"sample must be {expected_dims}-D for a {c.kind} model, got {tuple(sample.shape)}")
        b = sample.shape[0]
        if self.is_video:
            frames = sample.shape[2]
            if frames != c.frames:
                raise ValueError(f"the model was built for {c.frames} frames, got {frames}")
            x = sample.permute(0, 2, 1, 3, 4).reshape(b * frames, *sample.shape[1:2], *sample.shape[3:])
        else:
            frames = 1
            x = sample
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=sample.device)
        timestep = timestep.to(sample.device).reshape(-1).expand(b)
        context = encoder_hidden_states
        temb: torch.Tensor | None = None
        stacks: list[list[torch.Tensor]] = [[] for _ in c.stages]
        feats: dict[str, torch.Tensor] = {}
        per_frame = False
        for spec, block in zip(self.block_specs, self.blocks):
            if spec.type == "time_embed":
                temb = block(timestep.float(), None, None).to(x.dtype)
                continue
            if spec.type == "text_time_embed":
                temb = block(self._added_input(spec, b, sample, added_cond_kwargs), temb, None).to(x.dtype)
                continue
            if frames > 1 and not per_frame:  # spatial blocks see frames as batch
                temb = temb.repeat_interleave(frames, dim=0)
                context = context.repeat_interleave(frames, dim=0)
                per_frame = True
            if spec.pop_skip is not None:
                x = torch.cat([x, stacks[spec.pop_skip].pop()], dim=1)
            x = self._call_block(block, x, temb, context)
            if spec.push_skip is not None:
                stacks[spec.push_skip].append(x)
            if taps and spec.tap:
                feats[spec.tap] = x
        if self.is_video:
            x = x.reshape(b, frames, *x.shape[1:]).permute(0, 2, 1, 3, 4)
        return x, feats

    def _call_block(self, block: nn.Module, x: torch.Tensor, temb: torch.Tensor | None,
                    context: torch.Tensor) -> torch.Tensor:
        """One block's call in :meth:`forward_features` (a layout that changes how blocks are
        called, such as the Neural Engine's, overrides this and nothing else)."""
        return block(x, temb, context)

    @staticmethod
    def _added_input(spec: BlockSpec, batch: int, sample: torch.Tensor,
                     added: dict[str, torch.Tensor] | None) -> torch.Tensor:
        hp = spec.hparams
        added = added or {}
        pooled = added.get("text_embeds")
        ids = added.get("time_ids")
        if pooled is None:
            pooled = sample.new_zeros(batch, hp["pooled_dim"])
        if ids is None:
            ids = sample.new_zeros(batch, hp["time_ids"])
        if tuple(pooled.shape) != (batch, hp["pooled_dim"]) or tuple(ids.shape) != (batch, hp["time_ids"]):
            raise ValueError(f"added_cond_kwargs: text_embeds must be {(batch, hp['pooled_dim'])} and time_ids "
                             f"{(batch, hp['time_ids'])}, got {tuple(pooled.shape)} and {tuple(ids.shape)}")
        return torch.cat([pooled.to(sample.dtype), ids.to(sample.dtype)], dim=1)

    # ----------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` (the candidate) and ``model.safetensors``, each atomically."""
        import os
        import tempfile

        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # save_model de-duplicates aliased tensors (diffusers' Downsample2D keeps two names
        # for one conv); write beside the target, then rename: never a half-written file.
        fd, tmp = tempfile.mkstemp(prefix=f".{WEIGHTS_NAME}.", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            save_model(self, tmp, metadata={"format": "pt"})
            os.replace(tmp, directory / WEIGHTS_NAME)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        config = {"_class_name": type(self).__name__, "_archsearch_version": __version__,
                  "candidate": self.candidate.to_dict()}
        atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: Any = None) -> "ArchUNet":
        """Load a model written by :meth:`save_pretrained` (safetensors; no pickle)."""
        from safetensors.torch import load_model

        directory = Path(directory)
        cfg_path = directory / CONFIG_NAME
        if not cfg_path.is_file():
            raise ArchsearchError(f"{cfg_path}: not found (expected a folder written by save_pretrained)")
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise ArchsearchError(f"{cfg_path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        if config.get("_class_name") != cls.__name__:
            raise ArchsearchError(f"{cfg_path}: _class_name is {config.get('_class_name')!r} (allowed: {cls.__name__})")
        candidate = Candidate.from_dict(config.get("candidate"), str(cfg_path))
        model = cls(candidate, device=device)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise ArchsearchError(f"{weights}: not found (expected a folder written by save_pretrained)")
        from safetensors import SafetensorError

        try:
            missing, unexpected = load_model(model, str(weights), strict=False, device=str(device or "cpu"))
        except SafetensorError as exc:  # truncated or not a safetensors file
            raise ArchsearchError(f"{weights}: not a readable safetensors file ({exc}); "
                                  "it may be truncated: save the model again") from None
        except RuntimeError as exc:  # shape mismatches
            first = str(exc).strip().splitlines()[-1].strip()
            raise ArchsearchError(f"{weights}: weights do not match the config ({first})") from None
        if missing or unexpected:
            raise ArchsearchError(
                f"{directory / WEIGHTS_NAME}: weights do not match the config "
                f"({len(missing)} missing, e.g. {missing[:1]}; {len(unexpected)} unexpected, e.g. {unexpected[:1]})"
            )
        return model


def build_model(candidate: Candidate, device: Any = None, dtype: torch.dtype | None = None) -> ArchUNet:
    """Build the model for ``candidate`` (``device="meta"`` builds it for free)."""
    return ArchUNet(candidate, device=device, dtype=dtype)
