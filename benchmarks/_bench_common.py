"""What several benchmark scripts share (imported from the scripts' own folder)."""

from __future__ import annotations

from typing import Any


def proxy_from_space(space: Any, overrides: list[str], source: str) -> Any:
    """The space's ``proxy:`` settings with ``--set KEY=VALUE`` overrides (dotted keys such as
    ``teacher.width``; values read as YAML)."""
    import yaml

    from archsearch.distill import ProxyConfig

    proxy = ProxyConfig.from_space(space)
    if not overrides:
        return proxy
    d = {**space.proxy, "teacher": dict(proxy.teacher)}
    for item in overrides:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = d
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value)
    return ProxyConfig.from_dict(d, kind=space.kind, source=source)
