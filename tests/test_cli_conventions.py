"""Every plain subcommand keeps the command line's promises: a bad input is one line
``nvc-train: error: …`` and exit status 2 (argparse's own errors included, no usage block),
checked before any long work; outputs are never replaced without ``--overwrite``."""

from __future__ import annotations

import pytest

from nvc_train.cli import LIGHTNING_COMMANDS, build_parser, main


def one_line_error(argv, capsys) -> str:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err)
    assert len(lines) == 1 and lines[0].startswith("nvc-train: error: "), captured.err
    assert "usage:" not in captured.err and "Traceback" not in captured.err
    return lines[0]


PLAIN_COMMANDS = sorted(set(build_parser()._subparsers._group_actions[0].choices) - set(LIGHTNING_COMMANDS))


@pytest.mark.parametrize("command", PLAIN_COMMANDS)
def test_every_subcommand_reports_bad_arguments_in_one_line(command, capsys):
    line = one_line_error([command, "--no-such-option"], capsys)
    name = build_parser()._subparsers._group_actions[0].choices[command].prog.split()[-1]  # an alias: its command
    # argparse reports missing required arguments first, where the command has any
    assert f"{name}: the following arguments are required" in line or "unrecognized arguments" in line
    assert f"(see `nvc-train {name} --help`)" in line or "(see `nvc-train --help`)" in line


@pytest.fixture
def files(tmp_path):
    """Placeholders: the checks under test run before any of these is read."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "existing.pth.tar").write_text("x")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "summary.md").write_text("earlier results")
    (tmp_path / "done" / "ptq_report.json").write_text("{}")
    return tmp_path


CASES = [
    (["encode", "in.mp4", "-o", "o.nvc", "--checkpoint", "c", "--gop", "abc"],
     "encode: argument --gop: invalid int value: 'abc' (see `nvc-train encode --help`)"),
    (["encode"], "encode: the following arguments are required: input, -o/--output, --checkpoint"),
    (["nosuch"], "argument COMMAND: invalid choice: 'nosuch'"),
    ([], "the following arguments are required: COMMAND"),
    (["decode", "x.nvc"], "decode: the following arguments are required: --checkpoint"),
    (["decode", "x.nvc", "--checkpoint", "c", "--h264-mode", "fast"], "argument --h264-mode: invalid choice: 'fast'"),
    (["export-float", "a", "--out-dir", "b", "--zoo", "--quality", "12"], "argument --quality: invalid choice: 12"),
    (["encode", "in.mp4", "-o", "o.nvc", "--checkpoint", "c", "--gop", "-1"], "--gop -1: must be ≥ 0"),
    (["encode", "in.mp4", "-o", "o.nvc", "--checkpoint", "c", "--frames", "0"], "--frames 0: must be ≥ 1"),
    (["eval", "--checkpoint", "c", "--data", "d", "--frames", "0", "--out-dir", "{tmp}/e"], "--frames 0: must be ≥ 1"),
    (["eval", "--checkpoint", "c", "--data", "d", "--out-dir", "{tmp}/a-file/sub"], "cannot create --out-dir {tmp}/a-file/sub"),
    (["eval", "--checkpoint", "c", "--data", "d", "--out-dir", "{tmp}/done"], "--out-dir {tmp}/done already holds summary.md"),
    (["ptq", "m.pth.tar", "--out-dir", "{tmp}/p", "--size", "200"], "--size 200: must be a positive multiple of 128"),
    (["ptq", "m.pth.tar", "--out-dir", "{tmp}/p", "--num-frames", "0"], "--num-frames must be ≥ 1"),
    (["ptq", "m.pth.tar", "--out-dir", "{tmp}/p", "--quality", "0"], "argument --quality: invalid choice: 0"),
    (["ptq", "m.pth.tar", "--out-dir", "{tmp}/done"], "--out-dir {tmp}/done already holds ptq_report.json"),
    (["ptq", "m.pth.tar", "--out-dir", "{tmp}/a-file"], "--out-dir {tmp}/a-file is a file, not a folder"),
    (["export-float", "run.ckpt", "-o", "{tmp}/existing.pth.tar"], "{tmp}/existing.pth.tar exists: pass --overwrite"),
    (["export-float", "run.ckpt", "-o", "{tmp}/done"], "output {tmp}/done is a directory, not a file"),
    (["export-float", "run.ckpt", "-o", "{tmp}/nowhere/x.pth.tar"], "output folder {tmp}/nowhere does not exist"),
    (["export-integer", "{tmp}/a-file", "--out-dir", "{tmp}/a-file"], "--out-dir {tmp}/a-file is a file, not a folder"),
    (["conformance", "c", "--device", "tpu"], "unknown device 'tpu'"),
    (["hashes", "{tmp}/a-file", "--checkpoint", "hf://me"], "hf://me is not a checkpoint on the Hub"),
    (["publish", "c"], "publish: the following arguments are required: --repo"),
    (["bdrate", "a.json"], "bdrate: the following arguments are required: test"),
    (["compare", "a", "b", "--decodes", "x"], "argument --decodes: expected 2 arguments"),
    (["info", "{tmp}/done"], "bitstream {tmp}/done is a directory, not a file"),
    (["prepare-footage", "src"], "prepare-footage: the following arguments are required: --out-dir"),
    (["export-integer", "run.ckpt"], "export-integer: the following arguments are required: --out-dir"),
    (["export-float", "run.ckpt"], "export-float: the following arguments are required: -o/--output"),
    (["export-float", "run.ckpt", "--zoo"], "export-float: the following arguments are required: --out-dir"),
    (["export-float", "run.ckpt", "-o", "x.pth.tar", "--zoo"], "--zoo names the file itself"),
    (["export-float", "run.ckpt", "--out-dir", "d"], "--out-dir is for --zoo"),
    (["demo", "--float-steps", "0"], "--float-steps 0: must be ≥ 1"),
    (["demo", "--out-dir", "{tmp}/a-file/sub", "--float-steps", "1"], "cannot create {tmp}/a-file/sub"),
    (["encode", "in.mp4", "-o", "o.nvc", "--checkpoint", "c", "--fps", "0"], "--fps '0': must be positive"),
    (["encode", "{tmp}/missing.mp4", "-o", "{tmp}/o.nvc", "--checkpoint", "c"], "input not found: {tmp}/missing.mp4"),
    (["encode", "{tmp}/a-file", "-o", "{tmp}/o.nvc", "--checkpoint", "{tmp}/c"], "checkpoint not found: {tmp}/c"),
    (["decode", "{tmp}/missing.nvc", "--checkpoint", "c"], "bitstream not found: {tmp}/missing.nvc"),
    (["decode", "{tmp}/a-file", "--checkpoint", "c", "-o", "{tmp}/x.avi"], "unsupported output x.avi"),
    (["decode", "{tmp}/a-file", "--checkpoint", "c", "--reference", "{tmp}/nope.mp4"], "--reference not found"),
    (["eval", "--checkpoint", "{tmp}/c", "--data", "d", "--out-dir", "{tmp}/e"], "checkpoint not found: {tmp}/c"),
    (["ptq", "{tmp}/nope.pth.tar", "--out-dir", "{tmp}/p"], "checkpoint not found: {tmp}/nope.pth.tar"),
    (["export-onnx", "{tmp}/a-file", "--out-dir", "{tmp}/done"], "--out-dir {tmp}/done already exists and is not empty"),
    (["export-onnx", "{tmp}/a-file", "--out-dir", "{tmp}/a-file"], "--out-dir {tmp}/a-file is a file, not a folder"),
    (["export-onnx", "{tmp}/a-file", "--out-dir", "{tmp}/o"], "{tmp}/a-file is not an nvc-train integer checkpoint"),
    (["export-onnx", "{tmp}/c", "--out-dir", "{tmp}/o"], "checkpoint not found: {tmp}/c"),
    (["hashes", "{tmp}/a-file", "--checkpoint", "c", "--onnx", "{tmp}/nowhere"], "--onnx {tmp}/nowhere: no such folder"),
    (["decode", "{tmp}/a-file", "--checkpoint", "c", "--runtime", "torch", "--onnx", "{tmp}/done"],
     "--onnx DIR runs the networks in ONNX Runtime: drop --runtime torch"),
    (["conformance", "c", "--runtime", "tflite"], "argument --runtime: invalid choice: 'tflite'"),
    (["ptq", "{tmp}/a-file", "--out-dir", "{tmp}/p"], "is not a readable ScaleSpaceFlow state dict"),
    (["export-integer", "{tmp}/a-file", "--out-dir", "{tmp}/x"], "is not a readable PyTorch checkpoint"),
]


@pytest.mark.parametrize("argv,fragment", CASES, ids=[" ".join(a)[:60] or "(none)" for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(argv, fragment, files, capsys):
    before = sorted(files.rglob("*"))
    line = one_line_error([a.replace("{tmp}", str(files)) for a in argv], capsys)
    assert fragment.replace("{tmp}", str(files)) in line
    assert sorted(files.rglob("*")) == before, "a refused command must leave nothing behind (no empty output folder)"


def test_an_output_is_replaced_only_with_overwrite(files, capsys):
    """The refusal above is the default; --overwrite lets the same command past the check
    (here to the next one: the placeholder checkpoint is not a Lightning checkpoint)."""
    line = one_line_error(["export-float", files / "a-file", "-o", files / "existing.pth.tar", "--overwrite"], capsys)
    assert "is not a readable PyTorch checkpoint" in line
    assert (files / "existing.pth.tar").read_text() == "x"


# The command line's shape: one rule for outputs, --overwrite and --quiet, checked on every
# subcommand so a new one cannot drift from it.
SUBPARSERS = build_parser()._subparsers._group_actions[0].choices
WRITES_FILE = {"encode", "decode", "export-float"}
WRITES_FOLDER = {"export-float", "export-integer", "export", "export-onnx", "ptq", "eval", "prepare-footage", "demo", "reproduce"}
LONG_RUNNING = {"encode", "decode", "cross-check", "export-float", "export-integer", "export", "export-onnx", "ptq", "eval", "prepare-footage",
                "conformance", "publish", "demo", "reproduce"}
RESUMES = {"demo", "reproduce"}  # a second run goes on from the first's output: no --overwrite


def options_of(command: str) -> dict[str, object]:
    return {flag: action for action in SUBPARSERS[command]._actions for flag in action.option_strings
            if action.help != "==SUPPRESS=="}


@pytest.mark.parametrize("command", PLAIN_COMMANDS)
def test_every_subcommand_names_its_outputs_one_way(command):
    options = options_of(command)
    output_like = {f for f in options if f.startswith("--out") or f in ("-o", "--output", "--checkpoints")}
    expected = ({"-o", "--output"} if command in WRITES_FILE else set()) | \
               ({"--out-dir"} if command in WRITES_FOLDER else set())
    assert output_like == expected, f"{command}: {sorted(output_like)}"
    if command in WRITES_FILE | WRITES_FOLDER - RESUMES:
        assert "--overwrite" in options or command in ("export-integer", "export"), command
    assert ("--quiet" in options and "-q" in options) == (command in LONG_RUNNING), command


DEPRECATED = [
    (["export", "{tmp}/a-file", "--out", "{tmp}/a-file"], "`nvc-train export` is deprecated, use `nvc-train export-integer`",
     "--out-dir {tmp}/a-file is a file, not a folder"),
    (["ptq", "m.pth.tar", "--out", "{tmp}/done"], "--out is deprecated, use --out-dir", "--out-dir {tmp}/done already holds"),
    (["eval", "--checkpoint", "c", "--data", "d", "--out", "{tmp}/done"], "--out is deprecated, use --out-dir",
     "--out-dir {tmp}/done already holds summary.md"),
    (["ptq", "m.pth.tar", "--out-dir", "{tmp}/p", "--frames", "0"], "--frames is deprecated, use --num-frames",
     "--num-frames must be ≥ 1"),
    (["export-float", "run.ckpt", "{tmp}/existing.pth.tar"], "the positional OUT is deprecated, use -o/--output FILE",
     "{tmp}/existing.pth.tar exists: pass --overwrite"),
    (["export-float", "{tmp}/a-file", "{tmp}/done", "--zoo"], "the positional OUT is deprecated, use --out-dir DIR",
     "not a readable PyTorch checkpoint"),
    (["verify", "{tmp}/a-file", "--checkpoint", "hf://me"], "`nvc-train verify` is deprecated, use `nvc-train hashes`",
     "hf://me is not a checkpoint on the Hub"),
    (["decode", "{tmp}/a-file", "--checkpoint", "c", "--mp4-mode", "high", "--device", "tpu"],
     "--mp4-mode is deprecated, use --h264-mode", "unknown device 'tpu'"),
    (["prepare-footage", "{tmp}/missing", "--out", "{tmp}/p", "--clip-len", "2", "--cache"],
     "--clip-len is deprecated, use --num-frames", "not found"),
    (["demo", "--checkpoints", "{tmp}/a-file/sub", "--float-steps", "1"], "--checkpoints is deprecated, use --out-dir",
     "cannot create {tmp}/a-file/sub"),
]


@pytest.mark.parametrize("argv,warning,error", DEPRECATED, ids=[" ".join(a[:3]) for a, _, _ in DEPRECATED])
def test_old_spellings_work_for_one_release_and_say_what_replaces_them(argv, warning, error, files, capsys):
    """The 0.1 spellings reach the same checks as the new ones, after one warning line each."""
    code = main([a.replace("{tmp}", str(files)) for a in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    warnings = [line for line in lines if line.startswith("nvc-train: warning: ")]
    assert any(warning in line and "goes in 0.3" in line for line in warnings), lines
    assert lines[-1].startswith("nvc-train: error: ") and error.replace("{tmp}", str(files)) in lines[-1], lines
    assert len(lines) == len(warnings) + 1


def test_a_checkpoint_of_the_wrong_kind_is_named_with_what_to_run(tmp_path, capsys):
    """Each kind of file given where another is needed gets advice that fits it (before: a float
    model given to `encode` was told to run `export-integer`, which takes a QAT run; an integer
    checkpoint given to `export-float` was "not a readable PyTorch checkpoint")."""
    import torch

    from nvc_train.quant.export import MAGIC

    (tmp_path / "in.mp4").write_text("x")
    float_model = tmp_path / "float.pth.tar"
    torch.save({"conv.weight": torch.zeros(1)}, float_model)
    float_run = tmp_path / "float.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"quality": 3, "qat": None}}, float_run)
    qat_run = tmp_path / "qat.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"quality": 3, "qat": {"scope": "decoder"}}}, qat_run)
    integer = tmp_path / "ssf-int.ckpt"
    integer.write_bytes(MAGIC + bytes(60))
    encode = ["encode", tmp_path / "in.mp4", "-o", tmp_path / "o.nvc", "--checkpoint"]

    line = one_line_error([*encode, float_model], capsys)
    assert "is a float model, not an integer checkpoint: quantize it with `nvc-train ptq" in line
    assert "--quality Q" in line and "configs/qat.yaml --model.init_weights" in line
    line = one_line_error([*encode, float_run], capsys)
    assert "is a float training checkpoint" in line and "--quality Q" not in line
    line = one_line_error([*encode, qat_run], capsys)
    assert f"is a QAT training checkpoint, not an integer one: run `nvc-train export-integer {qat_run}" in line
    line = one_line_error(["export-float", integer, "-o", tmp_path / "f.pth.tar"], capsys)
    assert "is an integer checkpoint (from `nvc-train export-integer`)" in line and "last.ckpt" in line
    assert not (tmp_path / "o.nvc").exists() and not (tmp_path / "f.pth.tar").exists()
