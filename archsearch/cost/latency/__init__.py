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

Building a table: :func:`plan_profile` (what a run would do: blocks, backend, file, time)
then :func:`run_profile`, or both at once with :func:`profile_space`; rows measured
elsewhere come in with :func:`import_table`. A :class:`Backend` fills the rows: torch
(cpu/cuda/mps), Core ML on macOS, the roofline estimator (coreml/ane elsewhere) or an
imported CSV.

Modules: ``_table`` (the file format), ``_keys`` (a candidate's block keys), ``_predictor``,
``_blocks`` (enumeration, op census), ``_backends``, ``_profile`` (plan, run, import),
``_measure`` (torch timing), ``_coreml``, ``_devices`` (roofline profiles), ``_validate``.
"""

from archsearch.cost.latency._backends import (
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
    available_devices,
    check_published,
    count_ops,
    load_device,
)
from archsearch.cost.latency._errors import MissingBlocksError, ParameterError, UnknownBlockKeyError
from archsearch.cost.latency._keys import CandidateBlocks, candidate_blocks
from archsearch.cost.latency._measure import MeasureSettings, Timing, time_module
from archsearch.cost.latency._predictor import (
    InterpolationWarning,
    LatencyPredictor,
    block_sums,
    interpolate,
    load_predictor,
    predict,
    predict_breakdown,
    predictor_for,
)
from archsearch.cost.latency._profile import (
    CALIBRATION_SEED,
    ProfilePlan,
    default_table_path,
    fit_calibration,
    import_table,
    plan_profile,
    profile_space,
    run_profile,
    write_import_template,
)
from archsearch.cost.latency._table import COLUMNS, SOURCES, LatencyTable, load_table, read_import_csv
from archsearch.cost.latency._validate import Accuracy, ValidationResult, accuracy, flops_linear_fit, validate_table

__all__ = [
    "CALIBRATION_SEED",
    "COLUMNS",
    "DEFAULT_DEVICE_PROFILE",
    "OP_CLASSES",
    "SOURCES",
    "TARGETS",
    "Accuracy",
    "Backend",
    "BlockCensus",
    "BlockSet",
    "CandidateBlocks",
    "CoreMLBackend",
    "DeviceProfile",
    "ImportBackend",
    "InterpolationWarning",
    "LatencyPredictor",
    "LatencyTable",
    "MeasureSettings",
    "MissingBlocksError",
    "OpRecord",
    "ParameterError",
    "ProfilePlan",
    "RooflineBackend",
    "Timing",
    "TorchBackend",
    "UnknownBlockKeyError",
    "ValidationResult",
    "accuracy",
    "at_resolution",
    "available_devices",
    "block_census",
    "block_sums",
    "candidate_blocks",
    "check_published",
    "count_ops",
    "default_table_path",
    "enumerate_blocks",
    "fit_calibration",
    "flops_linear_fit",
    "import_table",
    "interpolate",
    "load_device",
    "load_predictor",
    "load_table",
    "make_backend",
    "plan_profile",
    "predict",
    "predict_breakdown",
    "predictor_for",
    "profile_space",
    "read_import_csv",
    "resolution_of",
    "run_profile",
    "sample_candidates",
    "time_module",
    "validate_table",
    "write_import_template",
]
