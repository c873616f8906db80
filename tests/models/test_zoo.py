"""CompressAI's zoo in and out: a zoo-format file written by CompressAI's own ``update_model``,
fetched by ``torch.hub`` into a temporary ``TORCH_HOME``, trained from, and our zoo export
read back by CompressAI's zoo loader and ``eval_model``."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from compressai.models.video import ScaleSpaceFlow

from nvc_train.errors import UserError
from nvc_train.lit.module import SSFLitModule
from nvc_train.models import zoo
from tests.cli_runner import assert_one_line_error, cli
from tests.conftest import _fit

ROOT = Path(__file__).resolve().parents[2]


def write_with_update_model(tmp_path: Path, seed: int = 0) -> Path:
    """A zoo file as CompressAI publishes them: ``update_model`` on a trained checkpoint."""
    from compressai.utils.update_model.__main__ import main as update_model

    torch.manual_seed(seed)
    raw = tmp_path / "trained" / "ssf2020-mse-3.pth.tar"
    raw.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": ScaleSpaceFlow().state_dict()}, raw)
    update_model([str(raw), "-a", "ssf2020", "-n", "ssf2020-mse-3", "-d", str(tmp_path / "published")])
    (published,) = (tmp_path / "published").glob("ssf2020-mse-3-*.pth.tar")
    return published


@pytest.fixture
def zoo_file(tmp_path, monkeypatch) -> Path:
    """CompressAI's URL table names our file (as a ``file://`` address) and TORCH_HOME is empty."""
    from compressai.zoo import video

    published = write_with_update_model(tmp_path)
    monkeypatch.setitem(video.model_urls["ssf2020"]["mse"], 3, published.as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var in zoo.OFFLINE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    return published


@pytest.fixture
def float_checkpoint(tmp_path) -> Path:
    """The Lightning checkpoint of a one-step float run at quality 3."""
    L.seed_everything(0)
    trainer = _fit(SSFLitModule(quality=3, real_coding_clips=0), tmp_path / "run", max_steps=1)
    trainer.save_checkpoint(tmp_path / "float.ckpt")
    return tmp_path / "float.ckpt"


def compressai_model(path: Path) -> ScaleSpaceFlow:
    """The reference: CompressAI's own loading of a zoo file (no nvc-train code)."""
    from compressai.zoo.pretrained import load_pretrained

    return ScaleSpaceFlow.from_state_dict(load_pretrained(torch.load(path, weights_only=True))).eval()


def test_update_model_names_files_by_the_sha256_of_their_bytes(zoo_file):
    digest = hashlib.sha256(zoo_file.read_bytes()).hexdigest()
    assert zoo_file.name == f"ssf2020-mse-3-{digest[:8]}.pth.tar"
    entry = zoo.zoo_entry(True, 3)
    assert entry.name == "ssf2020-mse-3" and entry.sha8 == digest[:8]


@pytest.mark.slow
def test_fit_starts_from_the_zoo_weights_and_a_resume_never_reads_them(zoo_file, tmp_path):
    seen = {}
    # 256²: a zoo start's flow reference (ZOO_FLOW_REFERENCE), where its flow rescaling is × 1.0
    # and the model must equal CompressAI's own bit for bit.
    frames = [torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(t)) for t in range(2)]

    class FirstForward(L.Callback):
        def on_train_start(self, trainer, pl_module):
            model = pl_module.model.eval()
            with torch.no_grad():
                seen["ours"] = ScaleSpaceFlow.forward(model, frames)["x_hat"]
            model.train()

    module = SSFLitModule(quality=3, pretrained=True, real_coding_clips=0)
    assert module.hparams.pretrained == "ssf2020-mse-3"
    assert module.model.flow_reference == zoo.ZOO_FLOW_REFERENCE == 256
    trainer = _fit(module, tmp_path, max_steps=2, callbacks=[FirstForward()])
    cached = zoo.zoo_cache_dir() / zoo_file.name
    assert cached.read_bytes() == zoo_file.read_bytes()  # torch.hub put it in TORCH_HOME
    with torch.no_grad():
        want = compressai_model(zoo_file)(frames)["x_hat"]
    assert all(torch.equal(a, b) for a, b in zip(seen["ours"], want))
    # and it trained from there
    reference = compressai_model(zoo_file).state_dict()
    assert not torch.equal(module.model.img_encoder[0].weight, reference["img_encoder.0.weight"])
    assert trainer.global_step == 2

    # Resume with the zoo file gone from the cache and from its address: nothing reads it.
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    cached.unlink()
    zoo_file.unlink()
    resumed = SSFLitModule(quality=3, pretrained=True, real_coding_clips=0)
    from nvc_train.lit.data import SyntheticClipDataModule

    data = SyntheticClipDataModule(crop=128, train_size=160, val_size=128, num_val_clips=1, batch_size=2, num_workers=0)
    t2 = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False, limit_val_batches=0,
                   num_sanity_val_steps=0, enable_checkpointing=False, enable_model_summary=False)
    t2.fit(resumed, datamodule=data, ckpt_path=tmp_path / "last.ckpt")
    assert t2.global_step == 3
    assert not cached.exists()


def test_a_cached_file_is_used_without_the_network(zoo_file, monkeypatch):
    first = zoo.fetch_zoo_file(zoo.zoo_entry(True, 3), progress=False)
    from compressai.zoo import video

    # Same file name at an address that does not exist, and downloads switched off.
    monkeypatch.setitem(video.model_urls["ssf2020"]["mse"], 3, (zoo_file.parent / "gone" / zoo_file.name).as_uri())
    monkeypatch.setenv("NVC_TRAIN_OFFLINE", "1")
    assert zoo.fetch_zoo_file(zoo.zoo_entry(True, 3), progress=False) == first
    state = zoo.zoo_weights(zoo.zoo_entry("ssf2020-mse-3", 3), progress=False)
    assert torch.equal(state["img_encoder.0.weight"], compressai_model(zoo_file).state_dict()["img_encoder.0.weight"])


def test_a_corrupt_cached_file_is_refused_by_its_hash(zoo_file):
    entry = zoo.zoo_entry(True, 3)
    cached = zoo.fetch_zoo_file(entry, progress=False)
    data = bytearray(cached.read_bytes())
    data[-100] ^= 1
    cached.write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"its name says {entry.sha8}: the file is corrupt"):
        zoo.fetch_zoo_file(entry, progress=False)


def test_download_failures_and_bad_names_are_one_line(zoo_file, monkeypatch):
    from compressai.zoo import video

    monkeypatch.setitem(video.model_urls["ssf2020"]["mse"], 3, (zoo_file.parent / "gone" / zoo_file.name).as_uri())
    with pytest.raises(UserError, match=r"cannot download .* put ssf2020-mse-3-\w{8}.pth.tar into .*torch-home"):
        zoo.fetch_zoo_file(zoo.zoo_entry(True, 3), progress=False)
    # A file whose bytes do not match the hash in its name fails torch.hub's check.
    wrong = zoo_file.parent / "ssf2020-mse-3-00000000.pth.tar"
    wrong.write_bytes(zoo_file.read_bytes())
    monkeypatch.setitem(video.model_urls["ssf2020"]["mse"], 3, wrong.as_uri())
    with pytest.raises(UserError, match="failed its SHA-256 check"):
        zoo.fetch_zoo_file(zoo.zoo_entry(True, 3), progress=False)
    assert not (zoo.zoo_cache_dir() / wrong.name).exists()
    for bad in ("ssf2020-mse-12", "bmshj2018-mse-3", 3.5):
        with pytest.raises(UserError, match="pretrained"):
            zoo.zoo_entry(bad, 3)
    with pytest.raises(UserError, match="CompressAI publishes no weights named ssf2020-ms-ssim-3"):
        zoo.zoo_entry("ssf2020-ms-ssim-3", 3)


def test_offline_without_the_file_the_qat_preset_says_which_file_and_where(tmp_path):
    """The shipped QAT preset starts from the zoo; offline and uncached that is one line."""
    env = {"TORCH_HOME": str(tmp_path / "empty-torch-home"), "HF_HUB_OFFLINE": "1"}
    result = cli("fit", "--config", str(ROOT / "configs/qat.yaml"), "--model.quality", "5", "--trainer.max_steps", "1",
                 "--trainer.accelerator", "cpu", "--data.init_args.num_workers", "0", "--data.init_args.crop", "128",
                 "--data.init_args.batch_size", "1", cwd=tmp_path, env=env)
    assert_one_line_error(result, "ssf2020-mse-5: ssf2020-mse-5-1dd7d574.pth.tar is not in the torch hub cache")
    assert str(tmp_path / "empty-torch-home" / "hub" / "checkpoints") in result.stderr
    assert "https://compressai.s3.amazonaws.com/models/v1/ssf2020-mse-5-1dd7d574.pth.tar" in result.stderr
    # before Lightning starts the run (before: after the model summary, ~25 s) and leaving no
    # run folder behind (before: runs/qat/ with empty .wandb-* folders)
    assert "Total params" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()


ZOO_PROBE = """
import sys
from nvc_train.cli import main
codes = [main(argv) for argv in {calls!r}]
print(codes, sorted(m for m in ("torch", "lightning", "compressai") if m in sys.modules))
"""


def test_zoo_starts_are_refused_before_torch_is_imported(tmp_path):
    """Offline without the file, a damaged cached file, a name CompressAI does not publish: one
    line each from the pre-start check, which imports neither torch, Lightning nor CompressAI
    (before: after ~10 s of imports)."""
    from compressai.zoo.video import model_urls

    real = Path(model_urls["ssf2020"]["mse"][5]).name  # CompressAI's own name of the q5 file
    damaged = tmp_path / "damaged-home" / "hub" / "checkpoints" / real
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not the weights")
    qat = str(ROOT / "configs" / "qat.yaml")
    calls = [["fit", "--config", qat, "--model.quality", "5"],
             ["fit", "--config", qat, "--model.pretrained", "ssf2020-mse-12"],
             ["fit", "--config", qat, "--model.quality", "5", "--trainer.max_steps", "1"]]
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "empty-home"), "HF_HUB_OFFLINE": "1"}
    script = ZOO_PROBE.format(calls=calls[:2]) + (
        f"import os; os.environ['TORCH_HOME'] = {str(damaged.parents[2])!r}\n" + ZOO_PROBE.format(calls=calls[2:]))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=120)
    assert result.stdout.splitlines() == ["[2, 2] []", "[2] []"], result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("nvc-train: error:")]
    assert len(errors) == 3 and "Traceback" not in result.stderr, result.stderr
    assert f"{real} is not in the torch hub cache and downloads are off (HF_HUB_OFFLINE)" in errors[0]
    assert "'ssf2020-mse-12': not a CompressAI zoo name" in errors[1]
    assert f"{damaged} has SHA-256" in errors[2] and "delete it to download it again" in errors[2]
    assert not (tmp_path / "runs").exists()


def test_the_pre_start_check_reads_the_zoo_as_compressai_and_torch_hub_do(zoo_file, monkeypatch, tmp_path):
    """Its two torch-free readings against the libraries' own: CompressAI's URL table from the
    package source, and torch.hub's cache folder from the environment; and an intact cached
    file (the fixture's, under its name in the patched table) passes."""
    from compressai.zoo.video import model_urls

    from nvc_train.lit.precheck import check_zoo_start
    from nvc_train.models import zoo_files

    monkeypatch.setitem(model_urls["ssf2020"]["mse"], 3, zoo_file.as_uri())
    assert zoo_files._model_urls_from_source()["ssf2020"]["mse"][5] == model_urls["ssf2020"]["mse"][5]
    assert zoo_files._model_urls_from_source()["ssf2020"]["mse"][3] != zoo_file.as_uri()  # the source, unpatched
    assert zoo_files.compressai_model_urls() is model_urls  # once imported: the live (patched) table
    for env in ({"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {}):
        for var in ("TORCH_HOME", "XDG_CACHE_HOME"):
            monkeypatch.delenv(var, raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        assert zoo_files.hub_dir_from_environment() == Path(torch.hub.get_dir()), env
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached = zoo.zoo_cache_dir() / zoo_file.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(zoo_file.read_bytes())
    check_zoo_start(["--config", str(ROOT / "configs" / "qat.yaml"), "--model.quality", "3"])  # passes
    check_zoo_start(["--config", str(ROOT / "configs" / "qat.yaml"), "--model.quality", "5", "--ckpt_path", "x.ckpt"])
    with pytest.raises(UserError, match="not in the torch hub cache"):
        check_zoo_start(["--config", str(ROOT / "configs" / "qat.yaml"), "--model.quality", "5"])


@pytest.mark.slow
def test_export_float_zoo_drops_into_compressais_zoo_loader_and_eval_model(tmp_path, monkeypatch, float_checkpoint):
    """``export-float --zoo`` → the file CompressAI's ``ssf2020(pretrained=True)`` and
    ``eval_model`` load, with the weights of the run."""
    from compressai.utils.video.eval_model.__main__ import load_checkpoint
    from compressai.zoo import ssf2020, video

    result = cli("export-float", str(float_checkpoint), "--out-dir", str(tmp_path / "zoo"), "--zoo")
    assert result.returncode == 0, result.stderr
    (path,) = (tmp_path / "zoo").glob("*.pth.tar")
    assert path.name == f"ssf2020-mse-3-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}.pth.tar"
    monkeypatch.setitem(video.model_urls["ssf2020"]["mse"], 3, path.as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    from_zoo = ssf2020(quality=3, pretrained=True, progress=False).eval()
    from_eval_model = load_checkpoint("ssf2020", True, str(path))  # no_update: the tables are in the file
    ckpt = torch.load(float_checkpoint, weights_only=False)
    run_weights = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    for model in (from_zoo, from_eval_model):
        state = model.state_dict()
        assert torch.equal(state["img_encoder.0.weight"], run_weights["img_encoder.0.weight"])
        assert state["img_hyperprior.gaussian_conditional._quantized_cdf"].numel() > 0  # entropy tables written
    frames = [torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(t)) for t in range(2)]
    with torch.no_grad():
        a, b = from_zoo(frames)["x_hat"], from_eval_model(frames)["x_hat"]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # Same content, same name: a second export leaves the file as it is.
    assert cli("export-float", str(float_checkpoint), "--out-dir", str(tmp_path / "zoo"), "--zoo").returncode == 0
    assert len(list((tmp_path / "zoo").glob("*.pth.tar"))) == 1


@pytest.mark.slow  # over 9 s on the 2-core machine: `make test` runs it, `make test-fast` does not
def test_the_qat_preset_from_the_zoo_to_an_exported_and_published_card(zoo_file, tmp_path):
    """The issue's path with the CLI: `fit --config configs/qat.yaml` from the zoo's q3 (named
    explicitly), `export`, `publish --dry-run`: the card names the zoo weights it started from."""
    from compressai.zoo import video

    assert video.model_urls["ssf2020"]["mse"][3] == zoo_file.as_uri()  # the fixture's address, in this interpreter

    def nvc(*args):
        result = cli(*args, cwd=tmp_path, env={"WANDB_MODE": "offline"})
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    nvc("fit", "--config", ROOT / "configs" / "qat.yaml", "--model.pretrained", "ssf2020-mse-3",
        "--trainer.max_steps", "2", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
        "--data.init_args.num_workers", "0", "--data.init_args.crop", "128", "--data.init_args.train_size", "160",
        "--data.init_args.val_size", "128", "--data.init_args.batch_size", "1", "--data.init_args.num_val_clips", "1")
    assert (zoo.zoo_cache_dir() / zoo_file.name).is_file()
    ckpt = torch.load(tmp_path / "runs/qat/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["pretrained"] == "ssf2020-mse-3"
    nvc("export-integer", tmp_path / "runs/qat/checkpoints/last.ckpt", "--out-dir", tmp_path / "int", "--name", "ssf-q3-int")
    (exported,) = (tmp_path / "int").glob("ssf-q3-int-*.ckpt")
    nvc("publish", exported, "--repo", "me/ssf-q3-int", "--dry-run", tmp_path / "publish", "--quiet")
    card = (tmp_path / "publish" / "README.md").read_text()
    assert "license: bsd-3-clause-clear" in card  # CompressAI's licence, as its weights carry it
    assert "started from: CompressAI's pretrained `ssf2020-mse-3`" in card
