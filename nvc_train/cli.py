"""nvc-train: LightningCLI for fit/validate/test; plain subcommands for everything else.

Every user error ends in one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings

LIGHTNING_COMMANDS = ("fit", "validate", "test")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``nvc-train: error: encode: argument --gop: …``,
    exit 2 by ``main``) instead of a usage block under another prefix, and no abbreviated
    options (``--overw`` is a typo, not ``--overwrite``). Sub-parsers inherit both."""

    def __init__(self, *args, allow_abbrev: bool = False, **kwargs):
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def error(self, message: str):
        from nvc_train.errors import UserError

        command = self.prog.removeprefix("nvc-train").strip()
        hint = f" (see `{self.prog} --help`)"
        raise UserError(f"{command + ': ' if command else ''}{message}{hint}")


def build_parser() -> argparse.ArgumentParser:
    """The plain subcommands' parser; each family of commands adds its own (:mod:`nvc_train.commands`)."""
    from nvc_train.commands import FAMILIES

    p = OneLineParser(prog="nvc-train", description=__doc__.splitlines()[0],
                      epilog="Outputs: -o/--output FILE for a file, --out-dir DIR for a folder; an existing output is "
                             "replaced only with --overwrite; -q/--quiet silences progress and summaries.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"Lightning {name} (see `nvc-train {name} --help`)", add_help=False)
    for family in FAMILIES:
        family.add_parsers(sub)
    return p


def _check_required(args) -> None:
    """Options that are required but may also come through a deprecated spelling."""
    from nvc_train.errors import UserError

    missing = [flag for dest, flag in getattr(args, "_required", ()) if getattr(args, dest, None) is None]
    if missing:
        raise UserError(f"{args.command}: the following arguments are required: {', '.join(missing)} "
                        f"(see `nvc-train {args.command} --help`)")


def main(argv: list[str] | None = None) -> int:
    from nvc_train.errors import UserError, first_line

    argv = list(sys.argv[1:] if argv is None else argv)
    _silence_library_noise()
    try:
        if argv and argv[0] in LIGHTNING_COMMANDS:
            from nvc_train.lit.precheck import precheck
            from nvc_train.presets import resolve_config_args

            from_sys_argv = argv == sys.argv[1:]
            argv = resolve_config_args(argv)  # presets by name from any folder
            precheck(argv)  # option names and files, before Lightning's ~10 s import
            if from_sys_argv:  # LightningCLI reads sys.argv itself when called from the console script
                sys.argv[1:] = argv
            _run_lightning_guarded(argv, from_sys_argv=from_sys_argv)
            return 0
        args = build_parser().parse_args(argv)
        _check_required(args)
        try:
            return args.run(args) or 0
        except BrokenPipeError:
            return _closed_stdout()
        except OSError as exc:  # an unwritable or vanished output, a full disk: the system's word, one line
            raise UserError(_os_error(exc)) from None
    except UserError as exc:
        # First line only: an error re-raised from a DataLoader worker carries its traceback.
        print(f"nvc-train: error: {first_line(str(exc), 'error')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nvc-train: interrupted", file=sys.stderr)
        return 130


def _closed_stdout() -> int:
    """The reader of stdout went away (``nvc-train info --per-frame | head``): end quietly, as
    ``cat`` does. stdout is pointed at /dev/null first, so the interpreter's own flush at exit
    does not fail a second time; 141 is the shell's status for SIGPIPE."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def _silence_library_noise() -> None:
    """Drop messages a user can do nothing about, so the steps, progress and results show."""
    import logging

    # CompressAI scripts its entropy coder at import; torch 2.14 warns about that on every run.
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
    # Lightning's own pytree helper uses an API torch 2.14 deprecates, once per fit.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    if "SLURM_JOB_ID" not in os.environ:  # outside a job, not using srun is the intent, not a mistake
        warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")

    class NoAdverts(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "litlogger" not in str(record.msg)  # Lightning's "💡 Tip: … try installing litlogger"

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):
        logging.getLogger(name).addFilter(NoAdverts())


def _run_lightning_guarded(argv: list[str], from_sys_argv: bool = False) -> None:
    """Turn config and argument errors into one-line :class:`UserError`s."""
    from jsonargparse import ArgumentError

    from nvc_train.errors import UserError
    from nvc_train.lit.cli import run_lightning

    try:
        run_lightning(None if from_sys_argv else argv)
    except ArgumentError as exc:
        raise UserError(_summarise_argument_error(str(exc))) from None
    except OSError as exc:  # e.g. a --ckpt_path in a config file that does not exist, a full disk
        raise UserError(_os_error(exc)) from None
    except SystemExit as exc:  # --help and --print_config exit 0; keep that
        if exc.code not in (0, None):
            raise UserError(f"invalid arguments for `{argv[0]}`") from None
        raise


def _summarise_argument_error(message: str) -> str:
    """One line from jsonargparse's multi-line report: the missing options by their flags,
    else the failing class's own complaint, else the first line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()] or ["invalid arguments"]
    key = re.match(r'Parser key "([\w.]+)"', lines[0])
    for line in lines:
        missing = re.search(r"the following arguments are required: (.+)$", line)
        if missing:
            prefix = f"--{key.group(1)}." if key else ""
            names = [name.strip() for name in missing.group(1).split(",")]
            return "missing " + ", ".join(name if name.startswith("-") else prefix + name for name in names)
    for i, line in enumerate(lines):
        if line.startswith("- Problem with given class_path"):
            detail = []
            for nested in lines[i + 1:]:
                if nested.startswith("- "):
                    break
                detail.append(nested)
            text = " ".join(detail)
            class_path = re.search(r"class_path '([\w.]+)'", line)
            option = re.fullmatch(r"Option '(\w+)' is not accepted", text)
            if key and class_path and option:
                return _unaccepted_option(key.group(1), class_path.group(1), option.group(1))
            if key:  # 'Parser key "crop": Expected …' → '--data.crop: Expected …'
                text = re.sub(r'Parser key "([\w.]+)":', lambda m: f"--{key.group(1)}.{m.group(1)}:", text)
            return text or lines[0]
    return lines[0]


def _unaccepted_option(group: str, class_path: str, option: str) -> str:
    """``--data.val_size`` given to a class without it: name the class, its options, a close
    spelling, and the project's classes of that group that do take it."""
    import difflib
    import importlib
    import inspect

    module_name, _, class_name = class_path.rpartition(".")

    def options_of(cls) -> list[str]:
        return [n for n, p in inspect.signature(cls.__init__).parameters.items()
                if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    try:
        module = importlib.import_module(module_name)
        accepted = options_of(getattr(module, class_name))
    except (ImportError, AttributeError, ValueError, TypeError):
        return f"--{group}.{option}: {class_name} takes no option {option}"
    others = [name for name, cls in vars(module).items()
              if inspect.isclass(cls) and name != class_name and cls.__module__ == module_name
              and name.endswith("DataModule") and option in options_of(cls)]
    close = [] if others else difflib.get_close_matches(option, accepted, n=1, cutoff=0.75)
    hint = (f"; did you mean --{group}.{close[0]}?" if close else "") + \
        (f"; {option} is an option of {' and '.join(others)}, not of the one this config uses" if others else "")
    return f"--{group}.{option}: {class_name} takes no option {option} (its options: {', '.join(accepted)}){hint}"


def _os_error(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}: {where}" if where else reason


if __name__ == "__main__":
    sys.exit(main())
