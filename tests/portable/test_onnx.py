"""The decoder outside PyTorch: integer ONNX graphs in ONNX Runtime decode what PyTorch decodes.

The reference is nvc-train's PyTorch integer decoder (itself tested against the independent
int64 references of tests/quant); the graphs are a second implementation of the contract in
ONNX operators (nvc_train/portable/graph.py), sharing no arithmetic code with it. Controls:
the same networks exported with float32 convolutions (``float_twin``) decode other latents
and frames, and a graph edited by one weight is refused by the runtime's self-test.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from nvc_train.portable.export import export_onnx
from nvc_train.portable.graph import float_values, operators
from nvc_train.portable.runtime import load_onnx_folder, onnx_codec
from nvc_train.quant.conformance import run_checks
from nvc_train.quant.export import load_integer_checkpoint
from tests.codec.video_fixtures import clip, write_h264
from tests.cli_runner import cli

REPO = Path(__file__).resolve().parents[2]


def nv(argv):
    """``nvc-train ARGV`` in this interpreter (a CompletedProcess)."""
    return cli(*map(str, argv))


def error_line(result) -> str:
    """The one ``nvc-train: error:`` line of a refused command (exit 2, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("nvc-train: error: "), result.stderr
    return lines[0]
EXAMPLE = REPO / "examples" / "onnx_decode.py"


@pytest.fixture(scope="module")
def pixel_onnx(pixel_checkpoint, tmp_path_factory):
    """(checkpoint path, ONNX folder) of the session's pixel-exact checkpoint."""
    folder = tmp_path_factory.mktemp("onnx") / "pixel-onnx"
    assert nv(["export-onnx", pixel_checkpoint, "--out-dir", folder, "--quiet"]).returncode == 0
    return Path(pixel_checkpoint), folder


def _onnx_checkpoint(path, folder, require_integer: bool = True, self_check: bool = True):
    ck = load_integer_checkpoint(path, self_check=False)
    onnx_codec(ck.codec, load_onnx_folder(folder, ck.sha256, require_integer), str(folder), self_check, ck.conformance)
    return ck


def test_every_graph_is_integer_and_the_float_twin_is_not(pixel_onnx, tmp_path):
    path, folder = pixel_onnx
    manifest = json.loads((folder / "onnx.json").read_text())
    assert len(manifest["graphs"]) == 6 * 4 + 3 * 5 + 4  # decoders + their layers, and the pixel steps
    assert manifest["opset"] == 17 and "ConvInteger" in manifest["operators"]
    used = set()
    for name, entry in manifest["graphs"].items():
        model = onnx.load(str(folder / entry["file"]))
        assert float_values(model) == [], name
        assert {p.key: p.value for p in model.metadata_props}["nvc_train.checkpoint_sha256"] == manifest["checkpoint_sha256"]
        used.update(operators(model))
    assert sorted(used) == manifest["operators"]
    assert not used & {"Conv", "ConvTranspose", "MatMul", "Gemm", "Resize", "GridSample", "Round", "Floor"}
    # Control: the float twin of the same networks is caught by the same check.
    ck = load_integer_checkpoint(path, self_check=False)
    twin = export_onnx(ck, tmp_path / "twin", float_twin=True)
    floats = float_values(onnx.load(str(tmp_path / "twin" / twin["graphs"]["keyframe.scale"]["file"])))
    assert floats and "Conv" in twin["operators"]


def test_conformance_passes_in_onnx_runtime_and_the_float_twin_fails(pixel_onnx, tmp_path):
    """`conformance --onnx` passes all 55 checks (3 records: 6 frame MD5s, 39 stress checks);
    control: the same networks with float32 convolutions fail the small record and the stress
    record in the same runtime."""
    from nvc_train.quant.conformance import Conformance

    path, folder = pixel_onnx
    result = nv(["conformance", path, "--onnx", folder])
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and "conformance PASS: 55 checks" in lines[-1] and "ONNX Runtime" in lines[-1]
    assert sum("pixels (MD5)" in line and line.endswith("OK") for line in lines) == 6
    assert sum(line.startswith("stress") and line.endswith("OK") for line in lines) == 39
    export_onnx(load_integer_checkpoint(path, self_check=False), tmp_path / "twin", float_twin=True)
    twin = _onnx_checkpoint(path, tmp_path / "twin", require_integer=False, self_check=False)
    records = [r for r in twin.conformance.records if r["name"] != "realistic"]
    failed = [c for c in run_checks(twin.codec, Conformance(records, twin.conformance.tensors)) if not c.ok]
    assert any(c.record == "small" and "MD5" in c.item for c in failed)
    assert any(c.record == "stress" for c in failed)


def test_a_hyperprior_checkpoint_passes_conformance_in_onnx_runtime(int_checkpoint):
    """The six hyper-decoders in ONNX Runtime (exported to a temporary folder on the fly);
    the float synthesis stays in PyTorch."""
    result = nv(["conformance", int_checkpoint, "--runtime", "onnx", "--quiet"])
    assert result.returncode == 0 and "conformance PASS: 34 checks" in result.stdout, result.stdout


@pytest.fixture(scope="module")
def stream_768x512(pixel_checkpoint, tmp_path_factory):
    """A generated 768×512 clip (I P P I P) encoded with the pixel-exact checkpoint, and its
    `nvc-train hashes` lines decoded by PyTorch (with the exact-convolution algorithms that
    decode took)."""
    import nvc_train.quant.exact_conv as exact_conv

    tmp = tmp_path_factory.mktemp("stream")
    source = write_h264(tmp / "source.mp4", clip(23, 5, 512, 768), fps=Fraction(25))
    nvc = tmp / "s.nvc"
    assert nv(["encode", source, "-o", nvc, "--checkpoint", pixel_checkpoint, "--gop", "3", "--quiet"]).returncode == 0
    seen = set()
    with pytest.MonkeyPatch.context() as mp:
        batches, planes = exact_conv._batches, exact_conv.conv_transpose_planes

        def record_bands(n, h, bytes_per_row, band_bytes):
            images, rows = batches(n, h, bytes_per_row, band_bytes)
            seen.add("several bands" if rows < h else "one band")
            return images, rows

        def record_algorithm(planes_in, weights, path, *args, **kwargs):
            seen.add(weights.algorithm)
            return planes(planes_in, weights, path, *args, **kwargs)

        mp.setattr(exact_conv, "_batches", record_bands)
        mp.setattr(exact_conv, "conv_transpose_planes", record_algorithm)
        want = nv(["hashes", nvc, "--checkpoint", pixel_checkpoint])
    assert want.returncode == 0
    return nvc, want.stdout, seen


def test_a_generated_768x512_stream_decodes_to_the_same_latents_and_md5s(pixel_onnx, stream_768x512):
    """At 768×512 the PyTorch decoder takes every algorithm of its exact convolution (gather,
    scatter, one and several bands; the small conformance record adds the single-position
    case), so the two implementations meet on all of them."""
    path, folder = pixel_onnx
    nvc, want, seen = stream_768x512
    assert seen == {"gather", "scatter", "one band", "several bands"}
    got = nv(["hashes", nvc, "--checkpoint", path, "--onnx", folder])
    assert got.returncode == 0 and got.stdout == want
    assert [line.split()[1] for line in want.splitlines()] == list("IPPIP")
    assert all(len(line.split()) == 4 for line in want.splitlines())  # latent SHA-256 and frame MD5


def test_decode_md5_through_onnx_runtime_equals_the_stored_frames(pixel_onnx, tmp_path):
    """`decode --onnx --md5` on the small conformance stream prints the MD5s stored at export."""
    path, folder = pixel_onnx
    ck = load_integer_checkpoint(path, self_check=False)
    (tmp_path / "small.nvc").write_bytes(ck.conformance.bitstream("small"))
    dec = nv(["decode", tmp_path / "small.nvc", "--checkpoint", path, "--onnx", folder, "--md5", "--quiet"])
    stored = next(r for r in ck.conformance.records if r["name"] == "small")["frames"]
    assert dec.returncode == 0 and dec.stdout.split() == [w for t, f in enumerate(stored) for w in (str(t), f["type"], f["md5"])]


def test_a_program_without_pytorch_decodes_the_stream(pixel_onnx, stream_768x512, tmp_path):
    """examples/onnx_decode.py with ``import torch`` made impossible prints what `nvc-train
    hashes` prints, and writes PNG frames whose planes hash to the printed MD5s."""
    path, folder = pixel_onnx
    nvc, want, _ = stream_768x512
    code = ("import runpy, sys; sys.modules['torch'] = None; "  # any `import torch` now raises ImportError
            f"sys.argv = ['onnx_decode.py', {str(nvc)!r}, {str(folder)!r}, '--png-dir', {str(tmp_path)!r}]; "
            f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == want
    from PIL import Image

    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 5
    for line, png in zip(want.splitlines(), pngs):
        planes = np.ascontiguousarray(np.asarray(Image.open(png).convert("RGB")).transpose(2, 0, 1))
        assert hashlib.md5(planes.tobytes()).hexdigest() == line.split()[3]


def test_output_levels_graph_equals_to_levels_at_every_depth(pixel_onnx):
    """The levels graph against nvc-train's to_levels, over the whole reference range."""
    from nvc_train.codec.pixel_decoder import REFERENCE_HI, REFERENCE_LO, to_levels

    _, folder = pixel_onnx
    onnx_folder = load_onnx_folder(folder, json.loads((folder / "onnx.json").read_text())["checkpoint_sha256"])
    samples = torch.arange(REFERENCE_LO - 3, REFERENCE_HI + 6).view(1, 3, 1, -1)
    for bits in (8, 10, 12, 16):
        got = onnx_folder.tensor("pixels.levels", samples, np.array(2**bits - 1))
        assert torch.equal(got.long(), to_levels(samples, bits).long()), bits


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    return copy


def _rehash(folder: Path, graph: str) -> None:
    manifest = json.loads((folder / "onnx.json").read_text())
    entry = manifest["graphs"][graph]
    entry["sha256"] = hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest()
    (folder / "onnx.json").write_text(json.dumps(manifest))


def _nudge_first_kernel(file: Path) -> None:
    """Change one weight of the graph's first convolution kernel by one."""
    model = onnx.load(str(file))
    kernel = next(t for t in model.graph.initializer if t.name.startswith("kernel"))
    values = onnx.numpy_helper.to_array(kernel).copy()
    values.flat[0] = values.flat[0] + 1 if values.flat[0] < 255 else values.flat[0] - 1
    kernel.CopyFrom(onnx.numpy_helper.from_array(values, kernel.name))
    onnx.save(model, str(file))


@pytest.mark.parametrize("graph,named", [("layers/motion.scale.layer1", "motion.scale layer 1"),
                                         ("synth.res", "the small record's frame 1 P pixels (MD5)")])
def test_a_graph_computing_differently_is_refused_by_the_self_test(pixel_onnx, stream_768x512, tmp_path, graph, named):
    """One weight of a graph changed by one and the manifest re-hashed (what a runtime with a
    faulty integer kernel looks like from outside): decoding is refused in one line naming
    it. (`conformance` reports such mismatches check by check instead: the edited-layer case
    is in the stress record, the other in the small record, as the control above shows.)"""
    path, folder = pixel_onnx
    copy = _copy(folder, tmp_path)
    _nudge_first_kernel(copy / f"{graph}.onnx")
    _rehash(copy, graph.removeprefix("layers/"))
    line = error_line(nv(["hashes", stream_768x512[0], "--checkpoint", path, "--onnx", copy]))
    assert f"ONNX Runtime computes {named}" in line


def test_bad_folders_are_refused_in_one_line(pixel_onnx, int_checkpoint, tmp_path):
    path, folder = pixel_onnx
    # another checkpoint's folder
    line = error_line(nv(["conformance", int_checkpoint, "--onnx", folder]))
    assert "holds the graphs of checkpoint" in line and "export it again" in line
    # an edited graph (not re-hashed)
    copy = _copy(folder, tmp_path)
    with open(copy / "synth.img.onnx", "ab") as f:
        f.write(b"\0")
    line = error_line(nv(["conformance", path, "--onnx", copy]))
    assert "synth.img.onnx is missing or differs" in line
    # a float graph in the integer folder (re-hashed, so only the graph check can catch it)
    shutil.rmtree(copy)
    copy = _copy(folder, tmp_path)
    export_onnx(load_integer_checkpoint(path, self_check=False), tmp_path / "twin", float_twin=True)
    shutil.copy(tmp_path / "twin" / "keyframe.mean.onnx", copy / "keyframe.mean.onnx")
    _rehash(copy, "keyframe.mean")
    line = error_line(nv(["conformance", path, "--onnx", copy]))
    assert "keyframe.mean.onnx computes with floats" in line
    # an ONNX Runtime too old for the graphs' opset
    manifest = json.loads((folder / "onnx.json").read_text())
    shutil.rmtree(copy)
    copy = _copy(folder, tmp_path)
    (copy / "onnx.json").write_text(json.dumps({**manifest, "opset": 99}))
    line = error_line(nv(["conformance", path, "--onnx", copy]))
    assert "opset 99" in line and "too old" in line
    # not a folder of graphs; a checkpoint that is not integer
    line = error_line(nv(["conformance", path, "--onnx", tmp_path]))
    assert "is not an ONNX folder of nvc-train" in line
    (tmp_path / "float.ckpt").write_bytes(b"\x80\x02not an integer checkpoint")
    line = error_line(nv(["export-onnx", tmp_path / "float.ckpt", "--out-dir", tmp_path / "o"]))
    assert "float.ckpt" in line and not (tmp_path / "o").exists()


def test_export_replaces_a_folder_only_with_overwrite_and_whole(pixel_onnx, tmp_path):
    path, folder = pixel_onnx
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    line = error_line(nv(["export-onnx", path, "--out-dir", out]))
    assert "already exists and is not empty" in line and (out / "mine.txt").read_text() == "keep"
    result = nv(["export-onnx", path, "--out-dir", out, "--overwrite"])
    assert result.returncode == 0 and not (out / "mine.txt").exists()
    assert (out / "onnx.json").read_bytes() == (folder / "onnx.json").read_bytes()  # deterministic export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind


def test_the_cross_check_onnx_row_is_identical_and_its_float_control_differs(int_checkpoint, tmp_path):
    """The worker behind `cross-check --envs onnx`, on the hyperprior checkpoint (whose float
    synthesis is its control): integer columns equal to the PyTorch row's; the float control,
    the same float synthesis decoders run in ONNX Runtime, differs."""
    from nvc_train.crosscheck.decode import run

    ck = load_integer_checkpoint(int_checkpoint, self_check=False)
    (tmp_path / "small.nvc").write_bytes(ck.conformance.bitstream("small"))
    streams = {"small": str(tmp_path / "small.nvc")}
    reference = run(str(int_checkpoint), streams, "cpu", conformance=False)
    onnx_row = run(str(int_checkpoint), streams, "cpu", conformance=False, runtime="onnx")
    assert onnx_row["env"]["onnxruntime"] and "onnxruntime" not in reference["env"]
    ours, theirs = onnx_row["streams"]["small"], reference["streams"]["small"]
    assert ours["latents"] == theirs["latents"] and len(ours["latents"]) == 3
    assert ours["control_raw"] != theirs["control_raw"]
