"""Outputs that appear under the user's name only when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class AtomicOutput:
    """Write to ``self.tmp`` (a hidden name beside ``path``), then ``commit`` renames it into
    place; ``abort`` removes it. As a context manager: commit on success, abort on error.

    Subclasses write to ``self.tmp`` and override ``_finish`` (flush, close) and ``_close``
    (release handles on abort).
    """

    def __init__(self, path: Path, tmp_suffix: str = ""):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}{tmp_suffix}")

    def _finish(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def commit(self) -> None:
        self._finish()
        replace_path(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._close()
        finally:
            remove_path(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def replace_path(tmp: Path, path: Path) -> None:
    """Atomically move ``tmp`` to ``path`` (a folder replaces an existing folder)."""
    if tmp.is_dir() and path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        remove_path(old)
    else:
        os.replace(tmp, path)


def remove_path(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make exports private
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
