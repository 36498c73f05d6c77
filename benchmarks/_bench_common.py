"""What several benchmark scripts share (imported from the scripts' own folder)."""

from __future__ import annotations

import argparse
from typing import Any


def add_proxy_arguments(ap: argparse.ArgumentParser, cache: str) -> None:
    """The options the proxy benchmarks share: --space, --n, --seed, --threads, --device,
    --cache-dir (``cache``: what it holds) and --set."""
    ap.add_argument("--space", default="search_spaces/tiny.yaml")
    ap.add_argument("--n", type=int, default=12, help="candidates compared (default 12)")
    ap.add_argument("--seed", type=int, default=0, help="candidate sampling seed")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | mps | auto")
    ap.add_argument("--cache-dir", default=None, help=f"{cache} cache (default $ARCHSEARCH_CACHE_DIR)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a proxy setting, e.g. --set batch=8 --set teacher.width=32 (YAML values)")


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


def proxy_setup(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(space, proxy settings, device) of the options :func:`add_proxy_arguments` added;
    pins torch's threads to ``--threads`` first."""
    import torch

    from archsearch.data import resolve_device
    from archsearch.spec import load_space

    if args.threads:
        torch.set_num_threads(args.threads)
    space = load_space(args.space)
    return space, proxy_from_space(space, args.set, args.space), resolve_device(args.device)
