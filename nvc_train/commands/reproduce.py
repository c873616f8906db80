"""``nvc-train reproduce``: the paper's table in one job.

For every quality and method: the float parent (CompressAI's zoo, or a folder of float
models), then PTQ (the observer × scheme search), hyperprior QAT, pixel-exact QAT or a float
fine-tuning of the same steps (the control); each model coded for real on the test set
(``eval``), each integer model's bitstreams decoded again on a second setting (CUDA where
there is one, else other CPU kernels and one thread); classical anchors (``eval --anchor``);
then the table (:mod:`nvc_train.eval.table`).

One code path for one machine and a cluster: the work is a list of tasks (one per quality and
method, one for the anchors) that ``--task I`` runs alone (a Slurm array task) and a plain run
does in order, and ``--table`` gathers what the tasks wrote. Every stage leaves its output
under ``--out-dir`` and is skipped when it is there; an interrupted training resumes from its
``last.ckpt``.

Output layout::

    OUT/plan.json                      the settings; a later run must agree with them
    OUT/q<Q>/<method>/run/             Lightning run folder (checkpoints, W&B offline run)
    OUT/q<Q>/<method>/<method>-q<Q>.*  the model (.ckpt integer, .pth.tar float)
    OUT/q<Q>/<method>/eval/<dataset>/  `nvc-train eval` of that model
    OUT/q<Q>/<method>/verify.json      the second-setting decode (integer methods)
    OUT/anchors/eval/<dataset>/        `nvc-train eval --anchor …`
    OUT/results/<dataset>/<curve>.json CompressAI results, one file per curve
    OUT/table.md, OUT/table.json, OUT/rd-<dataset>.png
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nvc_train.commands.common import add_device, add_quiet, device
from nvc_train.errors import UserError

METHODS = ("float", "ptq", "qat", "pixel-exact", "float-control")
INTEGER_METHODS = ("ptq", "qat", "pixel-exact")
FIT_PRESETS = {"qat": "qat.yaml", "pixel-exact": "qat_decoder.yaml", "float-control": "finetune.yaml"}
EVAL_FAMILY = {"float": "float", "float-control": "float", "ptq": "ptq", "qat": "qat", "pixel-exact": "pixel-exact"}

TOY_FIT_ARGS = ("--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.limit_val_batches", "1",
                "--trainer.log_every_n_steps", "1", "--data.init_args.num_workers", "0", "--data.init_args.crop", "128",
                "--data.init_args.train_size", "160", "--data.init_args.val_size", "128",
                "--data.init_args.batch_size", "1", "--data.init_args.num_val_clips", "1",
                "--model.real_coding_clips", "0")


@dataclass(frozen=True)
class Preset:
    """What ``--preset`` sets; every field can be overridden on the command line."""

    qualities: tuple[int, ...]
    methods: tuple[str, ...]
    frames: int
    gop: int
    steps: int | None  # None: each training preset's own max_steps
    ptq_search: bool
    anchors: tuple[str, ...]
    fit_args: tuple[str, ...] = ()
    ptq_args: tuple[str, ...] = ()
    about: str = ""


PRESETS = {
    "paper": Preset(tuple(range(1, 9)), METHODS, 96, 32, None, True, ("x264", "x265"),
                    about="qualities 1–8 as the paper; 96 frames, intra period 32 (DCVC's test conditions); "
                          "each training preset's own steps (configs/qat.yaml, qat_decoder.yaml, finetune.yaml)"),
    "toy": Preset((1, 2), ("float", "qat"), 3, 2, 2, False, ("x264",), TOY_FIT_ARGS,
                  ("--size", "128", "--calib-clips", "1", "--val-clips", "1"),
                  about="toy scale: 2 training steps at 128², 3 frames, GOP 2 — checks the pipeline, not the codec"),
}


@dataclass
class Plan:
    """The settings of one reproduction, stored as ``OUT/plan.json``."""

    preset: str
    qualities: list[int]
    methods: list[str]
    datasets: dict[str, str]  # name → folder or file
    frames: int
    gop: int
    steps: int | None
    ptq_search: bool
    anchors: list[str]
    parents: str  # "zoo" or a folder
    fit_args: list[str] = field(default_factory=list)
    ptq_args: list[str] = field(default_factory=list)

    def tasks(self) -> list[tuple[int | None, str]]:
        """(quality, method) per task; the anchors, when asked for, are the last (quality None)."""
        return [(q, m) for q in self.qualities for m in self.methods] + ([(None, "anchors")] if self.anchors else [])

    @property
    def bd_anchor(self) -> str | None:
        """The classical curve BD-rates are taken against: x265 as the paper's field reports, else the first."""
        return "x265" if "x265" in self.anchors else (self.anchors[0] if self.anchors else None)


def add_parsers(sub) -> None:
    s = sub.add_parser("reproduce", help="the paper's table in one job: zoo → PTQ / QAT / pixel-exact → real coding → "
                                         "BD-rate table with x264/x265 anchors and a cross-setting check",
                       description="Train, export and evaluate every method at every quality, code classical anchors, "
                                   "decode each integer model's bitstreams again on a second setting, and write "
                                   "OUT/table.md, OUT/table.json, OUT/results/<dataset>/*.json (CompressAI format) and "
                                   "OUT/rd-<dataset>.png. Re-running skips finished stages and resumes an interrupted "
                                   "training. On Slurm: slurm/reproduce.sh submits one array task per (quality, "
                                   "method) with --task and a dependent job with --table.")
    s.add_argument("--data", nargs="+", required=True, metavar="[NAME=]PATH",
                   help="test sets: folders of .y4m/.yuv/.mp4 sequences (or PNG folders), named NAME or after the folder "
                        "(e.g. UVG=/data/uvg HEVC-B=/data/hevc-b)")
    s.add_argument("--out-dir", required=True, metavar="DIR", help="where every stage and the table go")
    s.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="paper: qualities 1-8, every method, 96 frames, GOP 32; toy: 2 qualities, float and qat, "
                        "2 training steps, 3 frames (default: %(default)s)")
    s.add_argument("--qualities", nargs="+", type=int, default=None, metavar="Q", help="override the preset's qualities (1..9)")
    s.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"override the preset's methods: {', '.join(METHODS)}")
    s.add_argument("--parents", default=None, metavar="DIR",
                   help="a folder of float models (ScaleSpaceFlow .pth.tar: export-float files or zoo files), one per "
                        "quality; default: CompressAI's pretrained ssf2020-mse-Q (torch hub cache)")
    s.add_argument("--frames", type=int, default=None, help="frames coded per sequence (paper: 96)")
    s.add_argument("--gop", type=int, default=None, help="intra period (paper: 32)")
    s.add_argument("--steps", type=int, default=None, help="training steps of every trained method (default: the preset's)")
    s.add_argument("--anchor", nargs="+", default=None, metavar="CODEC",
                   help="classical anchors (x264 x265 av1, or none); BD-rates are taken against x265 if present")
    s.add_argument("--no-ptq-search", dest="ptq_search", action="store_false", default=None,
                   help="PTQ with the default observers instead of the 60-candidate search")
    s.add_argument("--fit-args", default=None, metavar="'ARGS'",
                   help="extra `nvc-train fit` arguments for every training, one string, e.g. "
                        "\"--data.class_path nvc_train.lit.data.VimeoDataModule --data.init_args.root /data/vimeo\"")
    what = s.add_mutually_exclusive_group()
    what.add_argument("--task", type=int, default=None, metavar="I",
                      help="run task I only (0-based; a Slurm array task), not the table")
    what.add_argument("--table", action="store_true", help="only gather finished tasks into the table")
    what.add_argument("--list-tasks", action="store_true", help="print the tasks, one per line, and exit")
    add_device(s)
    add_quiet(s, "no stage lines or progress bars")
    s.set_defaults(run=reproduce)


# --------------------------------------------------------------------------- plan

def _datasets(specs: list[str]) -> dict[str, str]:
    from nvc_train.eval.evaluate import collect_sequences

    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name or spec, spec
        if not name or name in out:
            raise UserError(f"--data {spec}: each test set needs its own name (NAME=PATH)")
        collect_sequences([path])  # one line when nothing in it is a sequence
        out[name] = str(Path(path).resolve())
    return out


def make_plan(args) -> Plan:
    preset = PRESETS[args.preset]
    methods = list(dict.fromkeys(args.methods or preset.methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    qualities = sorted(set(args.qualities or preset.qualities))
    if any(not 1 <= q <= 9 for q in qualities):
        raise UserError(f"--qualities: CompressAI's ssf2020 qualities run from 1 to 9, not {qualities}")
    anchors = [] if args.anchor in (["none"],) else list(args.anchor or preset.anchors)
    frames = args.frames if args.frames is not None else preset.frames
    gop = args.gop if args.gop is not None else preset.gop
    steps = args.steps if args.steps is not None else preset.steps
    for flag, value, low in (("--frames", frames, 1), ("--gop", gop, 0), ("--steps", steps, 1)):
        if value is not None and value < low:
            raise UserError(f"{flag} {value}: must be ≥ {low}")
    fit_args = list(preset.fit_args) + (shlex.split(args.fit_args) if args.fit_args else [])
    return Plan(args.preset, qualities, methods, _datasets(args.data), frames, gop, steps,
                preset.ptq_search if args.ptq_search is None else args.ptq_search, anchors,
                str(Path(args.parents).resolve()) if args.parents else "zoo", fit_args, list(preset.ptq_args))


def _store_plan(out: Path, plan: Plan) -> None:
    """Write ``plan.json``, or check that the one there says the same (array tasks share it)."""
    from nvc_train.io.atomic import atomic_write_bytes

    path = out / "plan.json"
    mine = asdict(plan)
    if path.is_file():
        theirs = json.loads(path.read_text())
        differ = [k for k in mine if theirs.get(k) != mine[k]]
        if differ:
            raise UserError(f"{out} holds a reproduction with other settings ({', '.join(differ)}): use another "
                            f"--out-dir, or the same options as before")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(mine, indent=2).encode())


def parent_files(plan: Plan) -> dict[int, Path]:
    """The float parent of each quality, every one found before any work starts."""
    from nvc_train.models.zoo_files import check_cached_zoo_file, zoo_entry, zoo_name_parts

    if plan.parents == "zoo":
        found = {}
        for q in plan.qualities:
            entry = zoo_entry(True, q)
            path = check_cached_zoo_file(entry)  # one line when it is missing and downloads are off
            if path is None:
                from nvc_train.models.zoo import fetch_zoo_file

                path = fetch_zoo_file(entry)
            found[q] = path
        return found
    folder = Path(plan.parents)
    if not folder.is_dir():
        raise UserError(f"--parents {folder}: not a folder")
    from nvc_train.models.ssf import read_state_dict

    by_quality: dict[int, Path] = {}
    for path in sorted(folder.glob("*.pth.tar")):
        parts = zoo_name_parts(path.name)
        quality = parts[1] if parts else read_state_dict(path).quality
        if quality in plan.qualities:
            if quality in by_quality:
                raise UserError(f"--parents {folder}: two float models of quality {quality}: "
                                f"{by_quality[quality].name} and {path.name}")
            by_quality[quality] = path
    missing = [q for q in plan.qualities if q not in by_quality]
    if missing:
        raise UserError(f"--parents {folder} has no float model of quality {', '.join(map(str, missing))} "
                        "(.pth.tar recording its quality, as export-float writes them, or zoo-named files)")
    return by_quality


# --------------------------------------------------------------------------- stages

class Log:
    """Stage lines (unless quiet) and ``OUT/commands.txt``: each stage as the command a person would type."""

    def __init__(self, out: Path, quiet: bool):
        self.out, self.quiet = out, quiet

    def stage(self, message: str) -> None:
        if not self.quiet:
            print(f"[reproduce] {message}", flush=True)

    def command(self, argv: list[str]) -> None:
        with open(self.out / "commands.txt", "a") as f:
            f.write(shlex.join(["nvc-train", *map(str, argv)]) + "\n")


def _run_command(module, argv: list[str], quiet: bool) -> int:
    """A plain nvc-train subcommand of ``module`` (export, evaluation), in this process; with
    ``quiet``, not even the files it wrote are printed (the stage lines are silent too)."""
    import contextlib
    import io

    parser = argparse.ArgumentParser(prog="nvc-train")
    module.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args([str(a) for a in argv])
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        return args.run(args) or 0


def model_dir(out: Path, q: int, method: str) -> Path:
    return out / f"q{q}" / method


def model_file(out: Path, q: int, method: str, parent: Path) -> Path:
    if method == "float":
        return parent
    suffix = ".pth.tar" if method == "float-control" else ".ckpt"
    return model_dir(out, q, method) / f"{method}-q{q}{suffix}"


def train(plan: Plan, out: Path, q: int, method: str, parent: Path, log: Log) -> Path:
    """The model of one (quality, method): trained and exported, or found from an earlier run."""
    target = model_file(out, q, method, parent)
    if target.is_file():
        log.stage(f"q{q} {method}: {target.name} is there")
        return target
    folder = model_dir(out, q, method)
    folder.mkdir(parents=True, exist_ok=True)
    if method == "ptq":
        work = folder / "ptq"
        argv = ["ptq", parent, "--out-dir", work, "--name", f"ptq-q{q}", "--quality", q, "--overwrite",
                *plan.ptq_args, *(["--search"] if plan.ptq_search else []), *(["--quiet"] if log.quiet else [])]
        log.stage(f"q{q} ptq: {'observer × scheme search' if plan.ptq_search else 'default observers'}")
        log.command(argv)
        from nvc_train.commands import export

        _run_command(export, argv, log.quiet)
        (made,) = sorted(work.glob(f"ptq-q{q}-*.ckpt"))
        shutil.copyfile(made, target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)
        return target
    last = _fit(plan, folder, q, method, parent, log)
    from nvc_train.lit.checkpoints import export_integer_from_lightning, lit_module_from_checkpoint, save_float_state_dict

    log.stage(f"q{q} {method}: export")
    if method == "float-control":
        module, _ = lit_module_from_checkpoint(last)
        tmp = folder / f".{target.name}.tmp"
        save_float_state_dict(module.model, tmp, module.hparams.get("quality"), module.lmbda)
        os.replace(tmp, target)
        return target
    made = export_integer_from_lightning(last, folder / "export", f"{method}-q{q}")
    shutil.copyfile(made, folder / f".{target.name}.tmp")
    os.replace(folder / f".{target.name}.tmp", target)
    return target


def _fit(plan: Plan, folder: Path, q: int, method: str, parent: Path, log: Log) -> Path:
    import logging

    from nvc_train.lit.cli import run_lightning
    from nvc_train.presets import CONFIGS, preset_in_run_dir

    config = preset_in_run_dir(CONFIGS / FIT_PRESETS[method], folder / "run", folder / "config.yaml")
    last = folder / "run" / "checkpoints" / "last.ckpt"
    argv = ["fit", "--config", str(config), "--model.init_weights", str(parent), "--model.pretrained", "false",
            "--model.quality", str(q)]
    if plan.steps is not None:
        argv += ["--trainer.max_steps", str(plan.steps), "--trainer.val_check_interval", str(plan.steps)]
    argv += plan.fit_args
    if log.quiet:
        argv += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
        import lightning.pytorch  # noqa: F401  (its import sets its loggers' levels: set ours after it)

        for name in ("lightning.pytorch", "lightning.fabric"):  # "GPU available", "Seed set to 0"
            logging.getLogger(name).setLevel(logging.WARNING)
    # The newest of last.ckpt and a Slurm requeue's hpc_ckpt_<n>.ckpt ("hpc": Lightning's name for
    # the highest n in the run folder, on Slurm or not).
    saved = sorted([p for p in [last, *(folder / "run").glob("hpc_ckpt_*.ckpt")] if p.is_file()],
                   key=lambda p: (p.stat().st_mtime_ns, p.name))
    if saved:
        newest = saved[-1]
        log.stage(f"q{q} {method}: resuming the training from {newest}")
        argv += ["--ckpt_path", "hpc" if newest.name.startswith("hpc_ckpt_") else str(newest)]
    else:
        log.stage(f"q{q} {method}: training from {parent.name} ({FIT_PRESETS[method]}"
                  f"{f', {plan.steps} steps' if plan.steps else ''})")
    log.command(argv)
    run_lightning(argv)
    import wandb

    wandb.finish()  # the next stage starts a W&B run of its own
    from nvc_train.lit import requeue

    if requeue.requeued:  # stopped for a Slurm requeue: the next start resumes this training
        log.stage(f"q{q} {method}: training stopped for the requeue; the next start resumes it")
        raise SystemExit(0)
    if not last.is_file():
        raise UserError(f"training finished without writing {last}")
    return last


def evaluate(plan: Plan, eval_dir: Path, models: list[Path], anchors: list[str], dev: str, log: Log, what: str) -> None:
    """``nvc-train eval`` of ``models`` (and ``anchors``) on each test set, unless done before."""
    from nvc_train.commands import evaluation

    for name, path in plan.datasets.items():
        folder = eval_dir / name
        if (folder / "done").is_file():
            continue
        log.stage(f"{what}: eval on {name}")
        argv = ["eval", "--data", path, "--out-dir", folder, "--frames", plan.frames, "--gop", plan.gop,
                "--device", dev, "--overwrite", "--wandb-name", f"{what} on {name}",
                *(["--checkpoint", *models] if models else []), *(["--anchor", *anchors] if anchors else []),
                "--quiet"]  # its table would repeat the final one; the stage line says what runs
        log.command(argv)
        code = _run_command(evaluation, argv, log.quiet)
        (folder / "done").write_text(json.dumps({"exit": code}))


def second_setting(dev: str):
    """Where the decoded bitstreams are decoded again: CUDA when the first decode ran on the CPU
    and a GPU is here (the paper's case), else PyTorch's scalar CPU kernels with oneDNN held to
    SSE4.1 and one thread (what the cross-check matrix shows differs for float decoders)."""
    import torch

    from nvc_train.crosscheck.environments import Environment

    if not dev.startswith("cuda") and torch.cuda.is_available():
        return Environment("CUDA", [sys.executable], options=["--device", "cuda"])
    return Environment("CPU scalar kernels (ATen default, oneDNN SSE41), 1 thread", [sys.executable],
                       {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}, options=["--threads", "1"])


def verify(plan: Plan, folder: Path, model: Path, integer: bool, dev: str, log: Log, what: str) -> None:
    """Decode the model's streams of every test set here and on :func:`second_setting`; compare.

    Integer models: the ``.nvc`` files ``eval`` wrote, by the cross-check decoder (latents,
    frames, conformance, and the float control). Float models: each sequence encoded once more
    here as ``eval`` encodes it, then decoded by :mod:`nvc_train.crosscheck.float_decode`: how
    many decoded frames differ is the failure the integer decoders remove."""
    from nvc_train.crosscheck import decode, float_decode
    from nvc_train.crosscheck.matrix import compare
    from nvc_train.crosscheck.run import decode_in
    from nvc_train.io.atomic import atomic_write_bytes

    path = folder / "verify.json"
    if path.is_file():
        return
    work = folder / "verify"
    work.mkdir(exist_ok=True)
    other = second_setting(dev)
    if integer:
        streams = {f"{name}-{p.stem}": p for name in plan.datasets
                   for p in sorted((folder / "eval" / name / "bitstreams" / model.stem).glob("*.nvc"))}
    else:
        streams = _float_streams(plan, model, work, dev)
    log.stage(f"{what}: decoding {len(streams)} streams here and again on {other.name}")
    # The first decode in this process (its settings are those the evaluation ran with), through
    # JSON as the second one's record comes.
    here = (decode.run(str(model), {k: str(v) for k, v in streams.items()}, dev, True) if integer
            else float_decode.run(str(model), {k: str(v) for k, v in streams.items()}, dev))
    worker = "nvc_train.crosscheck.decode" if integer else "nvc_train.crosscheck.float_decode"
    try:
        there = decode_in(other, model, streams, work / "other.json", 24 * 3600.0, worker=worker)
    except UserError as exc:
        if integer:
            raise
        # The float model's failure can be a crash: a stream decoded with other probability tables
        # sends CompressAI's range decoder out of its buffers. That is the result, not an error.
        atomic_write_bytes(path, json.dumps({"setting": other.name, "integer": False, "crashed": str(exc),
                                             "frames_here": sum(len(s["types"]) for s in here["streams"].values())},
                                            indent=2).encode())
        return
    row = compare(other.name, json.loads(json.dumps(here)), there)
    atomic_write_bytes(path, json.dumps({"setting": other.name, "described": row.described, "integer": integer,
                                         **{k: v for k, v in asdict(row).items() if k != "environment"}},
                                        indent=2).encode())


def _float_streams(plan: Plan, model: Path, work: Path, dev: str) -> dict[str, Path]:
    """Each test sequence coded by the float model as ``eval`` codes it, one stream file each."""
    from nvc_train.crosscheck.float_decode import write_stream
    from nvc_train.eval.evaluate import collect_sequences, encode_float, load_eval_model
    from nvc_train.io.video import InputOptions

    float_model = load_eval_model(model, dev)
    streams = {}
    for name, folder in plan.datasets.items():
        for source in collect_sequences([folder]):
            coded = encode_float(float_model, source, InputOptions(), plan.gop, dev, plan.frames)
            path = work / f"{name}-{source.stem}.json"
            write_stream([(cf.frame_type, {k: (v.y_string, v.z_string, v.z_shape) for k, v in cf.latents.items()})
                          for cf in coded.frames], path)
            streams[f"{name}-{source.stem}"] = path
    return streams


def run_task(plan: Plan, out: Path, index: int, parents: dict[int, Path], dev: str, log: Log) -> None:
    q, method = plan.tasks()[index]
    if method == "anchors":
        evaluate(plan, out / "anchors" / "eval", [], plan.anchors, dev, log, "anchors " + " ".join(plan.anchors))
        return
    model = train(plan, out, q, method, parents[q], log)
    folder = model_dir(out, q, method)
    folder.mkdir(parents=True, exist_ok=True)
    evaluate(plan, folder / "eval", [model], [], dev, log, f"q{q} {method}")
    verify(plan, folder, model, method in INTEGER_METHODS, dev, log, f"q{q} {method}")


# --------------------------------------------------------------------------- table

def _verification_text(records: list[dict]) -> str:
    """One method's second-setting decodes over its qualities, in words."""
    setting = records[0]["setting"]
    if not records[0].get("integer", True):
        crashed = [r for r in records if r.get("crashed")]
        ran = [r for r in records if not r.get("crashed")]
        raw = [sum(r["control_raw_differ"][i] for r in ran) for i in (0, 1)]
        eight = [sum(r["control_8bit_differ"][i] for r in ran) for i in (0, 1)]
        text = f"float: {raw[0]}/{raw[1]} decoded frames differ ({eight[0]}/{eight[1]} at 8 bits)" if ran else "float:"
        if crashed:
            text += (f"{';' if ran else ''} the decoder crashed on {len(crashed)} of {len(records)} models "
                     f"({crashed[0]['crashed'].split(': ', 1)[-1]})")
        return f"{text} on {setting}"
    raw = [sum(r["control_raw_differ"][i] for r in records) for i in (0, 1)]
    latents = [sum(r["latents"][i] for r in records) for i in (0, 1)]
    frames = [sum((r["frames"] or (0, 0))[i] for r in records) for i in (0, 1)]
    same = latents[0] == latents[1] and frames[0] == frames[1] and not any(r["conformance_failures"] for r in records)
    text = f"{'identical' if same else 'DIFFERENT'}: latents {latents[0]}/{latents[1]}"
    if frames[1]:
        text += f", frames {frames[0]}/{frames[1]}"
    return text + f" on {setting}; float control differed on {raw[0]}/{raw[1]}"


def build_table(plan: Plan, out: Path, parents: dict[int, Path], log: Log) -> Path:
    """Gather every task's eval results into ``table.md``, ``table.json``, results JSONs and plots."""
    from nvc_train.eval import table as T
    from nvc_train.eval.evaluate import plot_rd
    from nvc_train.io.atomic import atomic_write_bytes

    missing = []
    for i, (q, method) in enumerate(plan.tasks()):
        folder = out / "anchors" / "eval" if method == "anchors" else model_dir(out, q, method) / "eval"
        if not all((folder / name / "done").is_file() for name in plan.datasets) or (
                method != "anchors" and not (model_dir(out, q, method) / "verify.json").is_file()):
            missing.append(f"{i} ({method}{f' q{q}' if q else ''})")
    if missing:
        raise UserError(f"the table needs every task finished; not yet: task {', '.join(missing)} "
                        f"(run them with --task I, or without --task/--table)")
    verification = {m: _verification_text([json.loads((model_dir(out, q, m) / "verify.json").read_text())
                                           for q in plan.qualities]) for m in plan.methods}
    labels = dict(T.METHOD_LABELS)
    if not plan.ptq_search:
        labels["ptq"] = "PTQ (default observers: per-channel MinMax weights, MinMax activations; no search)"
    datasets = {}
    for name in plan.datasets:
        curves = {}
        for method in plan.methods:
            points = []
            for q in plan.qualities:
                curve = json.loads((model_dir(out, q, method) / "eval" / name / f"{EVAL_FAMILY[method]}.json").read_text())
                r = curve["results"]
                points.append((q, r["model"][0], {k: v[0] for k, v in r.items() if k not in ("q", "model")}))
            curves[method] = T.method_curve(method, points, f"nvc-train reproduce: {labels[method]}")
        for codec in plan.anchors:
            curves[codec] = json.loads((out / "anchors" / "eval" / name / f"{codec}.json").read_text())
        for key, curve in curves.items():
            atomic_write_bytes(out / "results" / name / f"{key}.json", json.dumps(curve, indent=2).encode())
        plot = out / f"rd-{name}.png"
        plot_rd(curves, plot)
        from nvc_train.eval.evaluate import collect_sequences

        count = len(collect_sequences([plan.datasets[name]]))
        about = (f"{count} sequence{'s' * (count != 1)} from {plan.datasets[name]}, the first {plan.frames} frames of "
                 f"each (all of a shorter one), GOP {plan.gop}")
        datasets[name] = {"curves": curves, "rows": T.dataset_table(curves, plan.bd_anchor, verification),
                          "about": about, "plot": plot.name}
    title = f"nvc-train reproduce ({plan.preset} preset)"
    settings = [PRESETS[plan.preset].about,
                f"qualities {', '.join(map(str, plan.qualities))}; methods: " +
                "; ".join(f"{m} = {labels[m]}" for m in plan.methods),
                f"float parents: {'CompressAI zoo ssf2020-mse' if plan.parents == 'zoo' else plan.parents}",
                f"anchors: {', '.join(plan.anchors) or 'none'} (PyAV; BD-rate against {plan.bd_anchor or 'none'})",
                "every number comes from the eval JSONs under q<Q>/<method>/eval and anchors/eval"]
    atomic_write_bytes(out / "table.md", T.markdown(title, settings, datasets, plan.bd_anchor).encode())
    atomic_write_bytes(out / "table.json", json.dumps(T.as_json(title, settings, datasets, plan.bd_anchor),
                                                      indent=2).encode())
    return out / "table.md"


# --------------------------------------------------------------------------- command

def _requeue_between_trainings(log: Log) -> None:
    """Under Slurm, SIGUSR1 (the templates' ``--signal=SIGUSR1@90``) outside a training requeues
    the job: nothing is lost, a finished stage is skipped on the next start and an unfinished
    eval or decode starts again. During a training Lightning's callback takes the signal
    (:mod:`nvc_train.lit.requeue`) and hands it back after."""
    import signal
    import subprocess

    from nvc_train.lit.requeue import requeue_job_id

    job = requeue_job_id() if os.environ.get("SLURM_JOB_ID") else None
    if not job:
        return

    def handler(signum, frame):
        log.stage(f"requeue signal: requeueing Slurm job {job}; the next start goes on from the last finished stage")
        subprocess.run(["scontrol", "requeue", job], check=False)
        raise SystemExit(0)

    signal.signal(signal.SIGUSR1, handler)


def reproduce(args) -> int:
    out = Path(args.out_dir)
    plan = make_plan(args)
    tasks = plan.tasks()
    if args.list_tasks:
        for i, (q, method) in enumerate(tasks):
            print(f"{i} {method}" + (f" q{q}" if q is not None else " " + " ".join(plan.anchors)))
        return 0
    if args.task is not None and not 0 <= args.task < len(tasks):
        raise UserError(f"--task {args.task}: this plan has tasks 0..{len(tasks) - 1} (--list-tasks shows them)")
    from nvc_train.eval.anchors import anchor_points

    anchor_points(plan.anchors)  # every codec in this FFmpeg build, before any training
    dev = device(args.device)
    parents = parent_files(plan)
    try:
        _store_plan(out, plan)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    log = Log(out, args.quiet)
    _requeue_between_trainings(log)
    start = time.perf_counter()
    if args.table:
        path = build_table(plan, out, parents, log)
        print(f"wrote {path}, {out / 'table.json'}, {out / 'results'}/, rd-*.png")
        return 0
    chosen = [args.task] if args.task is not None else range(len(tasks))
    for i in chosen:
        q, method = tasks[i]
        log.stage(f"task {i} of 0..{len(tasks) - 1}: {method}{f' q{q}' if q is not None else ''}")
        run_task(plan, out, i, parents, dev, log)
    if args.task is not None:
        log.stage(f"task {args.task} done in {time.perf_counter() - start:.0f} s")
        return 0
    path = build_table(plan, out, parents, log)
    if not args.quiet:
        print(path.read_text())
    print(f"wrote {path}, {out / 'table.json'}, {out / 'results'}/, rd-*.png ({time.perf_counter() - start:.0f} s)")
    return 0
