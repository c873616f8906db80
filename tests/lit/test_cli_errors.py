"""Bad input to the training CLI: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.cli_runner import assert_one_line_error, cli

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "demo" / "float.yaml")


def test_unknown_config_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  qualty: 3\n")
    assert_one_line_error(cli("fit", "--config", DEMO, "--config", str(cfg), cwd=tmp_path), "qualty")


def test_wrong_type(tmp_path):
    assert_one_line_error(cli("fit", "--config", DEMO, "--model.learning_rate", "fast", cwd=tmp_path), "learning_rate")


def test_abbreviated_options_are_typos_not_abbreviations(tmp_path):
    """`--trainer.max_step 2` must not silently mean `--trainer.max_steps 2` (refused before
    Lightning loads; that LightningCLI's own parser refuses it too is in tests/test_precheck.py)."""
    assert_one_line_error(cli("fit", "--config", DEMO, "--trainer.max_step", "2", cwd=tmp_path),
                          "unrecognized option --trainer.max_step (did you mean --trainer.max_steps?)")
    assert not (tmp_path / "runs").exists()


def test_missing_checkpoint_file(tmp_path):
    assert_one_line_error(cli("export-float", str(tmp_path / "none.ckpt"), "-o", str(tmp_path / "out.pth.tar")), "not found")


def test_state_dict_of_another_model(tmp_path):
    from compressai.zoo import bmshj2018_factorized

    other = tmp_path / "bmshj.pth.tar"
    torch.save(bmshj2018_factorized(quality=1, pretrained=False).state_dict(), other)
    result = cli("fit", "--config", DEMO, "--model.init_weights", str(other), "--trainer.max_steps", "1", cwd=tmp_path)
    assert_one_line_error(result, "not a ScaleSpaceFlow state dict")
    assert "missing: " in result.stderr and "unexpected: " in result.stderr


def test_invalid_values_caught_by_constructors(tmp_path):
    qat = str(ROOT / "configs" / "demo" / "qat.yaml")
    assert_one_line_error(cli("fit", "--config", DEMO, "--model.quality", "12", cwd=tmp_path), "quality must be one of 1..9")
    assert_one_line_error(cli("fit", "--config", qat, "--model.qat.activation_bits", "12", cwd=tmp_path),
                          "activation_bits must be 8 or 16")
    assert_one_line_error(cli("fit", "--config", DEMO, "--data.init_args.crop", "100", cwd=tmp_path), "multiple of 128")
    assert_one_line_error(cli("fit", "--config", qat, "--model.qat.scope", "everything", cwd=tmp_path),
                          "scope must be one of")
    assert not (tmp_path / "runs").exists(), "a refused fit must leave no run folder behind"


@pytest.mark.slow
def test_data_roots_that_cannot_be_used(tmp_path):
    footage = str(ROOT / "configs" / "finetune" / "footage.yaml")
    vimeo = str(ROOT / "configs" / "vimeo.yaml")
    assert_one_line_error(cli("fit", "--config", footage, cwd=tmp_path), "missing --data.root")
    assert_one_line_error(cli("fit", "--config", DEMO, "--data.crop", "abc", cwd=tmp_path), "--data.crop: Expected")
    assert_one_line_error(cli("fit", "--config", footage, "--data.root", str(tmp_path), cwd=tmp_path),
                          f"run `nvc-train prepare-footage {tmp_path} --out-dir {tmp_path}-prepared`")
    assert_one_line_error(cli("fit", "--config", vimeo, "--data.root", str(tmp_path), cwd=tmp_path),
                          "sep_trainlist.txt not found")
    assert_one_line_error(cli("fit", "--config", footage, "--data.root", "hf://datasets/x", cwd=tmp_path),
                          "not a Hugging Face dataset name")
    # an option of another DataModule names the class in use, its options and the one that has it
    # (before: "Option 'val_size' is not accepted"), and a typo gets its spelling
    assert_one_line_error(cli("fit", "--config", footage, "--data.root", "x", "--data.val_size", "8", cwd=tmp_path),
                          "--data.val_size: FootageDataModule takes no option val_size (its options: root, num_frames")
    assert_one_line_error(cli("fit", "--config", footage, "--data.root", "x", "--data.crops", "8", cwd=tmp_path),
                          "did you mean --data.crop?")
    # a mistyped folder is named as missing (before: advice to prepare-footage it)
    assert_one_line_error(cli("fit", "--config", footage, "--data.root", "data/footge", cwd=tmp_path),
                          "--data.root data/footge does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a refused fit must leave nothing behind"
