"""The in-process runner sees what a separate process's stderr/stdout would hold: prints, child
processes (DataLoader workers, C libraries) writing to the descriptors, and log lines of
handlers made at import."""

from __future__ import annotations

import logging
import subprocess
import sys

from tests.cli_runner import cli, cli_process


def test_the_runner_captures_prints_children_and_log_handlers(monkeypatch, tmp_path):
    handler = logging.StreamHandler(sys.stderr)  # as Lightning makes its own at import
    logger = logging.getLogger("nvc-test-library")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def fake_main(argv):
        print("printed", argv)
        subprocess.run(["sh", "-c", "echo child-out; echo child-err >&2"], check=True)
        logger.info("logged")
        return 2

    monkeypatch.setattr("nvc_train.cli.main", fake_main)
    try:
        result = cli("x", cwd=tmp_path, env={"NVC_TEST_VARIABLE": "1"})
    finally:
        logger.removeHandler(handler)
    assert result.returncode == 2
    assert result.stdout.splitlines() == ["printed ['x']", "child-out"]
    assert result.stderr.splitlines() == ["child-err", "logged"]
    assert handler.stream is sys.stderr  # given back


def test_status_and_output_equal_a_separate_processs(tmp_path):
    """The reference is `python -m nvc_train.cli` in a new interpreter, for help, an argparse
    error, and a command's own refusal of a file."""
    (tmp_path / "junk.nvc").write_bytes(b"not a stream")
    for argv in (["info", "--help"], ["info", "--no-such-option", "x"], ["info", str(tmp_path / "junk.nvc")]):
        inside, outside = cli(*argv), cli_process(*argv)
        assert (inside.returncode, inside.stdout, inside.stderr) == (outside.returncode, outside.stdout,
                                                                     outside.stderr), argv
