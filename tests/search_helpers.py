"""Shared pieces of the search tests: a tiny spec with a proxy that trains in about a second.
Plain functions and constants; the fixtures built from them live in ``conftest.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_PROXY, TINY_TEACHER

ROOT = Path(__file__).resolve().parent.parent

#: A proxy run of a few steps on 8x8 latents against a small built-in teacher (cached per session).
PROXY: dict[str, Any] = {
    "steps": 3,
    "batch": 2,
    "resolution": 8,
    "holdout": 4,
    "width_mult": 0.5,
    "teacher": {"builtin": "image", **TINY_TEACHER},
}


def make_spec(
    tmp_path: Path,
    table: Path,
    *,
    search: dict[str, Any] | None = None,
    proxy: dict[str, Any] | None = None,
    constraints: dict[str, Any] | None = None,
    name: str = "t",
    base: str = "tiny.yaml",
) -> Path:
    """search_spaces/<base> with ``proxy:``, ``search:`` and ``constraints:`` for tests."""
    data = yaml.safe_load((ROOT / "search_spaces" / base).read_text())
    data["name"] = name
    teacher = {**PROXY["teacher"], "builtin": data.get("kind", "image")}
    data["proxy"] = {**PROXY, "teacher": teacher, **(proxy or {})}
    data["search"] = {"latency_table": str(table), **(search or {})}
    data["constraints"] = {"max_params": 5.0e6, **(constraints or {})}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def estimate_table(tmp_path_factory: pytest.TempPathFactory, space: str) -> Path:
    """A latency table of every block of ``space`` (roofline estimate: seconds), once per session."""
    path = tmp_path_factory.getbasetemp() / "tables" / f"{space}-ane-estimate.csv"
    if not path.is_file():
        from archsearch.cost.latency import profile_space
        from archsearch.spec import load_space

        profile_space(load_space(ROOT / "search_spaces" / f"{space}.yaml"), "ane", path, convert=False, calibrate=0)
    return path


def tiny_spec(tmp_path: Path, **proxy: Any) -> Path:
    """search_spaces/tiny.yaml with the session's tiny teacher (``tiny_teacher``) and ``proxy``."""
    data = yaml.safe_load((ROOT / "search_spaces" / "tiny.yaml").read_text())
    data["proxy"] = {"width_mult": 1.0, "resolution": 8, "steps": 2, "batch": 2, "holdout": 4,
                     "teacher": {"builtin": "image", **TINY_PROXY["teacher"]}, **proxy}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def crash_at(step: int):
    """A training-loop callback that stops the run at ``step`` as Ctrl-C would (in process)."""
    from archsearch.distill import LoopCallback

    class Crash(LoopCallback):
        def on_step(self, state) -> None:
            if state.step == step:
                raise KeyboardInterrupt("simulated kill")

    return Crash()
