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
    # argparse reports missing required arguments first, where the command has any
    assert f"{command}: the following arguments are required" in line or "unrecognized arguments" in line
    assert f"(see `nvc-train {command} --help`)" in line or "(see `nvc-train --help`)" in line


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
    (["decode", "x.nvc", "--checkpoint", "c", "--mp4-mode", "fast"], "argument --mp4-mode: invalid choice: 'fast'"),
    (["export-float", "a", "b", "--zoo", "--quality", "12"], "argument --quality: invalid choice: 12"),
    (["encode", "in.mp4", "-o", "o.nvc", "--checkpoint", "c", "--gop", "-1"], "--gop -1: must be ≥ 0"),
    (["encode", "in.mp4", "-o", "o.nvc", "--checkpoint", "c", "--frames", "0"], "--frames 0: must be ≥ 1"),
    (["eval", "--checkpoint", "c", "--data", "d", "--frames", "0", "--out", "{tmp}/e"], "--frames 0: must be ≥ 1"),
    (["eval", "--checkpoint", "c", "--data", "d", "--out", "{tmp}/a-file/sub"], "cannot create --out {tmp}/a-file/sub"),
    (["eval", "--checkpoint", "c", "--data", "d", "--out", "{tmp}/done"], "--out {tmp}/done already holds summary.md"),
    (["ptq", "m.pth.tar", "--out", "{tmp}/p", "--size", "200"], "--size 200: must be a positive multiple of 128"),
    (["ptq", "m.pth.tar", "--out", "{tmp}/p", "--frames", "0"], "--frames must be ≥ 1"),
    (["ptq", "m.pth.tar", "--out", "{tmp}/p", "--quality", "0"], "argument --quality: invalid choice: 0"),
    (["ptq", "m.pth.tar", "--out", "{tmp}/done"], "--out {tmp}/done already holds ptq_report.json"),
    (["ptq", "m.pth.tar", "--out", "{tmp}/a-file"], "--out {tmp}/a-file is a file, not a folder"),
    (["export-float", "run.ckpt", "{tmp}/existing.pth.tar"], "{tmp}/existing.pth.tar exists: pass --overwrite"),
    (["export-float", "run.ckpt", "{tmp}/done"], "output {tmp}/done is a directory, not a file"),
    (["export-float", "run.ckpt", "{tmp}/nowhere/x.pth.tar"], "output folder {tmp}/nowhere does not exist"),
    (["export", "run.ckpt", "--out", "{tmp}/a-file"], "--out {tmp}/a-file is a file, not a folder"),
    (["conformance", "c", "--device", "tpu"], "unknown device 'tpu'"),
    (["verify", "x.nvc", "--checkpoint", "hf://me"], "hf://me is not a checkpoint on the Hub"),
    (["publish", "c"], "publish: the following arguments are required: --repo"),
    (["bdrate", "a.json"], "bdrate: the following arguments are required: test"),
    (["compare", "a", "b", "--decodes", "x"], "argument --decodes: expected 2 arguments"),
    (["info", "{tmp}/done"], "bitstream {tmp}/done is a directory, not a file"),
    (["prepare-footage", "src"], "prepare-footage: the following arguments are required: --out"),
]


@pytest.mark.parametrize("argv,fragment", CASES, ids=[" ".join(a)[:60] or "(none)" for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(argv, fragment, files, capsys):
    line = one_line_error([a.replace("{tmp}", str(files)) for a in argv], capsys)
    assert fragment.replace("{tmp}", str(files)) in line


def test_an_output_is_replaced_only_with_overwrite(files, capsys):
    """The refusal above is the default; --overwrite lets the same command past the check
    (here to the next one: the placeholder checkpoint is not a Lightning checkpoint)."""
    line = one_line_error(["export-float", files / "a-file", files / "existing.pth.tar", "--overwrite"], capsys)
    assert "is not a readable PyTorch checkpoint" in line
    assert (files / "existing.pth.tar").read_text() == "x"
