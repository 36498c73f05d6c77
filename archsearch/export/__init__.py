"""Export: conversions of a model (Neural-Engine layout, Core ML with its MIL check,
ExecuTorch/XNNPACK) behind one registry returning one result type.

    from archsearch.export import export_model
    result = export_model("reports/tiny/pareto/1a2b3c4d5e6f.yaml", "coreml", palettize=6)
    print(result.path, result.summary, result.check.line() if result.check else "")

Formats: ``coreml`` (an fp16 mlprogram ``.mlpackage`` for the Neural Engine, in Apple's
``(B, C, 1, S)`` layout, with the inputs and outputs apple/ml-stable-diffusion's Swift app
feeds -- ``sample``, ``timestep``, ``encoder_hidden_states`` -> ``noise_pred``, batch 2 --,
its MIL program evaluated with numpy against torch, every op; with ``pipeline=True`` the
whole folder the Swift ``StableDiffusionPipeline`` loads) and ``pte`` (an ExecuTorch program
with XNNPACK delegation, run once against torch). A new format is one function registered
with :func:`register_format`.

The latency stage (``archsearch.cost.latency``) converts through the same pieces: blocks to
Core ML (:func:`convert_module`, whose :class:`ConversionResult` carries the program's op
census, :func:`mil_ops`) and to ExecuTorch (:func:`lower_and_check`).

Modules: ``_registry`` (formats, options, the result), ``_ane_layout``, ``_coreml``, ``_app``
(the ``coreml`` format: the app's names, the Swift pipeline folder), ``_mil``
(the MIL census, evaluator and off-ANE check), ``_status`` (a block's conversion as a latency
table stores it), ``_executorch``, ``_inputs`` (how a model is
called), ``_ops`` (op records).
"""

from archsearch.export._ane_layout import (
    ANESpatialTransformer,
    ANETemporalConv,
    ANEUNet,
    ane_block,
    ane_model,
    ane_unsupported,
)
from archsearch.export._app import (
    APP_BATCH,
    UNET_OUTPUT,
    AppPackage,
    TensorSpec,
    convert_app_unet,
    package_io,
    swift_scheduler,
    unet_io,
)
from archsearch.export._coreml import (
    CHECK_TOLERANCE,
    LAYOUTS,
    PALETTIZE_BITS,
    ConversionResult,
    ane_advice,
    convert_model,
    convert_module,
    coreml_version,
    save_mlmodel,
)
from archsearch.export._executorch import (
    PTE_TOLERANCE,
    LoweredProgram,
    executorch_available,
    lower_and_check,
    lower_to_xnnpack,
    need_executorch,
    write_pte,
)
from archsearch.export._inputs import PositionalCall, model_inputs
from archsearch.export._mil import EVALUATED_OPS, mil_ops, run_mil, unevaluated_ops
from archsearch.export._ops import OpRecord, einsum_macs
from archsearch.export._registry import (
    ExportFormat,
    ExportNote,
    ExportOptions,
    ExportResult,
    NumericCheck,
    export_formats,
    export_model,
    register_format,
)
from archsearch.export._status import BlockConversion, unconvertible_types

__all__ = [
    "APP_BATCH",
    "CHECK_TOLERANCE",
    "EVALUATED_OPS",
    "LAYOUTS",
    "PALETTIZE_BITS",
    "PTE_TOLERANCE",
    "ANESpatialTransformer",
    "ANETemporalConv",
    "ANEUNet",
    "UNET_OUTPUT",
    "AppPackage",
    "BlockConversion",
    "ConversionResult",
    "ExportFormat",
    "ExportNote",
    "ExportOptions",
    "ExportResult",
    "LoweredProgram",
    "NumericCheck",
    "OpRecord",
    "PositionalCall",
    "TensorSpec",
    "ane_advice",
    "ane_block",
    "ane_model",
    "ane_unsupported",
    "convert_model",
    "convert_module",
    "convert_app_unet",
    "coreml_version",
    "einsum_macs",
    "executorch_available",
    "export_formats",
    "export_model",
    "lower_and_check",
    "lower_to_xnnpack",
    "mil_ops",
    "model_inputs",
    "need_executorch",
    "package_io",
    "register_format",
    "run_mil",
    "save_mlmodel",
    "swift_scheduler",
    "unconvertible_types",
    "unet_io",
    "unevaluated_ops",
    "write_pte",
]
