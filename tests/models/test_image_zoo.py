"""CompressAI's image zoo in: a zoo-format file written by CompressAI's own ``update_model``,
fetched by ``torch.hub`` into a temporary ``TORCH_HOME`` and loaded by ``--model.pretrained``."""

from __future__ import annotations

import pytest
import torch
from compressai.models import ScaleHyperprior

from nvc_train.errors import UserError
from nvc_train.lit.image_module import ImageLitModule
from nvc_train.models import zoo
from tests.cli_runner import assert_one_line_error, cli


@pytest.fixture
def image_zoo_file(tmp_path, monkeypatch):
    """CompressAI's image URL table names our ``update_model`` file (a ``file://`` address)."""
    from compressai.utils.update_model.__main__ import main as update_model
    from compressai.zoo import image

    torch.manual_seed(0)
    raw = tmp_path / "trained" / "bmshj2018-hyperprior-3.pth.tar"
    raw.parent.mkdir()
    torch.save({"state_dict": ScaleHyperprior(128, 192).state_dict()}, raw)
    update_model([str(raw), "-a", "bmshj2018-hyperprior", "-n", "bmshj2018-hyperprior-3", "-d", str(tmp_path / "pub")])
    (published,) = (tmp_path / "pub").glob("bmshj2018-hyperprior-3-*.pth.tar")
    monkeypatch.setitem(image.model_urls["bmshj2018-hyperprior"]["mse"], 3, published.as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var in zoo.OFFLINE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    return published


def test_pretrained_loads_the_zoo_weights_through_the_torch_hub_cache(image_zoo_file):
    module = ImageLitModule(architecture="bmshj2018-hyperprior", quality=3, pretrained=True)
    assert module.zoo.name == "bmshj2018-hyperprior-mse-3" and module.hparams.pretrained == "bmshj2018-hyperprior-mse-3"
    assert (module.model.N, module.model.M) == (128, 192)  # the zoo's channels for quality 3
    module.load_zoo_weights(resuming=False, progress=False)
    published = torch.load(image_zoo_file, weights_only=True)
    for key in ("g_a.0.weight", "h_s.4.weight", "entropy_bottleneck._quantized_cdf"):
        assert torch.equal(module.model.state_dict()[key], published[key]), key
    cached = zoo.zoo_cache_dir() / image_zoo_file.name
    assert cached.is_file()  # torch.hub put it in its cache


def test_resuming_never_reads_the_zoo_file(image_zoo_file):
    module = ImageLitModule(architecture="bmshj2018-hyperprior", quality=3, pretrained=True)
    before = module.model.state_dict()["g_a.0.weight"].clone()
    module.load_zoo_weights(resuming=True, progress=False)
    assert torch.equal(module.model.state_dict()["g_a.0.weight"], before)
    assert not (zoo.zoo_cache_dir() / image_zoo_file.name).exists()


def test_zoo_names_are_checked_per_architecture(image_zoo_file, monkeypatch):
    with pytest.raises(UserError, match="1..8"):
        ImageLitModule(architecture="mbt2018-mean", pretrained="mbt2018-mean-mse-9")
    with pytest.raises(UserError, match="not a CompressAI zoo name of bmshj2018-hyperprior"):
        ImageLitModule(architecture="bmshj2018-hyperprior", pretrained="ssf2020-mse-3")
    monkeypatch.setenv("NVC_TRAIN_OFFLINE", "1")
    result = cli("fit", "--config", "configs/image/qat.yaml", "--model.architecture", "mbt2018-mean",
                 "--model.quality", "2")
    assert_one_line_error(result, "mbt2018-mean-mse-2: mbt2018-mean-2-e54a039d.pth.tar is not in the torch hub cache")


def test_the_image_url_table_is_read_from_compressais_source_as_it_imports_it():
    from compressai.zoo.image import model_urls

    from nvc_train.models import zoo_files

    from_source = zoo_files._model_urls_from_source("image")
    for arch in ("bmshj2018-hyperprior", "mbt2018-mean"):
        assert from_source[arch]["mse"] == model_urls[arch]["mse"]
