"""The session's trained models are built once and shared between pytest-xdist workers
(``_once_per_session`` in tests/conftest.py): the copy a second worker loads must be the model
the first one trained, its QAT state included, or the tests that read it there would check
another model than a serial run does."""

from __future__ import annotations

import pytest
import torch

from nvc_train.lit.module import SSFLitModule
from nvc_train.models.loss import rd_loss
from tests.conftest import (_once_per_session, _once_per_session_module, untrained_float_module,
                            untrained_pixel_module, untrained_qat_module)

# How each fixture constructs its module before training.
UNTRAINED = {"float_module": untrained_float_module, "qat_module": untrained_qat_module,
             "pixel_module": untrained_pixel_module}


class _Worker:
    """The part of pytest's TempPathFactory that ``_once_per_session`` uses: one xdist worker's
    basetemp, a folder in the session's (the controller's) basetemp."""

    def __init__(self, session, name: str):
        self.base = session / f"popen-{name}"
        self.base.mkdir(parents=True)

    def getbasetemp(self):
        return self.base


def _outputs(module: SSFLitModule):
    frames = [torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    with torch.no_grad():
        rd = rd_loss(module(frames), frames, module.lmbda)
    return rd.loss, rd.bpp, rd.mse


@pytest.mark.parametrize("name", list(UNTRAINED))
def test_a_second_worker_gets_the_model_the_first_one_trained(name, request, tmp_path, monkeypatch):
    """Worker gw0 "trains" (takes the session's trained module); gw1 loads what gw0 saved into a
    module it constructs: it must equal the module Lightning trained, parameters, buffers (QAT
    ranges and scales), recorded losses and outputs through the fake-quantised paths."""
    trained = request.getfixturevalue(name)
    trainings = []

    def train(module):
        trainings.append(module)
        module.load_state_dict(trained.state_dict())
        if hasattr(trained, "recorded_losses"):
            module.recorded_losses = trained.recorded_losses

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    first = _once_per_session_module(_Worker(tmp_path, "gw0"), name, UNTRAINED[name], train)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    second = _once_per_session_module(_Worker(tmp_path, "gw1"), name, UNTRAINED[name], train)
    assert trainings == [first] and second is not first  # trained once, loaded once
    assert not second.training and (second.qat is None) == (trained.qat is None)
    if trained.qat is not None:
        assert second.qat.config == trained.qat.config
    want, got = trained.state_dict(), second.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert getattr(second, "recorded_losses", None) == getattr(trained, "recorded_losses", None)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(second), _outputs(trained)))


def test_a_value_is_built_by_the_first_worker_and_read_by_the_others(tmp_path, monkeypatch):
    built = []

    def build():
        built.append(tmp_path / "made")
        return built[-1]

    values = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        values.append(_once_per_session(_Worker(tmp_path, worker), "path", build))
    assert values == [tmp_path / "made"] * 3 and len(built) == 1


def test_serially_it_is_the_build_itself(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    made = object()
    assert _once_per_session(_Worker(tmp_path, "gw0"), "thing", lambda: made) is made
    assert not (tmp_path / "once-per-session").exists()
