"""nvc-train: LightningCLI for fit/validate/test; plain subcommands for everything else.

Every user error ends in one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path

LIGHTNING_COMMANDS = ("fit", "validate", "test")


def configure_wandb_env(run_dir: str | Path) -> None:
    """Offline W&B by default (``WANDB_MODE=online`` to sync live), all files in the run folder."""
    run_dir = Path(run_dir).resolve()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", ".wandb-cache"), ("WANDB_CONFIG_DIR", ".wandb-config"),
                     ("WANDB_DATA_DIR", ".wandb-data"), ("WANDB_ARTIFACT_DIR", ".wandb-artifacts")):
        path = run_dir / sub
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(path)


def run_lightning(args: list[str] | None) -> None:
    """``nvc-train fit|validate|test --config FILE ...`` (LightningCLI)."""
    make_cli(args)


def make_cli(args: list[str] | None, run: bool = True):
    """nvc-train's LightningCLI; ``run=False`` (no subcommand in ``args``) only instantiates
    the model, data and trainer, as tests of the shipped presets do."""
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    from nvc_train.errors import UserError

    from nvc_train.lit.data import SyntheticClipDataModule
    from nvc_train.lit.module import SSFLitModule

    class NVCTrainCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            from jsonargparse import lazy_instance

            parser.set_defaults({"data": lazy_instance(SyntheticClipDataModule)})

        def before_instantiate_classes(self):
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            configure_wandb_env(cfg.trainer.default_root_dir or "runs/default")

        def instantiate_classes(self):
            # Constructors validate their arguments (quality, QuantConfig, crop sizes);
            # jsonargparse wraps those errors in its own, so report the root cause.
            try:
                super().instantiate_classes()
            except (ValueError, TypeError) as exc:
                raise UserError(f"invalid configuration: {_root_cause(exc)}") from None
            from lightning.pytorch.loggers import WandbLogger

            for logger in self.trainer.loggers:
                # Lightning passes anonymous=None to wandb.init, which warns on every run that
                # the (unused) setting is deprecated; leave it out unless it was asked for.
                if isinstance(logger, WandbLogger) and logger._wandb_init.get("anonymous") is None:
                    logger._wandb_init.pop("anonymous", None)

        def before_fit(self):
            # Every run folder records where the run came from, once per (re)start (issue #7).
            from nvc_train.lit.provenance import RunProvenance

            self.trainer.callbacks.append(RunProvenance())
            # Under SLURM, requeue at a safe point instead of in Lightning's signal handler
            # (a DDP hang, see nvc_train/lit/requeue.py).
            from lightning.fabric.plugins.environments import SLURMEnvironment

            from nvc_train.lit.requeue import SlurmRequeue

            env = self.trainer._accelerator_connector.cluster_environment
            if isinstance(env, SLURMEnvironment) and env.auto_requeue:
                env.auto_requeue = False
                self.trainer.callbacks.append(SlurmRequeue(env.requeue_signal))

    return NVCTrainCLI(SSFLitModule, L.LightningDataModule, subclass_mode_data=True, args=args, run=run,
                       save_config_kwargs={"overwrite": True},
                       parser_kwargs={"exit_on_error": False, "allow_abbrev": False}, seed_everything_default=0)


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
    p = OneLineParser(prog="nvc-train", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"Lightning {name} (see `nvc-train {name} --help`)", add_help=False)

    s = sub.add_parser("export-float", help="Lightning checkpoint → plain ScaleSpaceFlow state dict (CompressAI-loadable)",
                       description="Write the float model of a `nvc-train fit` run as a ScaleSpaceFlow state dict with "
                                   "its entropy tables computed. With --zoo, OUT is a folder and the file is written "
                                   "as CompressAI's update_model writes zoo weights, named ssf2020-mse-<quality>-<sha8>"
                                   ".pth.tar, for CompressAI's zoo loader and eval_model.")
    s.add_argument("checkpoint", help="Lightning .ckpt from `nvc-train fit`")
    s.add_argument("out", help="output .pth.tar (with --zoo: output folder)")
    s.add_argument("--zoo", action="store_true", help="CompressAI zoo format and name (flow_reference is not stored)")
    s.add_argument("--quality", type=int, default=None, choices=range(1, 10), metavar="{1..9}",
                   help="--zoo: the quality in the file name (default: the run's)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    s = sub.add_parser("export", help="QAT Lightning checkpoint → integer checkpoint <name>-<sha8>.ckpt + model card")
    s.add_argument("checkpoint", help="Lightning .ckpt of a QAT run")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--name", default="ssf-int", help="file name stem (default: %(default)s)")
    s.add_argument("--quiet", action="store_true", help="print only the files written")

    s = sub.add_parser("ptq", help="post-training quantization of a float model (the published baseline), "
                                   "one configuration or the full observer x scheme search")
    s.add_argument("model", help="float model: ScaleSpaceFlow .pth.tar or Lightning .ckpt (or hf://OWNER/NAME/FILE)")
    s.add_argument("--out", required=True, help="output folder: report (md, json, W&B) and the integer checkpoint")
    s.add_argument("--name", default="ssf-ptq", help="checkpoint file name stem (default: %(default)s)")
    s.add_argument("--search", action="store_true", help="score all 60 observer x scheme candidates, export the best")
    s.add_argument("--weight-observer", default="PerChannelMinMax")
    s.add_argument("--weight-scheme", default="symmetric", choices=("affine", "symmetric"))
    s.add_argument("--act-observer", default="MinMax")
    s.add_argument("--act-scheme", default="affine", choices=("affine", "symmetric"))
    s.add_argument("--quality", type=int, default=None, choices=range(1, 10), metavar="{1..9}",
                   help="λ preset for the RD cost: required for a .pth.tar (a Lightning .ckpt records its own)")
    s.add_argument("--lmbda", type=float, default=None, help="explicit λ for the RD cost")
    s.add_argument("--calib-clips", type=int, default=4, help="synthetic calibration clips (default: %(default)s)")
    s.add_argument("--val-clips", type=int, default=2, help="synthetic validation clips (default: %(default)s)")
    s.add_argument("--frames", type=int, default=3)
    s.add_argument("--size", type=int, default=256, help="clip side in pixels, multiple of 128 (default: %(default)s)")
    s.add_argument("--overwrite", action="store_true", help="replace the reports and checkpoint of an earlier run in OUT")
    s.add_argument("--quiet", action="store_true")

    s = sub.add_parser("conformance", help="decode a checkpoint's embedded conformance bitstream; exit 0 only if exact")
    s.add_argument("--quiet", action="store_true", help="print only the verdict line (and any difference)")
    s.add_argument("checkpoint", help="integer checkpoint (a file, or hf://OWNER/NAME[@REV][/FILE] on the Hugging Face Hub)")
    s.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")

    s = sub.add_parser("verify", help="print per-frame latent SHA-256 of a bitstream (diff across machines)")
    s.add_argument("bitstream")
    s.add_argument("--checkpoint", required=True, help="integer checkpoint (a file, or hf://OWNER/NAME[@REV][/FILE] on the Hugging Face Hub)")
    s.add_argument("--device", default="cpu")

    s = sub.add_parser("encode", help="video file → .nvc bitstream (integer checkpoint)",
                       description="Encode a video (.mp4/.mov/.mkv/.avi/.webm, .y4m, raw .yuv, PNG folder) "
                                   "as a keyframe every --gop frames and P-frames between.")
    s.add_argument("input", help="video file, .y4m, .yuv or a folder of PNG frames")
    s.add_argument("-o", "--output", required=True, help="output .nvc file")
    s.add_argument("--checkpoint", required=True, help="integer checkpoint from `nvc-train export` or `ptq` (a file, or hf://OWNER/NAME[@REV][/FILE] on the Hugging Face Hub)")
    s.add_argument("--frames", type=int, default=None, help="encode at most N frames")
    s.add_argument("--gop", type=int, default=32, help="keyframe every G frames; 0 = only the first (default: %(default)s)")
    s.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    _add_input_options(s, "input")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    s = sub.add_parser("decode", help=".nvc bitstream → video (y4m, yuv, mp4/mkv/mov, PNG folder)",
                       description="Decode a .nvc bitstream. The output format follows the suffix of -o; a path "
                                   "without a suffix becomes a folder of PNG frames. Without -o, decode only "
                                   "(e.g. to measure against --reference).")
    s.add_argument("bitstream")
    s.add_argument("-o", "--output", default=None, help="output .y4m, .yuv (yuv420p), .mp4/.mkv/.mov or PNG folder")
    s.add_argument("--checkpoint", required=True, help="the integer checkpoint the bitstream was encoded with (a file, or hf://OWNER/NAME[@REV][/FILE] on the Hugging Face Hub)")
    s.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    s.add_argument("--mp4-mode", default="lossless", choices=("lossless", "high"),
                   help="lossless: H.264 RGB at QP 0 (exact 8-bit RGB, fewer players); high: H.264 4:2:0 CRF 12 "
                        "(plays everywhere) (default: %(default)s)")
    s.add_argument("--reference", default=None, help="source video to report PSNR-RGB, MS-SSIM and bpp against")
    _add_input_options(s, "output", output=True)
    s.add_argument("--reference-matrix", default=None, choices=("bt709", "bt601", "bt2020"),
                   help="Y'CbCr matrix of the --reference (default: its colour tags, else bt709); "
                        "independent of --matrix, which only sets the output's")
    s.add_argument("--reference-range", default=None, choices=("limited", "full"),
                   help="Y'CbCr range of the --reference (default: its colour tags, else limited)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    s = sub.add_parser("info", help="describe a .nvc bitstream: header, frame types and sizes")
    s.add_argument("bitstream")
    s.add_argument("--per-frame", action="store_true", help="one line per frame: type, bytes, bpp")
    s.add_argument("--json", action="store_true", help="print JSON")

    s = sub.add_parser("eval", help="rate-distortion by real encode/decode: CompressAI JSON, RD plot, W&B run",
                       description="Encode and decode every sequence with every model. Integer checkpoints are "
                                   "grouped as ptq or qat by their metadata; float ScaleSpaceFlow state dicts "
                                   "(.pth.tar) are the float family. Writes OUT/<family>.json (CompressAI format), "
                                   "OUT/sequences/<seq>-<model>.json (per frame), OUT/rd.png, OUT/summary.md.")
    s.add_argument("--checkpoint", nargs="+", required=True, help="integer .ckpt and/or float .pth.tar files, or hf://OWNER/NAME[@REV][/FILE]")
    s.add_argument("--data", nargs="+", required=True,
                   help="video files, PNG folders, folders of them, or a prepare-footage folder (its validation files)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--frames", type=int, default=None, help="code at most N frames per sequence")
    s.add_argument("--gop", type=int, default=32, help="keyframe every G frames; 0 = only the first (default: %(default)s)")
    s.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    _add_input_options(s, "inputs")
    s.add_argument("--wandb-project", default="nvc-train", help="W&B project (offline unless WANDB_MODE=online)")
    s.add_argument("--wandb-name", default=None, help="W&B run name")
    s.add_argument("--overwrite", action="store_true", help="replace the results of an earlier evaluation in OUT")
    s.add_argument("--quiet", action="store_true")

    s = sub.add_parser("bdrate", help="Bjøntegaard delta rate / PSNR between RD curves (CompressAI results JSON)")
    s.add_argument("anchor", help="results JSON of the anchor, e.g. OUT/float.json")
    s.add_argument("test", nargs="+", help="results JSON(s) to compare, e.g. OUT/qat.json")
    s.add_argument("--metric", default="psnr-rgb", help="quality key (default: %(default)s; ms-ssim keys in dB)")
    s.add_argument("--rate", default="bpp", help="rate key: bpp or bitrate (default: %(default)s)")

    s = sub.add_parser("compare", help="compare two machines' `nvc-train verify` outputs (and their decodes)",
                       description="Names every frame whose decoded latents differ between two machines; with "
                                   "--decodes, prints the PSNR between the two decoded videos per frame and its "
                                   "position in the GOP (pixel drift of the float synthesis). Exit 1 if latents differ.")
    s.add_argument("hashes_a", help="`nvc-train verify` output of machine A")
    s.add_argument("hashes_b", help="`nvc-train verify` output of machine B")
    s.add_argument("--decodes", nargs=2, metavar=("VIDEO_A", "VIDEO_B"), help="the same bitstream decoded on A and B")

    s = sub.add_parser("prepare-footage", help="index clips of your video files as a training dataset (train/validation by file)",
                       description="Scan SRC (a folder tree of .mp4/.mov/.mkv/.avi/.webm/.y4m files, or "
                                   "hf://datasets/OWNER/NAME[@REV]), decode every file once, and write a Hugging Face "
                                   "dataset of clips (file, start frame, size, fps) to OUT with a train/validation split "
                                   "by file. Unreadable or too short files are skipped and listed. Train on it with "
                                   "`nvc-train fit --config configs/finetune/footage.yaml --data.root OUT`.")
    s.add_argument("source", metavar="SRC", help="footage folder (or one file), or hf://datasets/OWNER/NAME[@REV]")
    s.add_argument("--out", required=True, help="output folder (dataset/, footage.json, cache/)")
    s.add_argument("--clip-len", type=int, default=3, help="frames per clip (default: %(default)s)")
    s.add_argument("--stride", type=int, default=None, help="frames between clip starts (default: the clip length)")
    s.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of files held out for validation (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="seed of the file split (default: %(default)s)")
    s.add_argument("--cache", action="store_true",
                   help="also store every frame as raw RGB (fast loading; 3 bytes per pixel per frame on disk)")
    s.add_argument("--downscale", type=float, default=1.0,
                   help="scale every frame by this factor in (0, 1], e.g. 0.5 for 1080p → 540p (default: %(default)s)")
    s.add_argument("--jobs", type=int, default=1, help="files decoded in parallel (default: %(default)s)")
    s.add_argument("--overwrite", action="store_true", help="replace prepared footage already in OUT")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    s = sub.add_parser("publish", help="upload an integer checkpoint, its model card and manifest to the Hugging Face Hub",
                       description="Check CHECKPOINT on this machine (every conformance record must decode exactly), "
                                   "then commit it to the Hub model repository OWNER/NAME with a README.md model card "
                                   "(Hub YAML header, RD results from --eval) and nvc-train.json, the manifest through "
                                   "which `--checkpoint hf://OWNER/NAME` finds and hash-checks it. Needs a write token "
                                   "(`hf auth login` or HF_TOKEN).")
    s.add_argument("checkpoint", help="integer checkpoint from `nvc-train export` or `ptq`")
    s.add_argument("--repo", required=True, metavar="OWNER/NAME", help="Hub model repository (created if missing)")
    s.add_argument("--revision", default=None, metavar="BRANCH", help="branch to commit to (created if missing; "
                                                                         "default: main)")
    s.add_argument("--private", action="store_true", help="create the repository private")
    s.add_argument("--float", dest="float_parent", default=None, metavar="PTH",
                   help="also publish the float parent (.pth.tar from `nvc-train export-float`)")
    s.add_argument("--eval", dest="eval_dir", default=None, metavar="OUT",
                   help="`nvc-train eval --out` folder with results for this checkpoint (model-index, BD-rate)")
    s.add_argument("--license", default=None, help="licence id for the card (default: bsd-3-clause-clear, "
                                                   "CompressAI's, when started from its zoo; else other)")
    s.add_argument("--base-model", default=None, metavar="OWNER/NAME", help="Hub model it was fine-tuned from")
    s.add_argument("--dataset", action="append", default=[], metavar="OWNER/NAME",
                   help="Hub dataset it was trained on (repeatable; an hf://datasets root is added by itself)")
    s.add_argument("--overwrite", action="store_true", help="replace files of the same name with different content")
    s.add_argument("--dry-run", default=None, metavar="DIR", help="write the files to DIR instead of uploading")
    s.add_argument("--quiet", action="store_true", help="print only the result")

    s = sub.add_parser("demo", help="train float SSF → QAT → export → conformance on generated data")
    s.add_argument("--checkpoints", default="checkpoints/demo", help="where the demo models go (default: %(default)s)")
    s.add_argument("--float-steps", type=int, default=None, help="override the float preset's max_steps")
    s.add_argument("--qat-steps", type=int, default=None, help="override the QAT preset's max_steps")
    return p


def _add_input_options(s: argparse.ArgumentParser, what: str, output: bool = False) -> None:
    raw = "raw .yuv --reference only" if output else "raw .yuv only"
    s.add_argument("--size", default=None, help=f"{raw}: WIDTHxHEIGHT (else parsed from the file name)")
    s.add_argument("--fps", default=None, help="frame rate, e.g. 25 or 30000/1001 (raw .yuv and PNG folders: default 25)")
    s.add_argument("--bits", type=int, default=None, choices=(8, 10, 12, 16), help=f"{raw}: bit depth (default 8)")
    source = "the bitstream's (its source's)" if output else "the file's colour tags"
    s.add_argument("--matrix", default=None, choices=("bt709", "bt601", "bt2020"),
                   help=f"Y'CbCr matrix of the {what} (default: {source}, else bt709)")
    s.add_argument("--range", default=None, choices=("limited", "full"),
                   help=f"Y'CbCr range of the {what} (default: {source}, else limited)")


def main(argv: list[str] | None = None) -> int:
    from nvc_train.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    _silence_library_noise()
    try:
        if argv and argv[0] in LIGHTNING_COMMANDS:
            from nvc_train.presets import resolve_config_args

            from_sys_argv = argv == sys.argv[1:]
            argv = resolve_config_args(argv)  # presets by name from any folder
            if from_sys_argv:  # LightningCLI reads sys.argv itself when called from the console script
                sys.argv[1:] = argv
            _run_lightning_guarded(argv, from_sys_argv=from_sys_argv)
            return 0
        args = build_parser().parse_args(argv)
        from nvc_train import commands

        name = {"eval": "evaluate"}.get(args.command, args.command.replace("-", "_"))
        try:
            return getattr(commands, name)(args) or 0
        except OSError as exc:  # an unwritable or vanished output, a full disk: the system's word, one line
            raise UserError(_os_error(exc)) from None
    except UserError as exc:
        # First line only: an error re-raised from a DataLoader worker carries its traceback.
        print(f"nvc-train: error: {_first_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nvc-train: interrupted", file=sys.stderr)
        return 130


def _silence_library_noise() -> None:
    """Drop messages a user can do nothing about, so the steps, progress and results show."""
    import logging

    # CompressAI scripts its entropy coder at import; torch 2.14 warns about that on every run.
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
    # Lightning's own pytree helper uses an API torch 2.14 deprecates, once per fit.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

    class NoAdverts(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "litlogger" not in str(record.msg)  # Lightning's "💡 Tip: … try installing litlogger"

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):
        logging.getLogger(name).addFilter(NoAdverts())


def _run_lightning_guarded(argv: list[str], from_sys_argv: bool = False) -> None:
    """Turn config and argument errors into one-line :class:`UserError`s."""
    from jsonargparse import ArgumentError

    from nvc_train.errors import UserError

    try:
        run_lightning(None if from_sys_argv else argv)
    except ArgumentError as exc:
        raise UserError(_summarise_argument_error(str(exc))) from None
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
            if key:  # 'Parser key "crop": Expected …' → '--data.crop: Expected …'
                text = re.sub(r'Parser key "([\w.]+)":', lambda m: f"--{key.group(1)}.{m.group(1)}:", text)
            return text or lines[0]
    return lines[0]


def _os_error(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}: {where}" if where else reason


def _root_cause(exc: BaseException) -> str:
    """First line of the innermost exception in a chain (``raise ... from`` or implicit)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return _first_line(str(exc))


def _first_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else "invalid configuration"


if __name__ == "__main__":
    sys.exit(main())
