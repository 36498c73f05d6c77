"""Data: sources, preparation into the latent cache, the cache and its reader, the built-in
synthetic data, the text encoders, the one reader of a diffusers checkpoint folder, and the
training batches and held-out batch of a run.

* :func:`prepare` (:class:`PrepareResult`) -- ``archsearch data prepare``: a data set encoded
  once with a diffusers teacher's VAE and text encoders (:class:`TeacherEncoders`) into a
  sharded, resumable, checksummed latent cache; under ``torchrun`` / ``accelerate launch`` the
  processes share the shards. ``source`` is a path or a :class:`Source`.
* :class:`Source` -- a data set format (``items``, ``load``), registered by name with
  :func:`register_source` (:data:`SOURCES`; the built-in :data:`FORMATS`); :func:`open_source`
  opens a path as one; :class:`BadSample` -- a sample that is skipped and counted.
* :class:`LatentCache` (:class:`CacheIndex`, :class:`CacheSplit`) -- the cache's reader (it
  refuses a damaged shard with one line naming it and the command that re-encodes it);
  :func:`is_holdout` -- the holdout split by key hash; :func:`teacher_hash` -- a checkpoint's
  identity; :func:`open_cache_for` -- a cache checked against a teacher.
* :class:`DiffusersFolder` -- the one reader of a diffusers checkpoint folder (the teacher,
  ``prepare``, the pipeline export and the sample grids read it).
* :class:`SyntheticImageText`, :class:`SyntheticVideoText`, :func:`synthetic_dataset` -- the
  built-in data; :class:`TextEncoder`, :class:`DualTextEncoder` -- the offline text encoders,
  :func:`sdxl_states` -- SDXL's text encoding, in one place.
* :func:`run_data` (:class:`RunData`) -- the data of a run: synthetic or a latent cache, chosen
  in one place; its training batches (:class:`StepBatches` of :class:`Batch`) and its one
  held-out batch; :func:`clear_caches` -- the per-process caches.
* :func:`resolve_device`, :func:`autocast`, :func:`seeded`, :func:`torch_threads` -- devices,
  precision, threads and seeded RNG scopes.

Errors name the parameter (:class:`~archsearch.errors.ParameterError`: ``source``,
``teacher``, ``resolution``, ``proxy.data``), never a command-line flag.
"""

from __future__ import annotations

from archsearch.data._batches import Batch, CacheFeed, StepBatches, SyntheticFeed, make_batch, step_seed
from archsearch.data._cache import (
    CACHE_VERSION,
    CacheIndex,
    CacheSplit,
    LatentCache,
    is_holdout,
    teacher_components,
    teacher_hash,
)
from archsearch.data._cachedata import open_cache_for
from archsearch.data._checkpoint import DiffusersFolder
from archsearch.data._device import autocast, resolve_device, seeded, torch_threads
from archsearch.data._prepare import (
    CROPS,
    DecodeDataset,
    PrepareResult,
    TeacherEncoders,
    bucket_sizes,
    prepare,
    resize_crop,
    to_tensor,
)
from archsearch.data._rundata import HOLDOUT_SEED, RunData, clear_caches, run_data
from archsearch.data._sources import FORMATS, SOURCES, BadSample, Item, Loaded, Source, open_source, register_source
from archsearch.data._synthetic import SyntheticImageText, SyntheticVideoText, synthetic_dataset
from archsearch.data._text import BUILTIN_CONTEXT_LENGTH, DualTextEncoder, TextEncoder, pooled_token, sdxl_states

__all__ = [
    "BUILTIN_CONTEXT_LENGTH",
    "CACHE_VERSION",
    "CROPS",
    "FORMATS",
    "HOLDOUT_SEED",
    "SOURCES",
    "BadSample",
    "Batch",
    "CacheFeed",
    "CacheIndex",
    "CacheSplit",
    "DecodeDataset",
    "DiffusersFolder",
    "DualTextEncoder",
    "Item",
    "LatentCache",
    "Loaded",
    "PrepareResult",
    "RunData",
    "Source",
    "StepBatches",
    "SyntheticFeed",
    "SyntheticImageText",
    "SyntheticVideoText",
    "TeacherEncoders",
    "TextEncoder",
    "autocast",
    "bucket_sizes",
    "clear_caches",
    "is_holdout",
    "make_batch",
    "open_cache_for",
    "open_source",
    "pooled_token",
    "prepare",
    "register_source",
    "resize_crop",
    "resolve_device",
    "run_data",
    "sdxl_states",
    "seeded",
    "step_seed",
    "synthetic_dataset",
    "teacher_components",
    "teacher_hash",
    "to_tensor",
    "torch_threads",
]
