"""Run the cross-check: encode the streams once, decode them in every environment, compare.

The reference is this machine with default settings; every other row is compared with it
digest by digest (:mod:`nvc_train.crosscheck.matrix`). Records, streams and the stand-in
checkpoints live in the work folder, so a re-run with the same checkpoint and streams
decodes again but encodes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from nvc_train.crosscheck.environments import Environment
from nvc_train.crosscheck.matrix import HEADER, Row, compare, format_row, skipped_row
from nvc_train.errors import UserError


SHORT_FRAMES = 3  # I P P: keyframe, prediction and a reference that is itself predicted
# Variables of this process that would leak into a row and change what it means.
ENV_SETTINGS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "PYTHONPATH", "PYTHONHOME", "QEMU_LD_PREFIX")


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def generated_stream(ck, work: Path, width: int, height: int, frames: int) -> Path:
    """A synthetic ``width``×``height`` clip of ``frames`` frames (I then P) encoded with the
    loaded integer checkpoint ``ck`` on this machine; cached by checkpoint hash and size."""
    import torch

    from nvc_train.codec.bitstream import write_bitstream_bytes
    from nvc_train.data.synthetic import synthetic_clip
    from nvc_train.io.atomic import atomic_write_bytes

    out = work / f"stream-{ck.sha256[:12]}-{width}x{height}-{frames}.nvc"
    if not out.exists():
        clip = [f.unsqueeze(0) for f in synthetic_clip(768, frames, height, width)]
        with torch.no_grad():
            coded, _ = ck.codec.eval().compress(clip)
        atomic_write_bytes(out, write_bitstream_bytes(coded, width=width, height=height, checkpoint_sha256=ck.sha256))
    return out


def decode_in(env: Environment, checkpoint: Path, streams: dict[str, Path], out: Path, timeout: float,
              worker: str = "nvc_train.crosscheck.decode") -> dict:
    """Run the decoder of :mod:`nvc_train.crosscheck.decode` (or ``worker``, a module with the
    same options: :mod:`nvc_train.crosscheck.float_decode`) in ``env``; its record, or a
    :class:`UserError` naming the environment and the decoder's last line of output."""
    cmd = [*env.command, "-m", worker, "--checkpoint", str(checkpoint), "--json", str(out),
           *env.options, *(f"--stream={name}={path}" for name, path in streams.items())]
    child_env = {k: v for k, v in os.environ.items() if k not in ENV_SETTINGS}
    child_env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    child_env.update(env.env)
    child_env["PYTHONWARNINGS"] = "ignore"  # library deprecation notes would bury the matrix
    out.unlink(missing_ok=True)
    try:
        proc = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"{env.name}: the decoder did not finish within {timeout:.0f} s (--timeout)") from None
    if proc.returncode != 0 or not out.exists():
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1][:240]
        if proc.returncode < 0:  # a crash in native code (CompressAI's range decoder on a desynchronised stream)
            import signal

            last = f"killed by {signal.Signals(-proc.returncode).name}"
        raise UserError(f"{env.name}: the decoder failed: {last}")
    return json.loads(out.read_text())


def check_checkpoint(checkpoint: Path, ck, streams: dict[str, Path], environments: list[Environment], work: Path,
                     timeout: float, quiet: bool) -> tuple[list[Row], list[tuple[str, str]], list[str]]:
    """Decode ``checkpoint`` (loaded here as ``ck``) in every environment; the rows, the skipped
    rows and the rows that failed to run."""
    kind = "pixel-exact" if ck.codec.pixel_exact else "hyperprior"
    _say(quiet, f"\n{checkpoint.name} ({kind}, sha256 {ck.sha256[:12]}…): conformance records + "
                f"{', '.join(streams)}")
    _say(quiet, HEADER)
    rows, skipped, failed = [], [], []
    reference = None
    for i, env in enumerate(environments):
        if env.skip:
            skipped.append((env.name, env.skip))
            _say(quiet, skipped_row(env.name, env.skip))
            continue
        mine = {k: v for k, v in streams.items() if not env.short or k.endswith(f"x{SHORT_FRAMES}")}
        try:
            record = decode_in(env, checkpoint, mine, work / f"record-{ck.sha256[:12]}-{i}.json", timeout)
        except UserError as err:
            if reference is None:
                raise
            failed.append(str(err))
            _say(quiet, skipped_row(env.name, f"FAILED: {err}"))
            continue
        if reference is None:
            reference = record
        row = compare(env.name, reference, record)
        rows.append(row)
        _say(quiet, format_row(row, reference=row is rows[0]))
    return rows, skipped, failed


def summary(checkpoint: Path, rows: list[Row], skipped: list, failed: list) -> tuple[bool, str]:
    """(all integer digests identical, the verdict line)."""
    others = rows[1:]
    differ = [r for r in others if not r.identical]
    blind = [r.environment for r in others if not r.control_discriminates]
    if failed:
        return False, (f"cross-check FAIL for {checkpoint.name}: {len(failed)} environment(s) did not finish; "
                       f"first: {failed[0]}")
    if differ:
        first = differ[0]
        return False, (f"cross-check FAIL for {checkpoint.name}: {len(differ)} of {len(others)} environments differ; "
                       f"first: {first.environment}, {first.first_difference}")
    line = (f"cross-check PASS for {checkpoint.name}: identical in {len(others)} environments besides the reference; "
            f"float control differed in {len(others) - len(blind)} of them")
    if blind:
        line += f" (did not discriminate: {', '.join(blind)})"
    if skipped:
        line += f"; not run: {', '.join(name for name, _ in skipped)}"
    return True, line


def write_report(path: Path, results: list[dict]) -> None:
    from nvc_train.io.atomic import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(results, indent=1) + "\n").encode())


def run(checkpoints: list[Path], environments: list[Environment], work: Path, width: int, height: int,
        frames: int, timeout: float, report: Path | None, quiet: bool) -> int:
    from nvc_train.quant.export import load_integer_checkpoint

    results, ok = [], True
    for checkpoint in checkpoints:
        start = time.perf_counter()
        lengths = sorted({frames, min(frames, SHORT_FRAMES)}, reverse=True)
        _say(quiet, f"cross-check: encoding generated {width}×{height} streams of {' and '.join(map(str, lengths))} "
                    f"frames{' (the slow rows decode the short one)' * (len(lengths) > 1)} with {checkpoint.name} "
                    f"(once; cached in {work})")
        ck = load_integer_checkpoint(checkpoint, self_check=False)  # once: kind, hash, encoder
        streams = {f"generated-{width}x{height}x{n}": generated_stream(ck, work, width, height, n)
                   for n in lengths}
        rows, skipped, failed = check_checkpoint(checkpoint, ck, streams, environments, work, timeout, quiet)
        passed, line = summary(checkpoint, rows, skipped, failed)
        print(line, flush=True)
        ok &= passed and all(r.identical for r in rows)
        results.append({"checkpoint": str(checkpoint), "checkpoint_file_sha256": file_sha256(checkpoint),
                        "rows": [asdict(r) | {"identical": r.identical, "control_discriminates": r.control_discriminates}
                                 for r in rows],
                        "skipped": [{"environment": n, "why": w} for n, w in skipped], "failed": failed,
                        "verdict": line, "seconds": round(time.perf_counter() - start),
                        "date": time.strftime("%Y-%m-%d"), "command": " ".join(["nvc-train", *sys.argv[1:]])})
    if report is not None:
        write_report(report, results)
        _say(quiet, f"cross-check: report written to {report}")
    return 0 if ok else 1
