"""``publish`` of integer image checkpoints: a pixel-exact mbt2018-mean checkpoint (made here
in-process: CompressAI's model, QAT state calibrated on one generated batch, the real export)
goes to a local stand-in of the Hub through the real ``huggingface_hub`` client; someone else
decodes its stream through ``hf://`` to the same image MD5, online and later offline."""

from __future__ import annotations

import pytest
import torch

from nvc_train.cli import main
from nvc_train.data.synthetic import synthetic_clip
from nvc_train.io.images import to_levels, write_image
from tests.cli_runner import assert_one_line_error, cli
from tests.hf.test_publish import hub_env, nvc_session

REPO = "me/mbt-pixel-int"


@pytest.fixture(scope="module")
def image_checkpoint(tmp_path_factory):
    """(pixel-exact integer checkpoint, its float parent .pth.tar, an 8-bit PNG)."""
    from nvc_train.models.image import build_image_model, image_forward, image_hyperprior
    from nvc_train.quant.config import QuantConfig
    from nvc_train.quant.image_export import export_image_checkpoint
    from nvc_train.quant.image_hyper import Head, ImageHyperpriorQAT, decoder_layers

    tmp = tmp_path_factory.mktemp("image-publish")
    torch.manual_seed(0)
    model = build_image_model("mbt2018-mean", (16, 24))
    layers = decoder_layers(model.h_s)
    qat = ImageHyperpriorQAT(len(layers), Head.of(layers[-1].conv.out_channels, True), QuantConfig(scope="decoder"))
    with torch.no_grad():  # the first QAT forward calibrates every activation range
        image_forward(model, synthetic_clip(1, 1, 128, 128), qat.hyperprior_forward, qat.synthesis_forward)
    assert image_hyperprior(model).has_means
    ckpt = export_image_checkpoint(model, qat, tmp, "mbt2018-mean-int",
                                   {"quality": 3, "lmbda": 0.0067, "training_data": "none (made by a test)"})
    parent = tmp / "mbt2018-mean-float.pth.tar"
    torch.save(model.state_dict(), parent)
    png = tmp / "photo.png"
    write_image(png, to_levels(synthetic_clip(5, 1, 70, 100)[0], 8), 8)
    return ckpt, parent, png


@pytest.mark.slow  # over 9 s on the 2-core machine: `make test` runs it, `make test-fast` does not
def test_publish_an_image_checkpoint_then_someone_else_decodes_the_same_md5(image_checkpoint, tmp_path):
    from tests.hub_server import HubStandIn

    ckpt, parent, png = image_checkpoint
    stream = tmp_path / "photo.nvc"
    assert main(["encode", str(png), "-o", str(stream), "--checkpoint", str(ckpt), "--quiet"]) == 0
    local = cli("decode", stream, "--checkpoint", ckpt, "--md5")
    assert local.returncode == 0 and local.stdout.startswith("0 I ")
    someone = tmp_path / "someone-else-hf-home"
    with HubStandIn(tmp_path / "hub") as server:
        (published,) = nvc_session([["publish", ckpt, "--repo", REPO, "--float", parent]],
                                   hub_env(server, tmp_path / "publisher"))
        assert published.returncode == 0, published.stderr
        assert f"published {ckpt.name}, {parent.name}, README.md, nvc-train.json to hf://{REPO}" in published.stdout
        assert "conformance PASS: 26 checks" in published.stdout  # the records (the self-test ran at load)
        card = server.file_bytes(REPO, "README.md").decode()
        for text in ("- image-compression", "- mbt2018-mean", "library_name: nvc-train",
                     "whole decoder is exact integer arithmetic", "latent SHA-256 and image MD5",
                     "inverse GDN with γ in [0, 2047]", f"nvc-train decode photo.nvc -o photo-decoded.png --checkpoint hf://{REPO}"):
            assert text in card, text
        assert server.file_bytes(REPO, ckpt.name) == ckpt.read_bytes()
        online, conformance = nvc_session([["decode", stream, "--checkpoint", f"hf://{REPO}", "--md5"],
                                           ["conformance", f"hf://{REPO}", "--quiet"]],
                                          hub_env(server, someone, HF_TOKEN=""))
    assert online.returncode == 0, online.stderr
    assert online.stdout == local.stdout
    assert conformance.returncode == 0 and "conformance PASS: 27 checks" in conformance.stdout
    (offline,) = nvc_session([["decode", stream, "--checkpoint", f"hf://{REPO}", "--md5"]],
                             {**hub_env(server, someone, HF_TOKEN=""), "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0 and offline.stdout == local.stdout, offline.stderr


def test_image_publish_refusals_are_one_line(image_checkpoint, int_checkpoint, float_weights, tmp_path):
    ckpt, parent, _ = image_checkpoint
    assert_one_line_error(cli("publish", ckpt, "--repo", REPO, "--cross-check", parent, "--dry-run", tmp_path / "a"),
                          "does not cover image checkpoints")
    # A video float parent for an image checkpoint, and an image parent for a video checkpoint.
    assert_one_line_error(cli("publish", ckpt, "--repo", REPO, "--float", float_weights, "--dry-run", tmp_path / "b"),
                          "not an image hyperprior state dict")
    assert_one_line_error(cli("publish", int_checkpoint, "--repo", REPO, "--float", parent, "--dry-run",
                              tmp_path / "c"), parent.name)
    assert not any((tmp_path / d).exists() for d in "abc")


def test_a_latent_exact_image_card_says_the_pixels_may_differ(image_checkpoint, tmp_path):
    """The dry-run card of a checkpoint whose metadata says qat scope "hyperprior" (made by
    re-labelling nothing but the card's input: the card follows the metadata)."""
    from nvc_train.hf.card import model_card

    card = model_card(repo_id=REPO, checkpoint="x.ckpt", digest="0" * 64,
                      metadata={"architecture": "bmshj2018-hyperprior", "channels": [16, 24], "format_version": 5,
                                "quant": {"scope": "hyperprior", "activation_bits": 8, "input_frac_bits": 8}},
                      conformance="small and stress", float_parent=None, evaluation=None, license=None,
                      base_model=None, datasets=[])
    assert "pixels may differ in the last level" in card and "CompressAI's float `g_s`" in card
    assert "- bmshj2018-hyperprior" in card and "scale-space-flow" not in card
