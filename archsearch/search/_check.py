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

__all__ = ["SpaceCheck", "check_space", "fitting_tables", "resolve_latency_table"]


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
    if table is not None:  # an ane/coreml table: can the space produce a candidate that converts?
        from archsearch.search._convertible import convertibility_notes

        notes += convertibility_notes(space, table)
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


#: the parts of a space that decide its blocks (``name`` and ``constraints`` do not)
_NOT_BLOCKS = ("name", "constraints", "search", "proxy", "description")


def _table_header(path: Path) -> dict[str, Any]:
    """The ``#`` YAML header of a latency table (``{}`` when it has none or cannot be read):
    only the header is read, not the rows."""
    import yaml

    lines = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.startswith("#"):
                    break
                lines.append(line[2:] if line.startswith("# ") else line[1:])
        meta = yaml.load("".join(lines), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # safe
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _same_blocks(space: Any, recorded: dict[str, Any]) -> bool:
    """Whether the space a table records (``space: {name, path, hash}`` of its header) has the
    blocks of ``space``: the same architecture under another name (a renamed copy: its hash with
    the recorded name), or a space file that differs only in name, constraints, search: or proxy:."""
    import yaml

    from archsearch._resources import find_file
    from archsearch._util import short_hash

    name, path, digest = recorded.get("name"), recorded.get("path"), recorded.get("hash")
    arch = {k: v for k, v in space.data.items() if k not in ("search", "proxy", "description")}
    if name and digest and short_hash({**arch, "name": name}) == digest:
        return True
    found = find_file(path, [Path()]) if isinstance(path, str) and path else None
    if found is None or not found.is_file():
        return False
    try:
        other = yaml.safe_load(found.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    if not isinstance(other, dict):
        return False
    ours = {k: v for k, v in space.data.items() if k not in _NOT_BLOCKS}
    return ours == {k: v for k, v in other.items() if k not in _NOT_BLOCKS}


def fitting_tables(space: Any, target: str, resolution: int, bases: list[Path]) -> list[Path]:
    """Latency tables made for another space with the same blocks as ``space`` (e.g. the space
    it was copied from and renamed), at ``target`` and ``resolution``: in ``latency_tables/`` of
    each of ``bases``, then among the bundled tables. Only their headers are read."""
    from archsearch._resources import TABLES, bundled_root

    dirs = [b / TABLES for b in bases] + [bundled_root() / TABLES]
    seen: set[Path] = set()
    out: list[Path] = []
    for d in dirs:
        for p in sorted(d.glob("*.csv")) if d.is_dir() else []:
            key = p.resolve()
            if key in seen:
                continue
            seen.add(key)
            meta = _table_header(p)
            recorded = meta.get("space")
            if (str(meta.get("target")) != target or meta.get("resolution") != resolution
                    or not isinstance(recorded, dict) or recorded.get("name") == space.name):
                continue
            if _same_blocks(space, recorded):
                out.append(p)
    return out


def _table_setting(table: Path, space: Any) -> str:
    """``table`` as ``search.latency_table`` would name it from ``space``'s file."""
    import os

    spec_dir = Path(space.path).resolve().parent
    try:
        return Path(os.path.relpath(table.resolve(), spec_dir)).as_posix() if table.resolve().is_relative_to(
            spec_dir) else str(table.resolve())
    except ValueError:  # another drive
        return str(table.resolve())


def _fits_clause(space: Any, target: str, res: int, name: str, bases: list[Path]) -> str:
    """``; <table> (made for space 'tiny', the same blocks) fits: set ...`` or ``""``."""
    from archsearch._resources import describe

    fits = fitting_tables(space, target, res, bases)
    if not fits:
        return ""
    first = fits[0]
    other = _table_header(first).get("space", {}).get("name")
    more = f" (also: {', '.join(describe(p) for p in fits[1:3])})" if len(fits) > 1 else ""
    return (f"; {describe(first)} was made for space {other!r} with the same blocks{more}: use it with "
            f"`search: {{latency_table: {_table_setting(first, space)}}}` in {space.path}, or copy it to "
            f"latency_tables/{name}")


def _no_table_message(space: Any, settings: SearchSettings, target: str, name: str, bases: list[Path]) -> str:
    """The one line for a search without its latency table: the table looked for, the tables of
    other spaces with the same blocks (a renamed copy), the known targets, those that can be
    profiled here and those that already have a table for this space, and the way out."""
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
    looked = f"no latency table for space {space.name!r}: latency_tables/{name} does not exist"
    fits = _fits_clause(space, target, res, name, bases)
    if why is None:
        return (f"{space.path}: {key}: {target}: {looked} and search.latency_table is not set{fits}; "
                f"{'or ' if fits else ''}make it with `archsearch profile {space.path} --target {target}` or set "
                f"search.latency_table ({known}) {way_out}")
    return (f"{space.path}: {key}: {target}: {looked}, and {target} cannot be "
            f"profiled here: {why}{fits}; measure it where it runs (`archsearch profile --target {target}` there, "
            f"or --import) and set search.latency_table, or choose another target ({known}) {way_out}")
