"""The data of one ``run_search``: the caller's options, what a search method runs with, and
what the run leaves."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import optuna

from archsearch.errors import ParameterError
from archsearch.search._study import SearchSettings, StudyLock

if TYPE_CHECKING:
    from archsearch.cost.latency import LatencyTable
    from archsearch.distill import ProxyConfig, Supernet, Teacher
    from archsearch.search._evolve import EvolveResult
    from archsearch.search._progress import Progress
    from archsearch.spec import SearchSpace

__all__ = ["BACKENDS", "DEVICES", "RunOptions", "SearchJob", "SearchRun"]

#: Where the trials of a sampler run: ``local`` processes or ``ray`` Tune trials.
BACKENDS = ("local", "ray")
#: ``device`` values (and ``cuda:N``); ``auto``: the best available.
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class RunOptions:
    """What the caller of :func:`~archsearch.search.run_search` chooses besides the spec: the
    first seven override the spec's ``search:`` keys (``None`` keeps the spec's value; see
    :meth:`SearchSettings.with_overrides`), the rest say how and where the run goes.

    A bad value raises :class:`~archsearch.errors.ParameterError` naming the field (``backend``,
    ``address``, ``device`` here; ``trials``, ``workers``... when the settings are made).
    """

    trials: int | None = None
    timeout: float | None = None
    seed: int | None = None
    storage: str | None = None
    study: str | None = None
    workers: int | None = None
    sampler: str | None = None
    resume: bool = False
    backend: str = "local"
    address: str | None = None
    device: str | None = None
    reports_dir: str | Path = "reports"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ParameterError("backend", f"{self.backend!r}: unknown (allowed: {', '.join(BACKENDS)})")
        if self.address is not None and self.backend != "ray":
            raise ParameterError("address", f"{self.address}: needs backend 'ray' (got {self.backend!r})")
        if self.device is not None and self.device.split(":")[0] not in DEVICES:
            raise ParameterError("device", f"{self.device!r}: unknown (allowed: {', '.join(DEVICES)}, cuda:N)")

    def torch_device(self) -> str | None:
        """``device``, with ``auto`` as None (the best available)."""
        return None if self.device in (None, "auto") else self.device

    def settings(self, settings: SearchSettings) -> SearchSettings:
        """``settings`` with this run's overrides."""
        return settings.with_overrides(trials=self.trials, timeout=self.timeout, seed=self.seed, storage=self.storage,
                                       study=self.study, workers=self.workers, sampler=self.sampler)


@dataclass
class SearchJob:
    """One run as ``run_search`` hands it to its search method: the spec's parts (the space, the
    settings after the caller's overrides, the proxy), what was loaded for it (the teacher, the
    latency table, the supernet), where the study lives and how the run goes."""

    space: SearchSpace
    settings: SearchSettings
    proxy: ProxyConfig
    teacher: Teacher
    table: LatencyTable | None
    table_path: Path | None
    storage_url: str
    storage: optuna.storages.BaseStorage
    study_dir: Path
    lock: StudyLock
    options: RunOptions
    supernet: Supernet | None = None
    progress: Progress | None = None
    log: Callable[[str], None] = field(default=lambda message: None)
    started: float = 0.0  # time.time() at the study's opening: the timeout counts from it


@dataclass
class SearchRun:
    """What a finished (or stopped) ``run_search`` leaves: the study and where it lives."""

    study: optuna.Study
    settings: SearchSettings
    storage_url: str
    study_dir: Path
    resumed: bool
    interrupted: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    backend: str = "local"
    workers: int | None = 1
    stopped: str | None = None  # 'interrupted' after Ctrl-C
    requeued: list[tuple[int, int]] = field(default_factory=list)  # (interrupted, its re-run)
    evolution: EvolveResult | None = None  # search.method: evolve
