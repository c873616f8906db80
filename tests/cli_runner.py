"""Running `nvc-train` from tests: in this interpreter (``cli``) or in a fresh one (``cli_process``).

``cli`` calls :func:`nvc_train.cli.main` as the console script does and captures what the
command writes at the file-descriptor level, so output from forked DataLoader workers and C
libraries is caught as a subprocess would catch it; it saves the ~7 s import of torch,
CompressAI and Lightning that every fresh interpreter pays. ``cli_process`` is for what only a
new process shows: the exit status of ``python -m nvc_train.cli`` itself, environment variables
that libraries read at import (``HF_HOME``), and messages printed while importing.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile


def cli(*args: str, cwd=None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``nvc-train ARGS`` in this interpreter: exit status, stdout and stderr as a subprocess's."""
    from nvc_train.cli import main

    argv = [str(a) for a in args]
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_streams = sys.stdout, sys.stderr
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        for stream in saved_streams:
            stream.flush()
        saved_fds = os.dup(1), os.dup(2)
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout = open(1, "w", closefd=False, buffering=1, encoding="utf-8", errors="replace")
            sys.stderr = open(2, "w", closefd=False, buffering=1, encoding="utf-8", errors="replace")
            os.environ.update(env or {})
            if cwd is not None:
                os.chdir(cwd)
            handlers = [(h, h.stream) for h in _log_handlers()]
            for handler, stream in handlers:
                handler.setStream(sys.stdout if getattr(stream, "name", None) == "<stdout>" else sys.stderr)
            try:
                code = main(argv)
            except SystemExit as exc:  # --help, and what argparse or Lightning end with
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            finally:
                _finish_wandb()
                for handler, stream in handlers:
                    handler.setStream(stream)
                for handler in _log_handlers():  # made during the command (a first `import lightning`)
                    for ours, theirs in zip((sys.stdout, sys.stderr), saved_streams):
                        if handler.stream is ours:
                            handler.setStream(theirs)
        finally:
            for stream in (sys.stdout, sys.stderr):
                if stream not in saved_streams:
                    stream.close()  # flushes; the descriptor stays (closefd=False)
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(io.TextIOWrapper(f, encoding="utf-8", errors="replace").read())
    return subprocess.CompletedProcess(["nvc-train", *argv], code, *texts)


def _log_handlers() -> list:
    """The logging handlers that write to a terminal stream. Libraries' handlers write to the
    stream they found when imported (Lightning's to stderr); in a process of its own a command's
    log lines are in its output, so ``cli`` points them at the captured streams for the call.
    pytest's own handlers are left alone."""
    import logging

    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    return [h for logger in loggers for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and not isinstance(h, logging._StderrHandler)  # always the current sys.stderr
            and not type(h).__module__.startswith("_pytest")]


def _finish_wandb() -> None:
    """What the end of a process does to a W&B run: finish it, so the next command starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def cli_process(*args: str, cwd=None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m nvc_train.cli ARGS`` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "nvc_train.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=None if env is None else {**os.environ, **env}, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    """Exit 2, exactly one ``nvc-train: error:`` line containing ``fragment``, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("nvc-train: error:")]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr
