"""Why `make test` runs two pytest-xdist workers with ``OMP_WAIT_POLICY=PASSIVE`` (issue 28).

The unit of work is the test suite's own session model: ``float_module`` of tests/conftest.py
(SSF from scratch, 25 Lightning steps (the session model had 25 until 2026-12-07, 40 since) on 128² synthetic clips, torch's default threads: two
on a 2-core machine). Each round times, in a fresh process per fit:

- ``alone``: one fit, nothing else running (the serial suite);
- ``alone-passive``: the same with ``OMP_WAIT_POLICY=PASSIVE``;
- ``pair-spin``: two fits at once, OpenMP's default waiting (two workers, nothing set);
- ``pair-passive``: two fits at once with ``OMP_WAIT_POLICY=PASSIVE`` (what tests/conftest.py sets
  for xdist workers).

The four run in alternating order (forward, then reversed, ...), after one untimed warm-up
fit (page cache). Reported: median and min-max wall seconds of the training part (imports
excluded) per fit, and the SHA-256 prefix of the trained weights, which must be the same in
every row: the workers train the same models as a serial run.

    .venv/bin/python benchmarks/suite_workers.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FIT = r"""
import hashlib, sys, tempfile, time, warnings
warnings.filterwarnings("ignore")
import torch
from lightning import seed_everything
from tests.conftest import _fit, untrained_float_module
seed_everything(0)
module = untrained_float_module()
t0 = time.perf_counter()
_fit(module, tempfile.mkdtemp(), max_steps=25)
seconds = time.perf_counter() - t0
digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in module.state_dict().values())).hexdigest()[:12]
print(f"{seconds:.2f} {digest} {torch.get_num_threads()}")
"""

CASES = {"alone": (1, {}), "alone-passive": (1, {"OMP_WAIT_POLICY": "PASSIVE"}),
         "pair-spin": (2, {}), "pair-passive": (2, {"OMP_WAIT_POLICY": "PASSIVE"})}


def fits(copies: int, env: dict[str, str]) -> list[tuple[float, str, str]]:
    """Start ``copies`` fits at once; (seconds, weights digest, threads) of each."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", **env}
    procs = [subprocess.Popen([sys.executable, "-c", FIT], cwd=ROOT, env=full, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(copies)]
    out = []
    for p in procs:
        text, _ = p.communicate()
        if p.returncode:
            sys.exit(f"a fit failed (exit {p.returncode})")
        seconds, digest, threads = text.split()[-3:]
        out.append((float(seconds), digest, threads))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    fits(1, {})  # warm-up
    times: dict[str, list[float]] = {name: [] for name in CASES}
    digests: dict[str, set[str]] = {name: set() for name in CASES}
    threads: dict[str, set[str]] = {name: set() for name in CASES}
    order = list(CASES)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            for seconds, digest, n in fits(*CASES[name]):
                times[name].append(seconds)
                digests[name].add(digest)
                threads[name].add(n)
            print(f"round {r + 1} {name}: {times[name][-CASES[name][0]:]}", file=sys.stderr, flush=True)
    print(f"{os.cpu_count()} CPUs, {args.rounds} rounds; seconds per 25-step fit (training only)")
    print("| case | fits at once | torch threads each | median s | min–max s | fits per minute | weights |")
    print("|---|---|---|---|---|---|---|")
    for name, (copies, _) in CASES.items():
        t = times[name]
        print(f"| {name} | {copies} | {','.join(sorted(threads[name]))} | {statistics.median(t):.1f} | "
              f"{min(t):.1f}–{max(t):.1f} | {60 * copies / statistics.median(t):.2f} | {','.join(sorted(digests[name]))} |")


if __name__ == "__main__":
    main()
