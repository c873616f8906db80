"""Which video paths the codec reads and writes, checked without importing torch or PyAV,
so a wrong output name is reported at once."""

from __future__ import annotations

from pathlib import Path

from nvc_train.errors import UserError, check_output_file

CONTAINER_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
OUTPUT_SUFFIXES = (".y4m", ".yuv", ".mp4", ".mkv", ".mov")


class VideoError(UserError):
    """A video input or output that cannot be used as asked."""


def check_output_path(path: str | Path, overwrite: bool) -> Path:
    """Validate an output path before any work is done (suffix, folder, no silent overwrite)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix and suffix not in OUTPUT_SUFFIXES + (".nvc",):
        raise VideoError(f"unsupported output {path.name}: use {', '.join(OUTPUT_SUFFIXES)} or a folder for PNG frames")
    try:
        return check_output_file(path, overwrite, folder_ok=True)
    except UserError as exc:
        raise VideoError(str(exc)) from None


def check_input_path(path: str | Path, what: str = "input") -> Path:
    """An input video file, .y4m, .yuv or folder of PNG frames that exists."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{what} not found: {path}")
    return path
