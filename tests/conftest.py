"""Shared fixtures: small real models trained here (nothing is downloaded)."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(autouse=True)
def _restore_environment():
    """Commands run in-process set WANDB_* variables; no test may see another's. A Trainer
    whose environment says rank 3 sets Lightning's process-wide rank, after which every
    rank-zero message and logger file of later tests would silently vanish: such a test fails."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    saved, rank = dict(os.environ), rank_zero_only.rank
    yield
    os.environ.clear()
    os.environ.update(saved)
    if rank_zero_only.rank != rank:
        left, rank_zero_only.rank = rank_zero_only.rank, rank
        pytest.fail(f"the test left Lightning's rank_zero_only.rank at {left} (was {rank}); restore it")


@pytest.fixture
def cuda_flags_restored():
    """Tests that set cuDNN/TF32 flags leave them as they found them for later tests."""
    saved = (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    yield
    (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
     torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved


# Measured peak of a whole session (`df` sampled every 3 s, 2026-12-04): 3.0 GB serially, at most
# 3.4 GB with two xdist workers (two tests' folders at once), most of it the session's shared models
# and clusters; each test's own folder goes when it passes (pyproject.toml).
SUITE_PEAK_GB = 3.5


def _temporary_space(config) -> str:
    """Where the temporary files go and whether they fit: a full disk otherwise shows up as
    hundreds of unrelated `torch.save` errors."""
    import shutil
    import tempfile

    where = str(config.option.basetemp or tempfile.gettempdir())
    while not os.path.exists(where):
        where = os.path.dirname(where)
    free_gb = shutil.disk_usage(where).free / 1e9
    line = f"temporary files under {where}: {free_gb:.1f} GB free (the whole suite needs about {SUITE_PEAK_GB} GB)"
    if free_gb < 1.5 * SUITE_PEAK_GB:
        line += " -- TOO LITTLE: free some space or point TMPDIR elsewhere"
    return line


def pytest_report_header(config):
    return _temporary_space(config)


def pytest_sessionstart(session):
    line = _temporary_space(session.config)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if "TOO LITTLE" in line and reporter is not None and session.config.option.verbose < 0:
        reporter.write_line(line)  # -q hides the header


def pytest_configure(config):
    if getattr(config.option, "numprocesses", None):
        # Two workers on two cores, each with torch's two threads: OpenMP's spinning waits
        # would otherwise take turns burning the cores (a 25-step fit, two at once: 85 s each
        # spinning, 31 s passive; 17.5 s alone: benchmarks/suite_workers.py). Set before the
        # workers start; they and their subprocesses inherit it.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


SLURM_SCOPE = "tests/slurm"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Each test module is one unit of work (its module fixtures built once); all of tests/slurm
    is one unit, so one Slurm cluster runs at a time, as in the serial run its timings (the
    multinode job must be training before Slurm's time-limit warning) were measured in."""
    from xdist.scheduler import LoadScopeScheduling

    class ModulesSlurmTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return SLURM_SCOPE if nodeid.startswith(SLURM_SCOPE + "/") else super()._split_scope(nodeid)

    config.option.loadscopereorder = False
    return ModulesSlurmTogether(config, log)


def pytest_collection_modifyitems(config, items):
    # The Slurm tests first: they spend minutes waiting for Slurm's timers, which the other
    # worker fills with everything else.
    items.sort(key=lambda item: not item.nodeid.startswith(SLURM_SCOPE + "/"))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _fit(module, tmp_dir, max_steps: int, crop: int = 128, batch_size: int = 2, callbacks=()):
    from nvc_train.lit.data import SyntheticClipDataModule

    data = SyntheticClipDataModule(crop=crop, train_size=crop + 32, val_size=128, num_train_clips=10_000,
                                   num_val_clips=1, batch_size=batch_size, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_dir), limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=list(callbacks), enable_checkpointing=False)
    trainer.fit(module, datamodule=data)
    return trainer


class LossRecorder(L.Callback):
    """Lightning callback keeping the RD loss of every step (without the auxiliary loss)."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


def _once_per_session(tmp_path_factory, name: str, build, save=torch.save, load=None):
    """``build()``'s result, built once per test session also when pytest-xdist runs the session
    in several workers: the first worker to ask builds it (the others wait on a file lock) and
    saves it with ``save(value, path)`` in the session's common temporary folder; the others
    get ``load(path)`` (default: unpickle). Serially it is just ``build()``."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build()
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "once-per-session"  # the controller's basetemp
    shared.mkdir(exist_ok=True)
    saved = shared / f"{name}.pt"
    with FileLock(f"{saved}.lock"):
        if not saved.exists():
            built = build()
            save(built, f"{saved}.part")
            os.replace(f"{saved}.part", saved)
            return built
    return load(saved) if load else torch.load(saved, map_location="cpu", weights_only=False)


def _once_per_session_module(tmp_path_factory, name: str, make, train):
    """A trained SSFLitModule once per session (``_once_per_session``): ``make()`` constructs it
    as the fixture does, ``train(module)`` trains it. CompressAI's SSF holds classes defined in
    its ``__init__``, which pickle cannot save, so another worker gets ``make()`` with the
    trained state dict (parameters and buffers: QAT ranges and scales too) and the recorded losses."""
    def build():
        module = make()
        train(module)
        return module.eval()

    def save(module, path):
        torch.save({"state_dict": module.state_dict(), "recorded_losses": getattr(module, "recorded_losses", None)}, path)

    def load(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        module = make()
        module.load_state_dict(saved["state_dict"])
        if saved["recorded_losses"] is not None:
            module.recorded_losses = saved["recorded_losses"]
        return module.eval()

    return _once_per_session(tmp_path_factory, name, build, save, load)


def untrained_float_module():
    """``float_module`` before its training (seeded by the fixture)."""
    from nvc_train.lit.module import SSFLitModule

    return SSFLitModule(quality=5, learning_rate=3e-4, real_coding_clips=0)


def untrained_qat_module():
    """``qat_module`` before the float weights are loaded and QAT runs.

    2e-4, not the float module's 3e-4: a fresh Adam's first step moves every weight by the
    learning rate, and at 3e-4 it knocked the 40-step float model from 15 dB to −2 dB on an
    Intel Xeon (AMX) runner (in float training as much as in QAT), leaving an integer
    checkpoint that decoded at 4.8 dB. Nor much lower: at 1e-4 and 3e-5 the model stays
    healthy, but its motion scale decoder then picks only 3 CDF tables on real latents, too few
    for tests/quant/test_reference.py to compare rounding across tables. 2e-4 passes both on
    that runner; the earlier AMD EPYC runner passed both at 3e-4."""
    from nvc_train.lit.module import SSFLitModule
    from nvc_train.quant.config import QuantConfig

    return SSFLitModule(quality=5, learning_rate=2e-4, qat=QuantConfig(), real_coding_clips=0)


def untrained_pixel_module():
    """``pixel_module`` before the QAT weights are loaded and whole-decoder QAT runs."""
    from nvc_train.lit.module import SSFLitModule
    from nvc_train.quant.config import QuantConfig

    return SSFLitModule(quality=5, learning_rate=3e-4, qat=QuantConfig(scope="decoder"), real_coding_clips=0)


FLOAT_MODULE_STEPS = 40
"""Training steps of the session's float model (``float_module``)."""


@pytest.fixture(scope="session")
def float_module(tmp_path_factory):
    """SSF trained 40 steps from scratch (λ of q5) on synthetic clips: a real, if young, model.

    40, not fewer: at 25 steps some training orders leave the motion hyperprior's scales on two
    CDF tables and chroma noisy (seen when the data order changed in issue 31), and the tests
    that need a model past that point failed by the luck of the order."""
    from lightning import seed_everything

    def make():
        seed_everything(0)
        return untrained_float_module()

    def train(module):
        recorder = LossRecorder()
        _fit(module, tmp_path_factory.mktemp("float"), max_steps=FLOAT_MODULE_STEPS, callbacks=[recorder])
        module.recorded_losses = recorder.losses

    return _once_per_session_module(tmp_path_factory, "float_module", make, train)


@pytest.fixture(scope="session")
def qat_module(float_module, tmp_path_factory):
    """QAT fine-tuning of ``float_module`` for 8 steps (calibrated, learned scales)."""
    from lightning import seed_everything

    def make():
        seed_everything(1)
        return untrained_qat_module()

    def train(module):
        module.load_state_dict(float_module.state_dict(), strict=False)
        _fit(module, tmp_path_factory.mktemp("qat"), max_steps=8)

    return _once_per_session_module(tmp_path_factory, "qat_module", make, train)


@pytest.fixture(scope="session")
def int_checkpoint(qat_module, tmp_path_factory):
    """An exported integer checkpoint of ``qat_module`` (path)."""

    def build():
        import copy

        from nvc_train.quant.export import export_integer_checkpoint

        m = copy.deepcopy(qat_module)
        return export_integer_checkpoint(m.model, m.qat, tmp_path_factory.mktemp("int"), "test", {"quality": 5})

    return _once_per_session(tmp_path_factory, "int_checkpoint", build)


@pytest.fixture(scope="session")
def pixel_module(qat_module, tmp_path_factory):
    """QAT of the whole decoder (``scope="decoder"``) from ``qat_module``, 4 steps."""
    from lightning import seed_everything

    def make():
        seed_everything(2)
        return untrained_pixel_module()

    def train(module):
        module.load_state_dict(qat_module.state_dict(), strict=False)
        _fit(module, tmp_path_factory.mktemp("pixel"), max_steps=4)

    return _once_per_session_module(tmp_path_factory, "pixel_module", make, train)


@pytest.fixture(scope="session")
def pixel_checkpoint(pixel_module, tmp_path_factory):
    """The pixel-exact integer checkpoint of ``pixel_module`` (path)."""

    def build():
        import copy

        from nvc_train.quant.export import export_integer_checkpoint

        m = copy.deepcopy(pixel_module)
        return export_integer_checkpoint(m.model, m.qat, tmp_path_factory.mktemp("pixel-int"), "pixel", {"quality": 5})

    return _once_per_session(tmp_path_factory, "pixel_checkpoint", build)


# --- an RD evaluation shared by the eval and publish tests --------------------------------
@pytest.fixture(scope="session")
def sequences(tmp_path_factory):
    """Two generated sequences: an H.264 .mp4 and a .y4m (MS-SSIM needs sides ≥ 161)."""

    def build():
        from fractions import Fraction

        from nvc_train.io.video import open_writer
        from tests.codec.video_fixtures import clip, write_h264

        folder = tmp_path_factory.mktemp("seqs")
        write_h264(folder / "walk.mp4", clip(21, 4, 176, 200), fps=Fraction(30))
        with open_writer(folder / "pan.y4m", 192, 168, Fraction(25)) as w:
            for f in clip(22, 4, 168, 192):
                w.write(f)
        return folder

    return _once_per_session(tmp_path_factory, "sequences", build)


@pytest.fixture(scope="session")
def float_weights(float_module, tmp_path_factory):
    """``float_module`` as a ScaleSpaceFlow state dict (``export-float``'s format)."""

    def build():
        import copy

        from nvc_train.lit.checkpoints import save_float_state_dict

        path = tmp_path_factory.mktemp("float") / "ssf-float.pth.tar"
        save_float_state_dict(copy.deepcopy(float_module.model), path, float_module.hparams.quality, float_module.lmbda)
        return path

    return _once_per_session(tmp_path_factory, "float_weights", build)


@pytest.fixture(scope="session")
def evaluation(int_checkpoint, float_weights, sequences, tmp_path_factory):
    """``nvc-train eval`` of the integer checkpoint and its float parent: (exit code, --out-dir folder)."""

    def build():
        from nvc_train.cli import main as cli_main

        out = tmp_path_factory.mktemp("eval")
        code = cli_main(["eval", "--checkpoint", str(int_checkpoint), str(float_weights), "--data", str(sequences),
                         "--out-dir", str(out), "--frames", "3", "--gop", "2", "--quiet"])
        return code, out

    return _once_per_session(tmp_path_factory, "evaluation", build)
