"""Known third-party noise turned off at its source, narrowly: nothing archsearch says is hidden.

A normal command prints only archsearch's own lines. What the stack prints on its own, and
what turns each one off:

* torch's ``_pytree.py ... <enum 'KernelPreference'> is an Enum subclass and is now natively
  supported by torch.compile ...`` (logged when torchao registers its enums): a filter on the
  logger ``torch.utils._pytree`` for that message only.
* diffusers' ``Unable to import `torchao` Tensor objects ...`` (its torchao quantizer, loaded
  with every pipeline): a filter on that module's logger for that message only.
* diffusers' ``Expected types for unet: (UNet2DConditionModel,), got ArchUNetDiffusers`` (an
  archsearch UNet in a Stable Diffusion pipeline is intended): a filter for that message with
  ``ArchUNet`` in it only.
* the "Loading pipeline components..." (diffusers) and "Writing model shards" (transformers)
  progress bars: their libraries' own ``disable_progress_bar()``, called when their logging
  module is imported (an import hook, so installing this imports neither).

:func:`install` does all of it and is idempotent; the CLI calls it at start-up, and a library
function or a user's script may call it too (``from archsearch._quiet import install``). It
imports neither torch nor diffusers nor transformers, and drops nothing else: every other
warning of the stack still shows.

This module imports no archsearch stage, so every stage may use it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import re
import sys
import threading
from typing import Any, Callable

__all__ = ["LOG_FILTERS", "install"]

#: logger name -> messages (regular expressions, searched) dropped from it
LOG_FILTERS: dict[str, tuple[str, ...]] = {
    "torch.utils._pytree": (r"is an Enum subclass and is now natively supported by torch\.compile",),
    "diffusers.quantizers.torchao.torchao_quantizer": (r"^Unable to import `torchao` Tensor objects",),
    "diffusers.pipelines.pipeline_utils": (r"^Expected types for \w+: .*, got .*ArchUNet",),
}

#: modules whose ``disable_progress_bar()`` is called as soon as they are imported
_NO_BARS = ("diffusers.utils.logging", "transformers.utils.logging")

_lock = threading.Lock()
_installed = False


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message matches one of ``patterns``."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot format is not ours to judge
            return True
        return not any(p.search(message) for p in self.patterns)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``hooks[name](module)`` right after the module ``name`` is first executed."""

    def __init__(self, hooks: dict[str, Callable[[Any], None]]) -> None:
        self.hooks = hooks

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        hook = self.hooks.get(fullname)
        if hook is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = getattr(spec, "loader", None)
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            _call_quietly(hook, module)

        loader.exec_module = exec_module  # this module's own loader instance
        return spec


def _call_quietly(hook: Callable[[Any], None], module: Any) -> None:
    try:
        hook(module)
    except Exception:  # noqa: BLE001 - silencing noise must never break an import
        pass


def _disable_bars(module: Any) -> None:
    module.disable_progress_bar()


def install() -> None:
    """Turn the known third-party noise off (see the module's doc); safe to call many times."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        for name, patterns in LOG_FILTERS.items():
            logging.getLogger(name).addFilter(_DropMessages(patterns))
        hooks: dict[str, Callable[[Any], None]] = {}
        for name in _NO_BARS:
            if name in sys.modules:
                _call_quietly(_disable_bars, sys.modules[name])
            else:
                hooks[name] = _disable_bars
        if hooks:
            sys.meta_path.insert(0, _AfterImport(hooks))

