"""User-facing errors: one line, non-zero exit, no traceback (see ``cli.main``)."""

from pathlib import Path


class UserError(Exception):
    """A problem the user can fix (bad path, wrong file, bad argument); printed as one line."""


def require_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path if it is an existing file; otherwise a one-line :class:`UserError`
    that says whether it is missing or a directory (``what``: "checkpoint", "bitstream", …)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    return path
