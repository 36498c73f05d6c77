"""Read a YAML file safely and remember where every key came from (for error messages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from archsearch.errors import SpecError

__all__ = ["LocatedDocument", "format_path", "load_yaml"]

PathT = tuple[Any, ...]


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


def _index(node: yaml.Node, path: PathT, lines: dict[PathT, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _index(value_node, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _index(item, path + (i,), lines)


def load_yaml(path: str | Path) -> LocatedDocument:
    """``yaml.safe_load`` a file; every failure is a one-line :class:`SpecError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    return load_yaml_text(text, str(path))


def load_yaml_text(text: str, source: str = "<string>") -> LocatedDocument:
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{source}{line}: invalid YAML: {problem}") from None
    lines: dict[PathT, int] = {}
    if node is not None:
        _index(node, (), lines)
    return LocatedDocument(data, lines, source)
