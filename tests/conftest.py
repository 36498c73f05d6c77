"""Every shared fixture: the repository's spaces, a temp cache for anything the tests train,
the one tiny built-in teacher, the session's latency tables and tiny diffusers checkpoints.

Helpers that are plain functions (``search_helpers.make_spec``, ``diffusers_fixtures``,
``report_helpers``) are imported by tests; fixtures live here only, so a session fixture is
built once per session, not once per module that imports it.
"""

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
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        # N workers on N cores: one thread each (and in every process a test starts), or
        # torch's thread pools spin against each other and a 5 s test takes 25 s
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_space():
    from archsearch.spec import load_space

    return load_space(SPACES / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_video_space():
    from archsearch.spec import load_space

    return load_space(SPACES / "tiny_video.yaml")


#: The one tiny built-in teacher of the tests: 10 steps of 4 samples, 64 captions (trained once per
#: session and cache folder; ``search_helpers.PROXY`` uses it too).
TINY_TEACHER = {"train_steps": 10, "width": 32, "batch": 4, "data_size": 64}

#: A proxy run on 8x8 latents against the tiny teacher (see ``tiny_teacher``).
TINY_PROXY = {
    "resolution": 8,
    "steps": 12,
    "batch": 4,
    "holdout": 8,
    "teacher": dict(TINY_TEACHER),
}


@pytest.fixture(autouse=True, scope="module")
def _fresh_process_caches():
    """Each test module starts with empty in-process caches (memoised walks, FLOP counts, teacher
    outputs, held-out batches), so no test passes only because another one ran first."""
    _clear_process_caches()
    yield


def _clear_process_caches() -> None:
    import sys

    for name, mod in list(sys.modules.items()):
        if not name.startswith("archsearch") or mod is None:
            continue
        for value in list(vars(mod).values()):
            if callable(getattr(value, "cache_clear", None)) and getattr(value, "__module__", "") == name:
                value.cache_clear()
        clear = vars(mod).get("clear_caches")
        if callable(clear) and getattr(clear, "__module__", "") == name:
            clear()


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


@pytest.fixture
def cached_teacher(monkeypatch: pytest.MonkeyPatch, teacher_cache: Path, tiny_teacher):
    """The CLI finds the session's tiny teacher in its cache instead of training one."""
    monkeypatch.setenv("ARCHSEARCH_CACHE_DIR", str(teacher_cache))
    return tiny_teacher


@pytest.fixture(scope="session")
def tiny_teacher(teacher_cache: Path):
    """The built-in image teacher of ``TINY_PROXY``, trained once per session (on one thread)."""
    from archsearch.distill import ProxyConfig, load_teacher

    return load_teacher(ProxyConfig.from_dict(TINY_PROXY), kind="image", cache_dir=teacher_cache, threads=1)


@pytest.fixture(scope="session")
def tiny_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A roofline-estimate latency table of every block of ``tiny.yaml`` (built once)."""
    from search_helpers import estimate_table

    return estimate_table(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def tiny_video_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from search_helpers import estimate_table

    return estimate_table(tmp_path_factory, "tiny_video")


@pytest.fixture(scope="session")
def sd_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny diffusers SD checkpoint written with ``save_pretrained`` (seed 0)."""
    import diffusers_fixtures as F

    return F.build_sd_checkpoint(tmp_path_factory.mktemp("sd") / "ckpt")


@pytest.fixture(scope="session")
def sdxl_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import diffusers_fixtures as F

    return F.build_sdxl_checkpoint(tmp_path_factory.mktemp("sdxl") / "ckpt")


@pytest.fixture(scope="session")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 pictures with sidecar captions in one folder."""
    import diffusers_fixtures as F

    return F.build_pictures(tmp_path_factory.mktemp("pics") / "p", n=16)


@pytest.fixture(scope="session")
def sd_cache(sd_checkpoint: Path, pictures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The latent cache of ``pictures`` encoded by ``sd_checkpoint``."""
    import diffusers_fixtures as F

    return F.build_cache(sd_checkpoint, pictures, tmp_path_factory.mktemp("cache") / "sd")
