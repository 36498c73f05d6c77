"""Read a YAML file safely and remember where every key came from (for error messages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from archsearch.errors import SpecError

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "LocatedDocument", "format_path", "load_yaml"]

PathT = tuple[Any, ...]

#: a spec or candidate file is a few kB: anything over this is refused before parsing
MAX_FILE_BYTES = 1 << 20
#: nesting levels (a spec needs about six)
MAX_DEPTH = 32
#: YAML nodes (scalars, lists, mappings) in one file, aliases not expanded
MAX_NODES = 100_000


def format_path(path: PathT) -> str:
    """``("stages", 1, "channels")`` -> ``stages[1].channels``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top>"


class LocatedDocument:
    """A parsed YAML document plus a map from key paths to 1-based line numbers."""

    def __init__(self, data: Any, lines: dict[PathT, int], source: str) -> None:
        self.data = data
        self.lines = lines
        self.source = source

    def line_of(self, path: PathT) -> int | None:
        """Line of the deepest known prefix of ``path``."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)

    def where(self, path: PathT) -> str:
        line = self.line_of(path)
        return f"{self.source}:{line}" if line else self.source

    def fail(self, path: PathT, message: str, allowed: str | None = None) -> SpecError:
        """Build (not raise) the one-line error for ``path``."""
        tail = f" (allowed: {allowed})" if allowed else ""
        return SpecError(f"{self.where(path)}: {format_path(path)}: {message}{tail}")


def _index(node: yaml.Node, path: PathT, lines: dict[PathT, int], seen: set[int] | None = None) -> None:
    """Lines of every key path. An aliased node (``*anchor``) is indexed once, where it was
    defined: a document of aliases of aliases (a "billion laughs") stays linear here."""
    seen = set() if seen is None else seen
    lines.setdefault(path, node.start_mark.line + 1)
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _index(value_node, path + (key,), lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _index(item, path + (i,), lines, seen)


class _TooLarge(Exception):
    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags beyond YAML's own: ``!!python/...`` is refused) that also
    refuses documents nested deeper than :data:`MAX_DEPTH` or holding more than
    :data:`MAX_NODES` nodes, before they cost time or memory."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooLarge(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            if self._nodes > MAX_NODES:
                raise _TooLarge(f"more than {MAX_NODES:,} values", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(path: str | Path) -> LocatedDocument:
    """``yaml.safe_load`` a file; every failure is a one-line :class:`SpecError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_file() and size > MAX_FILE_BYTES:
            raise SpecError(f"{path}: {size:,} bytes (allowed: a YAML file of at most {MAX_FILE_BYTES:,} bytes)")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    return load_yaml_text(text, str(path))


def load_yaml_text(text: str, source: str = "<string>") -> LocatedDocument:
    """Parse YAML text (safely, bounded: see :class:`_BoundedLoader`) and index its lines."""
    if len(text) > MAX_FILE_BYTES:
        raise SpecError(f"{source}: {len(text):,} characters "
                        f"(allowed: a YAML file of at most {MAX_FILE_BYTES:,} bytes)")
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader refuses control characters here already
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{source}{line}: invalid YAML: {problem}") from None
    except _TooLarge as exc:
        raise SpecError(f"{source}:{exc.mark.line + 1}: invalid YAML: {exc.problem} "
                        "(allowed: a search space or candidate file)") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
        raise SpecError(f"{source}: invalid YAML: {str(exc).split(';')[0]}") from None
    except RecursionError:
        raise SpecError(f"{source}: invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    lines: dict[PathT, int] = {}
    if node is not None:
        _index(node, (), lines)
    return LocatedDocument(data, lines, source)
