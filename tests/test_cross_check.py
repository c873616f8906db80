"""``nvc-train cross-check``: the rows this machine can run (CPU kernel levels, one thread, oneDNN
off), the comparison, a real fault that it must catch, and bad input.

The aarch64 and other-release rows need downloads and minutes to hours of emulation: they run
in ``make cross-check`` (README, "Every machine"), not here; their set-up refusals are tested.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.cli_runner import assert_one_line_error, cli

SIZE, FRAMES = "256x256", 3


def _records(work: Path, sha: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(work.glob(f"record-{sha[:12]}-*.json"))]


@pytest.fixture(scope="module")
def host_matrix(int_checkpoint, pixel_checkpoint, tmp_path_factory):
    """Three host rows of ``cross-check --envs host`` for both session checkpoints: the
    reference, the scalar-kernel CPU and one thread (the AVX2 level is the same mechanism, and
    oneDNN off takes minutes: both run in ``make cross-check``); (exit status, printed output,
    report path, work folder)."""
    import contextlib
    import io

    import torch

    from nvc_train.crosscheck.environments import host_environments
    from nvc_train.crosscheck.run import run

    tmp_path = tmp_path_factory.mktemp("cross-check")
    report = tmp_path / "report.json"
    keep = ("this machine (default)", "ATen default + oneDNN SSE41", "1 thread", "CUDA")
    rows = [e for e in host_environments(cuda=torch.cuda.is_available()) if e.name in keep]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run([Path(int_checkpoint), Path(pixel_checkpoint)], rows, tmp_path / "work", 256, 256, FRAMES, 900,
                   report, quiet=False)
    return code, out.getvalue(), report, tmp_path / "work"


@pytest.mark.slow
def test_host_rows_identical_with_a_control_that_differs(host_matrix, int_checkpoint, pixel_checkpoint):
    """Every row this machine can run decodes the same latents (and, pixel-exact, frames) as the
    reference; forcing PyTorch's scalar kernels changes the float decoders' output, so that row's
    control discriminates for both kinds of checkpoint."""
    import torch

    from nvc_train.quant.export import load_integer_checkpoint

    code, out, report, work = host_matrix
    assert code == 0, out
    results = json.loads(report.read_text())
    assert [Path(x["checkpoint"]) for x in results] == [Path(int_checkpoint), Path(pixel_checkpoint)]
    for result, pixel in zip(results, (False, True)):
        rows = {row["environment"]: row for row in result["rows"]}
        assert {"this machine (default)", "ATen default + oneDNN SSE41", "1 thread"} <= set(rows)
        for name, row in list(rows.items())[1:]:
            assert row["identical"], (name, row)
            assert row["latents"][0] == row["latents"][1] == FRAMES
            assert row["conformance"][0] == row["conformance"][1] > 0 and row["conformance_failures"] == 0
            assert (row["frames"] == [FRAMES, FRAMES]) if pixel else row["frames"] is None
        scalar = rows["ATen default + oneDNN SSE41"]
        assert scalar["control_discriminates"], scalar
        assert "x86_64 DEFAULT" in scalar["described"]
        if torch.cuda.is_available():
            assert "CUDA" in rows
        else:
            assert result["skipped"] == [{"environment": "CUDA", "why": "no CUDA device on this machine"}]
    assert "cross-check PASS" in out and ("not run: no CUDA device" in out) != torch.cuda.is_available()

    # The reference row's latents against an independent reference: the encoder's own
    # reconstruction of the same generated clip (what a decoder must reproduce).
    from nvc_train.data.synthetic import synthetic_clip

    for path in (int_checkpoint, pixel_checkpoint):
        ck = load_integer_checkpoint(path, self_check=False)
        clip = [f.unsqueeze(0) for f in synthetic_clip(768, FRAMES, 256, 256)]
        with torch.no_grad():
            _, recon = ck.codec.eval().compress(clip)
        reference = _records(work, ck.sha256)[0]
        (stream,) = reference["streams"].values()
        assert stream["latents"] == [f.latent_sha256 for f in recon]
        if ck.codec.pixel_exact:
            assert stream["frames"] == [f.md5 for f in recon]


@pytest.mark.slow
def test_the_model_card_lists_the_environments_and_refuses_a_difference(host_matrix, int_checkpoint, tmp_path):
    _, _, report, _ = host_matrix
    r = cli("publish", int_checkpoint, "--repo", "me/ssf-int", "--cross-check", report, "--dry-run", tmp_path / "repo",
            "--quiet")
    assert r.returncode == 0, r.stderr
    card = (tmp_path / "repo" / "README.md").read_text()
    section = card.split("## Verified environments")[1]
    assert "| ATen default + oneDNN SSE41 | x86_64 DEFAULT, torch" in section
    assert "| 1 thread |" in section and "| CUDA |" in section
    assert "differs (" in section  # the control's column
    entries = json.loads(report.read_text())
    entries[0]["rows"][2]["identical"] = False
    (tmp_path / "bad.json").write_text(json.dumps(entries))
    r = cli("publish", int_checkpoint, "--repo", "me/ssf-int", "--cross-check", tmp_path / "bad.json",
            "--dry-run", tmp_path / "repo2", "--quiet")
    assert_one_line_error(r, f"refusing to publish {Path(int_checkpoint).name}: its cross-check report shows "
                             f"differences or failures in {entries[0]['rows'][2]['environment']}")
    (tmp_path / "other.json").write_text(json.dumps(entries[1:]))
    r = cli("publish", int_checkpoint, "--repo", "me/ssf-int", "--cross-check", tmp_path / "other.json",
            "--dry-run", tmp_path / "repo3", "--quiet")
    assert_one_line_error(r, "covers other checkpoints")


FAULT = '''
# A decoder that computes one latent of the second P-frame's motion differently, as a CPU kernel
# with a bug would: the cross-check must name this environment, the frame and the part.
import nvc_train.codec.integer_codec as ic
_decompress = ic.IntegerHyperprior.decompress
_calls = [0]
def decompress(self, coded, device):
    y = _decompress(self, coded, device)
    _calls[0] += 1
    if _calls[0] == 4:  # frame 0: keyframe; frame 1: motion, residual; frame 2: motion
        y = y.clone()
        y.view(-1)[0] += 1
    return y
ic.IntegerHyperprior.decompress = decompress
'''


@pytest.mark.slow
def test_a_decoder_that_differs_is_named_and_fails(int_checkpoint, tmp_path, capsys):
    from nvc_train.crosscheck.environments import Environment, source_root
    from nvc_train.crosscheck.run import run

    fault = tmp_path / "fault"
    fault.mkdir()
    (fault / "sitecustomize.py").write_text(FAULT)
    envs = [Environment("this machine (default)", [sys.executable], options=["--no-conformance"]),
            Environment("faulty kernel", [sys.executable], {"PYTHONPATH": f"{fault}{os.pathsep}{source_root()}"},
                        options=["--no-conformance"])]
    code = run([Path(int_checkpoint)], envs, tmp_path / "work", 256, 256, FRAMES, 600, None, quiet=False)
    out = capsys.readouterr().out
    assert code == 1
    verdict = next(line for line in out.splitlines() if line.startswith(("cross-check PASS", "cross-check FAIL")))
    assert "FAIL" in verdict and "faulty kernel" in verdict
    assert "stream generated-256x256x3 frame 2 (P) latents" in verdict, verdict


def test_compare_names_the_first_difference():
    from nvc_train.crosscheck.matrix import compare

    env = {"machine": "x86_64", "capability": "AVX2", "torch": "2.14.1", "threads": 2, "onednn": True}
    stream = {"types": ["I", "P"], "latents": ["a", "b"], "frames": ["m0", "m1"], "control_raw": ["f0", "f1"],
              "control_8bit": ["e0", "e1"]}
    ref = {"checkpoint_sha256": "s", "pixel_exact": True, "conformance": {"small frame 0 I": "c"},
           "conformance_failures": 0, "streams": {"g": stream}, "env": env, "seconds": 1.0}
    same = compare("x", ref, json.loads(json.dumps(ref)))
    assert same.identical and not same.control_discriminates
    other = json.loads(json.dumps(ref))
    other["streams"]["g"]["frames"][1] = "zz"
    other["streams"]["g"]["control_raw"][0] = "g0"
    row = compare("x", ref, other)
    assert not row.identical and row.control_discriminates
    assert row.frames == (1, 2) and row.latents == (2, 2) and row.control_raw_differ == (1, 2)
    assert row.first_difference == "stream g frame 1 (P) frames"
    missing = json.loads(json.dumps(ref))
    missing["conformance"] = {}
    assert compare("x", ref, missing).first_difference == "conformance small frame 0 I"


@pytest.mark.parametrize("args, message", [
    (["--size", "100x100"], "--size 100x100: expected WxH with both multiples of 128"),
    (["--envs", "host,mars"], "--envs host,mars: groups are host, onnx, release, aarch64"),
    (["--frames", "1"], "--frames 1: must be ≥ 2"),
    (["missing.ckpt"], "checkpoint not found: missing.ckpt"),
    (["--torch", "1.13.1"], "--torch 1.13.1: nvc-train supports PyTorch 2.4 to 2.14"),
    (["--torch", "latest"], "--torch latest: nvc-train supports PyTorch 2.4 to 2.14"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    r = cli("cross-check", *args, "--work-dir", tmp_path / "w", cwd=tmp_path)
    assert_one_line_error(r, message)


def test_aarch64_row_says_what_is_missing(tmp_path, monkeypatch):
    """Without qemu-user, debootstrap or the cross-compiler the row is one line naming them and
    the apt packages; nothing is downloaded."""
    from nvc_train.crosscheck import environments as E

    monkeypatch.setenv("PATH", str(tmp_path))  # none of the tools
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    env = E.aarch64_environment(quiet=True)
    assert env.skip.startswith("the aarch64 row needs qemu-aarch64-static, debootstrap, aarch64-linux-gnu-g++")
    assert "apt-get install qemu-user-static debootstrap g++-aarch64-linux-gnu" in env.skip
    # its ONNX Runtime row (--envs onnx,aarch64) says the same, and runs the worker with --runtime onnx
    onnx_row = E.aarch64_onnx_environment(env, quiet=True)
    assert onnx_row.name == "aarch64 (qemu-user), ONNX Runtime, PyTorch 2.10.0" and onnx_row.skip == env.skip
    assert not (tmp_path / "cache").exists()


def test_host_rows_follow_the_cpu(monkeypatch):
    from nvc_train.crosscheck import environments as E

    monkeypatch.setattr(E, "_cpu_flags", lambda: {"avx2", "fma"})
    rows = E.host_environments(cuda=False)
    assert [e.name for e in rows] == ["this machine (default)", "ATen default + oneDNN SSE41", "1 thread",
                                      "oneDNN off", "CUDA"]
    assert rows[1].env == {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}
    assert rows[-1].skip and [e.name for e in rows if e.short] == ["oneDNN off"]
    monkeypatch.setattr(E, "_cpu_flags", lambda: {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"})
    rows = E.host_environments(cuda=True)
    assert "ATen avx2 + oneDNN AVX2" in [e.name for e in rows] and not rows[-1].skip
    assert os.environ.get("ATEN_CPU_CAPABILITY") is None  # rows set it in their child only


def test_a_set_up_that_fails_is_a_row_that_says_why():
    """No network or no root: that environment's row says why; the others still run."""
    from nvc_train.commands.crosscheck import _or_skipped
    from nvc_train.errors import UserError

    def set_up():
        raise UserError("cross-check set-up failed while downloading the Debian arm64 userland (debootstrap): "
                        "E: Failed getting release file")

    env = _or_skipped("aarch64 (qemu-user)", set_up)
    assert env.name == "aarch64 (qemu-user)" and env.skip.startswith("cross-check set-up failed while downloading")


def test_torchvision_pairs_with_the_torch_release():
    """The pairing rule against the pairs the Makefile and the registry use."""
    from nvc_train.crosscheck.environments import torchvision_for

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert '"torch==2.14.1" "torchvision==0.29.1"' in makefile and torchvision_for("2.14.1") == "0.29.1"
    assert torchvision_for("2.4.1") == "0.19.1" and torchvision_for("2.10.0") == "0.25.0"


def test_the_verdict_line():
    """A row that did not finish fails the check; a skipped one is named but does not."""
    from nvc_train.crosscheck.matrix import Row
    from nvc_train.crosscheck.run import summary

    ok = Row("this machine (default)", "x", (3, 3), 0, (3, 3), None, (0, 3), (0, 3), 1.0)
    other = Row("1 thread", "x", (3, 3), 0, (3, 3), None, (2, 3), (0, 3), 1.0)
    passed, line = summary(Path("c.ckpt"), [ok, other], [("CUDA", "no CUDA device on this machine")], [])
    assert passed and line == ("cross-check PASS for c.ckpt: identical in 1 environments besides the reference; "
                               "float control differed in 1 of them; not run: CUDA")
    passed, line = summary(Path("c.ckpt"), [ok, other], [], ["aarch64 (qemu-user): the decoder failed: Killed"])
    assert not passed and line == ("cross-check FAIL for c.ckpt: 1 environment(s) did not finish; first: "
                                   "aarch64 (qemu-user): the decoder failed: Killed")
