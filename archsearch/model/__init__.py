"""Candidate → torch module, and the one block decomposition everything else shares."""

from archsearch.model._blocks import BLOCK_TYPES, create_block, register_block
from archsearch.model._unet import ArchUNet, build_block, build_model
from archsearch.model._walker import BlockSpec, example_inputs, walk

__all__ = [
    "BLOCK_TYPES",
    "ArchUNet",
    "BlockSpec",
    "build_block",
    "build_model",
    "create_block",
    "example_inputs",
    "register_block",
    "walk",
]
