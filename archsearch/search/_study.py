"""The Optuna study behind ``archsearch run``: settings, sampler, storage, resume.

The ``search:`` section of a spec (every key optional)::

    search:
      objectives: [quality, latency, params]   # minimised; also: flops
      method: optuna          # optuna (default: the sampler proposes) | evolve (SnapFusion's
                              # architecture evolving over the supernet; needs max_latency_ms)
      sampler: gp             # gp (default: Gaussian process, best at N trials) | nsga2 | tpe | random
      n_trials: 24
      seed: 0
      timeout: null           # seconds; no new trial starts after it
      target: cpu             # latency target (default: constraints.latency_target)
      latency_table: latency_tables/cpu.csv   # relative to the spec file, else to the cwd
      storage: null           # default sqlite:///reports/<study>/study.db; any Optuna URL
      study: unet_mobile      # default: the space's name
      workers: 1              # local processes (or concurrent Ray trials)
      threads: null           # torch threads per worker; default cores // workers
      population_size: null   # NSGA-II; default clamp(n_trials // 4, 8, 50)
      warm_start: true        # nsga2/tpe/gp start from feasible candidates spread over cost
      reference_point: null   # {quality: q, latency_ms: l, params: p}; default: from the data
      trial_resources: {cpu: 1, gpu: 0}       # per Ray trial

Constraints come from the spec's top-level ``constraints:`` (``max_latency_ms``,
``max_params``, ``max_memory_mb``: the predicted peak memory of one forward call, weights,
activations and the skip tensors held for the up path): they are recorded on every trial with ``trial.set_constraint`` as relative
violations (``value / limit - 1``, > 0 = violated), and a candidate that breaks one is never
trained.

Resume: a study records what its results depend on (the space's hash, the proxy settings, the
teacher's fingerprint, the objectives, the latency table's content); a resume refuses a
study made with something else. Trials left RUNNING by a process of this host that no longer
exists are marked failed with reason ``interrupted``; they do not count towards ``n_trials``
and their parameters are queued again (``enqueue_trial``), so every interrupted trial is re-run.

Reproducible proposals: :class:`TrialSeededSampler` reseeds the sampler for every trial from
``(seed, slot)``, where a trial's *slot* is its number less the re-runs queued before it (a
re-run keeps the slot of the trial it repeats). An interrupted and resumed study therefore
proposes what an uninterrupted one would: exactly so for ``random`` and for enqueued trials
(warm start, re-runs), and for the model-based samplers whenever they see the same finished
trials (one worker).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import socket
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from archsearch._util import first_line
from archsearch.errors import ParameterError

if TYPE_CHECKING:
    from archsearch.spec import SearchSpace

__all__ = [
    "DEFAULT_OBJECTIVES",
    "DEFAULT_SAMPLER",
    "DEFAULT_METHOD",
    "INTERRUPTED",
    "METHODS",
    "MethodRules",
    "OBJECTIVES",
    "SAMPLERS",
    "SEARCH_KEYS",
    "SearchSettings",
    "StudyLock",
    "TrialSeededSampler",
    "count_trials",
    "lock_path",
    "make_sampler",
    "open_storage",
    "open_study",
    "owner_tag",
    "recover_interrupted",
    "requeue_interrupted",
    "storage_file",
    "storage_url",
    "trial_slot",
]

SAMPLERS = ("nsga2", "tpe", "gp", "random")
DEFAULT_SAMPLER = "gp"  # benchmarks/bench_search.py: the one sampler at N trials >= random at 3N
#: Objective names a spec may use -> the column they fill (every objective is minimised).
OBJECTIVES = {"quality": "quality", "latency": "latency_ms", "latency_ms": "latency_ms",
              "params": "params", "flops": "flops"}
DEFAULT_OBJECTIVES = ("quality", "latency_ms", "params")
DEFAULT_N_TRIALS = 20
DEFAULT_METHOD = "optuna"
SEARCH_KEYS = ("objectives", "sampler", "n_trials", "seed", "timeout", "target", "latency_table",
               "storage", "study", "workers", "threads", "population_size", "warm_start", "reference_point", "trial_resources",
               "method", "backbone")
#: ``fail_reason`` of a trial whose process died (kill -9, power cut) before it finished.
INTERRUPTED = "interrupted"
_ATTR = "archsearch."  # prefix of the study user attrs written here
#: Study attrs a resumed run must match (what the recorded results depend on).
_IDENTITY = ("space_hash", "proxy", "teacher", "objectives", "constraints", "latency_table_sha")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class MethodRules:
    """What a search method asks of the ``search:`` section (:meth:`SearchSettings.from_space`
    reads it, never a method's name). A method is a :class:`~archsearch.search._methods.SearchMethod`
    -- these rules and what the method does -- registered by name in :data:`METHODS`."""

    #: its ``search.method`` value
    name: ClassVar[str] = ""
    #: the sampler unless ``search.sampler`` names one (None: :data:`DEFAULT_SAMPLER`)
    sampler: ClassVar[str | None] = None
    #: needs ``constraints.max_latency_ms``: its latency budget
    needs_budget: ClassVar[bool] = False
    #: reads ``search.backbone``
    takes_backbone: ClassVar[bool] = False


#: How a search proposes candidates: ``search.method`` -> its method, in the order they were
#: registered (:func:`~archsearch.search._methods.register_method`; the package registers
#: ``optuna``, the default, ``evolve`` and ``temporal`` when it is imported).
METHODS: dict[str, MethodRules] = {}


@dataclass(frozen=True)
class SearchSettings:
    """The validated ``search:`` section plus the constraints, after CLI overrides."""

    study: str
    method: str = DEFAULT_METHOD
    backbone: str | None = None  # method temporal: builtin | an `archsearch train` output folder
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    sampler: str = DEFAULT_SAMPLER
    n_trials: int = DEFAULT_N_TRIALS
    seed: int = 0
    timeout: float | None = None
    target: str | None = None
    latency_table: Path | None = None
    storage: str | None = None
    workers: int | None = None  # None: 1 local process; Ray: as many as resources allow
    threads: int | None = None  # torch threads per worker; None: cores // workers
    population_size: int | None = None
    warm_start: bool = True
    reference_point: dict[str, float] | None = None
    trial_resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    max_latency_ms: float | None = None
    max_params: float | None = None
    max_memory_mb: float | None = None

    # ----------------------------------------------------------------- from the spec
    @classmethod
    def from_space(cls, space: SearchSpace) -> SearchSettings:
        """Validate ``space.search`` (errors: ``FILE:LINE: search.KEY: ... (allowed: ...)``)."""
        s = space.search
        fail = space.fail
        for key in s:
            if key not in SEARCH_KEYS:
                fail(("search", key), key, ", ".join(SEARCH_KEYS), message="unknown key")
        out: dict[str, Any] = {"study": space.name}
        if "objectives" in s:
            objs = s["objectives"]
            if not isinstance(objs, list) or not objs:
                fail(("search", "objectives"), objs, "a list of " + ", ".join(OBJECTIVES))
            cols = []
            for i, o in enumerate(objs):
                if o not in OBJECTIVES:
                    fail(("search", "objectives", i), o, ", ".join(OBJECTIVES))
                cols.append(OBJECTIVES[o])
            if len(set(cols)) != len(cols):
                fail(("search", "objectives"), objs, "each objective once", message="an objective is repeated")
            if "quality" not in cols or len(cols) < 2:
                fail(("search", "objectives"), objs, "quality and at least one cost (latency, params, flops)",
                     message="a search needs quality and a cost")
            out["objectives"] = tuple(cols)
        if "sampler" in s:
            if s["sampler"] not in SAMPLERS:
                fail(("search", "sampler"), s["sampler"], ", ".join(SAMPLERS))
            out["sampler"] = s["sampler"]
        if "method" in s:
            method = METHODS.get(s["method"]) if isinstance(s["method"], str) else None
            if method is None:
                fail(("search", "method"), s["method"], ", ".join(METHODS))
            out["method"] = method.name
            if method.needs_budget and space.constraints.get("max_latency_ms") is None:
                fail(("search", "method"), method.name, f"{method.name} with constraints.max_latency_ms (its latency "
                     f"budget), or {DEFAULT_METHOD}", message=f"{method.name} needs a latency budget")
            if method.sampler is not None and "sampler" not in s:
                out["sampler"] = method.sampler
        if s.get("backbone") is not None:
            v = s["backbone"]
            if not METHODS[out.get("method", DEFAULT_METHOD)].takes_backbone:
                takers = " or ".join(name for name, m in METHODS.items() if m.takes_backbone)
                fail(("search", "backbone"), v, f"method: {takers} with a backbone, or no backbone",
                     message=f"a backbone is used only by method {takers}")
            if not (isinstance(v, str) and v.strip()):
                fail(("search", "backbone"), v, "builtin, or an `archsearch train` output folder")
            out["backbone"] = v
        for key, lo in (("n_trials", 1), ("seed", 0), ("workers", 1), ("threads", 1), ("population_size", 2)):
            v = s.get(key)
            if v is None:
                continue
            if not (_is_int(v) and v >= lo):
                fail(("search", key), v, f"an integer >= {lo}")
            out[key] = v
        if "warm_start" in s:
            if not isinstance(s["warm_start"], bool):
                fail(("search", "warm_start"), s["warm_start"], "true, false")
            out["warm_start"] = s["warm_start"]
        if s.get("timeout") is not None:
            if not (_is_num(s["timeout"]) and s["timeout"] > 0):
                fail(("search", "timeout"), s["timeout"], "seconds > 0, or null")
            out["timeout"] = float(s["timeout"])
        for key in ("target", "storage", "study"):
            v = s.get(key)
            if v is None:
                continue
            if not (isinstance(v, str) and v.strip()):
                fail(("search", key), v, "a non-empty string")
            out[key] = v
        if "study" in out:
            _check_study_name(out["study"], lambda msg: fail(("search", "study"), out["study"],
                                                             "letters, digits, '.', '_', '-'", message=msg))
        if s.get("latency_table") is not None:
            v = s["latency_table"]
            if not (isinstance(v, str) and v.strip()):
                fail(("search", "latency_table"), v, "a path to a latency table CSV")
            out["latency_table"] = _relative_to_spec(v, space.path)
        if s.get("reference_point") is not None:
            rp = s["reference_point"]
            if not isinstance(rp, dict):
                fail(("search", "reference_point"), rp, "a mapping {objective: number}")
            clean = {}
            for k, v in rp.items():
                col = OBJECTIVES.get(k)
                if col is None:
                    fail(("search", "reference_point", k), k, ", ".join(OBJECTIVES), message="unknown objective")
                if not _is_num(v):
                    fail(("search", "reference_point", k), v, "a finite number")
                clean[col] = float(v)
            out["reference_point"] = clean
        if s.get("trial_resources") is not None:
            tr = s["trial_resources"]
            if not isinstance(tr, dict):
                fail(("search", "trial_resources"), tr, "a mapping {cpu: N, gpu: N}")
            res = {"cpu": 1.0, "gpu": 0.0}
            for k, v in tr.items():
                if k not in res:
                    fail(("search", "trial_resources", k), k, "cpu, gpu", message="unknown key")
                if not (_is_num(v) and v >= 0):
                    fail(("search", "trial_resources", k), v, "a number >= 0")
                res[k] = float(v)
            if res["cpu"] <= 0:
                fail(("search", "trial_resources", "cpu"), res["cpu"], "a number > 0")
            out["trial_resources"] = res
        cons = space.constraints
        out["max_latency_ms"] = cons.get("max_latency_ms")
        out["max_params"] = cons.get("max_params")
        out["max_memory_mb"] = cons.get("max_memory_mb")
        ctarget = cons.get("latency_target")
        if ctarget is not None:
            if "target" in out and out["target"] != ctarget:
                fail(("search", "target"), out["target"],
                     f"{ctarget!r} (constraints.latency_target) or no search.target",
                     message=f"{out['target']!r} differs from constraints.latency_target {ctarget!r}")
            out["target"] = ctarget
        settings = cls(**out)
        if "reference_point" in out:
            missing = [o for o in settings.objectives if o not in out["reference_point"]]
            if missing:
                fail(("search", "reference_point"), out["reference_point"], ", ".join(settings.objectives),
                     message=f"missing objective {missing[0]}")
        return settings

    # ----------------------------------------------------------------- CLI overrides
    def with_overrides(
        self,
        *,
        trials: int | None = None,
        timeout: float | None = None,
        seed: int | None = None,
        storage: str | None = None,
        study: str | None = None,
        workers: int | None = None,
        sampler: str | None = None,
    ) -> "SearchSettings":
        """Apply the caller's overrides (``None`` keeps the spec's value).

        A bad value raises :class:`~archsearch.errors.ParameterError` naming the parameter
        (``trials``, ``timeout``, ...); the CLI shows its own flag for it.
        """
        out: dict[str, Any] = {}
        if sampler is not None:
            if sampler not in SAMPLERS:
                raise ParameterError("sampler", f"{sampler!r}: unknown (allowed: {', '.join(SAMPLERS)})")
            out["sampler"] = sampler
        if trials is not None:
            if not (_is_int(trials) and trials >= 1):
                raise ParameterError("trials", f"{trials}: must be an integer >= 1")
            out["n_trials"] = trials
        if timeout is not None:
            if not (_is_num(timeout) and timeout > 0):
                raise ParameterError("timeout", f"{timeout}: must be seconds > 0")
            out["timeout"] = float(timeout)
        if seed is not None:
            if not (_is_int(seed) and seed >= 0):
                raise ParameterError("seed", f"{seed}: must be an integer >= 0")
            out["seed"] = seed
        if workers is not None:
            if not (_is_int(workers) and workers >= 1):
                raise ParameterError("workers", f"{workers}: must be an integer >= 1")
            out["workers"] = workers
        if storage is not None:
            if not storage.strip():
                raise ParameterError("storage", ": empty (allowed: an Optuna URL or a .db / .log file path)")
            out["storage"] = storage
        if study is not None:
            def bad(msg: str) -> None:
                raise ParameterError("study", f"{study!r}: {msg} (allowed: letters, digits, '.', '_', '-')")

            _check_study_name(study, bad)
            out["study"] = study
        return replace(self, **out)

    # ----------------------------------------------------------------- derived
    @property
    def directions(self) -> list[str]:
        return ["minimize"] * len(self.objectives)

    @property
    def constraints(self) -> dict[str, float | None]:
        return {"max_latency_ms": self.max_latency_ms, "max_params": self.max_params,
                "max_memory_mb": self.max_memory_mb}

    def population(self) -> int:
        """NSGA-II population: the spec's, else ``clamp(n_trials // 4, 8, 50)``.

        (8 beat 4, 6 and 12 at 15 and 30 trials on the tiny space: benchmarks/bench_search.py.)
        """
        if self.population_size is not None:
            return self.population_size
        return max(8, min(50, self.n_trials // 4))

    def startup(self) -> int:
        """Trials before the sampler's model kicks in: the NSGA-II population, else
        ``clamp(n_trials // 5, 4, 10)`` start-up trials of TPE / GP (0 for random)."""
        if self.sampler == "nsga2":
            return self.population()
        if self.sampler in ("tpe", "gp"):
            return max(4, min(10, self.n_trials // 5))
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study, "method": self.method, "backbone": self.backbone,
            "objectives": list(self.objectives), "sampler": self.sampler,
            "n_trials": self.n_trials, "seed": self.seed, "timeout": self.timeout, "target": self.target,
            "latency_table": str(self.latency_table) if self.latency_table else None,
            "storage": self.storage, "workers": self.workers, "threads": self.threads,
            "population_size": self.population(), "warm_start": self.warm_start,
            "reference_point": self.reference_point, "trial_resources": dict(self.trial_resources),
            "constraints": self.constraints,
        }


def _check_study_name(name: str, fail: Any) -> None:
    ok = all(c.isalnum() or c in "._-" for c in name) and not name.startswith(".")
    if not ok:
        fail(f"bad study name {name!r} (it names the folder reports/<study>/)")


def _relative_to_spec(path: str, spec_path: str) -> Path:
    """A path from the spec: relative to the spec's folder if it exists there, else as given."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    beside = Path(spec_path).parent / p
    return beside if beside.exists() else p


# --------------------------------------------------------------------------- storage


def storage_url(storage: str | None, study_dir: str | os.PathLike) -> str:
    """The storage a study lives in, as one string.

    ``None`` -> ``sqlite:///<study_dir>/study.db`` (opens in optuna-dashboard); a URL with
    ``://`` (``sqlite:///...``, ``postgresql://...``, ``mysql+pymysql://...``) is used as is;
    a file path ending in ``.db``/``.sqlite``/``.sqlite3`` becomes a SQLite URL and one ending
    in ``.log``/``.jsonl`` an Optuna JournalStorage file.
    """
    if storage is None:
        return f"sqlite:///{(Path(study_dir) / 'study.db').resolve()}"
    if "://" in storage:
        return storage
    p = Path(storage).expanduser()
    if p.suffix in (".db", ".sqlite", ".sqlite3"):
        return f"sqlite:///{p.resolve()}"
    if p.suffix in (".log", ".jsonl"):
        return str(p.resolve())
    raise ParameterError("storage", f"{storage!r}: not an Optuna URL or a known file type "
                         "(allowed: sqlite:///PATH, postgresql://..., mysql://..., a .db or .log file)")


def storage_file(url: str) -> Path | None:
    """The file behind a SQLite URL or a JournalStorage path (None: a server, or in memory)."""
    if "://" not in url:
        return Path(url)
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///"):].split("?", 1)[0]
        return Path(rest) if rest and rest != ":memory:" else None
    return None


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Open the storage named by :func:`storage_url`.

    The folder of a SQLite or journal file must exist (a typo in a path is an error, not a new
    folder tree); the default ``reports/<study>/`` is made by :func:`run_search`.
    """
    path = storage_file(url)
    if path is not None and not path.parent.is_dir():
        raise ParameterError("storage", f"{url!r}: folder {path.parent} does not exist "
                                        "(allowed: a file in an existing folder, or an Optuna URL)")
    if "://" not in url:  # a JournalStorage file
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        # several local workers write the same file: wait for the lock rather than fail
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except ImportError as exc:
        raise ParameterError("storage", f"{url!r}: needs a database driver that is not installed ({exc})") from None
    except Exception as exc:  # sqlalchemy errors: bad URL, unreachable server
        first = first_line(exc)
        raise ParameterError("storage", f"{url!r}: cannot open ({first})") from None


def lock_path(url: str, study_dir: str | os.PathLike) -> str:
    """The lock file every process of a study takes to ask for trials and claim candidates:
    beside the SQLite / journal file (so that runs sharing the file share the lock), else in
    the study folder (a database server: the lock covers this machine's processes)."""
    path = storage_file(url)
    if path is not None:
        return str(path.resolve()) + ".lock"
    return str(Path(study_dir).resolve() / ".ask.lock")


@dataclass(frozen=True)
class StudyLock:
    """An exclusive lock across processes (POSIX ``flock`` on ``path``; none elsewhere, or
    with ``path=None``). Re-entrant within one process is *not* supported."""

    path: str | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if self.path is None:
            yield
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            yield
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- samplers


def make_sampler(settings: SearchSettings, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler named by ``settings.sampler``, seeded with ``seed`` (default: settings.seed).

    Constraints reach every sampler through ``trial.set_constraint`` (Optuna 5).
    """
    seed = settings.seed if seed is None else seed
    name = settings.sampler
    startup = settings.startup()
    with warnings.catch_warnings():  # TPE's multivariate/group, GP's deterministic_objective: "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=settings.population(), seed=seed)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True,
                                              group=True, constant_liar=True)
        if name == "gp":
            # conditional dimensions (define-by-run) fall back to random sampling: expected
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, deterministic_objective=True,
                                             warn_independent_sampling=False)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise ParameterError("sampler", f"{name!r}: unknown (allowed: {', '.join(SAMPLERS)})")


def worker_seed(seed: int, worker: int, n_existing: int) -> int:
    """A distinct, reproducible seed per worker and per resume point (kept for callers that
    want one sampler stream per worker; the search itself seeds per trial, see
    :class:`TrialSeededSampler`)."""
    h = hashlib.sha256(f"{seed}:{worker}:{n_existing}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def slot_seed(seed: int, slot: int, name: str = "") -> int:
    """The seed of one trial slot (and one parameter name): a 32-bit hash."""
    h = hashlib.sha256(f"{seed}:slot:{slot}:{name}".encode()).digest()
    return int.from_bytes(h[:4], "little")


#: User attrs of a queued re-run: the trial it repeats and that trial's slot.
RETRY_OF = "retry_of"
SLOT = "slot"


def trial_slot(trials: list[FrozenTrial], trial: FrozenTrial) -> int:
    """The trial's position in the sequence of proposals: its number less the re-runs queued
    before it; a re-run keeps the slot of the trial it repeats."""
    if SLOT in trial.user_attrs:
        return int(trial.user_attrs[SLOT])
    return trial.number - sum(1 for t in trials if t.number < trial.number and RETRY_OF in t.user_attrs)


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """``settings.sampler`` built afresh for every trial with the seed of the trial's slot.

    What a trial is proposed depends on the seed, its slot and the finished trials the sampler
    sees -- not on which process asks or how many trials it asked before. The random sampler
    draws each parameter from its own ``(seed, slot, name)`` stream, so a trial whose first
    choices were fixed (a re-run of a partly resolved trial) still gets the same later choices.
    """

    def __init__(self, settings: SearchSettings, seed: int | None = None) -> None:
        self._settings = settings
        self._seed = settings.seed if seed is None else seed
        self._slot = 0
        self._inner = make_sampler(settings, seed=slot_seed(self._seed, 0))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._slot = trial_slot(study.get_trials(deepcopy=False), trial)
        self._inner = make_sampler(self._settings, seed=slot_seed(self._seed, self._slot))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        if self._settings.sampler == "random":
            rs = optuna.samplers.RandomSampler(seed=slot_seed(self._seed, self._slot, param_name))
            return rs.sample_independent(study, trial, param_name, param_distribution)
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


# --------------------------------------------------------------------------- the study


def owner_tag() -> str:
    """``host:pid`` of this process: recorded on every trial it asks for."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _identity(settings: SearchSettings, space: Any, proxy: dict[str, Any], teacher_fp: str,
              table_sha: str | None) -> dict[str, Any]:
    return {
        "space_hash": space.hash,
        "proxy": {k: v for k, v in proxy.items() if k != "source"},
        "teacher": teacher_fp,
        "objectives": list(settings.objectives),
        "constraints": settings.constraints,
        "latency_table_sha": table_sha,
    }


def open_study(
    settings: SearchSettings,
    storage: optuna.storages.BaseStorage,
    *,
    space: Any,
    proxy: dict[str, Any],
    teacher_fingerprint: str,
    latency_table_sha: str | None,
    resume: bool,
    extra: dict[str, Any] | None = None,
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it with ``resume``. Returns ``(study, resumed)``.

    A study that exists and holds trials is never reused silently: without ``resume`` it is
    an error, and with it everything the results depend on must match.
    """
    identity = _identity(settings, space, proxy, teacher_fingerprint, latency_table_sha)
    try:
        existing = optuna.load_study(study_name=settings.study, storage=storage, sampler=TrialSeededSampler(settings))
    except KeyError:
        existing = None
    if existing is not None and existing.trials:
        if not resume:
            raise ParameterError(
                "resume", f"not set and study {settings.study!r} already exists in {_describe_storage(storage)} "
                f"with {len(existing.trials)} trials: set it to continue the study, or name a new study"
            )
        attrs = existing.user_attrs
        for key in _IDENTITY:
            old = attrs.get(_ATTR + key)
            new = identity[key]
            if _normal(old) != _normal(new):
                raise ParameterError(
                    "resume", f"set but study {settings.study!r} was made with another {key.replace('_', ' ')} "
                    f"({_short(old)} != {_short(new)} now); resume with the same spec, teacher and table, "
                    "or name a new study"
                )
        study, resumed = existing, True
    else:
        if existing is not None:  # created by a run that died before its first trial
            study = existing
        else:
            study = optuna.create_study(study_name=settings.study, storage=storage,
                                        directions=settings.directions, sampler=TrialSeededSampler(settings))
            with warnings.catch_warnings():  # named objectives in optuna-dashboard
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(settings.objectives))
        resumed = False
    if [d.name.lower() for d in study.directions] != settings.directions:
        raise ParameterError("study", f"{settings.study!r}: its directions differ from the objectives "
                             f"{list(settings.objectives)}; name a new study")
    for key, value in {**identity, **(extra or {})}.items():
        study.set_user_attr(_ATTR + key, value)
    for key in ("method", "sampler", "seed", "n_trials", "target", "population_size"):
        study.set_user_attr(_ATTR + key, settings.to_dict()[key])
    study.set_user_attr(_ATTR + "latency_table", str(settings.latency_table) if settings.latency_table else None)
    if settings.reference_point is not None:
        study.set_user_attr(_ATTR + "reference_point", settings.reference_point)
    return study, resumed


def study_attrs(study: optuna.Study) -> dict[str, Any]:
    """The ``archsearch.*`` study attrs without their prefix."""
    return {k[len(_ATTR):]: v for k, v in study.user_attrs.items() if k.startswith(_ATTR)}


def _normal(v: Any) -> Any:
    import json

    return json.loads(json.dumps(v, sort_keys=True, default=str))


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe_storage(storage: Any) -> str:
    url = getattr(storage, "url", None)
    return str(url) if url else type(storage).__name__


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # no cheap check: --resume asserts the old run has stopped
        return pid == os.getpid()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed worker whose parent died too may linger as a zombie until it is reaped
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def owner_alive(owner: str) -> bool | None:
    """Whether the process ``host:pid`` still runs: None when it is on another host."""
    o_host, _, o_pid = str(owner).rpartition(":")
    if not owner or not o_pid.isdigit():
        return False
    if o_host != socket.gethostname():
        return None
    return _pid_alive(int(o_pid))


def recover_interrupted(study: optuna.Study) -> tuple[list[int], list[int]]:
    """Mark RUNNING trials whose process is gone as failed (``interrupted``).

    Returns ``(marked, elsewhere)``: trial numbers marked failed, and numbers of RUNNING
    trials owned by another host (left alone: they may still be running there). Call
    :func:`requeue_interrupted` next so that they run again.
    """
    marked, elsewhere = [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        alive = owner_alive(str(t.user_attrs.get("owner", "")))
        if alive is None:
            elsewhere.append(t.number)
            continue
        if alive:
            continue
        mark_failed(study, t, INTERRUPTED)
        marked.append(t.number)
    return marked, elsewhere


def requeue_interrupted(study: optuna.Study) -> list[tuple[int, int]]:
    """Queue a re-run of every interrupted trial that has none yet: its parameters (those it
    had chosen before it stopped) and its slot, so the re-run proposes the same candidate.

    Returns ``[(interrupted number, re-run number), ...]``. Call it under the study's
    :class:`StudyLock` so that two resuming runs do not queue one trial twice.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {int(t.user_attrs[RETRY_OF]) for t in trials if RETRY_OF in t.user_attrs}
    todo = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == INTERRUPTED
            and t.number not in retried]
    out = []
    next_number = len(trials)
    for t in todo:
        study.enqueue_trial(dict(t.params), user_attrs={RETRY_OF: t.number, SLOT: trial_slot(trials, t)})
        out.append((t.number, next_number))
        next_number += 1
    return out


def mark_failed(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Fail a trial owned by a dead process (another process cannot ``tell`` it)."""
    storage = study._storage  # noqa: SLF001 - the public Study API only tells its own trials
    storage.set_trial_user_attr(trial._trial_id, "state", "failed")  # noqa: SLF001
    storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)  # noqa: SLF001
    try:
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
    except RuntimeError:  # finished meanwhile
        pass


def count_trials(study: optuna.Study) -> dict[str, int]:
    """Trials by archsearch state: complete, infeasible, failed, interrupted, running, done.

    ``done`` (complete + infeasible + failed) is what counts towards ``n_trials``; interrupted
    trials are re-run (:func:`requeue_interrupted`); ``queued`` trials wait for a worker.
    """
    out = {"complete": 0, "infeasible": 0, "failed": 0, "interrupted": 0, "running": 0, "queued": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:  # enqueued (warm start), not yet asked: still to run
            out["queued"] += 1
            continue
        out[trial_state(t)] += 1
    out["done"] = out["complete"] + out["infeasible"] + out["failed"]
    return out


def trial_state(t: FrozenTrial) -> str:
    """complete | infeasible | failed | interrupted | running | waiting (for tables and budgets)."""
    if t.state == TrialState.RUNNING:
        return "running"
    if t.state == TrialState.WAITING:
        return "waiting"
    if t.state == TrialState.COMPLETE:
        return "complete"
    if t.state == TrialState.PRUNED:
        return "infeasible"
    if t.user_attrs.get("fail_reason") == INTERRUPTED:
        return "interrupted"
    return "failed"
