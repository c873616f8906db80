"""fit/validate/test command lines are checked before Lightning is imported: a typo or a
missing file is one line in a fraction of a second, and the check refuses exactly what
LightningCLI itself refuses (compared case by case with the real parser)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nvc_train.errors import UserError
from nvc_train.lit.precheck import group_parameters, precheck, top_level_options
from nvc_train.presets import CONFIGS

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(CONFIGS / "demo" / "float.yaml")

# (argv after the preset, what the one line must contain)
REFUSED = [
    (["--trainer.max_step", "2"], "unrecognized option --trainer.max_step (did you mean --trainer.max_steps?)"),
    (["--model.qualty", "3"], "unrecognized option --model.qualty (did you mean --model.quality?)"),
    (["--bogus", "1"], "unrecognized option --bogus"),
    (["--trainer.max_epoch=2"], "did you mean --trainer.max_epochs?"),
    (["--ckpt_path", "missing.ckpt"], "--ckpt_path not found: missing.ckpt"),
    (["--model.init_weights", "missing.pth"], "--model.init_weights not found: missing.pth"),
    (["--config", "missing.yaml"], "--config not found: missing.yaml"),
]
ACCEPTED = [
    ["--trainer.max_steps", "1", "--trainer.logger.init_args.project", "p", "--model.quality", "5"],
    ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelSummary", "--model.qat.activation_bits=8"],
    ["--data.crop", "128", "--seed_everything", "3", "--ckpt_path", "last"],
    ["--trainer.max_steps=2", "--print_config=skip_null"],
]


def live_parser():
    """The parser LightningCLI builds for nvc-train (subcommands fit/validate/test/...)."""
    from unittest import mock

    from lightning.pytorch.cli import LightningCLI

    from nvc_train.lit.cli import make_cli

    captured = {}
    original = LightningCLI.setup_parser

    def setup_parser(self, *args, **kwargs):
        original(self, *args, **kwargs)
        captured["parser"] = self.parser
        raise SystemExit(0)

    with mock.patch.object(LightningCLI, "setup_parser", setup_parser), pytest.raises(SystemExit):
        make_cli(["fit"])
    return captured["parser"]


def test_option_names_are_those_of_the_installed_lightning_and_module():
    from lightning import Trainer

    from nvc_train.lit.module import SSFLitModule

    subcommands = live_parser()._subcommands_action._name_parser_map
    for command in ("fit", "validate", "test"):
        live = {s[2:].split(".")[0] for a in subcommands[command]._actions for s in a.option_strings
                if s.startswith("--")}
        assert top_level_options(command) == live, command
    assert group_parameters()["trainer"] == set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    assert group_parameters()["model"] == set(inspect.signature(SSFLitModule.__init__).parameters) - {"self"}


def lightning_refuses(extra: list[str], tmp_path) -> bool:
    """Whether LightningCLI itself rejects ``fit --config DEMO *extra`` (without the precheck)."""
    from nvc_train.cli import _run_lightning_guarded

    try:
        _run_lightning_guarded(["fit", "--config", DEMO, *extra, "--trainer.max_steps=0", "--trainer.logger=false",
                                f"--trainer.default_root_dir={tmp_path}"])
    except UserError:
        return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("extra,message", REFUSED, ids=[" ".join(e) for e, _ in REFUSED])
def test_what_the_precheck_refuses_lightning_refuses_too(extra, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        precheck(["fit", "--config", DEMO, *extra])
    assert lightning_refuses(extra, tmp_path)


@pytest.mark.parametrize("extra", ACCEPTED, ids=[" ".join(e) for e in ACCEPTED])
def test_valid_command_lines_pass(extra, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in ("fit", "validate", "test"):
        precheck([command, "--config", DEMO, *extra])


@pytest.mark.slow
def test_lightning_accepts_what_the_precheck_passes(tmp_path, monkeypatch):
    """Control for the table above: the same valid lines get through LightningCLI's parser
    (they are parsed and printed, nothing runs)."""
    from nvc_train.lit.cli import make_cli

    monkeypatch.chdir(tmp_path)
    for extra in ACCEPTED:
        extra = [a for a in extra if not a.startswith(("--print_config", "--ckpt_path", "last"))]
        make_cli(["--config", DEMO, *extra], run=False)


def test_errors_come_before_lightning_is_imported(tmp_path):
    """Each refused line, in a fresh interpreter: exit 2, one line, and neither torch nor
    Lightning imported."""
    script = (
        "import json, sys, contextlib, io\n"
        "from nvc_train.cli import main\n"
        "out = []\n"
        f"for extra in {json.dumps([e for e, _ in REFUSED])}:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        f"        code = main(['fit', '--config', {DEMO!r}, *extra])\n"
        "    out.append([code, err.getvalue()])\n"
        "print(json.dumps([out, 'torch' in sys.modules, 'lightning' in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out, torch_loaded, lightning_loaded = json.loads(result.stdout.splitlines()[-1])
    for (code, err), (_, message) in zip(out, REFUSED):
        assert code == 2 and err.count("\n") == 1 and err.startswith("nvc-train: error:") and message in err, err
    assert not torch_loaded and not lightning_loaded


def test_a_missing_checkpoint_in_a_config_file_is_one_line(tmp_path, capsys, monkeypatch):
    """What the precheck cannot see (a --ckpt_path inside a config file) still ends in one
    line: Lightning's FileNotFoundError is reported, not its traceback."""
    from nvc_train.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "resume.yaml").write_text("ckpt_path: gone.ckpt\ntrainer:\n  logger: false\n  max_steps: 1\n")
    code = main(["fit", "--config", DEMO, "--config", "resume.yaml", f"--trainer.default_root_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "gone.ckpt" in err[0], err


@pytest.mark.parametrize("extra", [
    ["--config", str(CONFIGS / "qat.yaml")],
    ["--config", str(CONFIGS / "qat.yaml"), "--model.quality", "5"],
    ["--config", str(CONFIGS / "qat.yaml"), "--model.pretrained=ssf2020-mse-2", "--trainer.max_steps", "1"],
    ["--config", str(CONFIGS / "qat.yaml"), "--config", "{model: {quality: 7}}"],
    ["--config", str(CONFIGS / "qat.yaml"), "--model.pretrained", "false"],
    ["--config", str(CONFIGS / "finetune.yaml"), "--model.quality", "4", "--model.pretrained", "ssf2020-mse-6"],
    ["--config", DEMO],
])
def test_the_zoo_start_the_precheck_reads_is_the_one_lightningcli_builds(extra, tmp_path, monkeypatch):
    """The pre-start zoo check reads `model.pretrained`/`model.quality` from the config files and
    options itself (YAML, later wins); the module LightningCLI instantiates from the same command
    line must name the same zoo file (or none)."""
    from nvc_train.lit.cli import make_cli
    from nvc_train.lit.precheck import model_settings
    from nvc_train.models.zoo_files import DEFAULT_QUALITY, zoo_entry

    monkeypatch.chdir(tmp_path)
    settings = model_settings(extra)
    quality = settings.get("quality") or DEFAULT_QUALITY
    ours = None if settings.get("init_weights") else zoo_entry(settings.get("pretrained", False), quality)
    cli_obj = make_cli([*extra, "--trainer.logger", "false"], run=False)
    assert ours == cli_obj.model.zoo
