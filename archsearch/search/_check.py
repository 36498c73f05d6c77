"""``check_space``: every section of a spec checked before any work (``archsearch validate``,
and the first thing ``run_search`` does, so the two can never disagree)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archsearch.errors import ArchsearchError, ParameterError
from archsearch.search._methods import search_method
from archsearch.search._study import SearchSettings

if TYPE_CHECKING:
    from archsearch.distill import ProxyConfig
    from archsearch.spec import SearchSpace

__all__ = ["SpaceCheck", "check_space", "resolve_latency_table"]


@dataclass(frozen=True)
class SpaceCheck:
    """What a checked spec gives a run: its settings, proxy config and latency table.

    ``notes`` are things that are not errors yet but will stop a run (e.g. a latency table that
    ``archsearch profile`` has not written).
    """

    settings: SearchSettings
    proxy: ProxyConfig
    latency_table: Path | None
    notes: list[str] = field(default_factory=list)


def _check_cache(space: Any, proxy: Any) -> None:
    """``proxy.data``: the cache exists, was made by the spec's teacher (hash) and has the
    space's latent channels (and frames, for video): one line naming what differs."""
    from archsearch.data import LatentCache, teacher_hash

    where = f"{space.path}: proxy.data"
    path = proxy.data_path()
    if "diffusers" not in (proxy.teacher or {}):
        raise ArchsearchError(f"{where}: a latent cache needs a diffusers teacher (allowed: proxy.teacher: "
                              "{diffusers: PATH} -- the checkpoint that prepared it)")
    try:
        cache = LatentCache.open(path)
    except ArchsearchError as exc:
        raise ArchsearchError(f"{where}: {exc}") from None
    root = Path(str(proxy.teacher["diffusers"])).expanduser()
    if not root.is_absolute() and Path(str(space.path)).exists():
        root = (Path(str(space.path)).parent / root).resolve()
    ix = cache.index
    bad = []
    th = teacher_hash(root)
    if ix.teacher_hash != th:
        bad.append(f"teacher hash {ix.teacher_hash} (the teacher {root} is {th})")
    channels = int(space.data.get("latent_channels", 4))
    if ix.latent_channels != channels:
        bad.append(f"latent_channels {ix.latent_channels} (the space has {channels})")
    if space.kind == "video":
        if ix.kind != "video":
            bad.append(f"kind {ix.kind} (the space is video)")
        elif proxy.frames != ix.frames:
            bad.append(f"frames {ix.frames} (proxy.frames is {proxy.frames})")
    elif ix.kind != "image":
        bad.append(f"kind {ix.kind} (the space is image)")
    if bad:
        raise ArchsearchError(f"{where}: {path}: the cache does not match: it has " + "; ".join(bad)
                              + " (run archsearch data prepare again with this teacher)")


def check_space(space: SearchSpace, *, need_table: bool = False) -> SpaceCheck:
    """Check the ``search:``, ``proxy:`` (teacher included) and ``constraints:`` sections of a
    loaded space; the architecture sections were checked by :func:`archsearch.spec.load_space`.

    Errors are the spec's own one-line ``FILE:LINE: key.path: bad value ... (allowed: ...)``.
    A missing default latency table is an error only with ``need_table`` (a run needs it;
    ``validate`` reports it as a note), a missing ``search.latency_table`` always is.
    """
    from archsearch.cost.latency import TARGETS
    from archsearch.distill import ProxyConfig, check_teacher

    settings = SearchSettings.from_space(space)
    for path, value in ((("search", "target"), space.search.get("target")),
                        (("constraints", "latency_target"), space.constraints.get("latency_target"))):
        if value is not None and value not in TARGETS:
            space.fail(path, value, ", ".join(TARGETS))
    proxy = ProxyConfig.from_space(space)
    check_teacher(proxy, space.kind)
    search_method(settings.method).check(space, settings, proxy)  # e.g. the backbone, the supernet's cover
    if proxy.data is not None:
        _check_cache(space, proxy)
    _check_largest(space)
    notes: list[str] = []
    table: Path | None = None
    try:
        table = resolve_latency_table(settings, space)
    except ArchsearchError as exc:
        if need_table or settings.latency_table is not None:
            raise
        notes.append(str(exc))
    return SpaceCheck(settings, proxy, table, notes)


def _check_largest(space: SearchSpace) -> None:
    """The space's largest candidate (the largest option of every dimension) must be costable:
    a trial costs every candidate block by block at full size (fvcore), so a space whose largest
    block cannot fit in memory is refused now, in one line, not by the allocator mid-run."""
    from archsearch.candidate import largest_candidate
    from archsearch.model import check_memory

    largest = largest_candidate(space)
    try:
        check_memory(largest, whole=False)
    except ArchsearchError as exc:
        raise ArchsearchError(f"{space.path}: its largest candidate cannot be costed: {exc}") from None


def resolve_latency_table(settings: SearchSettings, space: Any) -> Path | None:
    """The latency table file of a search.

    ``search.latency_table`` if set; else the table ``archsearch profile SPEC --target T``
    writes by default (``latency_tables/<space>-<T>-r<resolution>[-estimate].csv``, looked up
    in the user's folders first -- ``latency_tables/`` in the spec's folder, beside it and in
    the working directory -- then among the tables shipped with archsearch). Returns None when
    the search needs no latency (no latency objective nor ``max_latency_ms``).
    """
    needs = "latency_ms" in settings.objectives or settings.max_latency_ms is not None
    if settings.latency_table is not None:
        p = Path(settings.latency_table)
        if not p.is_file():
            raise ArchsearchError(f"{space.path}: search.latency_table: {p} does not exist "
                                  "(allowed: a table written by `archsearch profile`)")
        return p
    if not needs:
        return None
    target = settings.target or "cpu"
    res = space.data.get("resolution", 64)
    names = [f"{space.name}-{target}-r{res}.csv", f"{space.name}-{target}-r{res}-estimate.csv"]
    from archsearch._resources import TABLES, find_file, is_bundled

    spec_dir = Path(space.path).resolve().parent
    # the user's folders (never the package's: a bundled spec's own folder comes last)
    bases = [b for b in (spec_dir, spec_dir.parent) if not is_bundled(b / TABLES)] + [Path.cwd()]
    for base in bases:
        for name in names:
            p = base / TABLES / name
            if p.is_file():
                return p
    for name in names:
        p = find_file(Path(TABLES) / name)  # the tables shipped with archsearch
        if p is not None and p.is_file():
            return p
    raise ArchsearchError(_no_table_message(space, settings, target, names[0], bases))


def _unprofilable_reason(target: str) -> str | None:
    """Why ``archsearch profile --target TARGET`` cannot run on this machine, or None if it can:
    the reason the target's backend gives when it is made here (no CUDA device, no Metal, no
    ExecuTorch, ...)."""
    from archsearch.cost.latency import make_backend

    try:
        make_backend(target, convert=False)
    except ParameterError as exc:
        return exc.detail.removeprefix(f"{target}: ")
    except ArchsearchError as exc:
        return str(exc)
    return None


def _no_table_message(space: Any, settings: SearchSettings, target: str, name: str, bases: list[Path]) -> str:
    """The one line for a search without its latency table: the known targets, those that can
    be profiled here and those that already have a table for this space, and the way out."""
    from archsearch._resources import TABLES, find_file
    from archsearch.cost.latency import TARGETS

    key = ("constraints.latency_target" if space.constraints.get("latency_target") is not None
           else "search.target" if settings.target is not None else "search.target (default cpu)")
    res = space.data.get("resolution", 64)

    def has_table(t: str) -> bool:
        for f in (f"{space.name}-{t}-r{res}.csv", f"{space.name}-{t}-r{res}-estimate.csv"):
            shipped = find_file(Path(TABLES) / f)
            if any((b / TABLES / f).is_file() for b in bases) or (shipped is not None and shipped.is_file()):
                return True
        return False

    here = [t for t in TARGETS if _unprofilable_reason(t) is None]
    known = (f"known targets: {', '.join(TARGETS)}; profiled on this machine: {', '.join(here)}; "
             f"with a table for {space.name} at r{res}: {', '.join(t for t in TARGETS if has_table(t)) or 'none'}")
    way_out = "(or remove latency from search.objectives and constraints.max_latency_ms)"
    if target not in TARGETS:
        return f"{space.path}: {key}: {target}: unknown target ({known})"
    why = _unprofilable_reason(target)
    if why is None:
        return (f"{space.path}: {key}: {target}: latency_tables/{name} does not exist and search.latency_table "
                f"is not set; make it with `archsearch profile {space.path} --target {target}` or set "
                f"search.latency_table ({known}) {way_out}")
    return (f"{space.path}: {key}: {target}: latency_tables/{name} does not exist, and {target} cannot be "
            f"profiled here: {why}; measure it where it runs (`archsearch profile --target {target}` there, "
            f"or --import) and set search.latency_table, or choose another target ({known}) {way_out}")
