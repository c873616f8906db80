"""How long a user waits for `nvc-train` to answer: `info`, argument errors, `--help`.

Each command runs in a fresh Python process (the console script's cost: interpreter start,
imports, the answer), ``--rounds`` times, the commands alternating in order (forward, then
reversed, …) after one untimed warm-up each (page cache). Reported: median and min–max wall
time per command. The target (issue 18) is under 2 s for a user error and for ``info``; it
lives here, not in a timed unit test.

    .venv/bin/python benchmarks/cli_latency.py [--rounds 7]

``info`` reads a 1080p bitstream of 32 frames written by the container's own writer with
arbitrary payload bytes (``info`` checks every CRC but never entropy-decodes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nvc_train.codec.bitstream import write_bitstream_bytes
from nvc_train.codec.frames import FRAME_PARTS, CodedFrame, CodedLatent


def synthetic_bitstream(path: Path, frames: int = 32, gop: int = 16) -> None:
    """A structurally valid .nvc file (1920x1080) whose payloads are random bytes."""
    rng = __import__("random").Random(0)
    coded = []
    for t in range(frames):
        kind = "I" if t % gop == 0 else "P"
        latents = {part: CodedLatent(rng.randbytes(4000), rng.randbytes(300), (9, 15)) for part in FRAME_PARTS[kind]}
        coded.append(CodedFrame(kind, latents))
    path.write_bytes(write_bitstream_bytes(coded, 1920, 1080, "ab" * 32, (25, 1), gop))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    exe = [sys.executable, "-m", "nvc_train.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        nvc = Path(tmp) / "clip.nvc"
        synthetic_bitstream(nvc)
        commands = {
            "info clip.nvc": [*exe, "info", str(nvc)],
            "info --per-frame --json": [*exe, "info", str(nvc), "--per-frame", "--json"],
            "encode … --gop -1 (error)": [*exe, "encode", "in.mp4", "-o", "o.nvc", "--checkpoint", "c", "--gop", "-1"],
            "encode (missing options)": [*exe, "encode"],
            "decode missing.nvc (error)": [*exe, "decode", str(Path(tmp) / "missing.nvc"), "--checkpoint", "c"],
            "--help": [*exe, "--help"],
            "fit --trainer.max_step 2 (error)": [*exe, "fit", "--config", "demo/float.yaml", "--trainer.max_step", "2"],
            "fit --ckpt_path missing.ckpt (error)": [*exe, "fit", "--config", "demo/float.yaml", "--ckpt_path",
                                                    "missing.ckpt"],
            "fit --config missing.yaml (error)": [*exe, "fit", "--config", "missing.yaml"],
            # A zoo start (issue 27): offline without the file, and a cached file that is not CompressAI's.
            "fit qat.yaml, zoo file missing offline (error)": [*exe, "fit", "--config", "qat.yaml", "--model.quality",
                                                               "5"],
            "fit qat.yaml, damaged zoo file (error)": [*exe, "fit", "--config", "qat.yaml", "--model.quality", "5"],
            # What every refusal used to come after: the imports a model needs (the reference).
            "(python -c 'import torch, lightning, compressai')": [sys.executable, "-c",
                                                                 "import torch, lightning, compressai"],
        }
        from nvc_train.models.zoo_files import zoo_entry

        damaged = Path(tmp) / "damaged-home" / "hub" / "checkpoints" / zoo_entry(True, 5).filename
        damaged.parent.mkdir(parents=True)
        damaged.write_bytes(b"not CompressAI's weights")
        envs = {"fit qat.yaml, zoo file missing offline (error)": {"TORCH_HOME": str(Path(tmp) / "empty-home")},
                "fit qat.yaml, damaged zoo file (error)": {"TORCH_HOME": str(damaged.parents[2])}}
        expected = {"info clip.nvc": 0, "info --per-frame --json": 0, "--help": 0,
                    "(python -c 'import torch, lightning, compressai')": 0}
        times: dict[str, list[float]] = {name: [] for name in commands}
        order = list(commands)
        for r in range(args.rounds + 1):
            for name in (order if r % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                env = {**os.environ, "HF_HUB_OFFLINE": "1", **envs.get(name, {})}
                proc = subprocess.run(commands[name], capture_output=True, text=True, cwd=tmp, env=env)
                elapsed = time.perf_counter() - t0
                want = expected.get(name, 2)
                if proc.returncode != want:
                    sys.exit(f"{name}: exit {proc.returncode}, expected {want}: {proc.stderr[-500:]}")
                if r > 0:  # round 0 is the warm-up
                    times[name].append(elapsed)
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}; "
          f"{args.rounds} rounds after a warm-up, fresh process each\n")
    print("| command | median s | min–max s | under 2 s |")
    print("|---|---:|---:|---|")
    for name, ts in times.items():
        print(f"| `{name if name.startswith('(') else 'nvc-train ' + name}` | {statistics.median(ts):.3f} | {min(ts):.3f}–{max(ts):.3f} | "
              f"{'yes' if max(ts) < 2 else 'no'} |")


if __name__ == "__main__":
    main()
