"""What every command family shares: the conventions of the command line.

Outputs: ``-o/--output FILE`` for a file, ``--out-dir DIR`` for a folder; an existing
output is replaced only with ``--overwrite``; ``--quiet`` silences progress and summaries.
Old spellings stay for one release (:class:`Deprecated`) and say what replaces them.
Nothing here imports torch: argument checks run before any heavy import.
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

from nvc_train.errors import UserError, require_file

REMOVED_IN = "0.3"  # the release that drops the deprecated spellings


def warn_deprecated(old: str, new: str) -> None:
    print(f"nvc-train: warning: {old} is deprecated, use {new} (the old spelling goes in {REMOVED_IN})",
          file=sys.stderr)


class Deprecated(argparse.Action):
    """An old option spelling: stores into the new option's ``dest`` and prints one warning.

    ``add_argument("--out", dest="out_dir", action=Deprecated, new="--out-dir")``; with
    ``nargs=0`` it is a flag that stores ``const`` (an old ``store_true``).
    """

    def __init__(self, option_strings, dest, new: str, nargs=None, const=None, **kwargs):
        kwargs["help"] = argparse.SUPPRESS  # documented under the new spelling only
        super().__init__(option_strings, dest, nargs=nargs, const=const, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        warn_deprecated(option_string, self.new)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_out_dir(s: argparse.ArgumentParser, help: str, old: str | None = "--out") -> None:
    """``--out-dir DIR`` (required, checked after parsing so the old spelling counts)."""
    s.add_argument("--out-dir", default=None, metavar="DIR", help=f"{help} (required)")
    if old:
        s.add_argument(old, dest="out_dir", action=Deprecated, new="--out-dir")
    required_after_parsing(s, "out_dir", "--out-dir")


def required_after_parsing(s: argparse.ArgumentParser, dest: str, flag: str) -> None:
    """Mark ``dest`` as required where a deprecated alias may also fill it (argparse's own
    ``required=True`` would reject the alias); ``cli.main`` checks it."""
    s.set_defaults(_required=(*(s.get_default("_required") or ()), (dest, flag)))


def add_overwrite(s: argparse.ArgumentParser, what: str = "an existing output") -> None:
    s.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_quiet(s: argparse.ArgumentParser, help: str = "no progress bar or summary") -> None:
    s.add_argument("-q", "--quiet", action="store_true", help=help)


def add_device(s: argparse.ArgumentParser) -> None:
    s.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")


CHECKPOINT_HELP = "a file, or hf://OWNER/NAME[@REV][/FILE] on the Hugging Face Hub"


def add_runtime(s: argparse.ArgumentParser) -> None:
    """``--runtime torch|onnx`` and ``--onnx DIR``: which engine runs the integer networks."""
    s.add_argument("--runtime", default=None, choices=("torch", "onnx"),
                   help="run the integer networks in PyTorch (default) or in ONNX Runtime; the entropy decoding is "
                        "CompressAI's rANS either way, and the results are the same")
    s.add_argument("--onnx", default=None, metavar="DIR",
                   help="the checkpoint's `nvc-train export-onnx` folder (implies --runtime onnx; without it, "
                        "--runtime onnx exports one to a temporary folder first)")


def checked_runtime(args) -> str:
    """The runtime the arguments ask for, checked before any heavy import."""
    # getattr: callers that build their own Namespace (tests, scripts) need not know the options.
    onnx = getattr(args, "onnx", None)
    runtime = getattr(args, "runtime", None) or ("onnx" if onnx else "torch")
    if runtime == "torch" and onnx:
        raise UserError("--onnx DIR runs the networks in ONNX Runtime: drop --runtime torch, or drop --onnx")
    if runtime == "onnx":
        if getattr(args, "device", "cpu") != "cpu":
            raise UserError(f"--runtime onnx runs on ONNX Runtime's CPU provider: drop --device {args.device}")
        if onnx and not Path(onnx).is_dir():
            raise UserError(f"--onnx {onnx}: no such folder (write one with `nvc-train export-onnx CKPT "
                            "--out-dir DIR`)")
    return runtime


def use_runtime(args, ck, runtime: str, self_check: bool = True):
    """Put the loaded checkpoint ``ck``'s networks on ``runtime``; returns ``ck``. ONNX
    Runtime: the ``--onnx`` folder (checked against the checkpoint), else a fresh export in a
    temporary folder, then its load-time self-test."""
    if runtime != "onnx":
        return ck
    from nvc_train.portable.runtime import run_in_onnx_runtime

    return run_in_onnx_runtime(ck, getattr(args, "onnx", None), self_check=self_check)


def device(name: str) -> str:
    """``--device`` checked: cpu, cuda or cuda:N, and CUDA present for the latter."""
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}: use cpu or cuda")
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda requested but CUDA is not available on this machine")
    return name


def checkpoint_path(text: str) -> Path:
    """A checkpoint argument as a local file: a path, or ``hf://OWNER/NAME[@REV][/FILE]``
    fetched into the Hugging Face cache and checked (:mod:`nvc_train.hf.refs`)."""
    from nvc_train.hf.refs import is_hub_ref, resolve_checkpoint

    if not is_hub_ref(text):
        return require_file(text, "checkpoint")  # before any heavy import: a typo is reported at once
    return resolve_checkpoint(text)


def check_gop_frames(args) -> None:
    if args.gop < 0:
        raise UserError(f"--gop {args.gop}: must be ≥ 0 (0: only the first frame is a keyframe)")
    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames {args.frames}: must be ≥ 1")


def add_input_options(s: argparse.ArgumentParser, what: str, output: bool = False) -> None:
    """How to read raw inputs (size, rate, bit depth) and which Y'CbCr colour they use."""
    raw = "raw .yuv --reference only" if output else "raw .yuv only"
    s.add_argument("--size", default=None, help=f"{raw}: WIDTHxHEIGHT (else parsed from the file name)")
    s.add_argument("--fps", default=None, help="frame rate, e.g. 25 or 30000/1001 (raw .yuv and PNG folders: default 25)")
    s.add_argument("--bits", type=int, default=None, choices=(8, 10, 12, 16), help=f"{raw}: bit depth (default 8)")
    source = "the bitstream's (its source's)" if output else "the file's colour tags"
    s.add_argument("--matrix", default=None, choices=("bt709", "bt601", "bt2020"),
                   help=f"Y'CbCr matrix of the {what} (default: {source}, else bt709)")
    s.add_argument("--range", default=None, choices=("limited", "full"),
                   help=f"Y'CbCr range of the {what} (default: {source}, else limited)")


def input_options(args):
    """The parsed :func:`add_input_options` as :class:`nvc_train.io.video.InputOptions`
    (checked first; the import of the video module, and so of torch, comes last)."""
    width, height, fps = checked_input_options(args)
    from nvc_train.io.video import InputOptions

    return InputOptions(width, height, fps, getattr(args, "bits", None), args.matrix, args.range)


def checked_input_options(args) -> tuple[int | None, int | None, Fraction | None]:
    """(width, height, fps) of :func:`add_input_options`, checked, without importing anything."""
    width = height = None
    if getattr(args, "size", None):
        try:
            width, height = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise UserError(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 1920x1080") from None
        if width <= 0 or height <= 0:
            raise UserError(f"--size {args.size!r}: sides must be positive")
    fps = None
    if getattr(args, "fps", None):
        try:
            fps = Fraction(args.fps)
        except (ValueError, ZeroDivisionError):
            raise UserError(f"--fps {args.fps!r}: expected a number or a ratio like 30000/1001") from None
        if fps <= 0:
            raise UserError(f"--fps {args.fps!r}: must be positive")
    return width, height, fps
