"""Small helpers shared by every stage (no imports of archsearch stages)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["atomic_write_bytes", "atomic_write_text", "replace_dir", "cache_root", "canonical_json", "file_lock", "first_line",
           "short_hash"]


def cache_root() -> Path:
    """Where archsearch caches what it computed once (teachers, text states, block FLOPs):
    ``$ARCHSEARCH_CACHE_DIR`` or ``~/.cache/archsearch``."""
    env = os.environ.get("ARCHSEARCH_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "archsearch"


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, busy: Callable[[], BaseException] | None = None) -> Iterator[None]:
    """An exclusive advisory lock across processes for the block: POSIX ``flock`` on ``path``
    (created, with its folder); no lock where ``fcntl`` is missing (Windows).

    Waits for another holder, unless ``busy`` is given: then it raises ``busy()`` at once when
    another process holds the lock. Not re-entrant within one process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (fcntl.LOCK_NB if busy is not None else 0))
        except OSError:
            if busy is None:
                raise
            raise busy() from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``.

    A reader never sees a half-written file, and a crash leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the input of every content hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(obj: Any, n: int = 12) -> str:
    """Stable content hash (sha256 of canonical JSON), ``n`` hex digits."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:n]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    one-line error quotes of a library's multi-line one."""
    s = str(exc).strip()
    return s.splitlines()[0] if s else type(exc).__name__


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace`` for folders: ``src`` (written beside ``dst``) takes ``dst``'s place; an
    existing ``dst`` is moved aside first and removed after, so ``dst`` is whole at every moment
    but the two renames between."""
    import shutil

    src, dst = Path(src), Path(dst)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
