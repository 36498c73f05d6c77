"""Core ML packages Apple's Swift app runs: the UNet under apple/ml-stable-diffusion's names,
and on request the whole folder its ``StableDiffusionPipeline`` loads.

What the app expects (apple/ml-stable-diffusion, ``python_coreml_stable_diffusion/
torch2coreml.py`` ``convert_unet``/``convert_text_encoder``/``convert_vae_decoder`` and
``swift/StableDiffusion/pipeline/{Unet,TextEncoder,Decoder}.swift``):

* ``Unet``: inputs ``sample`` ``(B, C, H, W)``, ``timestep`` ``(B,)`` and
  ``encoder_hidden_states`` ``(B, D, 1, L)`` (the text embedding already in the Neural
  Engine's layout: the Swift pipeline transposes ``(B, L, D)`` itself), plus ``time_ids``
  ``(B, 6)`` and ``text_embeds`` ``(B, pooled)`` for SDXL; all fp16; output ``noise_pred``,
  fp32, the shape of ``sample``. ``B = 2`` runs classifier-free guidance in one call (the
  unconditioned and the conditioned half); a batch-1 UNet is called twice by the Swift
  pipeline when ``guidanceScale >= 1``, once when it is below 1 (few-step distilled models).
* ``TextEncoder``: ``input_ids`` ``(1, L)`` fp32 (token ids as floats) → ``last_hidden_state``
  ``(1, L, D)`` and ``pooled_outputs``.
* ``VAEDecoder``: ``z`` ``(1, C, H, W)`` fp16 (already divided by the VAE's scaling factor:
  the app's ``decoderScaleFactor``) → ``image`` ``(1, 3, 8H', 8W')`` in [-1, 1].
* ``vocab.json`` and ``merges.txt``: the CLIP BPE tokenizer the Swift ``BPETokenizer`` reads.

The Swift pipeline loads compiled models (``Unet.mlmodelc``...): compiling an
``.mlpackage`` needs macOS (``xcrun coremlcompiler compile Unet.mlpackage .``), as running it
does. Here every package is converted and its MIL program evaluated with numpy against torch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from archsearch._util import atomic_write_text, first_line, replace_dir
from archsearch.errors import ArchsearchError, ParameterError
from archsearch.export._ane_layout import ane_model
from archsearch.export._coreml import (
    CHECK_TOLERANCE,
    LAYOUTS,
    ConversionResult,
    _quiet,
    ane_advice,
    check_numerics,
    conversion_result,
    convert_exported,
    import_coremltools,
)
from archsearch.export._registry import ExportNote, ExportOptions, ExportResult, NumericCheck, register_format
from archsearch.model import ArchUNet

__all__ = [
    "APP_BATCH",
    "UNET_OUTPUT",
    "AppPackage",
    "TensorSpec",
    "convert_app_unet",
    "export_app",
    "package_io",
    "swift_scheduler",
    "unet_io",
]

#: the UNet's batch by default: classifier-free guidance in one call, as Apple converts it
APP_BATCH = 2
UNET_OUTPUT = "noise_pred"
#: the names of the packages in the folder ``StableDiffusionPipeline(resourcesAt:)`` reads
#: (Swift ``StableDiffusionPipeline+Resources.swift``; compiled to ``.mlmodelc`` on a Mac)
PACKAGE_NAMES = {"unet": "Unet", "text_encoder": "TextEncoder", "vae_decoder": "VAEDecoder"}
TOKENIZER_FILES = ("vocab.json", "merges.txt")
#: the description of the folder, beside the packages
PIPELINE_JSON = "pipeline.json"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a package: name, shape, dtype (``fp16``, ``fp32``, ``int32``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def text(self) -> str:
        return f"{self.name} {tuple(self.shape)} {self.dtype}"


def unet_io(candidate: Any, batch: int = APP_BATCH) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of the app's UNet for ``candidate`` (see the module's docstring)."""
    c = candidate
    if c.kind == "video":
        sample = (batch, c.latent_channels, c.frames, c.resolution, c.resolution)
    else:
        sample = (batch, c.latent_channels, c.resolution, c.resolution)
    inputs = [TensorSpec("sample", sample, "fp16"), TensorSpec("timestep", (batch,), "fp16"),
              TensorSpec("encoder_hidden_states", (batch, c.context_dim, 1, c.context_length), "fp16")]
    ac = getattr(c, "added_cond", None)
    if ac is not None:  # SDXL's text_time conditioning, in torch2coreml's order
        inputs += [TensorSpec("time_ids", (batch, ac.time_ids), "fp16"),
                   TensorSpec("text_embeds", (batch, ac.pooled_dim), "fp16")]
    return inputs, [TensorSpec(UNET_OUTPUT, sample, "fp32")]


def _tensor_types(specs: list[TensorSpec], outputs: bool = False) -> list[Any]:
    ct = import_coremltools()
    dtypes = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32}
    if outputs:
        return [ct.TensorType(name=s.name, dtype=dtypes[s.dtype]) for s in specs]
    return [ct.TensorType(name=s.name, shape=s.shape, dtype=dtypes[s.dtype]) for s in specs]


class _AppUNet(nn.Module):
    """The UNet called as the app calls it: ``(sample, timestep, encoder_hidden_states)``,
    the text ``(B, D, 1, L)`` (the ``ane`` layout reads it so; the ``torch`` one transposes)."""

    def __init__(self, model: nn.Module, torch_layout: bool) -> None:
        super().__init__()
        self.model = model
        self.torch_layout = torch_layout

    def _context(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return encoder_hidden_states.squeeze(2).transpose(1, 2) if self.torch_layout else encoder_hidden_states

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.model(sample, timestep, self._context(encoder_hidden_states))


class _AppUNetXL(_AppUNet):
    """:class:`_AppUNet` with SDXL's ``time_ids`` and ``text_embeds`` inputs."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,  # type: ignore[override]
                time_ids: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.model(sample, timestep, self._context(encoder_hidden_states), added)


def _example(specs: list[TensorSpec], seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs for the conversion and the numeric check: noise, timestep 500, ids of an image
    as SDXL's pipeline passes them (1024 x 1024, no crop)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for s in specs:
        if s.name == "timestep":
            out[s.name] = torch.full(s.shape, 500.0)
        elif s.name == "time_ids":
            out[s.name] = torch.tensor([1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0] * s.shape[1])[: s.shape[1]].repeat(
                s.shape[0], 1)
        else:
            out[s.name] = torch.randn(s.shape, generator=g)
    return out


def _reference(model: ArchUNet, example: dict[str, torch.Tensor]) -> torch.Tensor:
    """The torch model itself (fp32, its own ``(B, L, D)`` text layout) on ``example``."""
    ctx = example["encoder_hidden_states"].squeeze(2).transpose(1, 2)
    added = ({"text_embeds": example["text_embeds"], "time_ids": example["time_ids"]}
             if "text_embeds" in example else None)
    with torch.no_grad():
        return model(example["sample"], example["timestep"], ctx, added)


def _feed(program: Any, example: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    names = list(program.functions["main"].inputs)
    missing = [n for n in names if n not in example]
    if missing:
        raise ArchsearchError(f"the converted program has input {missing[0]!r} (expected {', '.join(example)})")
    return {n: example[n].detach().float().numpy() for n in names}


def convert_app_unet(model: ArchUNet, *, batch: int = APP_BATCH, layout: str = "ane",
                     compute_units: str = "CPU_AND_NE", palettize: int | None = None, check: bool = True,
                     tolerance: float | None = None) -> tuple[ConversionResult, list[TensorSpec], list[TensorSpec]]:
    """``model`` as the app's UNet (:func:`unet_io` names, shapes and dtypes), converted in
    ``layout``; with ``check`` its MIL program is evaluated (every op) against the torch
    model itself. Returns (the conversion, kept model included; inputs; outputs)."""
    if layout not in LAYOUTS:
        raise ParameterError("layout", f"{layout}: unknown (allowed: {', '.join(LAYOUTS)})")
    if not (isinstance(batch, int) and batch >= 1):
        raise ParameterError("batch", f"{batch}: bad value (allowed: 2 for guided sampling in one call, 1)")
    tolerance = CHECK_TOLERANCE.get(palettize, 0.2) if tolerance is None else tolerance
    model = model.float().eval()
    inputs, outputs = unet_io(model.candidate, batch)
    example = _example(inputs)
    body = ane_model(model) if layout == "ane" else model
    wrapper = (_AppUNetXL if len(inputs) == 5 else _AppUNet)(body, torch_layout=layout == "torch").eval()
    t0 = time.perf_counter()
    try:
        mlmodel = convert_exported(wrapper, tuple(example[s.name] for s in inputs), compute_units, palettize=palettize,
                                   inputs=_tensor_types(inputs), outputs=_tensor_types(outputs, outputs=True))
    except Exception as exc:  # noqa: BLE001 - any converter failure is a result
        return (ConversionResult(ok=False, error=f"{exc.__class__.__name__}: {first_line(exc)}"[:200],
                                 seconds=time.perf_counter() - t0, layout=layout), inputs, outputs)
    result = conversion_result(mlmodel, time.perf_counter() - t0, layout, palettize, keep_model=True)
    result.program = program = mlmodel._mil_program  # for the check and the ANE advice
    if check:
        result.check = check_numerics(program, _feed(program, example), [_reference(model, example)], tolerance)
    return result, inputs, outputs


def package_io(model_or_path: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of a converted model or a saved ``.mlpackage``, read from its spec
    (names, shapes, dtypes as Core ML will see them; works on Linux)."""
    ct = import_coremltools()
    if isinstance(model_or_path, (str, os.PathLike)):
        with _quiet():
            model_or_path = ct.models.MLModel(str(model_or_path), skip_model_load=True)
    desc = model_or_path.get_spec().description
    from coremltools.proto import FeatureTypes_pb2

    names = {FeatureTypes_pb2.ArrayFeatureType.FLOAT16: "fp16", FeatureTypes_pb2.ArrayFeatureType.FLOAT32: "fp32",
             FeatureTypes_pb2.ArrayFeatureType.INT32: "int32", FeatureTypes_pb2.ArrayFeatureType.DOUBLE: "fp64"}

    def specs(features: Any) -> list[TensorSpec]:
        return [TensorSpec(f.name, tuple(int(d) for d in f.type.multiArrayType.shape),
                           names.get(f.type.multiArrayType.dataType, str(f.type.multiArrayType.dataType)))
                for f in features]

    return specs(desc.input), specs(desc.output)


def _save_package(mlmodel: Any, path: Path) -> Path:
    """Save an ``.mlpackage`` (a folder) beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = tmp / path.name
        with _quiet():
            mlmodel.save(str(staged))
        replace_dir(staged, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _check_problem(path: Path, check: NumericCheck | None) -> str:
    """'' or why ``path`` is not to be trusted: numerics that differ, or a check that checked
    nothing (an error, not a note: a package no one checked is not called checked)."""
    if check is None:
        return ""
    if not check.done:
        return f"{path}: its numerics were not checked ({check.reason}); export again with --no-check to accept that"
    if not check.ok:
        return f"{path}: the converted model differs from torch ({check.line()})"
    return ""


def _unet_notes(result: ConversionResult, inputs: list[TensorSpec], outputs: list[TensorSpec],
                batch: int) -> list[ExportNote]:
    off = ", ".join(f"{k} {v}" for k, v in result.off_ane.most_common())
    notes = [ExportNote("inputs", ", ".join(s.text() for s in inputs)),
             ExportNote("outputs", ", ".join(s.text() for s in outputs)),
             ExportNote("batch", "2: classifier-free guidance in one call (the Swift pipeline's default)" if batch == 2
                        else f"{batch}: the Swift pipeline calls it twice per step with guidance >= 1, once below 1"),
             ExportNote("ops that would fall off the Neural Engine", off or "none found", warn=bool(off))]
    return notes


@dataclass
class AppPackage:
    """One package of an app folder: its file, its inputs and outputs, its numeric check."""

    name: str
    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    check: NumericCheck | None
    seconds: float


@register_format("coreml", suffix=".mlpackage", activity="converting {source} to Core ML ({layout} layout)")
def export_app(model: ArchUNet, path: Path, options: ExportOptions, name: str) -> ExportResult:
    """The ``coreml`` format: the UNet as ``Unet.mlpackage`` under the app's names
    (:func:`convert_app_unet`), or with ``options.pipeline`` the folder the Swift
    ``StableDiffusionPipeline`` loads (see :func:`_export_pipeline`)."""
    batch = APP_BATCH if options.batch is None else options.batch
    if options.pipeline:
        return _export_pipeline(model, path, options, name, batch)
    result, inputs, outputs = convert_app_unet(model, batch=batch, layout=options.layout,
                                               compute_units=options.compute_units, palettize=options.palettize,
                                               check=options.check, tolerance=options.tolerance)
    if not result.ok:
        raise ArchsearchError(f"{name}: does not convert to Core ML: {result.error}")
    _save_package(result.mlmodel, path)
    bits = f", {options.palettize}-bit palettized" if options.palettize else ""
    check = result.check
    notes = _unet_notes(result, inputs, outputs, batch) + ane_advice(result.program, options.layout, model.candidate)
    result.program = None
    return ExportResult("coreml", path, model.candidate.id,
                        f"(mlprogram, fp16, iOS 17, {options.layout} layout{bits}, batch {batch}) in "
                        f"{result.seconds:.1f} s", check=check, notes=notes, problem=_check_problem(path, check),
                        details={"conversion": result, "inputs": inputs, "outputs": outputs})


# ----------------------------------------------------------------------------- the pipeline


#: the Swift pipeline's schedulers (``StableDiffusionScheduler``) and the sample CLI's names
SWIFT_SCHEDULERS = {"pndmScheduler": "pndm", "dpmSolverMultistepScheduler": "dpmpp"}
#: what the Swift schedulers assume (``DPMSolverMultistepScheduler.swift``, ``Scheduler.swift``
#: defaults: the StableDiffusionPipeline builds them with these)
SWIFT_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                  "beta_end": 0.012, "prediction_type": "epsilon"}


def swift_scheduler(config: dict[str, Any]) -> tuple[str, list[str]]:
    """The Swift pipeline's scheduler for a diffusers scheduler config, and what differs
    between the two (the Swift schedulers are built with :data:`SWIFT_SCHEDULE`).

    ``PNDMScheduler`` → ``pndmScheduler``; everything else (DDIM, Euler, DPM-Solver, ...) →
    ``dpmSolverMultistepScheduler`` (DPM-Solver++ 2M: the Swift pipeline's other choice,
    good in 20-25 steps for an epsilon-predicting model)."""
    cls = str(config.get("_class_name", ""))
    choice = "pndmScheduler" if cls == "PNDMScheduler" else "dpmSolverMultistepScheduler"
    differs = []
    for key, swift in SWIFT_SCHEDULE.items():
        v = config.get(key, swift)
        same = np.isclose(float(v), swift) if isinstance(swift, float) else v == swift
        if not same:
            differs.append(f"{key} {v} (Swift: {swift})")
    return choice, differs


def _teacher_parts(teacher: Path) -> dict[str, Any]:
    """The teacher checkpoint's model_index.json, refused (one line) unless it is a one-text-
    encoder pipeline (SD 1.x/2.x: what ``StableDiffusionPipeline`` in Swift runs)."""
    ix_path = teacher / "model_index.json"
    if not ix_path.is_file():
        raise ParameterError("teacher", f"{teacher}: not a diffusers checkpoint (no model_index.json)")
    ix = json.loads(ix_path.read_text())
    for part in ("text_encoder", "vae", "tokenizer", "scheduler"):
        if not isinstance(ix.get(part), list) or ix[part][0] is None:
            raise ParameterError("teacher", f"{teacher}: model_index.json has no {part} (the Swift pipeline needs "
                                            "a text encoder, a VAE, a CLIP tokenizer and a scheduler)")
    if isinstance(ix.get("text_encoder_2"), list) and ix["text_encoder_2"][0] is not None:
        raise ParameterError("teacher", f"{teacher}: an SDXL checkpoint (two text encoders): --pipeline writes "
                                        "StableDiffusionPipeline folders (one text encoder); export the UNet alone "
                                        "(its time_ids and text_embeds inputs are SDXL's)")
    return ix


def _tokenizer_files(teacher: Path) -> dict[str, str]:
    """vocab.json and merges.txt of the teacher's CLIP tokenizer (copied, or written from its
    tokenizer.json: a fast tokenizer saves only that)."""
    tok = teacher / "tokenizer"
    if all((tok / f).is_file() for f in TOKENIZER_FILES):
        return {f: (tok / f).read_text(encoding="utf-8") for f in TOKENIZER_FILES}
    path = tok / "tokenizer.json"
    if not path.is_file():
        raise ArchsearchError(f"{tok}: no vocab.json/merges.txt nor tokenizer.json (the Swift BPETokenizer needs "
                              "vocab.json and merges.txt)")
    model = json.loads(path.read_text(encoding="utf-8")).get("model") or {}
    if model.get("type") != "BPE":
        raise ArchsearchError(f"{path}: a {model.get('type')} tokenizer (allowed: BPE, CLIP's, which the Swift "
                              "BPETokenizer reads)")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"vocab.json": json.dumps(model["vocab"], ensure_ascii=False),
            "merges.txt": "#version: 0.2\n" + "".join(f"{m}\n" for m in merges)}


def _max_length(teacher: Path) -> int:
    cfg = teacher / "tokenizer" / "tokenizer_config.json"
    n = json.loads(cfg.read_text()).get("model_max_length") if cfg.is_file() else None
    enc = json.loads((teacher / "text_encoder" / "config.json").read_text())
    pos = int(enc.get("max_position_embeddings", 77))
    return int(n) if isinstance(n, int) and 0 < n <= pos else pos


class _TextEncoder(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(input_ids.to(torch.int32), return_dict=False)
        return out[0], out[1]


class _VAEDecoder(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z) if self.post_quant_conv is not None else z)


def _convert_part(label: str, module: nn.Module, inputs: list[TensorSpec], outputs: list[TensorSpec],
                  example: dict[str, torch.Tensor], compute_units: str, check: bool) -> tuple[Any, NumericCheck | None, float]:
    t0 = time.perf_counter()
    module = module.float().eval()
    args = tuple(example[s.name] for s in inputs)
    try:
        mlmodel = convert_exported(module, args, compute_units, inputs=_tensor_types(inputs),
                                   outputs=_tensor_types(outputs, outputs=True))
    except Exception as exc:  # noqa: BLE001 - one line naming the part
        raise ArchsearchError(f"the {label} does not convert to Core ML: {exc.__class__.__name__}: "
                              f"{first_line(exc)}"[:300]) from None
    result = None
    if check:
        with torch.no_grad():
            refs = module(*args)
        refs = list(refs) if isinstance(refs, (tuple, list)) else [refs]
        program = mlmodel._mil_program
        result = check_numerics(program, _feed(program, example), refs, CHECK_TOLERANCE[None])
    return mlmodel, result, time.perf_counter() - t0


def _export_pipeline(model: ArchUNet, path: Path, options: ExportOptions, name: str, batch: int) -> ExportResult:
    """The folder ``StableDiffusionPipeline(resourcesAt:)`` loads, once compiled on a Mac:
    ``Unet``, ``TextEncoder`` and ``VAEDecoder`` packages, the tokenizer's ``vocab.json`` and
    ``merges.txt``, and ``pipeline.json`` (the scheduler to choose, the decoder's scale and
    shift, every package's inputs, outputs and check). Written to a temp folder, then renamed."""
    if options.teacher is None:
        raise ParameterError("pipeline", ": needs the diffusers checkpoint the model was trained against (give "
                                         "--teacher PATH, or export an `archsearch train` output folder: it has "
                                         "pipeline/)")
    c = model.candidate
    if c.kind == "video":
        raise ParameterError("pipeline", f": {name} is a video model; the Swift StableDiffusionPipeline generates "
                                         "images (export the UNet alone)")
    teacher = Path(options.teacher)
    _teacher_parts(teacher)
    length = _max_length(teacher)
    enc_cfg = json.loads((teacher / "text_encoder" / "config.json").read_text())
    width = int(enc_cfg.get("hidden_size", 0))
    if (c.context_length, c.context_dim) != (length, width):
        raise ArchsearchError(f"{name}: takes text of {c.context_length} tokens x {c.context_dim}, the teacher's "
                              f"text encoder {teacher / 'text_encoder'} gives {length} x {width} (allowed: a model "
                              "trained against this teacher)")
    import diffusers
    import transformers

    with _quiet():
        encoder = transformers.CLIPTextModel.from_pretrained(str(teacher / "text_encoder"), local_files_only=True)
        vae = diffusers.AutoencoderKL.from_pretrained(str(teacher / "vae"), local_files_only=True)
    sched_cfg = json.loads((teacher / "scheduler" / "scheduler_config.json").read_text())
    scheduler, differs = swift_scheduler(sched_cfg)
    tokens = _tokenizer_files(teacher)

    packages: list[AppPackage] = []
    unet, inputs, outputs = convert_app_unet(model, batch=batch, layout=options.layout,
                                             compute_units=options.compute_units, palettize=options.palettize,
                                             check=options.check, tolerance=options.tolerance)
    if not unet.ok:
        raise ArchsearchError(f"{name}: does not convert to Core ML: {unet.error}")
    advice = ane_advice(unet.program, options.layout, c)
    unet.program = None
    packages.append(AppPackage(PACKAGE_NAMES["unet"], Path(f"{PACKAGE_NAMES['unet']}.mlpackage"), inputs, outputs,
                               unet.check, unet.seconds))
    ids = torch.randint(0, int(enc_cfg.get("vocab_size", 2)), (1, length), generator=torch.Generator().manual_seed(0))
    te_in = [TensorSpec("input_ids", (1, length), "fp32")]
    te_out = [TensorSpec("last_hidden_state", (1, length, width), "fp32"), TensorSpec("pooled_outputs", (1, width),
                                                                                      "fp32")]
    te_model, te_check, te_s = _convert_part("text encoder", _TextEncoder(encoder), te_in, te_out,
                                             {"input_ids": ids.float()}, options.compute_units, options.check)
    packages.append(AppPackage(PACKAGE_NAMES["text_encoder"], Path(f"{PACKAGE_NAMES['text_encoder']}.mlpackage"),
                               te_in, te_out, te_check, te_s))
    z = (1, int(vae.config.latent_channels), c.resolution, c.resolution)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    vae_in = [TensorSpec("z", z, "fp16")]
    vae_out = [TensorSpec("image", (1, int(vae.config.out_channels), factor * c.resolution, factor * c.resolution),
                          "fp32")]
    vae_model, vae_check, vae_s = _convert_part("VAE decoder", _VAEDecoder(vae), vae_in, vae_out,
                                                {"z": torch.randn(z, generator=torch.Generator().manual_seed(1))},
                                                # the Swift pipeline runs the decoder on CPU and GPU under CPU_AND_NE
                                                "CPU_AND_GPU" if options.compute_units == "CPU_AND_NE"
                                                else options.compute_units, options.check)
    packages.append(AppPackage(PACKAGE_NAMES["vae_decoder"], Path(f"{PACKAGE_NAMES['vae_decoder']}.mlpackage"),
                               vae_in, vae_out, vae_check, vae_s))

    scale = float(vae.config.scaling_factor or 0.18215)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    describe = {
        "format": "archsearch.coreml-app/v1",
        "candidate": c.id,
        "loads_with": "StableDiffusionPipeline(resourcesAt:) of apple/ml-stable-diffusion, after compiling each "
                      ".mlpackage to .mlmodelc on a Mac (xcrun coremlcompiler compile Unet.mlpackage .)",
        "configuration": {"schedulerType": scheduler, "decoderScaleFactor": scale, "decoderShiftFactor": shift,
                          "guidanceScale": 7.5 if batch == 2 else 0.0},
        "swift_cli": (f"swift run StableDiffusionSample PROMPT --resource-path FOLDER --scheduler "
                      f"{SWIFT_SCHEDULERS[scheduler]}"),
        "teacher": {"path": str(teacher), "scheduler": sched_cfg, "differs_from_swift": differs},
        "packages": [{"name": p.name, "file": str(p.path), "inputs": [asdict(s) for s in p.inputs],
                      "outputs": [asdict(s) for s in p.outputs],
                      "check": p.check.line() if p.check is not None else "not run (--no-check)"} for p in packages],
        "checked_here": ("each package converted (coremltools, torch.export) and its MIL program evaluated with "
                         "numpy against torch, every op" if options.check else
                         "each package converted (coremltools, torch.export); numerics not checked (--no-check)"),
        "needs_a_mac": "compiling to .mlmodelc, running, timing and the Neural Engine's own numerics",
    }
    # the folder: staged beside its place, renamed into place when complete
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would become the folder's
        with _quiet():
            unet.mlmodel.save(str(tmp / packages[0].path))
            te_model.save(str(tmp / packages[1].path))
            vae_model.save(str(tmp / packages[2].path))
        for fname, text in tokens.items():
            (tmp / fname).write_text(text, encoding="utf-8")
        atomic_write_text(tmp / PIPELINE_JSON, json.dumps(describe, indent=2, default=str) + "\n")
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    unet.mlmodel = None
    problems = [p for p in (_check_problem(path / pk.path, pk.check) for pk in packages) if p]
    notes = _unet_notes(unet, inputs, outputs, batch)
    for pk in packages[1:]:
        notes.append(ExportNote(pk.name, f"{', '.join(s.text() for s in pk.inputs)} -> "
                                         f"{', '.join(s.text() for s in pk.outputs)}; "
                                         f"numerics: {pk.check.line() if pk.check else 'not checked (--no-check)'}"))
    notes.append(ExportNote("tokenizer", "vocab.json, merges.txt (the teacher's CLIP BPE)"))
    notes.append(ExportNote("scheduler", f"{scheduler} (Swift CLI: --scheduler {SWIFT_SCHEDULERS[scheduler]}); "
                                         f"decoderScaleFactor {scale:g}, decoderShiftFactor {shift:g}"))
    if differs:
        notes.append(ExportNote("scheduler differs", f"the teacher's {sched_cfg.get('_class_name')} has "
                                f"{'; '.join(differs)}: the Swift StableDiffusionPipeline builds its schedulers "
                                "with Swift's defaults, so sample with a scheduler made with the teacher's values "
                                "(e.g. DPMSolverMultistepScheduler(stepCount:trainStepCount:betaSchedule:betaStart:"
                                "betaEnd:)) or images drift", warn=True))
    notes += advice
    seconds = sum(p.seconds for p in packages)
    return ExportResult("coreml", path, c.id,
                        f"(Swift StableDiffusionPipeline folder: {', '.join(p.name for p in packages)} + "
                        f"tokenizer; mlprogram, fp16, iOS 17, UNet {options.layout} layout, batch {batch}) in "
                        f"{seconds:.1f} s", check=unet.check, notes=notes, problem="; ".join(problems),
                        details={"conversion": unet, "packages": packages, "pipeline": describe})
