"""Latency: measure every distinct block once, store it in a lookup table, predict a
candidate as the sum of its blocks plus a calibrated overhead, and prove how accurate that is.

    from archsearch.cost.latency import load_predictor
    predictor = load_predictor("latency_tables/tiny-cpu-r16.csv")
    ms = predictor.predict(candidates)        # numpy array, one value per candidate
    df = predictor.breakdown(candidate)       # name, stage, type, key, ms, source

    # the same on a table object (one predictor per table is kept behind these):
    table = load_table("latency_tables/tiny-cpu-r16.csv")
    ms = predict(candidates, table)
    df = predict_breakdown(candidate, table)

Building a table: :func:`plan_profile` (what a run would do: blocks, backend, file, time;
how to measure is a :class:`ProfileOptions`) then :func:`run_profile`, or both at once with
:func:`profile_space`; rows measured elsewhere come in with :func:`import_table`. A
:class:`Backend` fills the rows: torch (cpu/cuda/mps), Core ML on macOS, the roofline
estimator (coreml/ane elsewhere), ExecuTorch/XNNPACK or an imported CSV. Converting a block
or a model (Core ML, the Neural-Engine layout, ExecuTorch) is ``archsearch.export``'s.

Modules: ``_table`` (the file format), ``_keys`` (a candidate's block keys), ``_predictor``,
``_blocks`` (enumeration, op census), ``_backends``, ``_profile`` (plan, run, import),
``_measure`` (torch timing), ``_fingerprint`` (which machine measured a table, and whether
it is this one), ``_recalibrate`` (a foreign table refitted to this machine from a few whole
models), ``_coreml`` (Core ML timing on macOS), ``_devices`` (roofline
profiles, op counts), ``_memory``, ``_sentinel``, ``_anchors``, ``_validate``.
"""

from archsearch.cost.latency._anchors import check_published, fit_efficiency
from archsearch.cost.latency._backends import (
    COMPUTE_UNITS,
    DEFAULT_DEVICE_PROFILE,
    TARGETS,
    Backend,
    CoreMLBackend,
    ImportBackend,
    RooflineBackend,
    TorchBackend,
    make_backend,
)
from archsearch.cost.latency._blocks import (
    BlockCensus,
    BlockSet,
    at_resolution,
    block_census,
    enumerate_blocks,
    resolution_of,
    sample_candidates,
)
from archsearch.cost.latency._devices import (
    OP_CLASSES,
    DeviceProfile,
    OpRecord,
    ane_layout_ops,
    ane_model_ops,
    available_devices,
    count_ops,
    load_device,
)
from archsearch.cost.latency._errors import (
    ImplausibleCalibrationError,
    MissingBlocksError,
    ParameterError,
    UnknownBlockKeyError,
    UnknownDeviceProfileError,
)
from archsearch.cost.latency._fingerprint import (
    FOREIGN_DEVICE_LABEL,
    DeviceCheck,
    check_table_device,
    describe_fingerprint,
    device_fingerprint,
    fingerprint_differences,
    table_fingerprint,
)
from archsearch.cost.latency._keys import CandidateBlocks, candidate_blocks
from archsearch.cost.latency._measure import MeasureSettings, Timing, time_module
from archsearch.cost.latency._memory import (
    BlockMemory,
    PeakMemory,
    estimate_block_memory,
    estimate_memory,
    measure_block_memory,
    measure_model_memory,
    model_peak,
)
from archsearch.cost.latency._predictor import (
    InterpolationWarning,
    LatencyPredictor,
    block_sums,
    interpolate,
    load_predictor,
    predict,
    predict_breakdown,
    predict_memory,
    predictor_for,
)
from archsearch.cost.latency._profile import (
    CALIBRATION_SEED,
    SCALE_RANGE,
    ProfileOptions,
    ProfilePlan,
    TimeEstimate,
    check_calibration,
    default_table_path,
    fit_calibration,
    import_table,
    plan_profile,
    profile_space,
    run_profile,
    write_import_template,
)
from archsearch.cost.latency._recalibrate import (
    RECALIBRATION_SEED,
    RecalibrationFit,
    RecalibrationResult,
    choose_recalibration_candidates,
    default_recalibrated_path,
    fit_recalibration,
    recalibrate_table,
    type_sums,
)
from archsearch.cost.latency._sentinel import SentinelMonitor, SentinelSettings, choose_sentinel
from archsearch.cost.latency._speed import SPEED_TOLERANCE, SpeedCheck, check_table_speed, parse_block_key
from archsearch.cost.latency._table import (
    COLUMNS,
    MEMORY_COLUMNS,
    SOURCES,
    LatencyTable,
    load_table,
    read_import_csv,
)
from archsearch.cost.latency._validate import (
    Accuracy,
    MemoryAccuracy,
    ValidationResult,
    accuracy,
    flops_linear_fit,
    memory_accuracy,
    validate_memory,
    validate_table,
)

__all__ = [
    "CALIBRATION_SEED",
    "COLUMNS",
    "COMPUTE_UNITS",
    "DEFAULT_DEVICE_PROFILE",
    "FOREIGN_DEVICE_LABEL",
    "MEMORY_COLUMNS",
    "OP_CLASSES",
    "RECALIBRATION_SEED",
    "SCALE_RANGE",
    "SOURCES",
    "SPEED_TOLERANCE",
    "TARGETS",
    "Accuracy",
    "SpeedCheck",
    "Backend",
    "BlockCensus",
    "BlockMemory",
    "BlockSet",
    "CandidateBlocks",
    "CoreMLBackend",
    "DeviceCheck",
    "DeviceProfile",
    "ImplausibleCalibrationError",
    "ImportBackend",
    "InterpolationWarning",
    "LatencyPredictor",
    "LatencyTable",
    "MeasureSettings",
    "MemoryAccuracy",
    "MissingBlocksError",
    "OpRecord",
    "ParameterError",
    "PeakMemory",
    "ProfileOptions",
    "ProfilePlan",
    "RecalibrationFit",
    "RecalibrationResult",
    "RooflineBackend",
    "SentinelMonitor",
    "SentinelSettings",
    "TimeEstimate",
    "Timing",
    "TorchBackend",
    "UnknownBlockKeyError",
    "UnknownDeviceProfileError",
    "ValidationResult",
    "accuracy",
    "ane_layout_ops",
    "ane_model_ops",
    "at_resolution",
    "available_devices",
    "block_census",
    "block_sums",
    "candidate_blocks",
    "check_calibration",
    "check_published",
    "check_table_device",
    "check_table_speed",
    "parse_block_key",
    "choose_recalibration_candidates",
    "choose_sentinel",
    "count_ops",
    "default_recalibrated_path",
    "default_table_path",
    "describe_fingerprint",
    "device_fingerprint",
    "enumerate_blocks",
    "estimate_block_memory",
    "estimate_memory",
    "fingerprint_differences",
    "fit_calibration",
    "fit_efficiency",
    "fit_recalibration",
    "flops_linear_fit",
    "import_table",
    "interpolate",
    "load_device",
    "load_predictor",
    "load_table",
    "make_backend",
    "measure_block_memory",
    "measure_model_memory",
    "memory_accuracy",
    "model_peak",
    "plan_profile",
    "predict",
    "predict_breakdown",
    "predict_memory",
    "predictor_for",
    "profile_space",
    "read_import_csv",
    "recalibrate_table",
    "resolution_of",
    "run_profile",
    "sample_candidates",
    "table_fingerprint",
    "time_module",
    "type_sums",
    "validate_memory",
    "validate_table",
    "write_import_template",
]
