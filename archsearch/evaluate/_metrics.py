"""The metrics of an evaluation, on well-kept implementations; every weight file is local.

* FID -- torchmetrics' ``FrechetInceptionDistance`` (double-precision statistics, updated batch
  by batch) with torch-fidelity's FID Inception v3 (``inception-v3-compat``, the TF weights of
  the original FID, pool3 2048 features, TF-compatible resize to 299), loaded from a local
  file: ``inception=PATH``, else torch-fidelity's own cache path
  (``<torch hub>/checkpoints/weights-inception-2015-12-05-6726825d.pth``). Nothing is
  downloaded: a missing file is a one-line error naming it and where to put it. Features are
  computed once per picture set and fed to every pair that uses the set (an ``nn.Module`` given
  as ``inception`` replaces the Inception net: tests inject a tiny random one this way).
* CLIP score -- ``100 * max(cos(image, text), 0)`` averaged over pictures (Hessel et al.; the
  definition of torchmetrics' ``CLIPScore``) with a transformers ``CLIPModel`` /
  ``CLIPProcessor`` read from a local folder. Computed here rather than by torchmetrics'
  ``CLIPScore``: torchmetrics 1.9 reads ``get_image_features`` as a tensor, which transformers 5
  no longer returns.
* Agreement with the teacher on the same prompt and seed -- latent MSE (the final latents,
  before the VAE), PSNR of the pictures (mean over pictures, each capped at 100 dB), LPIPS
  (torchmetrics, AlexNet) only when torchvision's AlexNet weights are already in the torch hub
  cache (otherwise skipped, with a note naming the file).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from archsearch._util import first_line
from archsearch.errors import ArchsearchError, ParameterError

__all__ = [
    "INCEPTION_FILE",
    "ClipScorer",
    "FidPairs",
    "frechet_distance",
    "hub_checkpoints",
    "image_tensor",
    "load_clip",
    "load_inception",
    "load_lpips",
    "psnr",
    "reference_images",
]

#: torch-fidelity's FID Inception weights (the file name its own download would use)
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PSNR_CAP_DB = 100.0


def hub_checkpoints() -> Path:
    """Where torch hub (and so torch-fidelity and torchvision) keep downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


# --------------------------------------------------------------------------- FID


class _Given(nn.Module):
    """Features already computed: what torchmetrics' FID statistics are fed through."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _fid_metric(num_features: int) -> Any:
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=_Given(num_features), reset_real_features=True)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between two feature sets ``(N, D)`` (torchmetrics' statistics and distance)."""
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ArchsearchError(f"FID needs at least 2 pictures on each side (got {a.shape[0]} and {b.shape[0]})")
    m = _fid_metric(a.shape[1])
    m.update(a.double(), real=True)
    m.update(b.double(), real=False)
    return float(m.compute())


class FidPairs:
    """Streaming FID of several pairs of picture sets, each set's features computed once."""

    def __init__(self, pairs: Sequence[tuple[str, str]], num_features: int) -> None:
        self.pairs = list(pairs)
        self.metrics = {p: _fid_metric(num_features) for p in self.pairs}
        self.counts: dict[str, int] = {}

    def sets(self) -> set[str]:
        return {s for p in self.pairs for s in p}

    def update(self, name: str, features: torch.Tensor) -> None:
        f = features.detach().double().cpu()
        self.counts[name] = self.counts.get(name, 0) + f.shape[0]
        for (a, b), m in self.metrics.items():
            if name == a:
                m.update(f, real=True)
            elif name == b:
                m.update(f, real=False)

    def compute(self) -> dict[tuple[str, str], float]:
        out = {}
        for (a, b), m in self.metrics.items():
            na, nb = self.counts.get(a, 0), self.counts.get(b, 0)
            if na < 2 or nb < 2:
                raise ArchsearchError(f"FID needs at least 2 pictures on each side ({a}: {na}, {b}: {nb})")
            out[(a, b)] = max(0.0, float(m.compute()))
        return out


def _inception_url() -> str:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        return str(URL_INCEPTION_V3)
    except ImportError:
        return "torch-fidelity's release page; torch-fidelity itself: pip install 'archsearch[fid]'"


def load_inception(inception: str | os.PathLike | nn.Module | None, device: torch.device | str = "cpu") -> tuple[nn.Module, str]:
    """The FID feature network (uint8 ``(N, 3, H, W)`` -> ``(N, D)``) and a description of it.

    ``inception``: a weights file, ``None`` (torch-fidelity's cache path) or an ``nn.Module``
    used as it is. Raises a one-line :class:`~archsearch.errors.ParameterError` (``inception``)
    naming the file and where to put it when the weights are not on this machine.
    """
    if isinstance(inception, nn.Module):
        return inception.eval().to(device), f"custom {type(inception).__name__}"
    if inception is not None:
        path = Path(inception).expanduser()
        if not path.is_file():
            raise ParameterError("inception", f": {path}: no such file (allowed: torch-fidelity's FID Inception "
                                              f"weights {INCEPTION_FILE})")
    else:
        path = hub_checkpoints() / INCEPTION_FILE
        if not path.is_file():
            raise ParameterError("inception", f": FID needs the Inception weights: put {INCEPTION_FILE} "
                                              f"({_inception_url()}) in {path.parent}/ or give the file's path "
                                              "(archsearch never downloads it)")
    try:  # tensors only (no pickle); torch-fidelity then reads the same file
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one line naming it
        raise ParameterError("inception", f": {path}: not a weights file ({first_line(exc)})") from None
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise ParameterError("inception", f": {path}: not the FID Inception weights (allowed: {INCEPTION_FILE})")
    del state
    try:
        import torch_fidelity  # noqa: F401 - the optional extra `fid`
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as exc:
        raise ArchsearchError(f"FID's Inception needs torch-fidelity ({first_line(exc)}): "
                              "pip install 'archsearch[fid]' (or give --no-fid)") from None
    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=str(path))
    except (RuntimeError, ModuleNotFoundError) as exc:
        raise ParameterError("inception", f": {path}: cannot load the FID Inception ({first_line(exc)})") from None
    return net.to(device), f"inception-v3-compat 2048 ({path.name})"


def image_tensor(images: Sequence[Any]) -> torch.Tensor:
    """PIL pictures of one size as uint8 ``(N, 3, H, W)``."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def reference_images(folder: str | os.PathLike) -> list[Path]:
    """The picture files under ``folder`` (sorted); at least 2."""
    d = Path(folder)
    if not d.is_dir():
        raise ParameterError("reference", f": {d}: no such folder (allowed: a folder of pictures, e.g. COCO val2017)")
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not p.name.startswith("."))
    if len(files) < 2:
        raise ParameterError("reference", f": {d}: {len(files)} pictures (allowed: a folder of 2 or more "
                                          f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES)} files)")
    return files


def open_reference(path: Path, width: int, height: int) -> Any:
    """A reference picture centre-cropped to the samples' aspect and resized to their size."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            return ImageOps.fit(im.convert("RGB"), (width, height), Image.BICUBIC)
    except OSError as exc:
        raise ArchsearchError(f"{path}: not a readable picture ({first_line(exc)})") from None


# --------------------------------------------------------------------------- CLIP


class ClipScorer:
    """CLIP score of pictures against their captions with a local transformers CLIP."""

    def __init__(self, model: Any, processor: Any, path: str, device: torch.device | str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.processor = processor
        self.path = path
        self.device = torch.device(device)

    @torch.no_grad()
    def scores(self, images: Sequence[Any], prompts: Sequence[str]) -> torch.Tensor:
        """``100 * max(cos, 0)`` per picture (float64, CPU)."""
        tok = getattr(self.processor, "tokenizer", None)
        max_len = getattr(tok, "model_max_length", None)
        max_len = max_len if isinstance(max_len, int) and max_len < 10_000 else 77
        inp = self.processor(text=list(prompts), images=list(images), return_tensors="pt", padding=True,
                             truncation=True, max_length=max_len)
        inp = {k: v.to(self.device) for k, v in inp.items()}
        out = self.model(**inp)
        img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
        txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
        return (100 * (img * txt).sum(-1)).clamp(min=0).double().cpu()


def load_clip(path: str | os.PathLike, device: torch.device | str = "cpu") -> ClipScorer:
    """A local CLIP folder (``CLIPModel`` + ``CLIPProcessor``, ``save_pretrained``); never downloads."""
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise ParameterError("clip", f": {p}: no CLIP model here (allowed: a local folder with config.json, the "
                                     "weights and the processor files, e.g. openai/clip-vit-large-patch14 saved "
                                     "with save_pretrained)")
    try:
        from transformers import CLIPModel, CLIPProcessor
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        model = CLIPModel.from_pretrained(str(p), local_files_only=True)
        processor = CLIPProcessor.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ParameterError("clip", f": {p}: cannot load a CLIP model and processor ({first_line(exc)})") from None
    return ClipScorer(model, processor, str(p), device)


# --------------------------------------------------------------------------- agreement


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of each picture pair, uint8 ``(N, 3, H, W)``; identical pictures give the cap."""
    d = (a.double() / 255 - b.double() / 255).pow(2).flatten(1).mean(1)
    floor = 10 ** (-PSNR_CAP_DB / 10)
    return -10 * torch.log10(d.clamp(min=floor))


def _alexnet_file() -> str:
    from torchvision.models import AlexNet_Weights

    return os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url)


def load_lpips(device: torch.device | str = "cpu") -> tuple[Any, str | None]:
    """torchmetrics' LPIPS (AlexNet) when torchvision's AlexNet weights are local, else
    ``(None, note)`` naming the file and where it would go."""
    name = _alexnet_file()
    path = hub_checkpoints() / name
    if not path.is_file():
        return None, f"LPIPS skipped: no local AlexNet weights (put {name} in {path.parent}/)"
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device), None
    except Exception as exc:  # noqa: BLE001 - an optional metric: say why, keep the rest
        return None, f"LPIPS skipped: {first_line(exc)}"


def finite(v: float | None) -> float | None:
    """JSON-safe number (``None`` for NaN / inf)."""
    return None if v is None or not math.isfinite(v) else float(v)
