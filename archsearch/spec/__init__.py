"""The search-space DSL (YAML): loading, validation, dimensions and exact size."""

from archsearch.spec._loader import format_path, load_yaml, load_yaml_text
from archsearch.spec._space import (
    ATTENTION_KINDS,
    ATTENTION_VARIANTS,
    FFN_TYPES,
    KINDS,
    RESNET_VARIANTS,
    SCHEMA_VERSION,
    TEMPORAL_PLACEMENTS,
    TEMPORAL_TYPES,
    Chooser,
    Dimension,
    PathChooser,
    SearchSpace,
    enumerate_assignments,
    load_space,
    load_space_text,
)

__all__ = [
    "ATTENTION_KINDS",
    "ATTENTION_VARIANTS",
    "FFN_TYPES",
    "KINDS",
    "RESNET_VARIANTS",
    "SCHEMA_VERSION",
    "TEMPORAL_PLACEMENTS",
    "TEMPORAL_TYPES",
    "Chooser",
    "Dimension",
    "PathChooser",
    "SearchSpace",
    "enumerate_assignments",
    "format_path",
    "load_space",
    "load_space_text",
    "load_yaml",
    "load_yaml_text",
]
