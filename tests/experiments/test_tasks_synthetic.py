"""Synthetic memory tasks: hand-written solvers answer them perfectly; label-blind guesses sit at chance."""

import numpy as np
import pytest

from algornn.experiments.tasks import get_task

N = 300


def _all(task, split="train"):
    return task.examples(split, np.arange(task.num_examples(split)))


def _scored_accuracy(pred, labels):
    scored = labels >= 0
    return float((pred[scored] == labels[scored]).mean())


def test_copying_solver():
    t = get_task("copying", seq_len=61, n_copy=7, n_symbols=5, n_train=N)
    ex = _all(t)
    x, y = ex["inputs"], ex["labels"]
    assert ((y >= 0).sum(1) == 7).all() and (y[:, -7:] >= 0).all()
    pred = np.full_like(y, -1)
    pred[:, -7:] = x[:, :7] - 3  # symbols are ids 3.. -> class id - 3
    assert _scored_accuracy(pred, y) == 1.0
    assert (x[:, 7:-8] == 1).all() and (x[:, -8] == 2).all() and (x[:, -7:] == 1).all()  # blanks, delimiter
    # a label-blind constant guess is at chance 1 / n_symbols
    assert abs(float((y[y >= 0] == 0).mean()) - t.chance) < 0.05


def test_adding_solver():
    t = get_task("adding", seq_len=53, n_train=N)
    ex = _all(t)
    x, y = ex["inputs"], ex["labels"]
    values, markers = x[..., 0], x[..., 1]
    assert (markers.sum(1) == 2).all()
    assert (markers[:, : 53 // 2].sum(1) == 1).all()  # one marker in each half
    pred = (values * markers).sum(1)
    np.testing.assert_allclose(pred, y, rtol=0, atol=1e-6)
    mse_of_constant = float(((y - 1.0) ** 2).mean())
    assert abs(mse_of_constant - t.chance) < 0.03


def test_selective_copying_solver():
    t = get_task("selective_copying", seq_len=70, n_copy=6, n_symbols=4, n_train=N)
    ex = _all(t)
    x, y = ex["inputs"], ex["labels"]
    pred = np.full_like(y, -1)
    for i in range(N):
        delim = int(np.flatnonzero(x[i] == 2)[0])
        data = x[i, :delim][x[i, :delim] >= 3] - 3
        assert data.size == 6
        pred[i, -6:] = data
    assert _scored_accuracy(pred, y) == 1.0
    # the data tokens really are scattered (not always at the start)
    first = np.array([np.flatnonzero(r >= 3)[0] for r in x])
    assert first.std() > 1.0


def test_mqar_solver():
    t = get_task("mqar", seq_len=45, n_pairs=5, n_queries=4, n_keys=12, n_values=9, n_train=N)
    ex = _all(t)
    x, y = ex["inputs"], ex["labels"]
    key_lo, value_lo = 2, 2 + 12
    pred = np.full_like(y, -1)
    for i in range(N):
        table = {}
        for j in range(0, 10, 2):
            k, v = int(x[i, j]), int(x[i, j + 1])
            assert key_lo <= k < value_lo <= v < value_lo + 9
            table[k] = v - value_lo
        assert len(table) == 5  # distinct keys
        for j in range(10, 45):
            if int(x[i, j]) in table:
                pred[i, j] = table[int(x[i, j])]
    assert _scored_accuracy(pred, y) == 1.0
    assert ((y >= 0).sum(1) == 4).all() and (pred >= 0).sum() == (y >= 0).sum()
    assert t.vocab_size == 2 + 12 + 9 and t.num_classes == 9


def test_induction_solver():
    t = get_task("induction", seq_len=40, n_symbols=6, n_train=N)
    ex = _all(t)
    x, y = ex["inputs"], ex["labels"]
    assert ((y >= 0).sum(1) == 1).all() and (y[:, -1] >= 0).all()
    pred = np.full_like(y, -1)
    for i in range(N):
        triggers = np.flatnonzero(x[i] == 2)
        assert triggers.size == 2 and triggers[-1] == 39
        pred[i, -1] = x[i, triggers[0] + 1] - 3
    assert _scored_accuracy(pred, y) == 1.0


@pytest.mark.parametrize("name", ["copying", "adding", "selective_copying", "mqar", "induction"])
def test_splits_differ_and_generation_is_seeded(name):
    a = get_task(name, seq_len=64, n_train=20, n_val=20, n_test=20, data_seed=1)
    b = get_task(name, seq_len=64, n_train=20, n_val=20, n_test=20, data_seed=1)
    c = get_task(name, seq_len=64, n_train=20, n_val=20, n_test=20, data_seed=2)
    xa = a.split_arrays("train")["inputs"]
    assert np.array_equal(xa, b.split_arrays("train")["inputs"])
    assert not np.array_equal(xa, c.split_arrays("train")["inputs"])
    assert not np.array_equal(xa, a.split_arrays("test")["inputs"])


@pytest.mark.parametrize("name", ["copying", "mqar", "selective_copying", "adding", "induction"])
def test_demo_sizes_generate_quickly(name):
    import time

    start = time.perf_counter()
    t = get_task(name, seq_len=1024, n_train=2000)
    t.split_arrays("train")
    assert time.perf_counter() - start < 10.0
