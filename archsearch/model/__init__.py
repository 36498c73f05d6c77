"""Candidate → torch module, and the one block decomposition everything else shares."""

from archsearch.model._blocks import BLOCK_TYPES, SpatialTransformer, create_block, register_block, rope_2d
from archsearch.model._memory import (
    MAX_MODEL_BYTES,
    MEMORY_ENV,
    MemoryEstimate,
    check_memory,
    estimate_memory,
    memory_limit,
)
from archsearch.model._unet import ArchUNet, build_block, build_model
from archsearch.model._walker import BlockSpec, example_inputs, walk

__all__ = [
    "BLOCK_TYPES",
    "MAX_MODEL_BYTES",
    "MEMORY_ENV",
    "ArchUNet",
    "BlockSpec",
    "MemoryEstimate",
    "SpatialTransformer",
    "build_block",
    "build_model",
    "check_memory",
    "create_block",
    "estimate_memory",
    "example_inputs",
    "memory_limit",
    "register_block",
    "rope_2d",
    "walk",
]
