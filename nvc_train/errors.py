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


def check_output_dir(path: str | Path, overwrite: bool, results: tuple[str, ...], flag: str = "--out") -> Path:
    """Refuse an output folder that is a file, or that already holds any of ``results`` (file
    names or glob patterns of what this command writes) unless ``overwrite``; creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder")
    parent = next((a for a in path.absolute().parents if a.exists()), None)
    if not path.exists() and parent is not None and not parent.is_dir():
        raise UserError(f"cannot create {flag} {path}: {parent} is a file")
    if not overwrite and path.is_dir():
        found = sorted({p.name for pattern in results for p in path.glob(pattern)})
        if found:
            raise UserError(f"{flag} {path} already holds {', '.join(found[:3])}{' …' if len(found) > 3 else ''}: "
                            f"pass --overwrite to replace, or choose another folder")
    return path


def prepare_output_dir(path: str | Path, overwrite: bool, results: tuple[str, ...], flag: str = "--out") -> Path:
    """:func:`check_output_dir`, then create the folder (before any work is done)."""
    path = check_output_dir(path, overwrite, results, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {flag} {path}: {exc.strerror or exc}") from None
    return path


def check_output_file(path: str | Path, overwrite: bool, folder_ok: bool = False) -> Path:
    """An output path that may be written: its parent folder exists, and it does not (or
    ``overwrite``). ``folder_ok``: the output may be a folder (e.g. of PNG frames)."""
    path = Path(path)
    if path.is_dir() and not folder_ok:
        raise UserError(f"output {path} is a directory, not a file")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists: pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise UserError(f"output folder {path.parent} does not exist")
    return path


def root_cause(exc: BaseException) -> str:
    """First line of the innermost exception in a chain (``raise ... from`` or implicit); a
    ``raise ... from None`` ends the chain there (its message already says what happened)."""
    while True:
        inner = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if inner is None:
            return first_line(str(exc))
        exc = inner


def first_line(message: str, default: str = "invalid configuration") -> str:
    """The first non-blank line (an error re-raised from a DataLoader worker carries its traceback)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else default
