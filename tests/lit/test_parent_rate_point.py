"""Fine-tuning keeps the parent's rate point (quality/λ) and flow reference unless told otherwise
(issue 27, item 3): a q5 parent trained with ``flow_reference=128`` used to be fine-tuned at
q3 and with 256 by the presets, silently."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from nvc_train.lit.checkpoints import save_float_state_dict
from nvc_train.lit.module import SSFLitModule
from nvc_train.models.loss import quality_to_lambda
from nvc_train.models.ssf import build_ssf, read_state_dict

ROOT = Path(__file__).resolve().parents[2]
PARENT_PRESETS = ["finetune.yaml", "qat.yaml", "qat_decoder.yaml", "finetune/footage.yaml",
                  "finetune/footage_qat.yaml", "finetune/footage_qat_decoder.yaml", "finetune/footage_shards.yaml"]


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A float file as `export-float` writes it for a q5 model trained on 128² crops."""
    path = tmp_path_factory.mktemp("parent") / "parent.pth.tar"
    save_float_state_dict(build_ssf(128), path, 5, quality_to_lambda(5))
    return path


def _module(**kwargs) -> tuple[SSFLitModule, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = SSFLitModule(real_coding_clips=0, **kwargs)
    return module, [str(w.message) for w in caught if "parent" in str(w.message) or "flow_reference" in str(w.message)]


def test_export_float_records_the_rate_point(parent):
    record = read_state_dict(parent)
    assert (record.quality, record.lmbda, record.flow_reference) == (5, quality_to_lambda(5), 128)


def test_init_weights_keeps_the_parents_quality_and_flow_reference_without_a_word(parent):
    module, said = _module(init_weights=str(parent))
    assert module.lmbda == quality_to_lambda(5) and module.hparams.quality == 5
    assert module.model.flow_reference == 128 and module.hparams.flow_reference == 128
    assert said == []
    assert module.describe_start() == (f"quality 5 (λ={quality_to_lambda(5)}), the parent's ({parent}); "
                                       f"flow_reference 128, the parent's")


def test_an_explicit_change_is_stated_in_one_line(parent):
    module, said = _module(init_weights=str(parent), quality=3)
    assert module.lmbda == quality_to_lambda(3)
    assert said == [f"training at quality 3 (λ={quality_to_lambda(3)}) as set, but the parent {parent} was trained "
                    f"at quality 5 (λ={quality_to_lambda(5)}); --model.quality null keeps the parent's"]
    module, said = _module(init_weights=str(parent), flow_reference=256)
    assert module.model.flow_reference == 256 and module.lmbda == quality_to_lambda(5)
    assert said == [f"{parent} records flow_reference=128 but 256 was asked for; using 256"]
    module, said = _module(init_weights=str(parent), quality=5, flow_reference=128)  # the same values: silent
    assert said == [] and module.describe_start().startswith("quality 5 (λ=")


def test_a_zoo_start_takes_the_zoo_models_quality_and_the_zoo_flow_reference():
    module, said = _module(pretrained="ssf2020-mse-5")  # resolved now, fetched only when a fit starts
    assert module.lmbda == quality_to_lambda(5) and module.model.flow_reference == 256 and said == []
    module, said = _module(pretrained=True)
    assert module.zoo.name == "ssf2020-mse-3" and module.lmbda == quality_to_lambda(3)
    module, said = _module(pretrained="ssf2020-mse-5", quality=2)
    assert module.lmbda == quality_to_lambda(2) and len(said) == 1 and "quality 5" in said[0]


def test_without_a_parent_the_default_is_quality_3_and_compressais_flow():
    module, said = _module()
    assert module.lmbda == quality_to_lambda(3) and module.model.flow_reference is None and said == []
    assert "the default" in module.describe_start()


def test_a_plain_state_dict_records_nothing_and_a_zoo_named_one_its_quality(parent, tmp_path):
    import torch

    plain = tmp_path / "plain.pth.tar"
    torch.save(build_ssf().state_dict(), plain)
    assert read_state_dict(plain)[1:] == (None, None, None)
    module, said = _module(init_weights=str(plain))
    assert module.lmbda == quality_to_lambda(3) and "records none" in module.describe_start()
    named = tmp_path / "ssf2020-mse-7-0123abcd.pth.tar"
    named.write_bytes(plain.read_bytes())
    assert read_state_dict(named).quality == 7
    unhashed = tmp_path / "ssf2020-mse-6.pth.tar"  # as eval has always read zoo names
    unhashed.write_bytes(plain.read_bytes())
    assert read_state_dict(unhashed).quality == 6


@pytest.mark.parametrize("preset", PARENT_PRESETS)
def test_presets_that_start_from_a_parent_leave_quality_and_flow_reference_to_it(preset):
    model = yaml.safe_load((ROOT / "configs" / preset).read_text())["model"]
    assert model["quality"] is None and model["flow_reference"] is None
    assert model.get("pretrained") is True  # the zoo, unless --model.init_weights names a file
