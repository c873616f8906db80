"""Image architectures through the real command line: ``fit`` (LightningCLI, W&B offline) float
then QAT, ``export-integer``, ``conformance``, ``encode``/``decode``/``hashes``/``info`` on PNG
files, and the inputs that must be refused in one line.

bmshj2018-hyperprior is trained with qat scope "hyperprior" (latent-exact, float synthesis)
and mbt2018-mean with scope "decoder" (pixel-exact: integer synthesis, identical MD5s); the
two share their synthesis, so each scope is run end to end once."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from nvc_train.data.synthetic import synthetic_clip
from nvc_train.io.images import image_md5, read_image, to_levels, write_image
from nvc_train.quant.header import HEADER, MAGIC
from tests.cli_runner import assert_one_line_error, cli

TINY = ["--model.channels", "[16, 24]", "--trainer.accelerator", "cpu", "--trainer.limit_val_batches", "1",
        "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0", "--data.init_args.crop", "128",
        "--data.init_args.train_size", "128", "--data.init_args.val_size", "128"]


def _fit(tmp, config: str, name: str, steps: int, *extra: str):
    run = tmp / name
    result = cli("fit", "--config", config, *TINY, "--trainer.max_steps", str(steps), "--trainer.val_check_interval",
                 str(steps), "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
                 *extra, env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    return run


PIXEL_EXACT = {"mbt2018-mean"}
"""Architectures whose test run uses qat scope "decoder" (configs/image/qat_decoder.yaml)."""


@pytest.fixture(scope="module", params=["bmshj2018-hyperprior", "mbt2018-mean"])
def trained(request, tmp_path_factory):
    """(architecture, folder, float run, QAT run, integer checkpoint) of a tiny image run."""
    arch = request.param
    tmp = tmp_path_factory.mktemp(arch)
    float_run = _fit(tmp, "configs/image/float.yaml", "float", 8, "--model.architecture", arch,
                     "--model.learning_rate", "1e-3")
    qat_config = "configs/image/qat_decoder.yaml" if arch in PIXEL_EXACT else "configs/image/qat.yaml"
    qat_run = _fit(tmp, qat_config, "qat", 6, "--model.architecture", arch, "--model.init_weights",
                   str(float_run / "checkpoints" / "last.ckpt"))
    result = cli("export-integer", qat_run / "checkpoints" / "last.ckpt", "--out-dir", tmp / "models")
    assert result.returncode == 0, result.stderr
    (ckpt,) = (tmp / "models").glob("*.ckpt")
    return arch, tmp, float_run, qat_run, ckpt


def _rehashed(ckpt, out, change):
    """A copy of integer checkpoint ``ckpt`` at ``out`` whose tensors ``change(tensors)``
    altered, with the payload's SHA-256 rewritten so that only the content checks can notice."""
    import hashlib

    data = ckpt.read_bytes()
    obj = torch.load(io.BytesIO(data[HEADER.size:]), weights_only=True)
    change(obj["tensors"])
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    _, version, _, _ = HEADER.unpack_from(data)
    out.write_bytes(HEADER.pack(MAGIC, version, len(payload), hashlib.sha256(payload).digest()) + payload)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An 8-bit 150×100 PNG and a 10-bit 90×70 PNG (sizes not multiples of 64)."""
    tmp = tmp_path_factory.mktemp("images")
    write_image(tmp / "a.png", to_levels(synthetic_clip(3, 1, 100, 150)[0], 8), 8)
    write_image(tmp / "b10.png", to_levels(synthetic_clip(4, 1, 70, 90)[0], 10), 10)
    return tmp


def test_fit_runs_write_wandb_files_and_record_the_architecture(trained):
    arch, _, float_run, qat_run, _ = trained
    for run in (float_run, qat_run):
        assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))
        hparams = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["hyper_parameters"]
        assert hparams["architecture"] == arch and hparams["channels"] == [16, 24]
    assert hparams["qat"]["scope"] == ("decoder" if arch in PIXEL_EXACT else "hyperprior")
    assert hparams["train_scope"] == ("decoder" if arch in PIXEL_EXACT else "hyperprior")


def test_export_writes_an_image_checkpoint_that_passes_conformance(trained):
    arch, _, _, _, ckpt = trained
    assert ckpt.name.startswith(f"{arch}-int-")
    card = ckpt.with_suffix(".md").read_text()
    assert f"CompressAI `{arch}`" in card and "format version: 5" in card
    assert ("the decoded images are bit-identical" in card) == (arch in PIXEL_EXACT)
    result = cli("conformance", ckpt)
    assert result.returncode == 0, result.stdout
    # small record (latents; pixel-exact: and the image MD5), two stress inputs × (outputs +
    # 3 layers), pixel-exact: two synthesis stress inputs × (samples + 4 layers + 3 GDN
    # norms), the layer self-test
    assert f"conformance PASS: {27 if arch in PIXEL_EXACT else 10} checks" in result.stdout


def test_encode_decode_hashes_round_trip_8_and_10_bit(trained, images, tmp_path):
    arch, _, _, _, ckpt = trained
    for name, bits, size in (("a.png", 8, (150, 100)), ("b10.png", 10, (90, 70))):
        stream, out = tmp_path / f"{name}.nvc", tmp_path / f"out-{name}"
        enc = cli("encode", images / name, "-o", stream, "--checkpoint", ckpt, "--md5")
        assert enc.returncode == 0, enc.stderr
        dec = cli("decode", stream, "-o", out, "--checkpoint", ckpt, "--md5")
        assert dec.returncode == 0, dec.stderr
        decoded = read_image(out)
        assert decoded.bits == bits and decoded.levels.shape == (3, size[1], size[0])
        # The decoder's MD5 is the PNG's, and the encoder's reconstruction is what it decoded.
        assert dec.stdout.strip() == enc.stdout.strip() == f"0 I {image_md5(decoded.levels, bits)}"
        # Only the float synthesis warns that its MD5s are machine-dependent.
        assert ("can differ between machines" in dec.stderr) == (arch not in PIXEL_EXACT)
        info = json.loads(cli("info", stream, "--json", "--checkpoint", ckpt).stdout)
        assert (info["kind"], info["width"], info["height"], info["source_bits"]) == ("image", *size, bits)
        assert info["bytes"] == stream.stat().st_size


def test_latents_are_identical_across_gemm_paths_and_thread_counts(trained, images, tmp_path):
    """The latent SHA-256 and, pixel-exact, the image MD5 (a fourth field) of `hashes`."""
    arch, _, _, _, ckpt = trained
    stream = tmp_path / "a.nvc"
    assert cli("encode", images / "a.png", "-o", stream, "--checkpoint", ckpt, "--quiet").returncode == 0
    lines = set()
    threads = torch.get_num_threads()
    try:
        for path, n in (("int8", threads), ("float32", threads), ("float64", threads), ("int8", 1)):
            torch.set_num_threads(n)
            result = cli("hashes", stream, "--checkpoint", ckpt, env={"NVC_TRAIN_EXACT_GEMM": path})
            assert result.returncode == 0, result.stderr
            lines.add(result.stdout)
    finally:
        torch.set_num_threads(threads)
    assert len(lines) == 1
    line = lines.pop()
    assert line.startswith("0 I ") and len(line.split()) == (4 if arch in PIXEL_EXACT else 3)
    if arch in PIXEL_EXACT:  # the MD5 is the decoded PNG's
        out = tmp_path / "a-out.png"
        assert cli("decode", stream, "-o", out, "--checkpoint", ckpt, "--quiet").returncode == 0
        assert line.split()[3] == image_md5(read_image(out).levels, 8)


def test_a_changed_weight_is_refused_at_load(trained, images, tmp_path):
    """Control of the load-time self-test: one integer weight of the hyper-decoder changed by
    one and the payload re-hashed (so only the self-test can notice) is refused in one line."""
    _, _, _, _, ckpt = trained

    def change(tensors):
        w = tensors["int.decoder.layer2.weight"].view(-1)
        w[0] = w[0] + (1 if int(w[0]) < 127 else -1)

    tampered = _rehashed(ckpt, tmp_path / "tampered.ckpt", change)
    result = cli("encode", images / "a.png", "-o", tmp_path / "x.nvc", "--checkpoint", tampered)
    assert_one_line_error(result, "refused on cpu")
    assert "layer 2 accumulators" in result.stderr
    assert cli("conformance", tampered).returncode == 1


@pytest.mark.parametrize("key, change, fragment", [
    ("gdn1.gamma", lambda t: t[3, 5].add_(1), "GDN 1"),  # within the contract: the records notice
    ("gdn0.beta", lambda t: t.neg_(), "GDN 0's γ or β is outside its range"),  # would not end
    ("gdn2.root_shift", lambda t: t.add_(9), "GDN 2's root shift"),  # would overflow int64
])
def test_a_changed_synthesis_is_refused_at_load(trained, images, tmp_path, key, change, fragment):
    """The same control for the pixel path: the integer synthesis changed in a re-hashed
    checkpoint is refused in one line, before anything decodes."""
    arch, _, _, _, ckpt = trained
    if arch not in PIXEL_EXACT:
        pytest.skip("a latent-exact checkpoint has no integer synthesis")
    tampered = _rehashed(ckpt, tmp_path / "tampered.ckpt", lambda tensors: change(tensors[f"int.synthesis.{key}"]))
    stream = tmp_path / "a.nvc"
    assert cli("encode", images / "a.png", "-o", stream, "--checkpoint", ckpt, "--quiet").returncode == 0
    result = cli("decode", stream, "-o", tmp_path / "x.png", "--checkpoint", tampered)
    assert_one_line_error(result, "refused on cpu")
    assert fragment in result.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    rgb = (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)
    PILImage.fromarray(rgb).convert("CMYK").save(tmp / "cmyk.jpg")
    PILImage.fromarray(rgb).convert("P").save(tmp / "palette.png")
    PILImage.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp / "alpha.png")
    good = io.BytesIO()
    PILImage.fromarray(rgb).save(good, format="PNG")
    (tmp / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    return tmp


@pytest.mark.parametrize("name, fragment", [("cmyk.jpg", "CMYK"), ("palette.png", "palette"),
                                            ("alpha.png", "--drop-alpha"), ("truncated.png", "truncated.png")])
def test_unsupported_images_are_one_line_errors(trained, bad_images, tmp_path, name, fragment):
    _, _, _, _, ckpt = trained
    result = cli("encode", bad_images / name, "-o", tmp_path / "x.nvc", "--checkpoint", ckpt)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "x.nvc").exists()


def test_alpha_is_dropped_when_asked(trained, bad_images, tmp_path):
    _, _, _, _, ckpt = trained
    result = cli("encode", bad_images / "alpha.png", "-o", tmp_path / "x.nvc", "--checkpoint", ckpt, "--drop-alpha")
    assert result.returncode == 0 and "alpha dropped" in result.stdout


def test_image_and_video_checkpoints_and_streams_are_not_mixed(trained, images, int_checkpoint, tmp_path):
    _, _, _, _, ckpt = trained
    stream = tmp_path / "a.nvc"
    assert cli("encode", images / "a.png", "-o", stream, "--checkpoint", ckpt, "--quiet").returncode == 0
    # An image stream with the video checkpoint, and the reverse.
    assert_one_line_error(cli("decode", stream, "-o", tmp_path / "a.png", "--checkpoint", int_checkpoint),
                          "video (ssf2020) integer checkpoint, not an image one")
    assert_one_line_error(cli("hashes", stream, "--checkpoint", int_checkpoint), "not an image one")
    assert_one_line_error(cli("encode", images / "a.png", "-o", tmp_path / "v.nvc", "--checkpoint", ckpt, "--gop", "4"),
                          "--gop is for video checkpoints")
    assert_one_line_error(cli("decode", stream, "-o", tmp_path / "a.mp4", "--checkpoint", ckpt), "as one PNG")
    truncated = tmp_path / "cut.nvc"
    truncated.write_bytes(stream.read_bytes()[:-5])
    assert_one_line_error(cli("decode", truncated, "-o", tmp_path / "c.png", "--checkpoint", ckpt), "truncated")
    from nvc_train.quant.export import load_integer_checkpoint
    from nvc_train.errors import UserError

    with pytest.raises(UserError, match="integer image checkpoint, not a video"):
        load_integer_checkpoint(ckpt)


def test_fit_options_follow_the_architecture(tmp_path):
    # --model.channels is an image model's option: refused for the video module, before Lightning.
    assert_one_line_error(cli("fit", "--model.channels", "[8, 8]"), "unrecognized option --model.channels")
    assert_one_line_error(cli("fit", "--model.architecture", "cheng2020-anchor"), "unknown architecture 'cheng2020-anchor'")
    assert_one_line_error(cli("fit", "--config", "configs/image/float.yaml", "--model.flow_reference", "128"),
                          "unrecognized option --model.flow_reference")


def test_eval_on_images_writes_compressai_results_for_both_families(trained, images, tmp_path):
    _, tmp, float_run, _, ckpt = trained
    float_pth = tmp_path / "float.pth.tar"
    assert cli("export-float", float_run / "checkpoints" / "last.ckpt", "-o", float_pth).returncode == 0
    out = tmp_path / "eval"
    result = cli("eval", "--checkpoint", float_pth, ckpt, "--data", images, "--out-dir", out, "--quiet")
    assert result.returncode == 0, result.stderr
    per_image = json.loads((out / "images.json").read_text())
    for family in ("float", "qat"):
        curve = json.loads((out / f"{family}.json").read_text())
        assert curve["results"]["bpp"][0] > 0 and curve["results"]["psnr-rgb"][0] > 5
    integer = per_image[ckpt.stem]
    assert [r["image"] for r in integer] == ["a.png", "b10.png"]
    assert all(r["results"]["latents_match"] == 1.0 for r in integer)
    # The rate is the strings over the source's pixels: what `encode` writes, less its container.
    stream = tmp_path / "a.nvc"
    assert cli("encode", images / "a.png", "-o", stream, "--checkpoint", ckpt, "--quiet").returncode == 0
    container = 4 + 2 + 32 + 4 + 4 + 1 + 2 + 2 + 4 + 4 + 4 + 4
    assert integer[0]["results"]["bpp"] == pytest.approx(8 * (stream.stat().st_size - container) / (150 * 100))
    assert (out / "rd.png").is_file() and "| float |" in (out / "summary.md").read_text()
    assert_one_line_error(cli("eval", "--checkpoint", ckpt, "--data", images, "--out-dir", tmp_path / "e2", "--gop", "4"),
                          "--gop is for video")


def test_crafted_streams_and_checkpoints_are_one_line_errors(trained, images, tmp_path):
    """Damage that passes the CRCs or the SHA-256 (rewritten after the change) is still refused
    in one line: a hyper-latent shape that does not fit the image, a layer of unknown kind."""
    import struct
    import zlib

    _, _, _, _, ckpt = trained
    stream = tmp_path / "a.nvc"
    assert cli("encode", images / "a.png", "-o", stream, "--checkpoint", ckpt, "--quiet").returncode == 0
    data = bytearray(stream.read_bytes())
    head = struct.Struct(">4sH32sIIBHHII")
    fields = list(head.unpack_from(data))
    fields[6], fields[7] = 4000, 4000  # z_h, z_w
    data[:head.size] = head.pack(*fields)
    data[head.size:head.size + 4] = struct.pack(">I", zlib.crc32(bytes(data[:head.size])))
    crafted = tmp_path / "crafted.nvc"
    crafted.write_bytes(bytes(data))
    assert_one_line_error(cli("decode", crafted, "-o", tmp_path / "c.png", "--checkpoint", ckpt), "does not fit")

    bad = _rehashed(ckpt, tmp_path / "bad-layout.ckpt", lambda tensors: tensors["int.decoder.layout"][0, 0].fill_(7))
    assert_one_line_error(cli("encode", images / "a.png", "-o", tmp_path / "x.nvc", "--checkpoint", bad),
                          "not a valid image checkpoint")
    assert_one_line_error(cli("conformance", bad), "malformed")

