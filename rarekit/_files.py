"""Output files that are never left half-written: every writer goes through :func:`atomic_output`."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    """The process umask, read once at import (os.umask can only be read by setting it, which would
    race with files other threads create)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_output(path, suffix: str | None = None):
    """Yields a temporary path in ``path``'s folder; when the block ends without an exception the
    temporary file is renamed onto ``path`` (atomic on POSIX), otherwise it is removed and ``path``
    keeps its old contents. ``suffix`` (default: ``path``'s own) lets writers that pick a format by
    extension (``np.save``, ``savefig``) see the right one."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix,
                                         dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp's 0600 would otherwise survive the rename
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_text_atomic(path, text: str) -> None:
    """``Path(path).write_text(text)`` through a temporary file and a rename."""
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
