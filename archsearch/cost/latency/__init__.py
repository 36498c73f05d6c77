"""Latency: measure every distinct block once, store it in a lookup table, predict a
candidate as the sum of its blocks plus a calibrated overhead, and prove how accurate that is.

    from archsearch.cost.latency import load_table, predict, predict_breakdown
    table = load_table("latency_tables/tiny-cpu-r16.csv")
    ms = predict(candidates, table)           # numpy array, one value per candidate
    df = predict_breakdown(candidate, table)  # name, stage, type, key, ms, source
"""

from archsearch.cost.latency._devices import (
    OP_CLASSES,
    DeviceProfile,
    OpRecord,
    available_devices,
    count_ops,
    load_device,
)
from archsearch.cost.latency._measure import MeasureSettings, Timing, time_module
from archsearch.cost.latency._predictor import InterpolationWarning, interpolate, predict, predict_breakdown
from archsearch.cost.latency._profile import (
    DEFAULT_DEVICE_PROFILE,
    TARGETS,
    BlockSet,
    default_table_path,
    enumerate_blocks,
    fit_calibration,
    import_table,
    profile_space,
)
from archsearch.cost.latency._table import COLUMNS, SOURCES, LatencyTable, load_table, read_import_csv
from archsearch.cost.latency._validate import Accuracy, ValidationResult, accuracy, flops_linear_fit, validate_table

__all__ = [
    "COLUMNS",
    "DEFAULT_DEVICE_PROFILE",
    "OP_CLASSES",
    "SOURCES",
    "TARGETS",
    "Accuracy",
    "BlockSet",
    "DeviceProfile",
    "InterpolationWarning",
    "LatencyTable",
    "MeasureSettings",
    "OpRecord",
    "Timing",
    "ValidationResult",
    "accuracy",
    "available_devices",
    "count_ops",
    "default_table_path",
    "enumerate_blocks",
    "fit_calibration",
    "flops_linear_fit",
    "import_table",
    "interpolate",
    "load_device",
    "load_table",
    "predict",
    "predict_breakdown",
    "profile_space",
    "read_import_csv",
    "time_module",
    "validate_table",
]
