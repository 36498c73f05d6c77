"""Cost of a candidate: parameters, FLOPs (fvcore) and, in ``cost.latency``, latency."""

from archsearch.cost._params_flops import (
    FlopCache,
    FlopReport,
    block_flops,
    block_params,
    count_params,
    flops,
    model_flops,
    sdpa_flop_handle,
)
from archsearch.export import PositionalCall  # how blocks are traced here (and converted there)

__all__ = [
    "FlopCache",
    "FlopReport",
    "PositionalCall",
    "block_flops",
    "block_params",
    "count_params",
    "flops",
    "model_flops",
    "sdpa_flop_handle",
]
