"""The README's "Prove it on another machine" recipe, run as written.

The commands are read from the README's block (every line that starts with ``nvc-train``) and
run by bash in one folder holding ``clip.mp4`` and ``ssf-pixel.ckpt``. Machine A is this
environment; machine B is the same machine with PyTorch's portable CPU kernels
(``ATEN_CPU_CAPABILITY=default``, a different code path for every vectorised op) and one
thread. What could make it fail: a summary line on stdout beside the MD5s (``compare``
refuses the file, as it did before), a decode that differs from the encoder's
reconstruction, or a README whose commands no longer run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from tests.codec.test_codec_cli import FRAMES, HEIGHT, WIDTH
from tests.codec.video_fixtures import clip, write_h264

README = Path(__file__).resolve().parents[2] / "README.md"


def recipe() -> list[str]:
    """The ``nvc-train`` command lines of the README's "Prove it on another machine" block."""
    text = README.read_text()
    section = text.split("### Prove it on another machine", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("nvc-train ")]


@pytest.mark.slow
def test_readme_recipe_reaches_all_frames_identical_on_a_second_environment(pixel_checkpoint, tmp_path):
    encode, decode, compare = recipe()
    assert "--md5 > a.txt" in encode and "--md5 > b.txt" in decode and compare == "nvc-train compare a.txt b.txt"
    write_h264(tmp_path / "clip.mp4", clip(5, FRAMES, HEIGHT, WIDTH), fps=Fraction(25))
    (tmp_path / "ssf-pixel.ckpt").symlink_to(pixel_checkpoint)
    bin_dir = str(Path(sys.executable).parent)  # the venv's nvc-train
    machine_a = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    machine_b = {**machine_a, "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}

    def run(line: str, env: dict) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode in (0, 1), f"{line}: {proc.stderr[-2000:]}"
        return proc

    enc = run(encode, machine_a)
    assert "encoded" in enc.stderr  # the summary is shown, on stderr
    run(decode, machine_b)
    for name in ("a.txt", "b.txt"):
        lines = (tmp_path / name).read_text().splitlines()
        assert [line.split()[:2] for line in lines] == [[str(t), "IPPPP"[t]] for t in range(FRAMES)], name
    result = run(compare, machine_a)
    assert result.returncode == 0 and f"pixels: {FRAMES} of {FRAMES} frames identical (MD5)" in result.stdout
