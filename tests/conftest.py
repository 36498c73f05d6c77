"""Shared fixtures: the repository's spaces and a temp cache for anything the tests train."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "search_spaces"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Nothing a test trains or caches lands in the user's ~/.cache."""
    os.environ.setdefault("ARCHSEARCH_CACHE_DIR", str(tmp_path_factory.mktemp("archsearch-cache")))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_space():
    from archsearch.spec import load_space

    return load_space(SPACES / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_video_space():
    from archsearch.spec import load_space

    return load_space(SPACES / "tiny_video.yaml")


#: A tiny built-in teacher: 8x8 latents, 30 training steps, 64 captions (see ``tiny_teacher``).
TINY_PROXY = {
    "resolution": 8,
    "steps": 12,
    "batch": 4,
    "holdout": 8,
    "teacher": {"train_steps": 30, "width": 32, "data_size": 64},
}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run as fast on one thread, and one thread cannot oversubscribe a busy CPU."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def teacher_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache folder of ``tiny_teacher`` (point ``ARCHSEARCH_CACHE_DIR`` here to reuse it)."""
    return tmp_path_factory.mktemp("teacher-cache")


@pytest.fixture(scope="session")
def tiny_teacher(teacher_cache: Path):
    """The built-in image teacher of ``TINY_PROXY``, trained once per session (on one thread)."""
    from archsearch.distill import ProxyConfig, load_teacher

    return load_teacher(ProxyConfig.from_dict(TINY_PROXY), kind="image", cache_dir=teacher_cache, threads=1)
