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
