"""The comparison helper itself must be able to fail."""

import numpy as np
import pytest

from tests._utils import assert_close, rel_rms_error, tolerance


def test_assert_close_passes_and_fails():
    x = np.linspace(1.0, 2.0, 100)
    assert_close(x * (1 + 1e-7), x, dtype=np.float32)
    with pytest.raises(AssertionError):
        assert_close(x * (1 + 1e-3), x, dtype=np.float32)


def test_relative_rms_uses_floor_for_zero_reference():
    assert rel_rms_error(np.full(4, 1e-9), np.zeros(4)) == pytest.approx(1e-3)


def test_nonfinite_mismatch_fails():
    with pytest.raises(AssertionError):
        assert_close(np.array([1.0, np.nan]), np.array([1.0, 1.0]), rtol=1.0)


def test_tolerance_table():
    assert tolerance(np.float32) < tolerance("bfloat16")
    with pytest.raises(KeyError):
        tolerance(np.int32)
