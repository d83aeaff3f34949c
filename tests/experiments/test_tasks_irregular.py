"""The irregularly sampled task ``irregular_sine`` and the trainer's ``dt`` path.

A least-squares sinusoid fit at each candidate frequency, using the true sample times, names every noiseless
example's class (the task is what its docstring says); the same fit on the regular grid (timestamps ignored) does
not. ``use_dt=False`` serves the same samples with ``dt`` all ones; bad ``dt`` in a batch is refused on the host.
"""

import numpy as np
import pytest

from algornn.experiments import _train_lib as lib
from algornn.experiments.tasks import get_task

SMALL = {"n_train": 64, "n_val": 40, "n_test": 8, "seq_len": 64}


def _fit_class(x, times, freqs):
    """The frequency whose least-squares fit a sin + b cos + c leaves the smallest residual."""
    residuals = []
    for f in freqs:
        basis = np.stack([np.sin(2 * np.pi * f * times), np.cos(2 * np.pi * f * times), np.ones_like(times)], -1)
        coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
        residuals.append(np.sum((basis @ coef - x) ** 2))
    return int(np.argmin(residuals))


def test_sample_times_determine_the_class_and_the_regular_grid_does_not():
    task = get_task("irregular_sine", noise=0.0, **SMALL)
    arrays = task.split_arrays("val")
    freqs = np.linspace(0.02, 0.17, task.num_classes)
    x, dt, labels = arrays["inputs"][..., 0].astype(np.float64), arrays["dt"].astype(np.float64), arrays["labels"]
    assert x.shape == (40, 64) and dt.shape == (40, 64) and task.chance == 1 / 16
    assert np.all(dt >= 1e-3) and 0.7 < dt.mean() < 1.3  # exponential gaps, mean 1
    true_times = [_fit_class(x[i], np.cumsum(dt[i]), freqs) for i in range(len(x))]
    regular = [_fit_class(x[i], np.arange(1.0, 65.0), freqs) for i in range(len(x))]
    assert np.mean(np.array(true_times) == labels) == 1.0
    assert np.mean(np.array(regular) == labels) < 0.5


def test_use_dt_false_serves_the_same_samples_with_unit_gaps():
    given = get_task("irregular_sine", **SMALL).split_arrays("train")
    ignored = get_task("irregular_sine", use_dt=False, **SMALL).split_arrays("train")
    np.testing.assert_array_equal(given["inputs"], ignored["inputs"])
    np.testing.assert_array_equal(given["labels"], ignored["labels"])
    assert np.all(ignored["dt"] == 1.0) and not np.all(given["dt"] == 1.0)


def test_batches_carry_dt_and_eval_padding_rows_get_unit_gaps():
    task = get_task("irregular_sine", **SMALL)
    batch = lib.DataStream(task, 16, seed=0).next()
    assert batch["dt"].shape == (16, 64) and batch["dt"].dtype == np.float32
    tail = list(task.batches("val", 16, seed=0))[-1]  # 40 = 2·16 + 8: 8 padded rows
    assert np.all(tail["dt"][~tail["mask"]] == 1.0)
    lib.check_batch(lib.clean_batch(tail), vocab_size=None, where="tail")


@pytest.mark.parametrize(
    "dt, match",
    [
        (np.ones((2, 5), np.float32), r"dt must have shape \(B, L\) = \(2, 4\) like inputs; got \(2, 5\)"),
        (np.array([[1, 1, 0, 1], [1, 1, 1, 1]], np.float32), r"dt holds value\(s\) \[0\.0\]"),
        (np.array([[1, 1, np.nan, 1], [1, -2, 1, 1]], np.float32), r"dt holds value\(s\) \[-2\.0, nan\]"),
    ],
)
def test_bad_dt_in_a_batch_is_refused(dt, match):
    batch = {"inputs": np.zeros((2, 4, 1), np.float32), "lengths": np.array([4, 4]), "dt": dt}
    with pytest.raises(ValueError, match=r"here: " + match):
        lib.check_batch(batch, vocab_size=None, where="here")


@pytest.mark.parametrize(
    "option, match",
    [
        ({"f_min": 0.2, "f_max": 0.1}, r"f_min=0.2 must be < f_max=0.1"),
        ({"mean_gap": 0.0}, r"mean_gap=0.0 must be a number in \(0"),
        ({"use_dt": "no"}, r"use_dt"),
        ({"n_classes": 1}, r"n_classes"),
    ],
)
def test_bad_options(option, match):
    with pytest.raises(ValueError, match=match):
        get_task("irregular_sine", **option)
