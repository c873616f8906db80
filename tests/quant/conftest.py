"""Fixtures of the quantization tests."""

from __future__ import annotations

import copy

import pytest

from nvc_train.quant.export import integer_tensors


@pytest.fixture(scope="module")
def frozen(qat_module):
    """(a copy of the QAT module with stored entropy tables, its integer tensors)."""
    m = copy.deepcopy(qat_module)
    m.model.update(force=True)
    return m, integer_tensors(m.model, m.qat)
