"""The files shipped with archsearch: example and reference spaces, latency tables, device profiles.

They live in the repository's top-level ``search_spaces/`` and ``latency_tables/`` folders. A
wheel carries them as package data, ``archsearch/_bundled/search_spaces`` and
``archsearch/_bundled/latency_tables`` (the build maps the two folders there; see
``pyproject.toml``), read with :mod:`importlib.resources`. Run from a checkout (``pip install
-e .``, or ``PYTHONPATH=.``) there is no ``_bundled`` folder and the repository's own folders are
the bundled ones.

A user's own file always wins: a path that exists is used as given, and a name is looked up in
the working directory first (``NAME.yaml``, ``search_spaces/NAME.yaml``,
``latency_tables/...``); only then in the bundled files. Nothing here writes beside the package:
defaults that write (tables, reports, caches) are relative to the working directory.

This module imports no archsearch stage, so every stage may use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable

from archsearch.errors import ParameterError, SpecError

__all__ = [
    "SPACES",
    "TABLES",
    "InitResult",
    "bundled_root",
    "bundled_spaces",
    "describe",
    "find_device_profile",
    "device_profile_names",
    "find_file",
    "find_space",
    "init_workdir",
    "is_bundled",
]

#: The two shipped folders, relative to :func:`bundled_root` (and to a working directory).
SPACES = "search_spaces"
TABLES = "latency_tables"
DEVICES = f"{TABLES}/devices"
_YAML = (".yaml", ".yml")


def bundled_root() -> Path:
    """The folder that holds the shipped ``search_spaces/`` and ``latency_tables/``.

    ``<site-packages>/archsearch/_bundled`` in an installed wheel; the repository root when
    archsearch runs from a checkout.
    """
    pkg = resources.files("archsearch")
    bundled = pkg / "_bundled"
    if bundled.is_dir():
        return Path(str(bundled))
    return Path(str(pkg)).resolve().parent


def _bundled(relative: str | os.PathLike) -> Path | None:
    p = bundled_root() / relative
    return p if p.exists() else None


def is_bundled(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of the shipped files (or folders)."""
    root = bundled_root()
    try:
        rel = Path(path).resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return bool(rel.parts) and rel.parts[0] in (SPACES, TABLES)


def describe(path: str | os.PathLike) -> str:
    """``path`` for a message, marked ``(bundled with archsearch)`` when it is a shipped file."""
    return f"{path} (bundled with archsearch)" if is_bundled(path) else str(path)


def bundled_spaces() -> list[str]:
    """Names of the shipped spaces, by which :func:`find_space` finds them: ``tiny``,
    ``unet_mobile``, ..., ``reference/sd15_unet``."""
    root = bundled_root() / SPACES
    if not root.is_dir():
        return []
    names = (p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*") if p.suffix in _YAML)
    return sorted(names, key=lambda n: (n.count("/"), n))


def find_file(relative: str | os.PathLike, bases: Iterable[str | os.PathLike] = ()) -> Path | None:
    """The first of ``base/relative`` for each of ``bases`` (the user's folders, in order), then
    the bundled ``relative``; ``None`` if none exists. An absolute ``relative`` is itself or None."""
    rel = Path(relative).expanduser()
    if rel.is_absolute():
        return rel if rel.exists() else None
    for base in bases:
        p = Path(base) / rel
        if p.exists():
            return p
    return _bundled(rel)


def find_space(name_or_path: str | os.PathLike) -> Path:
    """The YAML file of a space given by path or by a bundled name.

    A path that exists is returned as given. Otherwise, for a name without ``.yaml``
    (``unet_mobile``, ``reference/sd15_unet``): ``./NAME.yaml``, ``./search_spaces/NAME.yaml``,
    then the bundled ``search_spaces/NAME.yaml``; for a relative ``.yaml`` path that does not exist
    (``search_spaces/unet_mobile.yaml`` outside the repository): the bundled file of that
    path. Raises :class:`~archsearch.errors.SpecError` (``NAME: file not found (allowed: ...)``)
    when nothing matches.
    """
    raw = str(name_or_path)
    p = Path(raw).expanduser()
    if p.exists():
        return p
    if not p.is_absolute():
        if p.suffix in _YAML:
            rel = p.relative_to(SPACES) if p.parts[:1] == (SPACES,) else p
            found = _bundled(Path(SPACES) / rel)
        else:
            name = f"{raw}.yaml"
            found = find_file(name, [Path()]) or find_file(Path(SPACES) / name, [Path()])  # ./ first
        if found is not None and found.is_file():
            return found
    names = ", ".join(bundled_spaces()) or "none"
    raise SpecError(f"{raw}: file not found (allowed: a search-space YAML file, or a bundled space: {names})")


def device_profile_names(directories: Iterable[str | os.PathLike] = ()) -> list[str]:
    """Names of the device profiles in ``directories`` and the bundled ones."""
    dirs = [Path(d) for d in directories] + [bundled_root() / DEVICES]
    return sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.yaml")})


def find_device_profile(name: str, directories: Iterable[str | os.PathLike] = ()) -> Path | None:
    """``DIR/NAME.yaml`` for the first of ``directories`` that has it, else the bundled profile."""
    for d in directories:
        p = Path(d) / f"{name}.yaml"
        if p.is_file():
            return p
    p = bundled_root() / DEVICES / f"{name}.yaml"
    return p if p.is_file() else None


# --------------------------------------------------------------------------- init


@dataclass
class InitResult:
    """What :func:`init_workdir` did: the space file, the tables copied and any it had none for."""

    directory: Path
    space: Path
    tables: list[Path] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # already there, identical
    target: str = "cpu"
    resolution: int = 64


def _space_target(data: dict) -> tuple[str, int, str]:
    search = data.get("search") if isinstance(data.get("search"), dict) else {}
    cons = data.get("constraints") if isinstance(data.get("constraints"), dict) else {}
    target = cons.get("latency_target") or search.get("target") or "cpu"
    return str(data.get("name", "")), int(data.get("resolution", 64)), str(target)


def init_workdir(directory: str | os.PathLike = ".", space: str = "unet_mobile", *,
                 force: bool = False) -> InitResult:
    """Copy a bundled space and its bundled latency table(s) into ``directory``.

    Writes ``DIR/<space>.yaml`` and ``DIR/latency_tables/<name>-<target>-r<res>[-estimate].csv``
    (each shipped table of the space's latency target at its resolution, the table a run looks
    up by default), so that ``archsearch run <space>.yaml`` works there. A file that exists with
    other content is refused unless ``force``; one with the same content is kept.
    """
    import yaml

    from archsearch._util import atomic_write_bytes

    if Path(space).suffix in _YAML or space not in bundled_spaces():
        names = ", ".join(n for n in bundled_spaces() if "/" not in n)
        raise ParameterError("space", f"{space!r}: unknown bundled space (allowed: {names})")
    src = bundled_root() / SPACES / f"{space}.yaml"
    data = yaml.safe_load(src.read_text(encoding="utf-8"))
    name, res, target = _space_target(data if isinstance(data, dict) else {})
    prefix = f"{name}-{target}-r{res}"
    tables_dir = bundled_root() / TABLES
    tables = sorted(p for p in tables_dir.glob(f"{prefix}*.csv")
                    if p.stem in (prefix, f"{prefix}-estimate"))
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ParameterError("directory", f"{out}: exists and is not a folder (allowed: a folder path)")
    plan = [(src, out / src.name)] + [(t, out / TABLES / t.name) for t in tables]
    for s, d in plan:
        if d.exists() and not force and (not d.is_file() or d.read_bytes() != s.read_bytes()):
            raise ParameterError("force", f"not set and {d} exists with content other than the bundled "
                                          f"{s.name} (allowed: a folder without it, or overwrite it)")
    result = InitResult(out, out / src.name, target=target, resolution=res)
    for s, d in plan:
        if d.is_file() and d.read_bytes() == s.read_bytes():
            result.kept.append(d)
        else:
            atomic_write_bytes(d, s.read_bytes())
            result.written.append(d)
        if d.parent.name == TABLES:
            result.tables.append(d)
    return result
