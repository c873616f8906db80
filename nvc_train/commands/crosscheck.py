"""``nvc-train cross-check``: decode the same streams in other environments and print the matrix."""

from __future__ import annotations

import re
from pathlib import Path

from nvc_train.commands.common import CHECKPOINT_HELP, add_quiet, checkpoint_path
from nvc_train.errors import UserError

ENVIRONMENT_GROUPS = ("host", "onnx", "release", "aarch64")
DEMO_CHECKPOINTS = (Path("runs/demo/ssf-int.ckpt"), Path("runs/demo/ssf-pixel.ckpt"))  # `nvc-train demo [--pixel-exact]`
OLDEST_TORCH = "2.4.1"  # the newest patch of pyproject's lower bound (torch>=2.4)


def add_parsers(sub) -> None:
    s = sub.add_parser(
        "cross-check", help="decode the same streams on other CPU kernels, threads, PyTorch releases, aarch64 "
                            "(qemu-user) and CUDA; one line per environment, exit 0 only if all are identical",
        description="Encode a generated stream with each integer checkpoint on this machine, then decode it and the "
                    "checkpoint's conformance records in every environment: latents (SHA-256) and, for pixel-exact "
                    "checkpoints, frames (MD5) must equal this machine's; the same checkpoint's float decoders are "
                    "the control, which should differ. Set-up of other environments is cached under "
                    "~/.cache/nvc-train/cross-check.")
    s.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT",
                   help=f"integer checkpoints ({CHECKPOINT_HELP}); default: the demo's "
                        f"({', '.join(map(str, DEMO_CHECKPOINTS))}) where present, else untrained calibrated "
                        f"stand-ins of both kinds")
    s.add_argument("--envs", default=",".join(ENVIRONMENT_GROUPS), metavar="LIST",
                   help="comma-separated groups: host (CPU kernel levels, 1 thread, oneDNN off, CUDA), onnx (the integer "
                        "networks in ONNX Runtime, default threads and 1; with aarch64, also there), release "
                        "(another PyTorch release in its own venv), aarch64 (qemu-user) (default: %(default)s)")
    s.add_argument("--torch", dest="torch_releases", action="append", default=None, metavar="VERSION",
                   help=f"the release of the 'release' group, repeatable (default: {OLDEST_TORCH}, the oldest "
                        f"supported; this venv's is the newest)")
    s.add_argument("--size", default="768x512", metavar="WxH",
                   help="the generated stream's size, multiples of 128 (default: %(default)s)")
    s.add_argument("--frames", type=int, default=32, help="the generated stream's frames, I then P (default: %(default)s)")
    s.add_argument("--work-dir", default=None, metavar="DIR",
                   help="streams, records and stand-ins (default: ~/.cache/nvc-train/cross-check/work)")
    s.add_argument("--report", default=None, metavar="FILE", help="also write every row as JSON (for a bug report "
                                                                  "or a model card: `publish --cross-check FILE`)")
    s.add_argument("--timeout", type=float, default=3600, metavar="S", help="per environment (default: %(default)s)")
    add_quiet(s, "no set-up messages or rows: only the verdict lines")
    s.set_defaults(run=cross_check)


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m or int(m[1]) % 128 or int(m[2]) % 128 or not int(m[1]) or not int(m[2]):
        raise UserError(f"--size {text}: expected WxH with both multiples of 128, e.g. 768x512")
    return int(m[1]), int(m[2])


def _check_release(text: str) -> None:
    m = re.fullmatch(r"2\.(\d+)\.(\d+)", text)
    if not m or not 4 <= int(m[1]) <= 14:
        raise UserError(f"--torch {text}: nvc-train supports PyTorch 2.4 to 2.14 (pyproject); give a release "
                        f"such as {OLDEST_TORCH}")


def _groups(text: str) -> list[str]:
    groups = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in ENVIRONMENT_GROUPS]
    if unknown or not groups:
        raise UserError(f"--envs {text}: groups are {', '.join(ENVIRONMENT_GROUPS)}")
    return groups


def cross_check(args) -> int:
    width, height = _size(args.size)
    if args.frames < 2:
        raise UserError(f"--frames {args.frames}: must be ≥ 2 (an I-frame and at least one P-frame)")
    groups = _groups(args.envs)
    for version in args.torch_releases or []:
        _check_release(version)
    checkpoints = [checkpoint_path(c) for c in args.checkpoints]
    from nvc_train.crosscheck import environments as E
    from nvc_train.crosscheck.run import run

    work = Path(args.work_dir) if args.work_dir else E.cache_root() / "work"
    if work.exists() and not work.is_dir():
        raise UserError(f"--work-dir {work} is a file, not a folder")
    report = Path(args.report) if args.report else None
    if report is not None and (report.is_dir() or not report.absolute().parent.is_dir()):
        raise UserError(f"--report {report}: not a file in an existing folder")
    work.mkdir(parents=True, exist_ok=True)
    if not checkpoints:
        checkpoints = [p for p in DEMO_CHECKPOINTS if p.is_file()]
        if not checkpoints:
            if not args.quiet:
                print(f"cross-check: no demo checkpoints ({', '.join(map(str, DEMO_CHECKPOINTS))}): using untrained, "
                      f"calibrated stand-ins of both kinds (built once in {work})", flush=True)
            checkpoints = [_standin(work, pixel_exact) for pixel_exact in (False, True)]
    import torch

    rows = E.host_environments(cuda=torch.cuda.is_available())
    if "host" not in groups:
        rows = rows[:1]  # the reference always runs
    # A set-up that cannot finish here (no network, no root) is a row that says why, not the end of the matrix.
    if "release" in groups:
        rows += [_or_skipped(f"PyTorch {v} (own venv)", lambda v=v: E.release_environment(v, args.quiet))
                 for v in (args.torch_releases or [OLDEST_TORCH])]
    if "onnx" in groups:
        rows += E.onnx_environments()
    if "aarch64" in groups:
        rows.append(_or_skipped("aarch64 (qemu-user)", lambda: E.aarch64_environment(args.quiet)))
        if "onnx" in groups:  # the same userland, the networks in ONNX Runtime's aarch64 build
            rows.append(_or_skipped("aarch64 (qemu-user), ONNX Runtime",
                                    lambda base=rows[-1]: E.aarch64_onnx_environment(base, args.quiet)))
    return run(checkpoints, rows, work, width, height, args.frames, args.timeout, report, args.quiet)


def _or_skipped(name: str, set_up):
    from nvc_train.crosscheck.environments import Environment

    try:
        return set_up()
    except UserError as err:
        return Environment(name, [], skip=str(err))


def _standin(work: Path, pixel_exact: bool) -> Path:
    from nvc_train.crosscheck.standin import untrained_checkpoint

    name = "standin-pixel" if pixel_exact else "standin-hyperprior"
    found = sorted(work.glob(f"{name}-*.ckpt"))
    return found[0] if found else untrained_checkpoint(work, pixel_exact, name)
